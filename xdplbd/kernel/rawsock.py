"""Raw frames in and out of the LB's interface (AF_PACKET), for the DSR-aware checks.

Needs CAP_NET_RAW. Everything here acts in the calling thread's network
namespace; interface facts are read over ioctl/netlink there, never from /sys.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import socket
import struct
import subprocess
from typing import Collection, List, Optional

from xdplbd.core.model import IPAddress

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23  # Linux >= 4.20: our own frames are not read back
SO_ATTACH_FILTER = 26


def attach_filter(sock: socket.socket, prog: bytes) -> None:
    """SO_ATTACH_FILTER with a classic BPF program (struct sock_fprog {u16 len; ptr})."""
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies it


def sender(ifname: str) -> socket.socket:
    """A non-blocking socket that sends whole frames out of ifname and receives nothing."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def receiver(ifname: str, prog: Optional[bytes], protocol: int = ETH_P_ALL,
             rcvbuf: int = 4 << 20) -> socket.socket:
    """A non-blocking socket reading frames that arrive on ifname and pass `prog`.

    Created with protocol 0 (no traffic yet), filtered, then bound: no unfiltered
    frame is ever queued."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        if prog is not None:
            attach_filter(s, prog)
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((ifname, protocol))  # Python converts to network order itself
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def _family_addresses(ifname: str, version: int) -> List[IPAddress]:
    """Global addresses on ifname, as `ip` reports them (netlink)."""
    fam = "-4" if version == 4 else "-6"
    try:
        out = subprocess.run(["ip", "-j", fam, "addr", "show", "dev", ifname, "scope", "global"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        addrs = []
        for link in json.loads(out or "[]"):
            for a in link.get("addr_info", []):
                if a.get("local") and not a.get("deprecated") and not a.get("tentative"):
                    addrs.append(ipaddress.ip_address(a["local"]))
        return addrs
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return []


def source_for(dest: IPAddress, ifname: str, avoid: Collection[IPAddress]) -> Optional[IPAddress]:
    """The LB's own address to send from when talking to dest: the kernel's choice,
    unless that is a VIP (a /128 VIP can win IPv6 source selection; a real holding the
    VIP on lo would then answer itself). Then another address of ifname."""
    fam = socket.AF_INET if dest.version == 4 else socket.AF_INET6
    with contextlib.suppress(OSError), socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((str(dest), 9))
        src = ipaddress.ip_address(s.getsockname()[0].split("%")[0])
        if src not in avoid:
            return src
    for a in _family_addresses(ifname, dest.version):
        if a not in avoid:
            return a
    return None


def kernel_neighbour(ifname: str, ip: IPAddress) -> Optional[str]:
    """The MAC the kernel's neighbour table holds for ip on ifname (None: no usable entry)."""
    try:
        out = subprocess.run(["ip", "-j", "neigh", "show", "to", str(ip), "dev", ifname],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        for n in json.loads(out or "[]"):
            if n.get("lladdr") and not set(n.get("state", [])) & {"FAILED", "INCOMPLETE"}:
                return str(n["lladdr"]).lower()
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    return None
