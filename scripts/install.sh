#!/usr/bin/env bash
# Install or remove xdplb the way an operator runs it (`make install`,
# `make uninstall`). Idempotent: running it again changes nothing that is
# already right, and never touches an existing /etc/xdplb/lb_conf.json.
#
#   scripts/install.sh install|uninstall
#
# Layout (docs/install.md), with the defaults below:
#   /opt/xdplb/                               venv (system python3, --system-site-packages
#                                             so it sees the distro's bcc) holding xdplbd
#   $PREFIX/sbin/xdplbd, $PREFIX/bin/xdplb    symlinks into the venv
#   $PREFIX/share/xdplb/bpf/xdplb.c           data plane source (compiled at run time)
#   $PREFIX/lib/systemd/system/xdplb.service  the unit (override with `systemctl edit`)
#   /etc/xdplb/lb_conf.json                   config, 0644 root:root, only if absent
#   /etc/xdplb/bird.conf.example              BIRD 2 for route announcement, 0644
#   /etc/xdplb/keepalived.conf.example        keepalived VRRP (active/passive), 0644
#   $PREFIX/share/man/man{5,8}/               xdplbd(8), xdplb(8), lb_conf.json(5)
#   $PREFIX/share/bash-completion/completions/xdplb
#
# Environment: DESTDIR (staged install: no packages, no systemctl), PREFIX
# (/usr/local), SYSCONFDIR (/etc), VENVDIR (/opt/xdplb), UNITDIR
# ($PREFIX/lib/systemd/system), XDPLB_INSTALL_DEPS=0 (skip distro packages),
# PIP_ARGS (extra pip options, e.g. --no-index).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
PREFIX="${PREFIX:-/usr/local}"
PREFIX="${PREFIX%/}"
SYSCONFDIR="${SYSCONFDIR:-/etc}"
VENVDIR="${VENVDIR:-/opt/xdplb}"
UNITDIR="${UNITDIR:-$PREFIX/lib/systemd/system}"
KHDR_DIR="/var/lib/xdplb/kernel-headers"
PY=/usr/bin/python3

BINDIR="$PREFIX/bin"
SBINDIR="$PREFIX/sbin"
DATADIR="$PREFIX/share/xdplb"
MANDIR="$PREFIX/share/man"
COMPDIR="$PREFIX/share/bash-completion/completions"
CONFDIR="$SYSCONFDIR/xdplb"
UNIT=xdplb.service

CHANGED=0  # set when anything was (re)installed
CLEANUP=()
cleanup() { [ "${#CLEANUP[@]}" -eq 0 ] || rm -rf "${CLEANUP[@]}"; }
trap cleanup EXIT

log() { printf 'install: %s\n' "$*" >&2; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=scripts/apt-missing.sh
. "$ROOT/scripts/apt-missing.sh"

# Runtime packages only (the test/dev tools of scripts/bootstrap.sh are not needed).
DEB_PKGS=(python3 python3-venv python3-setuptools python3-bpfcc python3-pyroute2 libbpf1 iproute2
  python3-watchdog python3-tomli-w python3-sdnotify python3-rich python3-prometheus-client)
# RHEL/Rocky: what is not packaged there (sdnotify, tomli-w, ...) pip fetches into the venv.
RPM_PKGS=(python3 python3-pip python3-setuptools python3-bcc python3-pyroute2 libbpf iproute)

systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; }

install_packages() {
  if [ -n "$DESTDIR" ] || [ "${XDPLB_INSTALL_DEPS:-1}" = 0 ]; then return; fi
  if command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
    apt_install_missing "${DEB_PKGS[@]}"
  elif command -v rpm >/dev/null && command -v dnf >/dev/null; then
    rpm -q "${RPM_PKGS[@]}" >/dev/null 2>&1 || dnf install -y -q "${RPM_PKGS[@]}"
  else
    log "WARNING: unknown distribution: install python3, bcc's python3 bindings and libbpf yourself"
  fi
}

