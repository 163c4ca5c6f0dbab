"""Where does a flow go, and why: the data plane's decision, recomputed. Pure.

Mirrors balance() in bpf/xdplb.c step by step, given what the maps hold:
  1. no VIP for (address, port, protocol): XDP_PASS to the kernel stack;
  2. a TCP SYN skips conntrack (a new connection always picks through the ring);
  3. a conntrack entry whose backend is live and belongs to this VIP (and, for
     UDP, is not idle past the timeout) wins: XDP_TX to that real;
  4. otherwise the ring slot of the 5-tuple's hash (flowhash.slot_of_hash) in the
     VIP's Maglev ring of M slots: XDP_TX to that real (and a conntrack entry is
     inserted), or XDP_DROP if the slot holds no usable real.
The shell (`xdplb explain`) reads the maps and calls explain(); the tests check
it against the program through BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

from xdplbd.core import conntrack, schema
from xdplbd.core.flowhash import flow_hash, slot_of_hash
from xdplbd.core.model import IPAddress, VipKey


@dataclass(frozen=True)
class Decision:
    verdict: str  # "tx" | "drop" | "pass"
    reason: str  # "not_a_vip" | "conntrack" | "ring" | "no_real"
    vip_id: Optional[int] = None
    backend_id: Optional[int] = None
    real: Optional[str] = None  # the real's IP
    mac: Optional[str] = None
    ring_slot: Optional[int] = None  # set whenever the ring was consulted
    ring_size: Optional[int] = None
    flow_hash: Optional[int] = None
    conntrack: str = "absent"  # "hit" | "stale" | "expired" | "absent" | "skipped (SYN)"
    conntrack_backend_id: Optional[int] = None
    detail: str = ""

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


def _usable(backends: Mapping[int, schema.BackendRec], bid: int,
            vip_id: int) -> Optional[schema.BackendRec]:
    """backend_for() in the data plane: live, and of this very VIP."""
    if not bid:
        return None
    b = backends.get(bid)
    if b is None or not b.active or b.vip_id != vip_id:
        return None
    return b


def explain(
    src: IPAddress,
    sport: int,
    key: VipKey,
    vip_id: Optional[int],
    ct: Optional[conntrack.Entry],
    ring: Optional[Sequence[int]],
    backends: Mapping[int, schema.BackendRec],
    *,
    syn: bool = False,
    udp_timeout_ticks: int = 0,
    now_tick: int = 0,
) -> Decision:
    """The decision for the next packet of flow src:sport -> key (a SYN if `syn`)."""
    if vip_id is None:
        return Decision("pass", "not_a_vip", detail=f"{key} is not a VIP: the packet passes "
                        "to the kernel stack untouched")
    ct_state, ct_bid = "absent", None
    if syn and key.proto == "tcp":
        ct_state = "skipped (SYN)"
    elif ct is not None:
        ct_bid = ct.backend_id
        b = _usable(backends, ct.backend_id, vip_id)
        if b is None:
            ct_state = "stale"
        elif key.proto == "udp" and conntrack.expired(ct, now_tick, udp_timeout_ticks):
            ct_state = "expired"
        else:
            return Decision(
                "tx", "conntrack", vip_id, ct.backend_id, str(b.ip), b.mac,
                conntrack="hit", conntrack_backend_id=ct.backend_id,
                detail=f"conntrack entry -> real {b.ip} (backend {ct.backend_id})",
            )
    fk = schema.pack_flow_key(src, key.addr, sport, key.port, key.proto)
    h = flow_hash(fk) & 0xFFFFFFFF  # the half that picks the ring slot
    if not ring:
        return Decision("drop", "no_real", vip_id, conntrack=ct_state, conntrack_backend_id=ct_bid,
                        flow_hash=h, detail=f"{key} has no ring (no reals): dropped")
    slot = slot_of_hash(h, len(ring))
    bid = ring[slot]
    b = _usable(backends, bid, vip_id)
    why = {"stale": f"conntrack entry points at backend {ct_bid}, which is gone; ",
           "expired": "conntrack entry idle past the UDP timeout; ",
           "skipped (SYN)": "a SYN skips conntrack; "}.get(ct_state, "no conntrack entry; ")
    if b is None:
        return Decision("drop", "no_real", vip_id, bid or None, ring_slot=slot,
                        ring_size=len(ring), flow_hash=h, conntrack=ct_state,
                        conntrack_backend_id=ct_bid,
                        detail=why + f"ring slot {slot} of {len(ring)} holds no usable real: "
                        "dropped")
    return Decision("tx", "ring", vip_id, bid, str(b.ip), b.mac, ring_slot=slot,
                    ring_size=len(ring), flow_hash=h, conntrack=ct_state,
                    conntrack_backend_id=ct_bid,
                    detail=why + f"ring slot {slot} of {len(ring)} -> real {b.ip} "
                    f"(backend {bid})")


def infer_ring_size(ring_values: Sequence[int]) -> int:
    """M from a full ring read without knowing M: the control plane fills every slot of
    a ring with a backend id (>= 1) and pads the last 8-byte value with 0."""
    n = len(ring_values)
    while n and ring_values[n - 1] == 0:
        n -= 1
    return n
