"""The raw frames the DSR-aware checks send and read, and the socket filter for them.

Pure: bytes in, bytes out. Frames sent on an AF_PACKET socket get no checksum
offload, so every checksum is computed here. The probe is an Ethernet frame
exactly as the data plane would forward a client's SYN: destination the real's
MAC, source the LB's MAC; in the IP header the LB's own address to the VIP.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from xdplbd.core.model import IPAddress

ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
IPPROTO_TCP, IPPROTO_ICMPV6 = 6, 58
TH_FIN, TH_SYN, TH_RST, TH_ACK = 0x01, 0x02, 0x04, 0x10
BROADCAST = b"\xff" * 6

# SYN options as Linux clients send them (minus timestamps): MSS 1460, NOP, WS 7,
# NOP, NOP, SACK-permitted; 12 bytes keep the header a multiple of 4.
_SYN_OPTS = struct.pack("!BBH", 2, 4, 1460) + bytes((1, 3, 3, 7, 1, 1, 4, 2))


def mac_bytes(mac: str) -> bytes:
    b = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(b) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return b


def mac_str(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) & 1:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _pseudo(src: IPAddress, dst: IPAddress, proto: int, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, proto)


def _ip(src: IPAddress, dst: IPAddress, proto: int, payload: bytes, ident: int = 0,
        hop: int = 64) -> Tuple[int, bytes]:
    """(ethertype, IP header + payload)."""
    if src.version == 4:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, hop, proto,
                        0, src.packed, dst.packed)
        return ETH_P_IP, h[:10] + struct.pack("!H", checksum(h)) + h[12:] + payload
    h = struct.pack("!IHBB16s16s", 0x60000000, len(payload), proto, hop, src.packed, dst.packed)
    return ETH_P_IPV6, h + payload


def tcp_frame(dst_mac: bytes, src_mac: bytes, src: IPAddress, dst: IPAddress, sport: int,
              dport: int, seq: int, ack: int = 0, flags: int = TH_SYN, ident: int = 0) -> bytes:
    """Ethernet + IPv4/IPv6 + TCP (a SYN carries MSS, window scale and SACK options)."""
    opts = _SYN_OPTS if flags & TH_SYN else b""
    hlen = 20 + len(opts)
    window = 64240 if flags & TH_SYN else 0
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (hlen // 4) << 4, flags, window,
                      0, 0) + opts
    csum = checksum(_pseudo(src, dst, IPPROTO_TCP, hlen) + hdr)
    seg = hdr[:16] + struct.pack("!H", csum) + hdr[18:]
    etype, packet = _ip(src, dst, IPPROTO_TCP, seg, ident)
    return dst_mac + src_mac + struct.pack("!H", etype) + packet


@dataclass(frozen=True)
class TcpInfo:
    """The fields of a received TCP frame the prober matches on."""

    src_mac: bytes
    src_ip: bytes  # packed
    dst_ip: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int


def parse_tcp(frame: bytes) -> Optional[TcpInfo]:
    """Ethernet / IPv4|IPv6 / TCP (no VLAN, no IPv6 extension headers); None otherwise."""
    if len(frame) < 54:
        return None
    etype = (frame[12] << 8) | frame[13]
    if etype == ETH_P_IP:
        ihl = (frame[14] & 0x0F) * 4
        if frame[23] != IPPROTO_TCP or ihl < 20:
            return None
        src, dst, t = frame[26:30], frame[30:34], 14 + ihl
    elif etype == ETH_P_IPV6:
        if frame[20] != IPPROTO_TCP:
            return None
        src, dst, t = frame[22:38], frame[38:54], 54
    else:
        return None
    if len(frame) < t + 14:
        return None
    sport, dport, seq, ack = struct.unpack_from("!HHII", frame, t)
    return TcpInfo(frame[6:12], src, dst, sport, dport, seq, ack, frame[t + 13])


# -- ARP and NDP: does a real answer for the VIP? ---------------------------------------


def arp_request(dst_mac: bytes, src_mac: bytes, sender: ipaddress.IPv4Address,
                target: ipaddress.IPv4Address) -> bytes:
    """who-has target tell sender, sent to dst_mac (unicast: only that host sees it)."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, ETH_P_IP, 6, 4, 1, src_mac, sender.packed,
                      b"\0" * 6, target.packed)
    return dst_mac + src_mac + struct.pack("!H", ETH_P_ARP) + arp


def solicited_node(target: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + target.packed[13:])