# BCC compiles against kernel headers. Without the running kernel's, fall back
# to the distro's generic headers merged into $KHDR_DIR, which xdplbd finds on
# its own (docs/kernel-headers.md); scripts/bootstrap.sh does the same.
kernel_headers() {
  if [ -n "$DESTDIR" ] || [ "${XDPLB_INSTALL_DEPS:-1}" = 0 ]; then return; fi
  local krel build common arch
  krel="$(uname -r)"
  if [ -d "/lib/modules/$krel/build/include" ] || [ -e /sys/kernel/kheaders.tar.xz ] \
      || [ -f "$KHDR_DIR/.complete" ]; then
    return
  fi
  if command -v apt-get >/dev/null; then
    arch="$(dpkg --print-architecture)"
    if apt-cache show "linux-headers-$krel" >/dev/null 2>&1; then
      apt-get install -y -q "linux-headers-$krel" >/dev/null || true
    else
      apt-get install -y -q --no-install-recommends "linux-headers-$arch" >/dev/null || true
    fi
  fi
  [ -d "/lib/modules/$krel/build/include" ] && return
  build="$(ls -d /usr/src/linux-headers-*-"${arch:-amd64}" 2>/dev/null | sort -V | tail -1 || true)"
  [ -n "$build" ] || build="$(ls -d /usr/src/kernels/* 2>/dev/null | sort -V | tail -1 || true)"
  if [ -z "$build" ]; then
    log "WARNING: no kernel headers for $krel: install linux-headers-$krel before starting xdplb"
    return
  fi
  common="${build%-*}-common"
  log "WARNING: no headers for running kernel $krel; using $(basename "$build") via $KHDR_DIR"
  rm -rf "$KHDR_DIR"
  mkdir -p "$KHDR_DIR"
  if [ -d "$common" ]; then cp -rs "$common/." "$KHDR_DIR/"; fi
  cp -rsf "$build/." "$KHDR_DIR/"
  touch "$KHDR_DIR/.complete"
}

