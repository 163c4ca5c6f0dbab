"""The diff: (live state, desired Config) -> ordered data plane operations.

Pure. The order keeps the data plane consistent at every instant: a packet
never finds a VIP without a ring, nor a ring slot naming a missing backend.
Per VIP: new backends first, then the ring swap (one map update) bracketed by
VIP-entry writes of its digest (unknown, then the new one), and only then the
backends that no ring references any more.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from itertools import chain
from typing import (
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from xdplbd.core.maglev import populate_cached, text_digest
from xdplbd.core.model import Config, IPAddress, LiveBackend, LiveState, LiveVip, Real, Vip, VipKey


class PlanError(Exception):
    """The desired config cannot be reached from the live state (e.g. out of ids)."""


def _mac(r: Real) -> str:
    """A real's MAC for the maps. The plan takes the effective config (core/effective.py),
    where every real has one; a real without is never forwarded to (no zero MAC)."""
    if r.mac is None:
        raise PlanError(f"real {r.ip} has no MAC (not resolved): it cannot be a backend")
    return r.mac


# -- operations ---------------------------------------------------------------


@dataclass(frozen=True)
class PutBackend:
    vip: VipKey
    vip_id: int
    backend_id: int
    ip: IPAddress
    mac: str
    weight: int
    note: str = ""


@dataclass(frozen=True)
class SwapRing:
    vip: VipKey
    vip_id: int
    members: Tuple[Tuple[IPAddress, int, int], ...] = field(repr=False)  # (ip, weight, id)
    m: int  # ring size
    digest: int
    moved: int  # slots whose backend differs from the ring of the live backends; m if new
    note: str = ""

    @property
    def ring(self) -> Tuple[int, ...]:
        """Backend id per slot, 0 = none, length m.

        Built when asked for (maglev.populate_cached keeps the last few), never
        stored: a plan that adds a thousand VIPs would otherwise hold a thousand
        rings of m slots at once.
        """
        return build_ring(self.members, self.m)

    @property
    def table(self) -> array[int]:
        """The ring as an array of u16 (what the data plane packs)."""
        return ring_table(self.members, self.m)


@dataclass(frozen=True)
class PutVip:
    vip: VipKey
    vip_id: int
    digest: int
    note: str = ""


@dataclass(frozen=True)
class DelVip:
    vip: VipKey
    vip_id: int
    note: str = ""


@dataclass(frozen=True)
class DelRing:
    vip_id: int
    note: str = ""


@dataclass(frozen=True)
class DelBackend:
    backend_id: int
    vip: Optional[VipKey]  # None for an orphan
    ip: Optional[IPAddress]
    note: str = ""


Op = Union[PutBackend, SwapRing, PutVip, DelVip, DelRing, DelBackend]

ADDED, REMOVED, CHANGED, UNCHANGED = "added", "removed", "changed", "unchanged"
UNKNOWN_DIGEST = 0  # stored while a VIP's ring is being replaced


@dataclass(frozen=True)
class VipSummary:
    """One VIP's outcome, for `xdplb check --plan` and state.toml."""

    key: VipKey
    action: str  # added | removed | changed | unchanged
    reals: int  # desired reals (live ones for a removed VIP)
    moved: int  # ring slots that change backend; ring_size if added, 0 if no swap
    ring_size: int
    swapped: bool  # whether the ring is replaced


@dataclass(frozen=True)
class Plan:
    ops: Tuple[Op, ...]
    vips: Tuple[VipSummary, ...]
    orphan_rings: int = 0
    orphan_backends: int = 0

    @property
    def empty(self) -> bool:
        return not self.ops


# -- helpers --------------------------------------------------------------------


class _Ids:
    """Smallest-free-id allocator over [lo, hi), used ids given up front."""

    def __init__(self, lo: int, hi: int, used: Callable[[], Iterable[int]], what: str) -> None:
        self.lo, self.hi, self.what = lo, hi, what
        self._used_from = used  # called at the first take(): most reloads take none
        self._used: Optional[Set[int]] = None
        self._freed: Set[int] = set()  # before that
        self.low = lo  # no id below this is free

    def take(self) -> int:
        if self._used is None:
            self._used = set(self._used_from()) - self._freed
        used = self._used
        for i in range(self.low, self.hi):
            if i not in used:
                used.add(i)
                self.low = i + 1
                return i
        self.low = self.hi
        raise PlanError(self.what)

    def free(self, i: int) -> None:
        if self._used is None:
            self._freed.add(i)
        else:
            self._used.discard(i)
        if self.lo <= i < self.low:
            self.low = i


def ring_table(backends: Sequence[Tuple[IPAddress, int, int]], m: int) -> array[int]:
    """The Maglev ring of (ip, weight, backend id) triples, as u16 backend ids (0 = none)."""
    weights = {str(ip): w for ip, w, _ in backends}
    id_of = {str(ip): bid for ip, _, bid in backends}
    ids = [id_of[name] for name in sorted(weights)]
    idx = populate_cached(weights, m)
    if idx[0] < 0:  # no real with weight > 0: every slot is empty
        return array("H", bytes(2 * m))
    return array("H", map(ids.__getitem__, idx))


