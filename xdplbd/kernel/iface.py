"""Interface index and MAC in the *current* network namespace.

Read with ioctl on a socket of this netns; /sys/class/net may still show the
host's interfaces after nsenter, so it is never used.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFHWADDR = 0x8927
IFNAMSIZ = 16


class InterfaceError(RuntimeError):
    pass


def ifindex(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError as e:
        raise InterfaceError(f"interface {name!r} not found in this network namespace") from e


def mac_address(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = struct.pack("256s", name.encode()[: IFNAMSIZ - 1])
            raw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
        except OSError as e:
            raise InterfaceError(f"cannot read the MAC of {name!r}: {e.strerror}") from e
    return ":".join(f"{b:02x}" for b in raw[18:24])
