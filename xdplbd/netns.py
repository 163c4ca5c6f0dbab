"""Enter a named network namespace for the calling thread, and come back.

`ip netns exec` remounts /sys, which hides bpffs; setns() does not, so BPF
pins stay reachable while ifindexes and sockets are the namespace's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    # os.setns only exists from Python 3.12; the distro pythons we support are older.
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body in netns `name` (this thread only); always switch back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(netns_path(name), os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
