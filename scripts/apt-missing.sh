# Sourced by scripts/bootstrap.sh and scripts/install.sh (each defines log()).
# apt_install_missing PKG...: install those of the Debian/Ubuntu packages that
# are not installed yet, in one apt-get run; nothing at all if none are missing,
# so a second run is fast and needs no network.
apt_install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  log "installing distro packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