def build_ring(backends: Sequence[Tuple[IPAddress, int, int]], m: int) -> Tuple[int, ...]:
    """ring_table() as a tuple."""
    return tuple(ring_table(backends, m))


def desired_digest(vip: Vip, m: int) -> int:
    known = vip.digests
    digest = known.get(m)
    if digest is None:
        digest = known[m] = text_digest(vip.ring_text, m)
    return digest


def _dedupe(lv: LiveVip) -> Tuple[Dict[IPAddress, LiveBackend], List[LiveBackend]]:
    """Live backends by ip, keeping the lowest id; and the surplus duplicates."""
    return lv.kept, list(lv.surplus)


def _weight_note(key: VipKey, ip: IPAddress, old: int, new: int) -> str:
    tail = " (draining)" if new == 0 else ""
    return f"vip {key}: real {ip} weight {old} -> {new}{tail}"


# -- the plan -------------------------------------------------------------------


def make_plan(live: LiveState, desired: Config, count_moved: bool = True) -> Plan:
    """Ops that turn the live data plane into the desired config, safest order first.

    count_moved=False skips building each changed VIP's old ring just to count the
    slots that move (~20 ms a VIP): the daemon's reloads do not need the figure.
    """
    m = desired.tunables.ring_size
    max_vips, max_reals = desired.tunables.max_vips, desired.tunables.max_reals
    for lv in live.vips:
        if lv.id >= max_vips or lv.top_backend_id >= max_reals:
            raise PlanError(
                f"vip {lv.key}: live ids exceed tunables.max_vips={max_vips} / "
                f"max_reals={max_reals}; the maps must be recreated (xdplb detach)"
            )
    vip_ids = _Ids(
        0,
        max_vips,
        lambda: chain((lv.id for lv in live.vips), live.orphan_vip_ids),
        f"not enough VIP ids: tunables.max_vips = {max_vips}",
    )
    backend_ids = _Ids(
        1,
        max_reals,
        lambda: chain((b.id for lv in live.vips for b in lv.backends), live.orphan_backend_ids),
        f"not enough backend ids: tunables.max_reals = {max_reals} allows ids "
        f"1..{max_reals - 1}, and new backends are added before old ones are deleted",
    )
    ops: List[Op] = []
    summaries: List[VipSummary] = []

    # (1) Orphans: nothing references them, so they can go first and free their ids.
    for vid in sorted(live.orphan_vip_ids):
        ops.append(DelRing(vid))
        vip_ids.free(vid)
    for bid in sorted(live.orphan_backend_ids):
        ops.append(DelBackend(bid, None, None))
        backend_ids.free(bid)

    # (2) Removed VIPs: unhook the VIP before its ring, the ring before its backends.
    wanted = {v.key for v in desired.vips}
    for lv in live.vips:
        if lv.key in wanted:
            continue
        ops.append(DelVip(lv.key, lv.id, f"vip {lv.key}: -vip"))
        ops.append(DelRing(lv.id))
        vip_ids.free(lv.id)
        keep, _ = _dedupe(lv)
        for b in sorted(lv.backends, key=lambda b: b.id):
            note = f"vip {lv.key}: -real {b.ip}" if keep.get(b.ip) is b else ""
            ops.append(DelBackend(b.id, lv.key, b.ip, note))
            backend_ids.free(b.id)
        summaries.append(VipSummary(lv.key, REMOVED, len(keep), 0, m, False))

    # (3) New and changed VIPs, in config order.
    live_by_key = {lv.key: lv for lv in live.vips}
    for vip in desired.vips:
        found = live_by_key.get(vip.key)
        if found is None:
            vip_ops, summary = _add_vip(vip, m, vip_ids, backend_ids)
        else:
            vip_ops, summary = _change_vip(vip, found, m, backend_ids, count_moved)
        ops.extend(vip_ops)
        summaries.append(summary)

    return Plan(
        tuple(ops),
        tuple(summaries),
        len(live.orphan_vip_ids),
        len(live.orphan_backend_ids),
    )


def _add_vip(vip: Vip, m: int, vip_ids: _Ids, backend_ids: _Ids) -> Tuple[List[Op], VipSummary]:
    key = vip.key
    vid = vip_ids.take()
    ops: List[Op] = []
    triples: List[Tuple[IPAddress, int, int]] = []
    for r in vip.reals:
        bid = backend_ids.take()
        ops.append(PutBackend(key, vid, bid, r.ip, _mac(r), r.weight, f"vip {key}: +real {r.ip}"))
        triples.append((r.ip, r.weight, bid))
    digest = desired_digest(vip, m)
    ops.append(SwapRing(key, vid, tuple(triples), m, digest, m))
    ops.append(PutVip(key, vid, digest, f"vip {key}: +vip"))
    return ops, VipSummary(key, ADDED, len(vip.reals), m, m, True)