# sha256 over what ends up in the venv: skip pip when nothing changed.
source_digest() {
  (cd "$ROOT" && cat pyproject.toml README.md xdplbd/*.py xdplbd/py.typed 2>/dev/null) \
    | sha256sum | cut -d' ' -f1
}

install_venv() {
  local venv="$DESTDIR$VENVDIR" digest stamp build
  [ -x "$PY" ] || die "$PY missing (xdplbd runs on the distro python3, which has bcc)"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    log "creating venv $VENVDIR (system site packages, for the distro's bcc)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$PY" -m venv --system-site-packages "$venv"
  fi
  digest="$(source_digest)"
  stamp="$venv/.xdplb-source-digest"
  if [ "$(cat "$stamp" 2>/dev/null || true)" = "$digest" ] && [ -x "$venv/bin/xdplbd" ]; then
    return
  fi
  log "installing the xdplbd package into $VENVDIR"
  CHANGED=1
  # Build from a copy, so the checkout gets no build/ or egg-info. No build
  # isolation: setuptools comes from the distro, and nothing is downloaded when
  # the distro packages already satisfy the dependencies.
  build="$(mktemp -d)"
  CLEANUP+=("$build")
  cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/xdplbd" "$build/"
  rm -rf "$build/xdplbd/__pycache__"
  # shellcheck disable=SC2086
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-build-isolation \
    --no-warn-script-location ${PIP_ARGS:-} "$build" >&2
  if [ -n "$DESTDIR" ]; then
    # Scripts of a venv built under DESTDIR name it in their #! line.
    grep -lsI -- "$venv" "$venv"/bin/* | xargs -r sed -i "s#$venv#$VENVDIR#g"
    sed -i "s#$venv#$VENVDIR#g" "$venv/pyvenv.cfg"
  fi
  "$venv/bin/python" -c 'import bcc' 2>/dev/null \
    || log "WARNING: the venv cannot import bcc: install the distro's python3-bpfcc (Debian/Ubuntu) or python3-bcc (RHEL); never the unrelated PyPI 'bcc'"
  echo "$digest" > "$stamp"
}

# install -m MODE SRC DEST, but only when DEST differs (keeps mtimes on a re-run).
put() {
  local mode="$1" src="$2" dest="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    chmod "$mode" "$dest"
    return
  fi
  install -D -m "$mode" "$src" "$dest"
  CHANGED=1
}

link() {
  local target="$1" name="$2"
  mkdir -p "$(dirname "$name")"
  if [ -e "$name" ] && [ ! -L "$name" ]; then
    die "$name exists and is not a symlink; not replacing it"
  fi
  [ "$(readlink "$name" 2>/dev/null || true)" = "$target" ] && return
  ln -sfn "$target" "$name"
  CHANGED=1
}

render_unit() {
  # The shipped unit names /usr/local and /etc: rewrite for other locations.
  sed -e "s#/usr/local/#$PREFIX/#g" -e "s#/etc/xdplb/#$CONFDIR/#g" "$ROOT/systemd/$UNIT"
}

do_install() {
  [ -n "$DESTDIR" ] || [ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo make install)"
  install_packages
  kernel_headers
  install_venv

  put 0644 "$ROOT/bpf/xdplb.c" "$DESTDIR$DATADIR/bpf/xdplb.c"
  link "$VENVDIR/bin/xdplbd" "$DESTDIR$SBINDIR/xdplbd"
  link "$VENVDIR/bin/xdplb" "$DESTDIR$BINDIR/xdplb"

  local tmp
  tmp="$(mktemp)"
  CLEANUP+=("$tmp")
  render_unit > "$tmp"
  put 0644 "$tmp" "$DESTDIR$UNITDIR/$UNIT"

  put 0644 "$ROOT/man/xdplbd.8" "$DESTDIR$MANDIR/man8/xdplbd.8"
  put 0644 "$ROOT/man/xdplb.8" "$DESTDIR$MANDIR/man8/xdplb.8"
  put 0644 "$ROOT/man/lb_conf.json.5" "$DESTDIR$MANDIR/man5/lb_conf.json.5"
  put 0644 "$ROOT/completion/xdplb.bash" "$DESTDIR$COMPDIR/xdplb"

  # The config is the operator's: created once, never overwritten. The BIRD
  # and keepalived examples (docs/scale-out.md) are ours: always current.
  install -d -m 0755 "$DESTDIR$CONFDIR"
  put 0644 "$ROOT/etc/xdplb/bird.conf.example" "$DESTDIR$CONFDIR/bird.conf.example"
  put 0644 "$ROOT/etc/xdplb/keepalived.conf.example" "$DESTDIR$CONFDIR/keepalived.conf.example"
  if [ -e "$DESTDIR$CONFDIR/lb_conf.json" ]; then
    log "keeping existing $CONFDIR/lb_conf.json"
  else
    install -m 0644 "$ROOT/etc/xdplb/lb_conf.json" "$DESTDIR$CONFDIR/lb_conf.json"
    if [ "$(id -u)" -eq 0 ]; then
      chown root:root "$DESTDIR$CONFDIR/lb_conf.json" "$DESTDIR$CONFDIR"
    fi
    log "installed an example $CONFDIR/lb_conf.json: edit it, then: systemctl enable --now xdplb"
  fi

  if systemd_running; then
    systemctl daemon-reload
    if [ "$CHANGED" = 1 ] && systemctl -q is-active "$UNIT" 2>/dev/null; then
      log "xdplb is running the previous version: systemctl restart xdplb (forwarding continues)"
    fi
  fi
  log "done"
}

do_uninstall() {
  [ -n "$DESTDIR" ] || [ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo make uninstall)"
  if systemd_running && [ -f "$UNITDIR/$UNIT" ]; then
    # Stopping leaves the data plane attached (see docs/systemd.md).
    systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
  fi
  rm -f "$DESTDIR$UNITDIR/$UNIT"
  if systemd_running; then systemctl daemon-reload; fi
  local l
  for l in "$DESTDIR$SBINDIR/xdplbd" "$DESTDIR$BINDIR/xdplb"; do
    if [ -L "$l" ]; then rm -f "$l"; fi
  done
  rm -rf "$DESTDIR$VENVDIR" "$DESTDIR$DATADIR"
  rm -f "$DESTDIR$MANDIR/man8/xdplbd.8" "$DESTDIR$MANDIR/man8/xdplb.8" \
    "$DESTDIR$MANDIR/man5/lb_conf.json.5" "$DESTDIR$COMPDIR/xdplb" \
    "$DESTDIR$CONFDIR/bird.conf.example" "$DESTDIR$CONFDIR/keepalived.conf.example"
  if [ -z "$DESTDIR" ]; then rm -rf /run/xdplb; fi
  if [ -e "$DESTDIR$CONFDIR/lb_conf.json" ]; then
    log "kept $CONFDIR/lb_conf.json (remove it yourself if you want it gone)"
  fi
  if [ -z "$DESTDIR" ] && [ -d /sys/fs/bpf/xdplb ]; then
    log "NOTE: the data plane is still attached and forwarding (pins in /sys/fs/bpf/xdplb)."
    log "      To remove it: ip link set dev IFACE xdp off && rm -r /sys/fs/bpf/xdplb"
    log "      (next time, run \`xdplb detach\` before \`make uninstall\`)"
  fi
  log "done"
}

case "${1:-}" in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) die "usage: $0 install|uninstall" ;;
esac
