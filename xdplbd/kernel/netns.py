"""Enter a named network namespace for the calling thread, and come back.

Why setns()/nsenter and not `ip netns exec`: `ip netns exec` also unshares the
mount namespace and remounts /sys for the target netns, which hides bpffs
(/sys/fs/bpf), so nothing run that way can see or create pins. `nsenter --net=`
and setns(CLONE_NEWNET) switch only the network namespace. /sys/class/net then
still shows the host's interfaces: read MACs and ifindexes over netlink or
ioctl (iface.py), never from /sys.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Iterator, List, Optional, Sequence

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc: Optional[ctypes.CDLL] = None


def _setns(fd: int) -> None:
    if sys.version_info >= (3, 12):
        os.setns(fd, CLONE_NEWNET)
        return
    # os.setns only exists from Python 3.12; the distro pythons we support are older.
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def nsenter_cmd(name: str, argv: Sequence[str]) -> List[str]:
    """argv run in netns `name` only (no /sys remount, so bpffs stays visible)."""
    return ["nsenter", f"--net={netns_path(name)}", *argv]


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the calling *thread* in netns `name`; restore it after.

    setns() acts on the calling thread only, so other threads are unaffected.
    Sockets (libbpf's netlink socket too) created inside belong to `name` for life.
    """
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(orig)
    finally:
        os.close(orig)