def _change_vip(
    vip: Vip, lv: LiveVip, m: int, backend_ids: _Ids, count_moved: bool = True
) -> Tuple[List[Op], VipSummary]:
    key, vid = vip.key, lv.id
    digest = desired_digest(vip, m)
    if not lv.surplus and lv.ring_digest == digest and lv.state_text == vip.state_text:
        # The common case on a reload: the live backends are the desired reals
        # (ip, mac and weight alike) and the stored digest names their ring.
        # This is what the general path below concludes, at the cost of a
        # string comparison (both texts are computed once per object).
        return [], VipSummary(key, UNCHANGED, len(vip.reals), 0, m, False)
    keep, extra = _dedupe(lv)
    ops: List[Op] = []
    triples: List[Tuple[IPAddress, int, int]] = []
    for r in vip.reals:
        old = keep.get(r.ip)
        if old is None:
            bid = backend_ids.take()
            note = f"vip {key}: +real {r.ip}"
            ops.append(PutBackend(key, vid, bid, r.ip, _mac(r), r.weight, note))
        else:
            bid = old.id
            ops.extend(_update_backend(key, vid, old, r))
        triples.append((r.ip, r.weight, bid))

    # The stored digest is trusted only if it matches the live backends, as it does
    # after every complete apply; otherwise a crash left us mid-change and the ring
    # in the kernel is unknown. A surplus duplicate may also be what the ring uses.
    trusted = lv.ring_digest == text_digest(lv.ring_text, m) and not extra
    swap = digest != lv.ring_digest or not trusted
    moved = 0
    if swap:
        if count_moved:
            ring = build_ring(triples, m)
            old_ring = build_ring([(b.ip, b.weight, b.id) for b in keep.values()], m)
            moved = sum(1 for a, b in zip(ring, old_ring) if a != b)
        # Mark the stored digest unknown while the ring changes, so a crash between
        # the swap and the final PutVip is never mistaken for a finished one.
        ops.append(PutVip(key, vid, UNKNOWN_DIGEST))
        ops.append(SwapRing(key, vid, tuple(triples), m, digest, moved))
        ops.append(PutVip(key, vid, digest))

    # Only now is no ring slot left pointing at these.
    wanted = {r.ip for r in vip.reals}
    for b in sorted(keep.values(), key=lambda b: b.id):
        if b.ip not in wanted:
            ops.append(DelBackend(b.id, key, b.ip, f"vip {key}: -real {b.ip}"))
            backend_ids.free(b.id)
    for b in extra:
        ops.append(DelBackend(b.id, key, b.ip))
        backend_ids.free(b.id)

    action = CHANGED if ops else UNCHANGED
    return ops, VipSummary(key, action, len(vip.reals), moved, m, swap)


def _update_backend(key: VipKey, vid: int, old: LiveBackend, new: Real) -> List[Op]:
    """PutBackend ops for a kept real, one per changed field so each logs one line."""
    ops: List[Op] = []
    mac = old.mac
    if old.mac != new.mac:
        mac = _mac(new)
        note = f"vip {key}: real {new.ip} mac {old.mac} -> {new.mac}"
        ops.append(PutBackend(key, vid, old.id, new.ip, mac, old.weight, note))
    if old.weight != new.weight:
        note = _weight_note(key, new.ip, old.weight, new.weight)
        ops.append(PutBackend(key, vid, old.id, new.ip, mac, new.weight, note))
    return ops


# -- rendering ------------------------------------------------------------------


def _summary_line(s: VipSummary) -> str:
    head = f"vip {s.key}: {s.action}"
    if s.action == ADDED:
        return f"{head}, {s.reals} reals, {s.ring_size} ring slots"
    if s.action == REMOVED:
        return f"{head}, {s.reals} reals"
    if not s.swapped:
        return f"{head}, ring unchanged"
    return f"{head}, {s.moved} of {s.ring_size} ring slots move ({s.moved / s.ring_size:.1%})"


def render_plan(plan: Plan) -> str:
    """Human-readable plan: per VIP a summary line, then its changes indented."""
    if plan.empty:
        return "no changes"
    lines: List[str] = []
    if plan.orphan_rings or plan.orphan_backends:
        lines.append(
            f"cleanup: delete {plan.orphan_rings} orphan ring(s), "
            f"{plan.orphan_backends} orphan backend(s)"
        )
    notes: Mapping[VipKey, List[str]] = _notes_by_vip(plan.ops)
    for s in plan.vips:
        if s.action == UNCHANGED:
            continue
        lines.append(_summary_line(s))
        lines.extend(f"  {n}" for n in notes.get(s.key, []))
    return "\n".join(lines)


def _notes_by_vip(ops: Sequence[Op]) -> Dict[VipKey, List[str]]:
    out: Dict[VipKey, List[str]] = {}
    for op in ops:
        vip = getattr(op, "vip", None)
        if not op.note or vip is None:
            continue
        text = op.note.split(": ", 1)[1]  # drop the "vip X: " prefix under its heading
        if text in ("+vip", "-vip"):
            continue  # said by the heading already
        out.setdefault(vip, []).append(text)
    return out
