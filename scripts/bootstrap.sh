#!/usr/bin/env bash
# One set-up path for everything (make demo/test/bench/lint/install).
# Installs distro packages, copes with a kernel that has no matching headers,
# mounts bpffs, and builds .venv from the system python3 (which sees bcc).
# Idempotent: a second run only checks stamps and returns in well under a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP_DIR="$VENV/.stamps"
KHDR_DIR="${XDPLB_KHEADERS_DIR:-/var/lib/xdplb/kernel-headers}"

log() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (try: sudo make ...)"

# --- distro packages ------------------------------------------------------
DEB_PKGS=(python3 python3-venv python3-bpfcc python3-pyroute2 libbpf1 iproute2 ethtool
  nginx-light wrk socat curl tcpdump tmux debootstrap systemd-container
  groff-base man-db bpftool kmod zstd make bird2 keepalived)
RPM_PKGS=(python3 python3-bcc python3-pyroute2 libbpf iproute ethtool nginx socat curl
  tcpdump tmux systemd-container groff-base man-db bpftool kernel-devel bird keepalived)

# shellcheck source=scripts/apt-missing.sh
. "$ROOT/scripts/apt-missing.sh"

install_deb() { apt_install_missing "${DEB_PKGS[@]}"; }

install_rpm() {
  # RHEL/Rocky 9+: EPEL provides wrk; everything else is in BaseOS/AppStream.
  dnf install -y -q "${RPM_PKGS[@]}" || die "dnf install failed"
}

if command -v apt-get >/dev/null; then install_deb
elif command -v dnf >/dev/null; then install_rpm
else die "unsupported distribution: need apt-get (Debian/Ubuntu) or dnf (RHEL/Rocky)"; fi

# --- kernel headers (BCC needs them) --------------------------------------
# Prefer the running kernel's own headers. Without them, fall back to the
# distro's generic headers, merged into a project-private tree that BCC is
# pointed at through BCC_KERNEL_SOURCE (see docs/kernel-headers.md).
KREL="$(uname -r)"
if [ -d "/lib/modules/$KREL/build/include" ] || [ -e /sys/kernel/kheaders.tar.xz ]; then
  : # the kernel's own headers (or in-kernel kheaders) are there
elif [ -f "$KHDR_DIR/.complete" ]; then
  :
else
  if command -v apt-get >/dev/null; then
    ARCH="$(dpkg --print-architecture)"
    if ! dpkg-query -W -f='${Status}' "linux-headers-$KREL" 2>/dev/null | grep -q 'ok installed'; then
      if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; then
        apt-get install -y -q "linux-headers-$KREL" >/dev/null
      else
        apt-get install -y -q --no-install-recommends "linux-headers-$ARCH" >/dev/null
      fi
    fi
  fi
  if [ -d "/lib/modules/$KREL/build/include" ]; then
    :
  else
    # Newest generic header set: <ver>-<arch> (build) and <ver>-common (source).
    BUILD="$(ls -d /usr/src/linux-headers-*-"$(dpkg --print-architecture 2>/dev/null || echo amd64)" 2>/dev/null | sort -V | tail -1 || true)"
    [ -n "$BUILD" ] || BUILD="$(ls -d /usr/src/kernels/* 2>/dev/null | sort -V | tail -1 || true)"
    [ -n "$BUILD" ] || die "no kernel headers found for $KREL and none could be installed"
    COMMON="${BUILD%-*}-common"
    log "WARNING: no headers for running kernel $KREL; using $(basename "$BUILD") via $KHDR_DIR (BCC_KERNEL_SOURCE)"
    rm -rf "$KHDR_DIR"; mkdir -p "$KHDR_DIR"
    # Merge: common sources first, then the arch build tree on top (symlinks only).
    [ -d "$COMMON" ] && cp -rs "$COMMON/." "$KHDR_DIR/"
    cp -rsf "$BUILD/." "$KHDR_DIR/"
    touch "$KHDR_DIR/.complete"
  fi
fi

# --- bpffs ------------------------------------------------------------------
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

# --- venv -------------------------------------------------------------------
PY=/usr/bin/python3
[ -x "$PY" ] || die "/usr/bin/python3 missing"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV (system site packages, for bcc)"
  "$PY" -m venv --system-site-packages "$VENV"
fi
mkdir -p "$STAMP_DIR"
DIGEST="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP_DIR/pip" 2>/dev/null || true)" != "$DIGEST" ]; then
  log "installing Python packages into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test,dev]"
  echo "$DIGEST" > "$STAMP_DIR/pip"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || die "python cannot import bcc (python3-bpfcc); never pip-install the unrelated PyPI 'bcc'"
