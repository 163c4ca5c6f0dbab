#!/usr/bin/env bash
# Build (once) a Debian rootfs that boots under `systemd-nspawn --boot`, for
# the systemd tests in tests/systemd. Prints the tarball's path on stdout.
#
#   scripts/make-systemd-rootfs.sh [OUT_TARBALL]
#
# The tarball is cached under /var/cache/xdplb-test/, named after a hash of
# the recipe below (suite, package list, customisation revision), so a second
# run returns at once. The build is atomic: debootstrap into a temporary
# directory, pack to a temporary file, rename at the end.
#
# Packages come from the machine's own configured Debian mirror (read from
# /etc/apt/sources.list{,.d/*.list,.d/*.sources}); override with
# XDPLB_DEBIAN_MIRROR=URL.
#
# What the image holds, and why:
#  - systemd, systemd-sysv, dbus: a real init to test the Type=notify unit;
#  - procps: /bin/kill, for ExecReload=/bin/kill -HUP $MAINPID;
#  - python3-bpfcc, libbpf1: what xdplbd uses for BPF (bcc compile, libbpf ctypes);
#  - the daemon's Python deps, all in bookworm as Debian packages:
#    python3-watchdog 2.2.1, python3-tomli-w 1.0.0, python3-sdnotify 0.3.1,
#    python3-rich 13.3.1, python3-prometheus-client 0.16.0, python3-pyroute2 0.7.2;
#  - python3-pip, python3-venv: to install an xdplbd wheel built on the host
#    (`pip install --no-deps --break-system-packages`, or a venv with
#    --system-site-packages, as an operator would);
#  - iproute2, ethtool, bpftool: veth/dummy interfaces and XDP inspection;
#  - make, man-db: the systemd tests run the real `make install` inside, and
#    `systemd-analyze verify` checks the unit's Documentation=man: pages with man.
# Kernel headers are NOT in the image: the harness bind-mounts the host's
# (/var/lib/xdplb/kernel-headers, BCC_KERNEL_SOURCE) read-only at run time.
set -euo pipefail

SUITE=bookworm
PACKAGES=(
  systemd systemd-sysv dbus procps
  python3 python3-bpfcc libbpf1
  python3-watchdog python3-tomli-w python3-sdnotify python3-rich python3-prometheus-client
  python3-pyroute2
  python3-pip python3-venv
  iproute2 ethtool bpftool
  make man-db
)
# Units that only add noise or time in a throw-away test container.
MASK_UNITS=(
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer
  e2scrub_all.timer e2scrub_reap.service fstrim.timer
  console-getty.service getty@.service systemd-firstboot.service
)
# Bump when the customisation below changes (it changes the cache key).
RECIPE_REV=1

CACHE_DIR="${XDPLB_TEST_CACHE:-/var/cache/xdplb-test}"

log() { printf 'make-systemd-rootfs: %s\n' "$*" >&2; }
die() { printf 'make-systemd-rootfs: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

KEY="$(printf '%s\n' "suite=$SUITE" "rev=$RECIPE_REV" "mask=${MASK_UNITS[*]}" "${PACKAGES[@]}" \
  | sha256sum | cut -c1-16)"

if command -v zstd >/dev/null; then EXT=tar.zst; COMPRESS=(zstd -q -T0 -3)
else EXT=tar.gz; COMPRESS=(gzip -1); fi

OUT="${1:-$CACHE_DIR/rootfs-$SUITE-$KEY.$EXT}"
case "$OUT" in
  *.tar.zst) command -v zstd >/dev/null || die "zstd needed for $OUT"; COMPRESS=(zstd -q -T0 -3) ;;
  *.tar.gz|*.tgz) COMPRESS=(gzip -1) ;;
  *) die "OUT_TARBALL must end in .tar.zst or .tar.gz: $OUT" ;;
esac

if [ -s "$OUT" ]; then
  printf '%s\n' "$OUT"
  exit 0
fi

command -v debootstrap >/dev/null || die "debootstrap missing (scripts/bootstrap.sh installs it)"

