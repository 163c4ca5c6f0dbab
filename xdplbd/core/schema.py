"""Binary layouts of the data plane's maps, mirrored from bpf/xdplb.c.

Pure: packing, unpacking and the expected shape of every pinned map, so the
loader can refuse a pin that does not match (bcc does not check).
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from xdplbd.core import conntrack, ledger
from xdplbd.core.model import PROTOCOLS, IPAddress, Tunables, VipKey

FAMILY_V4 = 4
FAMILY_V6 = 6
BACKEND_ACTIVE = 1
RING_LANES = 4  # u16 backend ids per 8-byte ring value
VIP_INDEX_PER_VIP = 8  # vip_index slots per `vips` slot
VIP_INDEX_MULT = 0x9E3779B1
# enum vip_slot_state in bpf/xdplb.c
VIP_SLOT_EMPTY, VIP_SLOT_SHARED, VIP_SLOT_EXACT = 0, 1, 2

VIP_KEY = struct.Struct("<16s2sBB")  # addr, port (network order), proto, family
VIP_INFO = struct.Struct("<IIQ")  # vip_id, flags, ring_digest
BACKEND = struct.Struct("<6sBBII16s")  # mac, family, flags, vip_id, weight, addr
BACKEND_FLAGS_OFFSET = 7
FLOW_KEY = struct.Struct("<16s16s2s2sBB2x")  # src, dst, sport, dport, proto, family
COUNTER = struct.Struct("<QQ")  # packets, bytes
# lb_mac, tick_shift, udp_timeout_ticks, udp_timeout_ns, jiffy_ns, clock_offset_ns
SETTINGS = struct.Struct("<6sBxI4xQQQ")
RING_VALUE = struct.Struct("<4H")
VIP_SLOT = struct.Struct("<II20s")  # state, vip_id, vip_key
U32 = struct.Struct("<I")
_NATIVE = "<" if sys.byteorder == "little" else ">"
_ADDR_WORDS = struct.Struct(_NATIVE + "4I")  # the data plane reads host-order words
_PORT_HOST = struct.Struct(_NATIVE + "H")

# Path counter indices: enum pkt_path in bpf/xdplb.c. Each packet counts on one,
# but a conntrack hit counts on none: "ct_hit" is derived (outcomes_from_paths).
PATHS = ("ct_new", "no_real", "icmp_routed", "pass", "fragment", "malformed", "other_mac")
PATH_SLOTS = 16  # path_stats has room for paths to come (a map that grows needs a new pin)
# Extra MACs the data plane balances frames to, besides the interface's (lb_macs).
MAX_EXTRA_MACS = 8
EXTRA_MACS = struct.Struct("<I4x" + "6s2x" * MAX_EXTRA_MACS)  # count, then 8-byte slots
# The outcomes operators read, each the sum of the paths that end that way.
OUTCOME_PATHS: Dict[str, Tuple[str, ...]] = {
    "tx": ("ct_hit", "ct_new", "icmp_routed"),
    "pass": ("pass", "fragment", "malformed", "other_mac"),
    "drop": ("no_real",),
    "no_real": ("no_real",),
    "ct_hit": ("ct_hit",),
    "ct_miss": ("ct_new", "no_real"),
    "ct_insert": ("ct_new",),
    "icmp_routed": ("icmp_routed",),
    "fragment": ("fragment",),
    "malformed": ("malformed",),
    "other_mac": ("other_mac",),
}
OUTCOMES = tuple(OUTCOME_PATHS)
# Pins that older builds made and this one no longer uses; removed once the
# new program is attached ("outcomes" became "paths", "settings" grew the
# clock as "lb_settings", which made "tick_cache" useless, "backend_base"
# became "real_ledger", and "paths" became "path_stats" with room to grow:
# the daemon adds the old counts to the new before it unpins the old,
# kernel/loader.py remove_stale_pins).
RETIRED_PINS = ("outcomes", "settings", "tick_cache", "backend_base", "paths")
PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: str
    key_size: int
    value_size: int
    max_entries: int


def ring_values(ring_size: int) -> int:
    return (ring_size + RING_LANES - 1) // RING_LANES


def map_specs(t: Tunables) -> List[MapSpec]:
    """Every pinned map, as bpf/xdplb.c declares it for these tunables."""
    return [
        MapSpec("vips", "hash", VIP_KEY.size, VIP_INFO.size, t.max_vips),
        MapSpec("rings", "array_of_maps", 4, 4, t.max_vips),
        MapSpec("backends", "array", 4, BACKEND.size, t.max_reals),
        MapSpec("conntrack", "array", 4, conntrack.BUCKET.size,
                conntrack.buckets(t.conntrack_size)),
        MapSpec("vip_stats", "percpu_array", 4, COUNTER.size, t.max_vips),
        MapSpec("backend_stats", "percpu_array", 4, COUNTER.size, t.max_reals),
        MapSpec("real_ledger", "array", 4, ledger.REAL_LEDGER.size, t.max_reals),
        MapSpec("vip_ledger", "array", 4, ledger.VIP_LEDGER.size, t.max_vips),
        MapSpec("path_stats", "percpu_array", 4, COUNTER.size, PATH_SLOTS),
        MapSpec("lb_settings", "array", 4, SETTINGS.size, 1),
        MapSpec("lb_macs", "array", 4, EXTRA_MACS.size, 1),
        MapSpec("vip_index", "array", 4, VIP_SLOT.size, vip_index_slots(t)),
    ]


def vip_index_slots(t: Tunables) -> int:
    return VIP_INDEX_PER_VIP * t.max_vips


def ring_spec(t: Tunables) -> MapSpec:
    return MapSpec("ring", "array", 4, RING_VALUE.size, ring_values(t.ring_size))


# --- addresses ---------------------------------------------------------------

def family_of(addr: IPAddress) -> int:
    return FAMILY_V4 if addr.version == 4 else FAMILY_V6


def addr16(addr: IPAddress) -> bytes:
    return addr.packed.ljust(16, b"\0")


def addr_from16(raw: bytes, family: int) -> IPAddress:
    if family == FAMILY_V4:
        return ipaddress.IPv4Address(raw[:4])
    return ipaddress.IPv6Address(raw[:16])


def mac_bytes(mac: str) -> bytes:
    return bytes(int(p, 16) for p in mac.replace("-", ":").split(":"))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw[:6])


def pack_extra_macs(macs: Sequence[str]) -> bytes:
    """The lb_macs record: how many, then each MAC in an 8-byte slot."""
    if len(macs) > MAX_EXTRA_MACS:
        raise ValueError(f"at most {MAX_EXTRA_MACS} extra MACs")
    slots = [mac_bytes(m) for m in macs] + [bytes(6)] * (MAX_EXTRA_MACS - len(macs))
    return EXTRA_MACS.pack(len(macs), *slots)


# --- records -----------------------------------------------------------------

def pack_vip_key(key: VipKey) -> bytes:
    return VIP_KEY.pack(
        addr16(key.addr), key.port.to_bytes(2, "big"), PROTOCOLS[key.proto], family_of(key.addr)
    )


def vip_slot(packed_vip_key: bytes, slots: int) -> int:
    """The vip_index slot of a packed VIP key (bpf/xdplb.c vip_slot_of)."""
    addr, port, proto, family = VIP_KEY.unpack(packed_vip_key[: VIP_KEY.size])
    a0, a1, a2, a3 = _ADDR_WORDS.unpack(addr)
    x: int = a0 ^ a1 ^ a2 ^ a3 ^ _PORT_HOST.unpack(port)[0] ^ (proto << 16) ^ (family << 24)
    x ^= x >> 16
    x = (x * VIP_INDEX_MULT) & 0xFFFFFFFF
    return (x * slots) >> 32


EMPTY_VIP_SLOT = bytes(VIP_SLOT.size)


def unpack_vip_key(raw: bytes) -> Optional[VipKey]:
    addr, port, proto, family = VIP_KEY.unpack(raw[: VIP_KEY.size])
    if proto not in PROTO_NAMES or family not in (FAMILY_V4, FAMILY_V6):
        return None
    return VipKey(addr_from16(addr, family), int.from_bytes(port, "big"), PROTO_NAMES[proto])


@dataclass(frozen=True)
class BackendRec:
    mac: str
    family: int
    flags: int
    vip_id: int
    weight: int
    ip: IPAddress

    @property
    def active(self) -> bool:
        return bool(self.flags & BACKEND_ACTIVE)


def pack_backend(ip: IPAddress, mac: str, vip_id: int, weight: int) -> bytes:
    return BACKEND.pack(mac_bytes(mac), family_of(ip), BACKEND_ACTIVE, vip_id, weight, addr16(ip))


EMPTY_BACKEND = bytes(BACKEND.size)
_BACKEND_VIP_ID = struct.Struct("<I")  # at offset 8 of BACKEND


def backend_active(raw: Optional[bytes]) -> bool:
    """Does a packed backend record (None: no record) hold a real?"""
    return (raw is not None and len(raw) > BACKEND_FLAGS_OFFSET
            and bool(raw[BACKEND_FLAGS_OFFSET] & BACKEND_ACTIVE))


def backend_vip_id(raw: bytes, offset: int = 0) -> int:
    """The vip_id field of the packed backend record at offset."""
    vip_id: int = _BACKEND_VIP_ID.unpack_from(raw, offset + 8)[0]
    return vip_id


def unpack_backend(raw: bytes) -> Optional[BackendRec]:
    mac, family, flags, vip_id, weight, addr = BACKEND.unpack(raw[: BACKEND.size])
    if not flags & BACKEND_ACTIVE or family not in (FAMILY_V4, FAMILY_V6):
        return None
    return BackendRec(mac_str(mac), family, flags, vip_id, weight, addr_from16(addr, family))


def pack_flow_key(src: IPAddress, dst: IPAddress, sport: int, dport: int, proto: str) -> bytes:
    return FLOW_KEY.pack(
        addr16(src), addr16(dst), sport.to_bytes(2, "big"), dport.to_bytes(2, "big"),
        PROTOCOLS[proto], family_of(dst),
    )


def pack_ring(ring: Sequence[int], ring_size: int) -> bytes:
    """Pack backend ids four to a value (little-endian u16); the tail of the last is 0."""
    ids = array("H", ring)
    ids.frombytes(bytes(2 * (ring_values(ring_size) * RING_LANES - len(ids))))
    if sys.byteorder != "little":
        ids.byteswap()
    return ids.tobytes()


def unpack_ring(values: List[bytes], ring_size: int) -> Tuple[int, ...]:
    ids: List[int] = []
    for v in values:
        ids.extend(RING_VALUE.unpack(v[: RING_VALUE.size]))
    return tuple(ids[:ring_size])


def sum_counters(raw: bytes, ncpu: int) -> Tuple[int, int]:
    """Add up a per-CPU `struct counter` (each CPU's slot is 8-byte aligned)."""
    packets = nbytes = 0
    for cpu in range(ncpu):
        p, b = COUNTER.unpack_from(raw, cpu * COUNTER.size)
        packets += p
        nbytes += b
    return packets, nbytes


def sum_counter_array(raw: bytes, ncpu: int, slots: Iterable[int]
                      ) -> Tuple[Tuple[int, int], Dict[int, Tuple[int, int]]]:
    """A whole per-CPU counter array (lookup_array_raw): the total over every
    slot, and the per-CPU sums of `slots`. One pass in C for the total."""
    words = array("Q")
    words.frombytes(raw[: len(raw) - len(raw) % 8])
    total = (sum(words[0::2]), sum(words[1::2]))
    per = 2 * ncpu  # packets, bytes for each CPU
    return total, {s: (sum(words[s * per: (s + 1) * per: 2]),
                       sum(words[s * per + 1: (s + 1) * per: 2])) for s in slots}


def outcomes_from_paths(
    paths: Sequence[Tuple[int, int]], forwarded: Tuple[int, int]
) -> Dict[str, Tuple[int, int]]:
    """(packets, bytes) per outcome name, from the per-path counters in PATHS
    order and `forwarded`, the sum of every per-real counter (backend_stats,
    which count every forwarded packet and are never zeroed). A conntrack hit
    counts on its real alone, so ct_hit is what the other forwarding paths
    leave of `forwarded`."""
    by_path = dict(zip(PATHS, paths))
    by_path["ct_hit"] = (
        max(0, forwarded[0] - by_path["ct_new"][0] - by_path["icmp_routed"][0]),
        max(0, forwarded[1] - by_path["ct_new"][1] - by_path["icmp_routed"][1]),
    )
    return {
        name: (sum(by_path[p][0] for p in parts), sum(by_path[p][1] for p in parts))
        for name, parts in OUTCOME_PATHS.items()
    }
