"""The pinned maps as the control plane sees them: read live state, apply ops.

Thin shell around libbpf + schema. Everything that decides *what* to write
lives in plan.py; this module only writes it, in the order given.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from xdplbd.core import conntrack, ledger, schema
from xdplbd.core.clock import coarse_ns
from xdplbd.core.model import IPAddress, LiveBackend, LiveState, LiveVip, Tunables, VipKey
from xdplbd.core.plan import DelBackend, DelRing, DelVip, PutBackend, PutVip, SwapRing
from xdplbd.kernel import jiffies, libbpf

Op = object
Slot = Tuple[int, int, bytes]  # struct vip_slot: state, vip_id, packed VIP key
RING_MAP_NAME = "xdplb_ring"
# New rings installed by one outer-map batch update (one RCU wait), at most this
# many at a time: each holds a file descriptor until the batch is written.
RING_BATCH = 128
# Reads of all counters before giving up on a quiet moment between two folds
# (ledger.py); each fold is three map writes, so one retry nearly always does.
LEDGER_READ_TRIES = 5


@dataclass(frozen=True)
class Counters:
    """(packets, bytes) by outcome name, by VIP id and by backend slot."""
    outcomes: Dict[str, Tuple[int, int]]
    vips: List[Tuple[int, int]]  # by VIP id
    reals: Dict[int, Tuple[int, int]]  # by backend slot, for slots in use


class DataPlane:
    """Open handles on every pinned map under `pin_dir` (one thread at a time)."""

    def __init__(self, pin_dir: str, tunables: Tunables) -> None:
        self.pin_dir = pin_dir
        self.tunables = tunables
        self.maps: Dict[str, libbpf.Map] = {}
        try:
            for spec in schema.map_specs(tunables):
                self.maps[spec.name] = libbpf.Map.open_pinned(os.path.join(pin_dir, spec.name))
        except Exception:
            self.close()
            raise
        self.writes = 0  # map writes made by apply(); tests assert "no-op = 0"
        # read_live() decodes only what changed since its last call: decoded records
        # are kept with the raw array they were decoded from and reused while their
        # bytes in it are the same (a decoded record is a pure function of its bytes).
        self._backends_raw = b""  # the whole backends array, as last read
        self._backends: Dict[int, LiveBackend] = {}  # id -> decoded, as of _backends_raw
        self._by_vip: Dict[int, Tuple[LiveBackend, ...]] = {}  # vip_id -> backends, by id
        self._vips: Dict[bytes, Tuple[bytes, Optional[LiveVip]]] = {}  # key -> (value, decoded)
        self._ring_keys = b""

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()

    def __enter__(self) -> DataPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------

    def vip_entries(self) -> List[Tuple[VipKey, int, int]]:
        out = []
        for k, v in self.maps["vips"].items():
            key = schema.unpack_vip_key(k)
            if key is None:
                continue
            vip_id, _flags, digest = schema.VIP_INFO.unpack(v[: schema.VIP_INFO.size])
            out.append((key, vip_id, digest))
        return out

    def backend_entries(self) -> Dict[int, schema.BackendRec]:
        out = {}
        for i, raw in enumerate(self.maps["backends"].lookup_array_all()):
            # Most slots are free: test the flags byte before unpacking.
            if i == 0 or not schema.backend_active(raw):
                continue
            rec = schema.unpack_backend(raw)
            if rec is not None:
                out[i] = rec
        return out

    def ring_ids(self) -> Dict[int, int]:
        """vip_id -> inner map id, for every occupied ring slot."""
        rings = self.maps["rings"]
        out: Dict[int, int] = {}
        # A batch lookup of an array of maps returns the occupied slots only.
        for keys, values, n in rings.batches(rings.info.max_entries):
            vsize = len(values) // n
            for i in range(n):
                slot = schema.U32.unpack_from(keys, 4 * i)[0]
                out[slot] = schema.U32.unpack_from(values, vsize * i)[0]
        return out

    def read_live(self) -> LiveState:
        by_vip = self._live_backends()
        live = self._live_vips(by_vip)
        rings = self.ring_ids()
        live_ids = {v.id for v in live}
        return LiveState(
            vips=tuple(sorted(live, key=lambda v: v.id)),
            orphan_vip_ids=frozenset(set(rings) - live_ids),
            orphan_backend_ids=frozenset(
                b.id for vip_id, bs in by_vip.items() if vip_id not in live_ids for b in bs
            ),
        )

    def _live_backends(self) -> Dict[int, Tuple[LiveBackend, ...]]:
        """Active backends grouped by vip_id, each group by id (one batch read)."""
        raw = self.maps["backends"].lookup_array_raw()
        old_raw = self._backends_raw
        if raw == old_raw:
            return self._by_vip
        size = self.maps["backends"].read_size
        flags_at = schema.BACKEND_FLAGS_OFFSET
        active = schema.BACKEND_ACTIVE
        old = self._backends
        now, was = memoryview(raw), memoryview(old_raw)
        cache: Dict[int, LiveBackend] = {}
        by_vip: Dict[int, List[LiveBackend]] = {}
        # One object per distinct address and MAC: a real behind several VIPs has a
        # backend in each (16,000 backends over 4000 reals in the health bench).
        shared: Dict[object, Any] = {}
        # Most slots are free: test the flags bytes before slicing a record. Id 0
        # is reserved; ids come in order, so each group comes out sorted by id.
        # An unchanged record (compared in place, no copy) keeps its LiveBackend.
        for bid, flags in enumerate(raw[flags_at::size]):
            if not flags & active or bid == 0:
                continue
            lo, hi = bid * size, (bid + 1) * size
            hit = old.get(bid)
            if hit is not None and now[lo:hi] == was[lo:hi]:
                cache[bid] = hit
                by_vip.setdefault(schema.backend_vip_id(raw, lo), []).append(hit)
                continue
            dec = schema.unpack_backend(raw[lo:hi])
            if dec is None:
                continue
            b = LiveBackend(bid, shared.setdefault(dec.ip, dec.ip),
                            shared.setdefault(dec.mac, dec.mac), dec.weight)
            cache[bid] = b
            by_vip.setdefault(dec.vip_id, []).append(b)
        self._backends_raw, self._backends = raw, cache
        self._by_vip = {vid: tuple(bs) for vid, bs in by_vip.items()}
        return self._by_vip

    def _live_vips(self, by_vip: Dict[int, Tuple[LiveBackend, ...]]) -> List[LiveVip]:
        """Every VIP of the `vips` hash with its backends (one batch read)."""
        old = self._vips
        cache: Dict[bytes, Tuple[bytes, Optional[LiveVip]]] = {}
        out: List[LiveVip] = []
        info_size = schema.VIP_INFO.size
        for k, raw in self.maps["vips"].lookup_batch_all():
            v = raw[:info_size]
            hit = old.get(k)
            lv: Optional[LiveVip] = None
            if hit is not None and hit[0] == v:
                lv = hit[1]
                if lv is None:  # not a VIP key this version can read
                    cache[k] = hit
                    continue
                key, vip_id, digest = lv.key, lv.id, lv.ring_digest
            else:
                vip_id, _flags, digest = schema.VIP_INFO.unpack(v)
                unpacked = schema.unpack_vip_key(k)
                if unpacked is None:
                    cache[k] = (v, None)
                    continue
                key = unpacked
            backends = by_vip.get(vip_id, ())
            if lv is None or lv.backends != backends:  # the same objects: a fast compare
                lv = LiveVip(key, vip_id, digest, backends)
            cache[k] = (v, lv)
            out.append(lv)
        self._vips = cache
        return out

    def ring(self, vip_id: int) -> Optional[Tuple[int, ...]]:
        raw = self.maps["rings"].lookup(schema.U32.pack(vip_id))
        if raw is None:
            return None
        fd = libbpf.map_fd_by_id(schema.U32.unpack(raw[:4])[0])
        with libbpf.Map(fd, RING_MAP_NAME) as inner:
            return schema.unpack_ring(inner.lookup_array_all(), self.tunables.ring_size)

    def settings(self) -> Tuple[str, int]:
        mac, _shift, _ticks, timeout_ns, _jiffy, _offset = self._settings_record()
        return schema.mac_str(mac), timeout_ns

    def ct_time(self) -> Tuple[int, int]:
        """The data plane's conntrack tick now and its UDP idle limit in ticks,
        both from lb_settings (this machine's clock if it was never written)."""
        _mac, shift, limit, _timeout, jiffy_ns, offset = self._settings_record()
        clk = conntrack.Clock(jiffy_ns, offset, shift) if jiffy_ns else jiffies.local()
        return clk.tick_at(coarse_ns()), limit

    def _settings_record(self) -> Tuple[bytes, int, int, int, int, int]:
        raw = self.maps["lb_settings"].lookup(schema.U32.pack(0)) or bytes(schema.SETTINGS.size)
        mac, shift, ticks, timeout_ns, jiffy_ns, offset = schema.SETTINGS.unpack(
            raw[: schema.SETTINGS.size])
        return mac, shift, ticks, timeout_ns, jiffy_ns, offset

    def counter(self, map_name: str, index: int) -> Tuple[int, int]:
        m = self.maps[map_name]
        raw = m.lookup(schema.U32.pack(index))
        return schema.sum_counters(raw, m.ncpu) if raw else (0, 0)

    def real_counter(self, backend_id: int) -> Tuple[int, int]:
        """A real's (packets, bytes) since it took its backend slot."""
        raw = self.maps["real_ledger"].lookup(schema.U32.pack(backend_id))
        return ledger.real_count(ledger.real_entry(raw),
                                 self.counter("backend_stats", backend_id))

    def vip_counter(self, vip_id: int) -> Tuple[int, int]:
        """A VIP's (packets, bytes): forwarded to its reals, and dropped."""
        return self.counters().vips[vip_id]

    def counters(self) -> Counters:
        """Every counter the tools show, read consistently (see ledger.py)."""
        for _ in range(LEDGER_READ_TRIES):
            gens = [e.generation for e in self._vip_ledger()]
            reals = ledger.entries_in_use(self.maps["real_ledger"].lookup_array_raw())
            tx, stats = self._slot_sums("backend_stats", reals)  # before the paths: bpf/xdplb.c
            drops = self._sum_all("vip_stats")
            paths = self._sum_all("path_stats")[: len(schema.PATHS)]
            vips = self._vip_ledger()
            if [e.generation for e in vips] == gens:
                break
        return Counters(
            schema.outcomes_from_paths(paths, tx),
            ledger.vip_counts(reals, stats, vips, drops),
            {slot: ledger.real_count(e, stats[slot]) for slot, e in reals.items()},
        )

    def _vip_ledger(self) -> List[ledger.VipEntry]:
        return [ledger.vip_entry(r) for r in self.maps["vip_ledger"].lookup_array_all()]

    def _sum_all(self, name: str) -> List[Tuple[int, int]]:
        m = self.maps[name]
        return [schema.sum_counters(raw, m.ncpu) if raw else (0, 0)
                for raw in m.lookup_array_all()]

    def _slot_sums(self, name: str, slots: Iterable[int]
                   ) -> Tuple[Tuple[int, int], Dict[int, Tuple[int, int]]]:
        """A per-CPU counter map's total over every slot, and the sums of `slots`."""
        m = self.maps[name]
        return schema.sum_counter_array(m.lookup_array_raw(), m.ncpu, slots)

    def repair_ledger(self) -> int:
        """Finish what a killed daemon left half-done (ledger.repair); returns writes."""
        active = {i: rec.vip_id for i, rec in self.backend_entries().items()}
        live = {vid for _key, vid, _digest in self.vip_entries()}
        reals = ledger.entries_in_use(self.maps["real_ledger"].lookup_array_raw())
        _tx, stats = self._slot_sums("backend_stats", set(reals) | set(active))
        fix = ledger.repair(reals, self._vip_ledger(), active, live, stats)
        for vid, ve in fix.vips.items():
            self.maps["vip_ledger"].update(schema.U32.pack(vid), ve.pack())
        for slot, re in fix.reals.items():
            self.maps["real_ledger"].update(schema.U32.pack(slot), re.pack())
        return len(fix.vips) + len(fix.reals)

    def outcomes(self) -> Dict[str, Tuple[int, int]]:
        return self.counters().outcomes

    # --- writing -------------------------------------------------------------

    def set_settings(self, lb_mac: str, udp_timeout_s: int,
                     extra_macs: Sequence[str] = ()) -> bool:
        """Write the settings record and the extra MACs if they differ; returns
        True if either was written.

        It carries the conntrack clock (kernel/jiffies.py), measured once per process:
        the data plane's clock stays put across restarts."""
        macs = self._set_record("lb_macs", schema.pack_extra_macs(extra_macs))
        clk = jiffies.local()
        timeout_ns = udp_timeout_s * 1_000_000_000
        want = schema.SETTINGS.pack(schema.mac_bytes(lb_mac), clk.tick_shift,
                                    clk.timeout_ticks(timeout_ns), timeout_ns,
                                    clk.jiffy_ns, clk.offset_ns)
        return self._set_record("lb_settings", want) or macs

    def _set_record(self, map_name: str, want: bytes) -> bool:
        """Write a one-record map unless it already holds `want`."""
        m = self.maps[map_name]
        if (m.lookup(schema.U32.pack(0)) or b"")[: len(want)] == want:
            return False
        m.update(schema.U32.pack(0), want)
        self.writes += 1
        return True

    def extra_macs(self) -> List[str]:
        raw = self.maps["lb_macs"].lookup(schema.U32.pack(0)) or bytes(schema.EXTRA_MACS.size)
        count, *slots = schema.EXTRA_MACS.unpack(raw[: schema.EXTRA_MACS.size])
        return [schema.mac_str(m) for m in slots[: min(count, schema.MAX_EXTRA_MACS)]]

    def _leave(self, backend_id: int, vip: Optional[VipKey]) -> None:
        """A real has left its slot: its count goes to its VIP (ledger.py), in
        three single-record writes, unless the VIP itself is gone."""
        key = schema.U32.pack(backend_id)
        entry = ledger.real_entry(self.maps["real_ledger"].lookup(key))
        if entry.state != ledger.ACTIVE:
            return
        stats = self.counter("backend_stats", backend_id)
        vkey = schema.U32.pack(entry.vip_id)
        info = None if vip is None else self.maps["vips"].lookup(schema.pack_vip_key(vip))
        if info is None or schema.VIP_INFO.unpack_from(info)[0] != entry.vip_id:
            self.maps["real_ledger"].update(
                key, ledger.free(ledger.retire(entry, stats, ledger.VipEntry())).pack())
            return
        owner = ledger.vip_entry(self.maps["vip_ledger"].lookup(vkey))
        retired = ledger.retire(entry, stats, owner)
        self.maps["real_ledger"].update(key, retired.pack())
        self.maps["vip_ledger"].update(vkey, ledger.fold(owner, retired).pack())
        self.maps["real_ledger"].update(key, ledger.free(retired).pack())

    def _zero_counter(self, map_name: str, index: int) -> None:
        m = self.maps[map_name]
        m.update(schema.U32.pack(index), bytes(m.read_size))

    def _new_ring(self, ring: Sequence[int]) -> int:
        """A new inner ring map holding `ring`; returns its fd (the caller closes it)."""
        n = schema.ring_values(self.tunables.ring_size)
        fd = libbpf.create_array(RING_MAP_NAME, schema.RING_VALUE.size, n)
        try:
            if len(self._ring_keys) != 4 * n:
                self._ring_keys = b"".join(schema.U32.pack(i) for i in range(n))
            with libbpf.Map(fd, RING_MAP_NAME, owned=False) as inner:
                inner.update_batch(self._ring_keys, schema.pack_ring(ring, self.tunables.ring_size),
                                   n)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _swap_ring(self, vip_id: int, ring: Sequence[int]) -> None:
        """Build the new ring aside, then point the VIP at it in one update."""
        fd = self._new_ring(ring)
        try:
            # The kernel waits for an RCU grace period: once this returns, no
            # packet can still be reading the old ring.
            self.maps["rings"].update_fd(schema.U32.pack(vip_id), fd)
        finally:
            os.close(fd)

    def _install_new_rings(self, ops: List[Op]) -> Set[int]:
        """Install ahead, in batches, the rings that no packet can reach yet; returns
        the indices of the SwapRing ops so done.

        Every ring update waits for an RCU grace period (~10 ms), which made adding
        1000 VIPs take 10 s. A SwapRing can go first when its slot is empty, no VIP
        in `vips` has its id and no earlier op touches that id: packets reach a
        ring only through a VIP entry, and that VIP's PutVip comes after its
        SwapRing in the plan. A crash in between leaves orphan rings, which the
        next plan deletes first.
        """
        if sum(1 for op in ops if isinstance(op, SwapRing)) < 2:
            return set()
        occupied = set(self.ring_ids())
        referenced = {schema.U32.unpack(v[:4])[0] for _, v in self.maps["vips"].lookup_batch_all()}
        touched: Set[int] = set()
        early: List[int] = []
        for i, op in enumerate(ops):
            if isinstance(op, SwapRing):
                vid = op.vip_id
                if vid not in touched and vid not in occupied and vid not in referenced:
                    early.append(i)
                touched.add(op.vip_id)
            elif isinstance(op, (PutVip, DelVip, DelRing)):
                touched.add(op.vip_id)
        if len(early) < 2:
            return set()
        # VIPs with the same reals and weights (a service on two ports, TCP and
        # UDP) share a Maglev table: built next to each other, they build it once.
        pending = [op for op in (ops[i] for i in early) if isinstance(op, SwapRing)]
        pending.sort(key=lambda op: sorted((str(ip), w) for ip, w, _ in op.members))
        for at in range(0, len(pending), RING_BATCH):
            part = pending[at : at + RING_BATCH]
            fds: List[int] = []
            try:
                for op in part:
                    fds.append(self._new_ring(op.table))
                keys = b"".join(schema.U32.pack(op.vip_id) for op in part)
                self._put_rings(keys, fds)
            finally:
                for fd in fds:
                    os.close(fd)
        return set(early)

    def _put_rings(self, keys: bytes, fds: List[int]) -> None:
        rings = self.maps["rings"]
        try:
            rings.update_batch(keys, b"".join(fd.to_bytes(4, "little") for fd in fds), len(fds))
        except libbpf.BpfError as e:
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            for i, fd in enumerate(fds):  # no batch updates of this map type here
                rings.update_fd(keys[4 * i : 4 * i + 4], fd)

    # --- vip_index: the data plane's direct-mapped front of `vips` -------------
    # At every instant a slot is EMPTY only if no VIP in `vips` folds to it,
    # and EXACT(id, key) only if `key` is the one VIP folding to it, with that
    # id. SHARED is always safe (the data plane asks `vips`), so every change
    # passes through it: id and key are rewritten only outside EXACT, and
    # EXACT is entered and left by a write of the state alone.

    def _slot_of(self, vip_key: bytes) -> bytes:
        slots = self.maps["vip_index"].info.max_entries
        return schema.U32.pack(schema.vip_slot(vip_key, slots))

    def _read_slot(self, slot: bytes) -> Slot:
        raw = self.maps["vip_index"].lookup(slot) or schema.EMPTY_VIP_SLOT
        state, vip_id, key = schema.VIP_SLOT.unpack(raw[: schema.VIP_SLOT.size])
        return state, vip_id, key

    def _write_slot(self, slot: bytes, want: Slot) -> None:
        cur = self._read_slot(slot)
        steps = []
        if cur[0] == schema.VIP_SLOT_EXACT and cur != want:
            steps.append((schema.VIP_SLOT_SHARED, cur[1], cur[2]))
        if want[0] == schema.VIP_SLOT_EXACT and cur != want:
            steps.append((schema.VIP_SLOT_SHARED, want[1], want[2]))
        steps.append(want)
        for step in steps:
            if step != cur:
                self.maps["vip_index"].update(slot, schema.VIP_SLOT.pack(*step))
                cur = step

    def _wanted_slot(self, here: List[Tuple[bytes, int]], cur: Slot) -> Slot:
        if not here:
            return (schema.VIP_SLOT_EMPTY, 0, schema.EMPTY_VIP_SLOT[: schema.VIP_KEY.size])
        if len(here) == 1:
            return (schema.VIP_SLOT_EXACT, here[0][1], here[0][0])
        return (schema.VIP_SLOT_SHARED, cur[1], cur[2])

    def _vips_by_slot(self) -> Dict[bytes, List[Tuple[bytes, int]]]:
        out: Dict[bytes, List[Tuple[bytes, int]]] = {}
        for k, v in self.maps["vips"].lookup_batch_all():
            key = k[: schema.VIP_KEY.size]
            out.setdefault(self._slot_of(key), []).append((key, schema.U32.unpack(v[:4])[0]))
        return out

    def _put_vip(self, key: bytes, value: bytes, vip_id: int) -> None:
        slot = self._slot_of(key)
        state, sid, skey = self._read_slot(slot)
        alone = state == schema.VIP_SLOT_EMPTY or (state == schema.VIP_SLOT_EXACT and skey == key)
        if state == schema.VIP_SLOT_EMPTY:
            self._write_slot(slot, (schema.VIP_SLOT_SHARED, vip_id, key))
        elif (state, sid, skey) != (schema.VIP_SLOT_EXACT, vip_id, key):
            self._write_slot(slot, (schema.VIP_SLOT_SHARED, sid, skey))
        self.maps["vips"].update(key, value)
        if alone:
            self._write_slot(slot, (schema.VIP_SLOT_EXACT, vip_id, key))

    def _del_vip(self, key: bytes) -> None:
        slot = self._slot_of(key)
        state, sid, skey = self._read_slot(slot)
        if state == schema.VIP_SLOT_EXACT:
            self._write_slot(slot, (schema.VIP_SLOT_SHARED, sid, skey))
        self.maps["vips"].delete(key)
        if state == schema.VIP_SLOT_EXACT and skey == key:
            self._write_slot(slot, self._wanted_slot([], self._read_slot(slot)))
        elif state != schema.VIP_SLOT_EMPTY:  # others may fold here: ask `vips`
            here = self._vips_by_slot().get(slot, [])
            self._write_slot(slot, self._wanted_slot(here, self._read_slot(slot)))

    def sync_vip_index(self) -> None:
        """Rebuild vip_index from `vips` (a new, empty index next to older pins)."""
        by_slot = self._vips_by_slot()
        for i, raw in enumerate(self.maps["vip_index"].lookup_array_all()):
            slot = schema.U32.pack(i)
            cur = schema.VIP_SLOT.unpack((raw or schema.EMPTY_VIP_SLOT)[: schema.VIP_SLOT.size])
            want = self._wanted_slot(by_slot.get(slot, []), cur)
            if want != cur:
                self._write_slot(slot, want)

    def apply_op(self, op: Op) -> None:
        if isinstance(op, PutBackend):
            key = schema.U32.pack(op.backend_id)
            if not schema.backend_active(self.maps["backends"].lookup(key)):
                # A new real takes the slot: its count starts from here
                # (backend_stats are never zeroed: their sum is tx).
                joined = ledger.join(op.vip_id, self.counter("backend_stats", op.backend_id))
                self.maps["real_ledger"].update(key, joined.pack())
            self.maps["backends"].update(
                key, schema.pack_backend(op.ip, op.mac, op.vip_id, op.weight))
        elif isinstance(op, SwapRing):
            self._swap_ring(op.vip_id, op.table)
        elif isinstance(op, PutVip):
            self._put_vip(
                schema.pack_vip_key(op.vip), schema.VIP_INFO.pack(op.vip_id, 0, op.digest),
                op.vip_id,
            )
        elif isinstance(op, DelVip):
            self._del_vip(schema.pack_vip_key(op.vip))
        elif isinstance(op, DelRing):
            self.maps["rings"].delete(schema.U32.pack(op.vip_id))
            self._zero_counter("vip_stats", op.vip_id)
            vkey = schema.U32.pack(op.vip_id)
            old = ledger.vip_entry(self.maps["vip_ledger"].lookup(vkey))
            self.maps["vip_ledger"].update(vkey, ledger.reset(old).pack())
        elif isinstance(op, DelBackend):
            # Its counters stay: tx is their sum (see PutBackend).
            self.maps["backends"].update(schema.U32.pack(op.backend_id), schema.EMPTY_BACKEND)
            self._leave(op.backend_id, op.vip)
        else:
            raise TypeError(f"unknown operation {op!r}")
        self.writes += 1

    def apply(self, ops: Iterable[Op], on_op: Optional[Callable[[Op], None]] = None) -> int:
        """Apply ops in order; `on_op` runs after each (logging, fault injection).

        Rings that no packet can reach yet go in first, a batch at a time
        (_install_new_rings); to the data plane this is the same order.
        """
        todo = list(ops)
        early = self._install_new_rings(todo)
        for i, op in enumerate(todo):
            if i in early:
                self.writes += 1
            else:
                self.apply_op(op)
            if on_op is not None:
                on_op(op)
        return len(todo)

    # --- whole-table helpers (tests, `xdplb detach`) ---------------------------

    def flush_conntrack(self) -> None:
        ct = self.maps["conntrack"]
        n = ct.info.max_entries
        ct.update_batch(b"".join(schema.U32.pack(i) for i in range(n)),
                        bytes(ct.read_size * n), n)

    def conntrack(self) -> List[Tuple[int, int, int]]:
        """(bucket, way, entry) of every non-empty conntrack entry."""
        out: List[Tuple[int, int, int]] = []
        raw = self.maps["conntrack"].lookup_array_raw()
        for bucket, ways in enumerate(conntrack.BUCKET.iter_unpack(raw)):
            out.extend((bucket, way, w) for way, w in enumerate(ways) if w)
        return out


def _flow_bucket(dp: DataPlane, src: IPAddress, dst: IPAddress, sport: int, dport: int,
                 proto: str) -> Tuple[bytes, Tuple[int, ...], int]:
    """(bucket key, the bucket's entries, tag) of a flow."""
    ct = dp.maps["conntrack"]
    bucket, tag = conntrack.locate(schema.pack_flow_key(src, dst, sport, dport, proto),
                                   ct.info.max_entries)
    key = schema.U32.pack(bucket)
    raw = ct.lookup(key) or bytes(conntrack.BUCKET.size)
    return key, conntrack.BUCKET.unpack(raw[: conntrack.BUCKET.size]), tag


def lookup_flow(dp: DataPlane, src: IPAddress, dst: IPAddress, sport: int, dport: int,
                proto: str) -> Optional[conntrack.Entry]:
    """The flow's conntrack entry, if any."""
    _key, ways, tag = _flow_bucket(dp, src, dst, sport, dport, proto)
    way = conntrack.find(ways, tag)
    return None if way is None else conntrack.decode(ways[way])


def store_flow(dp: DataPlane, src: IPAddress, dst: IPAddress, sport: int, dport: int,
               proto: str, backend_id: int, tick: int) -> None:
    """Write a flow's conntrack entry, as the data plane would (tests and tools)."""
    key, ways, tag = _flow_bucket(dp, src, dst, sport, dport, proto)
    new = list(ways)
    new[conntrack.free_way(ways, tag)] = conntrack.encode(conntrack.Entry(tag, backend_id, tick))
    dp.maps["conntrack"].update(key, conntrack.BUCKET.pack(*new))
