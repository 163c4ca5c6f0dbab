# bash completion for xdplb(8)                                  -*- shell-script -*-
# Installed as $PREFIX/share/bash-completion/completions/xdplb by `make install`.
# Plain bash (compgen), so it also works without the bash-completion package:
#   source /usr/local/share/bash-completion/completions/xdplb
# tests/docs checks that every subcommand and option of `xdplb` is listed here.

_xdplb_commands="start stop debug top check reload status stats explain doctor detach maintenance"

_xdplb_options() {
    local dirs="--pin-dir --state-dir"
    case "$1" in
        start)   echo "-i --interface -c --config --xdp-mode --log-file --timeout --pid-file --no-syslog -v --verbose $dirs" ;;
        stop)    echo "--pid-file --timeout $dirs" ;;
        debug)   echo "-i --interface -c --config --xdp-mode --log-file --timeout --interval $dirs" ;;
        top)     echo "--interval --once --no-flows $dirs" ;;
        check)   echo "--plan $dirs" ;;
        reload)  echo "--timeout $dirs" ;;
        status)  echo "--json $dirs" ;;
        stats)   echo "--json $dirs" ;;
        explain) echo "--syn --json $dirs" ;;
        doctor)  echo "--json $dirs" ;;
        detach)  echo "-i --interface --timeout $dirs" ;;
        maintenance) echo "on off --timeout $dirs" ;;
    esac
}

_xdplb_interfaces() {
    local n
    if command -v ip >/dev/null 2>&1; then
        ip -o link show 2>/dev/null | while IFS=': ' read -r _ n _; do echo "${n%@*}"; done
    else
        for n in /sys/class/net/*; do echo "${n##*/}"; done
    fi
}

_xdplb() {
    local cur prev cmd i words
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"

    # The subcommand: the first word that is not an option.
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done

    # Values of options that take one.
    case "$prev" in
        -i|--interface)
            mapfile -t COMPREPLY < <(compgen -W "$(_xdplb_interfaces)" -- "$cur"); return 0 ;;
        -c|--config|--pid-file|--log-file)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return 0 ;;
        --pin-dir|--state-dir)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return 0 ;;
        --xdp-mode)
            mapfile -t COMPREPLY < <(compgen -W "native generic auto" -- "$cur"); return 0 ;;
        --timeout|--interval)
            return 0 ;;
    esac

    if [[ -z "$cmd" ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$_xdplb_commands --version -h --help" -- "$cur")
        return 0
    fi
    if [[ "$cur" == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(_xdplb_options "$cmd") -h --help" -- "$cur")
        return 0
    fi

    # Positional arguments.
    case "$cmd" in
        check)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
        explain)
            # SRC_IP SRC_PORT VIP PORT PROTO: count the positionals before this word
            words=0
            for ((i = i + 1; i < COMP_CWORD; i++)); do
                case "${COMP_WORDS[i]}" in
                    --pin-dir|--state-dir) ((i++)) ;;
                    -*) ;;
                    *) ((words++)) ;;
                esac
            done
            if ((words == 4)); then
                mapfile -t COMPREPLY < <(compgen -W "tcp udp" -- "$cur")
            fi ;;
    esac
    return 0
}

complete -F _xdplb xdplb