def neighbour_solicitation(dst_mac: bytes, src_mac: bytes, sender: ipaddress.IPv6Address,
                           target: ipaddress.IPv6Address) -> bytes:
    """NS for target to its solicited-node group, framed to dst_mac (hop limit 255)."""
    dst = solicited_node(target)
    body = struct.pack("!BBHI16s", 135, 0, 0, 0, target.packed) + b"\x01\x01" + src_mac
    csum = checksum(_pseudo(sender, dst, IPPROTO_ICMPV6, len(body)) + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    _etype, packet = _ip(sender, dst, IPPROTO_ICMPV6, body, hop=255)
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + packet


def claims(frame: bytes, target: IPAddress) -> Optional[bytes]:
    """If the frame is an ARP reply or a Neighbor Advertisement for target, the MAC
    that sent it; else None."""
    if len(frame) < 42:
        return None
    etype = (frame[12] << 8) | frame[13]
    if etype == ETH_P_ARP and target.version == 4:
        op = (frame[20] << 8) | frame[21]
        if op == 2 and frame[28:32] == target.packed:
            return frame[6:12]
    elif (etype == ETH_P_IPV6 and target.version == 6 and len(frame) >= 78
          and frame[20] == IPPROTO_ICMPV6 and frame[54] == 136
          and frame[62:78] == target.packed):
        return frame[6:12]
    return None


# -- a classic BPF socket filter, so Python sees only probe replies ---------------------

_LD, _LDX, _ALU, _JMP, _RET = 0x00, 0x01, 0x04, 0x05, 0x06
_H, _B, _ABS, _IND, _MSH = 0x08, 0x10, 0x20, 0x40, 0xA0
_AND, _JEQ, _JGT, _JGE, _JSET = 0x50, 0x10, 0x20, 0x30, 0x40
_Insn = Tuple[int, Union[int, str], Union[int, str], int]


class _Asm:
    def __init__(self) -> None:
        self.insns: List[_Insn] = []
        self.labels: Dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.insns)

    def op(self, code: int, k: int = 0, jt: Union[int, str] = 0, jf: Union[int, str] = 0) -> None:
        self.insns.append((code, jt, jf, k))

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.insns):
            rel = [t if isinstance(t, int) else self.labels[t] - pc - 1 for t in (jt, jf)]
            out += struct.pack("HBBI", code, rel[0], rel[1], k & 0xFFFFFFFF)
        return bytes(out)


def reply_filter(port_lo: int, port_hi: int, snaplen: int = 128) -> bytes:
    """cBPF accepting IPv4/IPv6 TCP frames with SYN+ACK or RST to a port in [lo, hi]:
    the kernel drops everything else before it is queued on the socket."""
    a = _Asm()
    a.op(_LD | _H | _ABS, 12)  # ethertype
    a.op(_JMP | _JEQ, ETH_P_IP, "v4", 0)
    a.op(_JMP | _JEQ, ETH_P_IPV6, "v6", "drop")
    a.label("v4")
    a.op(_LD | _B | _ABS, 23)  # protocol
    a.op(_JMP | _JEQ, IPPROTO_TCP, 0, "drop")
    a.op(_LD | _H | _ABS, 20)  # fragment offset: first fragments only
    a.op(_JMP | _JSET, 0x1FFF, "drop", 0)
    a.op(_LDX | _B | _MSH, 14)  # X = IHL * 4
    a.op(_LD | _B | _IND, 14 + 13)  # TCP flags
    a.op(_JMP | _JSET, TH_RST, "v4port", 0)
    a.op(_ALU | _AND, TH_SYN | TH_ACK)
    a.op(_JMP | _JEQ, TH_SYN | TH_ACK, 0, "drop")
    a.label("v4port")
    a.op(_LD | _H | _IND, 14 + 2)  # destination port
    a.op(_JMP | _JGE, port_lo, 0, "drop")
    a.op(_JMP | _JGT, port_hi, "drop", "accept")
    a.label("v6")
    a.op(_LD | _B | _ABS, 20)  # next header
    a.op(_JMP | _JEQ, IPPROTO_TCP, 0, "drop")
    a.op(_LD | _B | _ABS, 54 + 13)
    a.op(_JMP | _JSET, TH_RST, "v6port", 0)
    a.op(_ALU | _AND, TH_SYN | TH_ACK)
    a.op(_JMP | _JEQ, TH_SYN | TH_ACK, 0, "drop")
    a.label("v6port")
    a.op(_LD | _H | _ABS, 54 + 2)
    a.op(_JMP | _JGE, port_lo, 0, "drop")
    a.op(_JMP | _JGT, port_hi, "drop", "accept")
    a.label("accept")
    a.op(_RET, snaplen)
    a.label("drop")
    a.op(_RET, 0)
    return a.assemble()
