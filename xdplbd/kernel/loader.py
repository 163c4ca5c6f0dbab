"""Compile bpf/xdplb.c with BCC, pin it beside its source digest, and check pins.

A program whose digest (source + compile flags) is already pinned is reused
with one bpf_obj_get: no compile, ~10 ms instead of ~0.4 s and 190 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from xdplbd.core.model import Tunables
from xdplbd.core.schema import RETIRED_PINS, U32, MapSpec, map_specs
from xdplbd.kernel import libbpf

log = logging.getLogger("xdplbd")

PROG_PREFIX = "prog_"
PRIVATE_HEADERS = "/var/lib/xdplb/kernel-headers"
FUNC_NAME = "xdplb_main"


class LoadError(RuntimeError):
    """The data plane cannot be loaded; the message says why and what to do."""


def source_path() -> Path:
    """bpf/xdplb.c from a checkout, or the copy `make install` puts in /usr/share."""
    env = os.environ.get("XDPLB_BPF_SOURCE")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(__file__).resolve().parents[2] / "bpf" / "xdplb.c",  # a checkout: xdplbd/kernel/
        Path("/usr/share/xdplb/bpf/xdplb.c"),
        Path("/usr/local/share/xdplb/bpf/xdplb.c"),
    ]
    for p in candidates:
        if p.is_file():
            return p
    raise LoadError("cannot find the data plane source xdplb.c (set XDPLB_BPF_SOURCE)")


def cflags(t: Tunables, pin_dir: str) -> List[str]:
    return [
        f'-DPIN_DIR="{pin_dir}"',
        f"-DMAX_VIPS={t.max_vips}",
        f"-DMAX_REALS={t.max_reals}",
        f"-DCT_SIZE={t.conntrack_size}",
        f"-DRING_SIZE={t.ring_size}",
    ]


def source_digest(source: bytes, flags: List[str]) -> str:
    h = hashlib.sha256(source)
    for f in flags:
        h.update(b"\0" + f.encode())
    return h.hexdigest()[:16]


_headers_checked = False


def ensure_kernel_headers() -> None:
    """Point BCC at the fallback header tree when the running kernel has none."""
    global _headers_checked
    if _headers_checked or os.environ.get("BCC_KERNEL_SOURCE"):
        return
    _headers_checked = True
    release = os.uname().release
    if os.path.isdir(f"/lib/modules/{release}/build/include") or os.path.exists(
        "/sys/kernel/kheaders.tar.xz"
    ):
        return
    if os.path.isfile(os.path.join(PRIVATE_HEADERS, ".complete")):
        log.warning(
            "no kernel headers for %s; compiling against the distro's generic headers in %s",
            release, PRIVATE_HEADERS,
        )
        os.environ["BCC_KERNEL_SOURCE"] = PRIVATE_HEADERS
        return
    raise LoadError(
        f"no kernel headers for {release}: install linux-headers-{release} "
        "(or run scripts/bootstrap.sh, which sets up a fallback)"
    )


def check_pins(pin_dir: str, t: Tunables) -> None:
    """Refuse pinned maps whose shape differs from what this build declares."""
    problems = []
    for spec in map_specs(t):
        path = os.path.join(pin_dir, spec.name)
        if not os.path.exists(path):
            continue
        fd = libbpf.obj_get(path)
        try:
            info = libbpf.map_info(fd)
        finally:
            os.close(fd)
        diff = _describe_mismatch(spec, info)
        if diff:
            problems.append(f"pinned map {path}: {diff}")
    if problems:
        raise LoadError(
            "; ".join(problems)
            + ". The pins were made by a different build or tunables; restore the old "
            "tunables, or run `xdplb detach` to remove them (this drops traffic)"
        )


def _describe_mismatch(spec: MapSpec, info: libbpf.MapInfo) -> Optional[str]:
    fields = [
        ("type", spec.type, info.type_name),
        ("key size", spec.key_size, info.key_size),
        ("value size", spec.value_size, info.value_size),
        ("max entries", spec.max_entries, info.max_entries),
    ]
    bad = [f"{n} is {got}, expected {want}" for n, want, got in fields if want != got]
    return ", ".join(bad) or None


@dataclass
class Program:
    fd: int
    digest: str
    pin_path: str
    compiled: bool  # False when an identical pinned program was reused
    info: libbpf.ProgInfo


def pinned_programs(pin_dir: str) -> List[str]:
    try:
        return sorted(n for n in os.listdir(pin_dir) if n.startswith(PROG_PREFIX))
    except FileNotFoundError:
        return []


def load(pin_dir: str, t: Tunables) -> Program:
    """Open the pinned program for this source, or compile and pin it."""
    os.makedirs(pin_dir, mode=0o700, exist_ok=True)
    check_pins(pin_dir, t)
    src_path = source_path()
    source = src_path.read_bytes()
    flags = cflags(t, pin_dir)
    digest = source_digest(source, flags)
    pin_path = os.path.join(pin_dir, PROG_PREFIX + digest)
    if os.path.exists(pin_path):
        fd = libbpf.obj_get(pin_path)
        return Program(fd, digest, pin_path, False, libbpf.prog_info(fd))

    # Compile in a process of its own: BCC and LLVM leave ~150 MB resident in whoever
    # compiles (malloc arenas and touched library pages are not given back), which the
    # daemon would then carry for life (it was most of its RSS; bench/health.py).
    _compile_in_child(pin_dir, t)
    if not os.path.exists(pin_path):
        raise LoadError(f"compiling {src_path} pinned no {pin_path}")
    fd = libbpf.obj_get(pin_path)
    return Program(fd, digest, pin_path, True, libbpf.prog_info(fd))


def _compile_in_child(pin_dir: str, t: Tunables) -> None:
    argv = [sys.executable, "-m", "xdplbd.kernel.loader", "--pin-dir", pin_dir,
            "--tunables", json.dumps(dataclasses.asdict(t))]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       check=False)
    for line in r.stdout.splitlines():
        log.info("%s", line)
    if r.returncode != 0:
        err = r.stderr.strip()
        raise LoadError(err.splitlines()[-1] if err else
                        f"the compiler process exited with status {r.returncode}")


def compile_and_pin(pin_dir: str, t: Tunables) -> None:
    """Compile the source with BCC, sync vip_index and pin the program (the compiler
    process: `python -m xdplbd.kernel.loader`)."""
    src_path = source_path()
    source = src_path.read_bytes()
    flags = cflags(t, pin_dir)
    digest = source_digest(source, flags)
    pin_path = os.path.join(pin_dir, PROG_PREFIX + digest)
    ensure_kernel_headers()
    from bcc import BPF  # imported lazily: ~70 MB, only needed to compile

    try:
        bpf = BPF(text=source, cflags=flags)
        fn = bpf.load_func(FUNC_NAME.encode(), BPF.XDP)
    except Exception as e:  # bcc raises bare Exception on compile/verify errors
        raise LoadError(f"cannot compile/load {src_path}: {e}") from e
    try:
        _sync_vip_index(pin_dir, t)
        tmp = os.path.join(pin_dir, "tmp_" + PROG_PREFIX + digest)  # bpffs: no dots
        if os.path.exists(tmp):
            os.unlink(tmp)
        libbpf.obj_pin(fn.fd, tmp)
        os.rename(tmp, pin_path)
    finally:
        bpf.cleanup()


def _sync_vip_index(pin_dir: str, t: Tunables) -> None:
    """Make vip_index agree with the pinned VIPs before the program sees a packet.

    An index created next to pins from an older build starts empty, and the
    plan writes nothing for VIPs that are already live."""
    from xdplbd.kernel.dataplane import DataPlane

    with DataPlane(pin_dir, t) as dp:
        dp.sync_vip_index()


def remove_pins(pin_dir: str) -> bool:
    """Remove a bpffs pin directory and everything in it; True if there was one.

    Pinned maps and programs live on while something holds them (an attached
    program keeps its maps), so this alone never stops forwarding.
    """
    if not os.path.isdir(pin_dir):
        return False
    for root, dirs, files in os.walk(pin_dir, topdown=False):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(pin_dir)
    return True


def remove_stale_pins(pin_dir: str, keep: str) -> None:
    """Once the new program is attached: unpin programs of older digests, and
    maps that older builds pinned and this one no longer uses."""
    for name in pinned_programs(pin_dir):
        if name != os.path.basename(keep):
            os.unlink(os.path.join(pin_dir, name))
    _carry_paths(pin_dir)
    for name in RETIRED_PINS:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(pin_dir, name))


def _carry_paths(pin_dir: str) -> None:
    """Add a retired `paths` pin's counts into `path_stats`, which replaced it.

    Called once the new program is attached, so the old one has stopped
    counting: the totals go on (tx minus the other paths stays the hits), and
    only a packet counted on a CPU between this read and write is lost."""
    old_path, new_path = os.path.join(pin_dir, "paths"), os.path.join(pin_dir, "path_stats")
    if not (os.path.exists(old_path) and os.path.exists(new_path)):
        return
    with libbpf.Map.open_pinned(old_path) as old, libbpf.Map.open_pinned(new_path) as new:
        for i in range(min(old.info.max_entries, new.info.max_entries)):
            key = U32.pack(i)
            a, b = old.lookup(key), new.lookup(key)
            if not a or not b or not any(a):
                continue
            old_words, new_words = array("Q", a), array("Q", b)  # per CPU: packets, bytes
            new.update(key, array("Q", (x + y for x, y in zip(old_words, new_words))).tobytes())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The compiler process: compile and pin, then exit (and give the memory back)."""
    ap = argparse.ArgumentParser(prog="xdplbd-compile")
    ap.add_argument("--pin-dir", required=True)
    ap.add_argument("--tunables", required=True, help="Tunables as JSON")
    args = ap.parse_args(argv)
    try:
        compile_and_pin(args.pin_dir, Tunables(**json.loads(args.tunables)))
    except (LoadError, OSError, libbpf.BpfError) as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