# --- mirror: the machine's configured Debian mirror -----------------------
find_mirror() {
  python3 - "$SUITE" <<'PY'
import glob, sys
suite = sys.argv[1]
entries = []  # (uri, suites)
def one_line(path):
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        return
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        parts = line.split()[1:]
        if parts and parts[0].startswith("["):
            while parts and not parts[0].endswith("]"):
                parts.pop(0)
            parts = parts[1:]
        if len(parts) >= 2:
            entries.append((parts[0], [parts[1]]))
def deb822(path):
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return
    for stanza in text.split("\n\n"):
        fields = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:
                fields[key] += " " + raw.strip()
                continue
            if ":" in raw:
                key, val = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = val.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        for uri in fields.get("uris", "").split():
            entries.append((uri, fields.get("suites", "").split()))
one_line("/etc/apt/sources.list")
for p in sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    one_line(p)
for p in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    deb822(p)
def debianish(uri, suites):
    return "security" not in uri and not any(s.endswith("-security") for s in suites) \
        and uri.rstrip("/").endswith("/debian")
for uri, suites in entries:           # 1st choice: a mirror that lists our suite
    if suite in suites and debianish(uri, suites):
        print(uri); sys.exit(0)
for uri, suites in entries:           # 2nd: any Debian mirror (other suite, same archive)
    if debianish(uri, suites):
        print(uri); sys.exit(0)
sys.exit(1)
PY
}
MIRROR="${XDPLB_DEBIAN_MIRROR:-$(find_mirror || true)}"
[ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list*; set XDPLB_DEBIAN_MIRROR"

mkdir -p "$CACHE_DIR" "$(dirname "$OUT")"
# One build at a time (parallel test sessions): wait, then look again.
exec 9>"$CACHE_DIR/.build.lock"
flock 9
if [ -s "$OUT" ]; then
  printf '%s\n' "$OUT"
  exit 0
fi
WORK="$(mktemp -d "$CACHE_DIR/.build-XXXXXX")"
TMP_OUT=""
cleanup() {
  [ -n "$TMP_OUT" ] && rm -f "$TMP_OUT"
  # debootstrap may leave proc/sys/dev mounts behind when it fails
  for m in $(awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
ROOT="$WORK/rootfs"

KEYRING_ARGS=()
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] \
  && KEYRING_ARGS=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)

log "debootstrap $SUITE from $MIRROR into $ROOT (packages: ${PACKAGES[*]})"
T0=$(date +%s)
INCLUDE="$(IFS=,; echo "${PACKAGES[*]}")"
if ! debootstrap --variant=minbase --components=main "${KEYRING_ARGS[@]}" \
    --include="$INCLUDE" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 30 "$WORK/debootstrap.log" >&2
  [ -f "$ROOT/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOT/debootstrap/debootstrap.log" >&2
  die "debootstrap failed"
fi

# --- customisation --------------------------------------------------------
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" > "$ROOT/etc/apt/sources.list"
echo xdplb-test > "$ROOT/etc/hostname"
for u in "${MASK_UNITS[@]}"; do ln -sf /dev/null "$ROOT/etc/systemd/system/$u"; done
# Boot quietly but keep the console useful when a boot fails.
mkdir -p "$ROOT/etc/systemd/system.conf.d"
cat > "$ROOT/etc/systemd/system.conf.d/10-xdplb-test.conf" <<'EOF'
[Manager]
ShowStatus=error
DefaultTimeoutStopSec=10s
EOF
# Make the journal volatile: the container's /var is thrown away anyway.
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' > "$ROOT/etc/systemd/journald.conf.d/10-xdplb-test.conf"
# Sanity: what the tests rely on must be there.
for f in /sbin/init /bin/kill /usr/bin/python3 /usr/sbin/ip /usr/sbin/ethtool; do
  [ -e "$ROOT$f" ] || [ -L "$ROOT$f" ] || die "rootfs lacks $f"
done
chroot "$ROOT" python3 -c 'import bcc, watchdog, tomli_w, sdnotify, rich, prometheus_client' \
  || die "rootfs python3 cannot import the daemon's dependencies"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log \
  "$ROOT/debootstrap" "$ROOT"/tmp/* "$ROOT"/var/tmp/*
log "debootstrap + customisation took $(( $(date +%s) - T0 )) s; rootfs $(du -sh "$ROOT" | cut -f1)"

# --- pack atomically ------------------------------------------------------
TMP_OUT="$(mktemp "$(dirname "$OUT")/.rootfs-XXXXXX.partial")"
tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$ROOT" -cf - . \
  | "${COMPRESS[@]}" > "$TMP_OUT"
chmod 0644 "$TMP_OUT"
mv -f "$TMP_OUT" "$OUT"
TMP_OUT=""
log "wrote $OUT ($(du -h "$OUT" | cut -f1)) in $(( $(date +%s) - T0 )) s"
printf '%s\n' "$OUT"
