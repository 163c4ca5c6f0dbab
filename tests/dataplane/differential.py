"""Differential testing: the reference model (reference.py) against bpf/xdplb.c.

Both see the same maps and the same frames. Per frame they must agree on the
verdict and the output bytes (which name the chosen real: every real has its
own MAC); per batch, on the whole connection table and every counter (per
path, per real, per VIP) and on the outcomes the tools derive from them.

Frames come from a generator that draws every choice through a Chooser: a
seeded random.Random for the bulk (`Session.run_seeded`), or hypothesis's
`data.draw` for examples it can shrink (test_differential.py). Configs and
flow histories are drawn the same way: VIPs (v4/v6, tcp/udp, sharing
addresses), reals with weights (0 = draining), config changes mid-stream
applied through the real control plane, and connection-table buckets seeded
with stale, foreign, expired and colliding entries.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
from array import array
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from tests.dataplane import reference as ref
from tests.dataplane.harness import TEST_TUNABLES, DataPlaneHarness, real, vip
from xdplbd.core import conntrack, schema
from xdplbd.core.clock import coarse_ns
from xdplbd.core.model import Vip
from xdplbd.kernel import jiffies, libbpf

T = TypeVar("T")

LB_MAC = bytes.fromhex("020000000001")
EXTRA_MACS = (bytes.fromhex("00005e000101"), bytes.fromhex("00005e000102"))
OTHER_MAC = bytes.fromhex("02000000ee01")  # another LB node on the same segment
CLIENT_MAC = bytes.fromhex("020000000099")
ACTIONS = {libbpf.XDP_TX: ref.TX, libbpf.XDP_PASS: ref.PASS, libbpf.XDP_DROP: ref.DROP}

VIP4 = ["10.3.0.1", "10.3.0.2", "10.3.0.3"]
VIP6 = ["fd03::1", "fd03::2"]
VIP_PORTS = [80, 443, 53, 8080, 1]
REAL4 = [f"10.3.1.{i}" for i in range(1, 9)]
REAL6 = [f"fd03:1::{i:x}" for i in range(1, 7)]
CLIENT4 = [f"10.9.{i}.{j}" for i in range(2) for j in range(1, 6)]
CLIENT6 = [f"fd09::{i:x}" for i in range(1, 9)]


def real_mac(ip: str) -> str:
    """Each real its own MAC, so the output bytes name the chosen real."""
    packed = ipaddress.ip_address(ip).packed[-4:]
    return "02:01:" + ":".join(f"{b:02x}" for b in packed)


class Chooser:
    """Every random choice the generator makes."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.rnd.randrange(len(seq))]

    def int(self, lo: int, hi: int) -> int:
        return self.rnd.randint(lo, hi)

    def chance(self, p: float) -> bool:
        return self.rnd.random() < p

    def bytes(self, n: int) -> bytes:
        return self.rnd.getrandbits(8 * n).to_bytes(n, "big") if n else b""


# --- frames ------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    src: str
    dst: str
    sport: int
    dport: int
    proto: int  # 6 or 17

    @property
    def v6(self) -> bool:
        return ":" in self.dst


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, options: bytes = b"",
         frag: int = 0, ihl: Optional[int] = None) -> bytes:
    hl = ihl if ihl is not None else 5 + len(options) // 4
    h = struct.pack("!BBHHHBBH4s4s", 0x40 | hl, 0, 20 + len(options) + len(payload), 1, frag,
                    64, proto, 0, ipaddress.ip_address(src).packed,
                    ipaddress.ip_address(dst).packed) + options
    return h[:10] + struct.pack("!H", _csum(h)) + h[12:] + payload


def ipv6(src: str, dst: str, nexthdr: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nexthdr, 64,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
                       ) + payload


def tcp(sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 8192, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


TCP_FLAGS = [0x02, 0x02, 0x12, 0x10, 0x10, 0x18, 0x11, 0x04, 0x03, 0x06, 0x00, 0xFF]


class FrameGen:
    """Frames about a config's VIPs, near misses and strangers."""

    def __init__(self, c: Chooser, vips: Sequence[Vip]) -> None:
        self.c = c
        self.vips = list(vips)
        self.flows: List[Flow] = []

    def flow(self) -> Flow:
        c = self.c
        if self.flows and c.chance(0.75):
            return c.pick(self.flows)  # a flow's later packets: hits, refreshes
        kind = c.int(0, 9)
        if self.vips and kind < 7:
            v = c.pick(self.vips)
            dst, dport, proto = str(v.key.addr), v.key.port, 6 if v.key.proto == "tcp" else 17
            if kind == 6:  # a near miss: another port or protocol on a VIP address
                if c.chance(0.5):
                    dport = c.pick(VIP_PORTS)
                else:
                    proto = 23 - proto
        else:
            dst = c.pick(VIP4 + VIP6 + ["10.3.0.99", "fd03::99"])
            dport, proto = c.pick([*VIP_PORTS, c.int(0, 65535)]), c.pick([6, 17])
        src = c.pick(CLIENT6 if ":" in dst else CLIENT4)
        f = Flow(src, dst, c.int(0, 65535), dport, proto)
        self.flows.append(f)
        if len(self.flows) > 400:
            del self.flows[: 100]
        return f

    def l3(self) -> Tuple[int, bytes]:
        """(EtherType, L3 packet)."""
        c = self.c
        kind = c.int(0, 99)
        f = self.flow()
        payload = c.bytes(c.pick([0, 0, 1, 10, 64, c.int(0, 1400)]))
        if kind < 70:  # TCP or UDP
            l4 = (tcp(f.sport, f.dport, c.pick(TCP_FLAGS), payload) if f.proto == 6
                  else udp(f.sport, f.dport, payload))
            if f.v6:
                return 0x86DD, ipv6(f.src, f.dst, f.proto, l4)
            options = b""
            if c.chance(0.15):
                options = c.bytes(4 * c.int(1, 10))
            return 0x0800, ipv4(f.src, f.dst, f.proto, l4, options)
        if kind < 82:  # an ICMP error about the flow's reply (VIP -> client)
            inner_l4 = (tcp(f.dport, f.sport, 0x18) if f.proto == 6 else udp(f.dport, f.sport))
            inner_l4 = inner_l4[: c.pick([8, 8, 20, len(inner_l4)])]
            router = c.pick(CLIENT6 if f.v6 else CLIENT4)
            if f.v6:
                inner = ipv6(f.dst, f.src, f.proto, inner_l4)
                icmp = struct.pack("!BBHI", c.pick([2, 2, 2, 1, 3, 128]), c.int(0, 1), 0, 1280)
                return 0x86DD, ipv6(router, f.dst, 58, icmp + inner)
            inner = ipv4(f.dst, f.src, f.proto, inner_l4)
            icmp = struct.pack("!BBHHH", c.pick([3, 3, 3, 8, 11]), c.pick([4, 4, 1, 0]), 0, 0,
                               1400)
            return 0x0800, ipv4(router, f.dst, 1, icmp + inner)
        if kind < 88:  # a fragment
            l4 = tcp(f.sport, f.dport, 0x10) if f.proto == 6 else udp(f.sport, f.dport)
            if f.v6:
                frag = struct.pack("!BBHI", f.proto, 0, c.pick([1, 8, 9]), 7)
                return 0x86DD, ipv6(f.src, f.dst, 44, frag + l4)
            return 0x0800, ipv4(f.src, f.dst, f.proto, l4 + payload,
                                frag=c.pick([0x2000, 0x0001, 0x2010, 0x1FFF, 0x4000]))
        if kind < 94:  # other IP protocols and IPv6 extension headers
            if f.v6:
                nh = c.pick([0, 43, 60, 58, 47])
                return 0x86DD, ipv6(f.src, f.dst, nh, bytes([f.proto, 0]) + bytes(6)
                                    + udp(f.sport, f.dport))
            return 0x0800, ipv4(f.src, f.dst, c.pick([1, 47, 50, 132]),
                                struct.pack("!BBHHH", 8, 0, 0, 1, 1) + payload)
        if kind < 97:  # ARP
            return 0x0806, bytes.fromhex("0001080006040001") + c.bytes(20)
        return c.pick([0x0000, 0x88CC, 0x0842, c.int(0, 0xFFFF)]), c.bytes(c.int(0, 80))

    def frame(self) -> bytes:
        c = self.c
        etype, l3 = self.l3()
        n = c.pick([0, 0, 0, 0, 1, 1, 2, 3])  # a third tag is more than the program parses
        tpids = [c.pick([0x8100, 0x88A8]) for _ in range(n)]
        # Each tag names the type that follows it; the outer TPID is the EtherType.
        tags = b"".join(struct.pack("!HH", c.int(0, 0xFFFF), tpids[i + 1] if i + 1 < n else etype)
                        for i in range(n))
        if n:
            etype = tpids[0]
        dst = c.pick([LB_MAC] * 36 + [EXTRA_MACS[0], EXTRA_MACS[1], OTHER_MAC,
                                      b"\xff" * 6, c.bytes(6)])
        frame = dst + CLIENT_MAC + struct.pack("!H", etype) + tags + l3
        if c.chance(0.2):
            frame = self.mutate(frame)
        return frame

    def mutate(self, frame: bytes) -> bytes:
        c = self.c
        b = bytearray(frame)
        for _ in range(c.int(1, 3)):
            op = c.int(0, 9)
            if op < 6:  # flip a byte, mostly in the headers where the parser decides
                pos = min(c.pick([c.int(0, 60), c.int(0, 100), c.int(0, len(b) - 1)]), len(b) - 1)
                b[pos] = c.int(0, 255)
            elif op < 9:
                b = b[: max(14, c.int(0, len(b)))]
            else:
                b += c.bytes(c.int(1, 40))
        return bytes(b)


# --- configs -----------------------------------------------------------------

def random_vips(c: Chooser) -> List[Vip]:
    """1-6 VIPs, v4 and v6, tcp and udp, several on one address; 0-5 reals each,
    some draining (weight 0); a real may serve several VIPs."""
    out: List[Vip] = []
    keys = set()
    for _ in range(c.int(1, 6)):
        v6 = c.chance(0.35)
        key = (c.pick(VIP6 if v6 else VIP4), c.pick(VIP_PORTS), c.pick(["tcp", "udp"]))
        if key in keys:
            continue
        keys.add(key)
        pool = REAL6 if v6 else REAL4
        ips = sorted({c.pick(pool) for _ in range(c.pick([0, 1, 2, 3, 3, 5]))})
        reals = [real(ip, real_mac(ip), c.pick([0, 1, 1, 1, 2, 3])) for ip in ips]
        out.append(vip(key[0], key[1], key[2], reals))
    return out


def change_vips(c: Chooser, vips: List[Vip]) -> List[Vip]:
    """A step from the current config: a new one, or one VIP's reals changed."""
    if not vips or c.chance(0.3):
        return random_vips(c)
    out = list(vips)
    i = c.int(0, len(out) - 1)
    v = out[i]
    reals = list(v.reals)
    op = c.int(0, 3)
    if op == 0 and reals:
        del reals[c.int(0, len(reals) - 1)]
    elif op == 1 and reals:
        j = c.int(0, len(reals) - 1)
        reals[j] = real(str(reals[j].ip), reals[j].mac, c.pick([0, 1, 2]))
    else:
        pool = REAL6 if v.key.addr.version == 6 else REAL4
        ip = c.pick(pool)
        if all(str(r.ip) != ip for r in reals):
            reals.append(real(ip, real_mac(ip), c.pick([0, 1, 2])))
    out[i] = vip(str(v.key.addr), v.key.port, v.key.proto, reals)
    return out


# --- the kernel side ---------------------------------------------------------

def stable_clock() -> Tuple[int, int]:
    """(jiffies, tick_shift) such that jiffies >> tick_shift stays put for an hour
    and is not 0: the program and the model then read the same tick, and the
    table's wrap-around arithmetic still meets a non-zero now."""
    clk = jiffies.local()
    j = (coarse_ns() + clk.offset_ns) // clk.jiffy_ns
    margin = 3_600_000_000_000 // clk.jiffy_ns
    for shift in range(24, 48):
        if j >> shift == (j + margin) >> shift and (j >> shift) & 0xFFFF:
            return j, shift
    raise AssertionError(f"no stable tick for jiffies {j}")


def counter_rows(dp: DataPlaneHarness, name: str) -> List[Tuple[int, int]]:
    m = dp.maps[name]
    words = array("Q", m.lookup_array_raw())
    per = 2 * m.ncpu
    return [(sum(words[i * per: (i + 1) * per: 2]), sum(words[i * per + 1: (i + 1) * per: 2]))
            for i in range(m.info.max_entries)]


# Frames between two whole-state checks; XDPLB_DIFF_CHECK_EVERY=1 pins a
# counter or table difference on the frame that made it.
CHECK_EVERY = int(os.environ.get("XDPLB_DIFF_CHECK_EVERY", "2000"))


RING_CACHE: Dict[int, Tuple[int, ...]] = {}  # by inner map id


class Session:
    """The model and the program, kept in step over a run of frames."""

    def __init__(self, dp: DataPlaneHarness, seed: int, report: str = "",
                 table: Optional[array] = None) -> None:
        """`table`: the program's connection table as the last check found it
        (saves reading it again)."""
        self.dp = dp
        self.seed = seed
        self.report = report or f"reproduce with XDPLB_DIFF_SEED={seed}"
        self.jiffies, self.shift = stable_clock()
        self.frames = 0
        self.last = b""
        self.tally: Dict[str, int] = {}  # verdicts since the last sync
        self.seen: Dict[str, int] = {}  # ... and before
        self.model: Optional[ref.Model] = None
        self.table = table
        self.vips: List[Vip] = []

    # --- state ---------------------------------------------------------------

    def settings(self, udp_timeout_ticks: int, extra: Sequence[bytes]) -> None:
        """Write lb_settings and lb_macs directly: a clock the test controls."""
        self.dp.maps["lb_settings"].update(schema.U32.pack(0), schema.SETTINGS.pack(
            LB_MAC, self.shift, udp_timeout_ticks, 0, 0, 0))
        self.dp.maps["lb_macs"].update(schema.U32.pack(0), schema.pack_extra_macs(
            [schema.mac_str(m) for m in extra]))
        self.udp_timeout_ticks, self.extra = udp_timeout_ticks, tuple(extra)
        if self.model is not None:
            self.check_state()
            self.sync(keep_state=True)

    def configure(self, vips: List[Vip]) -> None:
        """Apply a config through the control plane, then read the maps into the
        model (the connection table stays the model's own)."""
        if self.model is not None:
            self.check_state()  # everything so far, before the control plane moves on
        self.dp.configure(vips)
        self.vips = vips
        self.sync(keep_state=self.model is not None)

    def sync(self, keep_state: bool) -> None:
        """Read the maps into a new model; keep_state keeps the model's own table."""
        dp, t = self.dp, TEST_TUNABLES
        m = ref.Model(LB_MAC, self.shift, self.udp_timeout_ticks, t.max_vips, t.max_reals,
                      t.ring_size, conntrack.buckets(t.conntrack_size), self.extra)
        for k, v in dp.maps["vips"].items():
            addr, port, proto, family = schema.VIP_KEY.unpack(k[: schema.VIP_KEY.size])
            vip_id, _flags, _digest = schema.VIP_INFO.unpack(v[: schema.VIP_INFO.size])
            m.vips[(addr, int.from_bytes(port, "big"), proto, family)] = vip_id
            m.rings[vip_id] = self.ring_of(vip_id)
        raw = dp.maps["backends"].lookup_array_raw()
        for i, rec in enumerate(schema.BACKEND.iter_unpack(raw)):
            mac, _family, flags, vip_id, _weight, _addr = rec
            if flags:
                m.backends[i] = ref.Backend(mac, vip_id, bool(flags & schema.BACKEND_ACTIVE))
        if keep_state and self.model is not None:
            m.conntrack = self.model.conntrack
        elif self.table is not None:
            m.conntrack, self.table = self.table, None
        else:
            m.conntrack = array("Q", dp.maps["conntrack"].lookup_array_raw())
        self.model = m
        self.base = {name: counter_rows(dp, name)
                     for name in ("path_stats", "backend_stats", "vip_stats")}
        for k, v in self.tally.items():
            self.seen[k] = self.seen.get(k, 0) + v
        self.tally = {}

    def ring_of(self, vip_id: int) -> Tuple[int, ...]:
        """A VIP's ring, read once per inner map (a ring is never rewritten in
        place: a change swaps in a new map, with a new id)."""
        raw = self.dp.maps["rings"].lookup(schema.U32.pack(vip_id))
        assert raw is not None, f"VIP id {vip_id} has no ring"
        map_id = schema.U32.unpack(raw[:4])[0]
        ring = RING_CACHE.get(map_id)
        if ring is None:
            ring = self.dp.ring(vip_id)
            assert ring is not None
            RING_CACHE[map_id] = ring
        return ring

    def seed_bucket(self, c: Chooser, gen: FrameGen) -> None:
        """A flow history: fill one flow's bucket with entries of every kind
        (its own tag or others, live, stale, foreign or unknown backends, young,
        old or expired), in the program's table and the model's alike."""
        assert self.model is not None
        f = gen.flow()
        fam = 6 if f.v6 else 4
        pad = (lambda a: a) if f.v6 else (lambda a: a + bytes(12))
        key = ref.pack_flow((pad(ipaddress.ip_address(f.src).packed),
                             pad(ipaddress.ip_address(f.dst).packed), f.sport, f.dport, f.proto,
                             fam))
        h = ref.flow_hash(key)
        bucket = ((h >> 32) * self.model.n_buckets) >> 32
        tag = (h & ref.TAG_MASK) | 1
        now = (self.jiffies >> self.shift) & ref.TICK_MASK
        ids = [*list(self.model.backends), 0, 255, TEST_TUNABLES.max_reals + 3, 65535]
        t = self.udp_timeout_ticks
        ways = []
        for _ in range(ref.WAYS):
            if c.chance(0.15):
                ways.append(0)
                continue
            age = c.pick([0, 1, 2, t - 1, t, t + 1, c.int(0, 0xFFFF)]) & ref.TICK_MASK
            w_tag = tag if c.chance(0.2) else (c.int(0, ref.TAG_MASK) | 1)
            ways.append(w_tag | (c.pick(ids) << ref.ID_SHIFT)
                        | (((now - age) & ref.TICK_MASK) << ref.SEEN_SHIFT))
        self.dp.maps["conntrack"].update(schema.U32.pack(bucket), conntrack.BUCKET.pack(*ways))
        self.model.conntrack[bucket * ref.WAYS: (bucket + 1) * ref.WAYS] = array("Q", ways)

    # --- frames --------------------------------------------------------------

    def frame(self, frame: bytes) -> None:
        assert self.model is not None
        self.last = frame
        r = libbpf.test_run(self.dp.program.fd, frame)
        want = self.model.run(frame, self.jiffies)
        got = ACTIONS.get(r.retval, f"retval {r.retval}")
        self.frames += 1
        if got != want.action or r.data != want.out:
            raise AssertionError(
                f"frame {self.frames} of seed {self.seed}: program {got}, model {want.action} "
                f"(path {want.path}, backend {want.backend})\n"
                f"frame  {frame.hex()}\nprogram {r.data.hex()}\nmodel   {want.out.hex()}\n"
                f"config {self.vips}\n{self.report}")
        self.tally[want.action] = self.tally.get(want.action, 0) + 1
        if want.path is None:
            self.tally["ct_hit"] = self.tally.get("ct_hit", 0) + 1

    def check_state(self) -> None:
        """The whole connection table and every counter, since the last sync."""
        m, dp = self.model, self.dp
        assert m is not None
        where = (f"after frame {self.frames} of seed {self.seed} ({self.report}; the last "
                 f"frame {self.last.hex()})")
        got_ct = array("Q", dp.maps["conntrack"].lookup_array_raw())
        if got_ct != m.conntrack:
            diff = [(i // ref.WAYS, i % ref.WAYS, hex(a), hex(b))
                    for i, (a, b) in enumerate(zip(got_ct, m.conntrack)) if a != b]
            raise AssertionError(f"connection tables differ {where}: (bucket, way, program, "
                                 f"model) {diff[:8]}")
        rows = {name: [(p - p0, b - b0) for (p, b), (p0, b0) in
                       zip(counter_rows(dp, name), self.base[name])]
                for name in self.base}
        paths = rows["path_stats"]
        want_paths = [tuple(c) for c in m.paths] + [(0, 0)] * (len(paths) - len(m.paths))
        assert paths == want_paths, f"path counters {where}: {paths} != {want_paths}"
        reals = {i: c for i, c in enumerate(rows["backend_stats"]) if c != (0, 0)}
        assert reals == {i: tuple(c) for i, c in m.real_stats.items()}, \
            f"per-real counters {where}: {reals} != {m.real_stats}"
        drops = {i: c for i, c in enumerate(rows["vip_stats"]) if c != (0, 0)}
        assert drops == {i: tuple(c) for i, c in m.vip_stats.items()}, \
            f"per-VIP counters {where}: {drops} != {m.vip_stats}"
        # The outcomes the tools show, derived from the paths, match the verdicts.
        tx = (sum(p for p, _ in reals.values()), sum(b for _, b in reals.values()))
        out = schema.outcomes_from_paths(paths[: len(schema.PATHS)], tx)
        for name in ("tx", "pass", "drop", "ct_hit"):
            assert out[name][0] == self.tally.get(name, 0), \
                f"outcome {name} {where}: {out[name][0]} != {self.tally.get(name, 0)}"

    # --- a whole run ---------------------------------------------------------

    def run(self, c: Chooser, frames: int, check_every: int = CHECK_EVERY,
            progress: Optional[Callable[[int], None]] = None,
            vips: Optional[List[Vip]] = None) -> Dict[str, int]:
        """`frames` frames over a series of configs and flow histories (or over
        `vips` alone); returns how many frames met each outcome (tx, pass,
        drop, and ct_hit within tx)."""
        self.settings(c.pick([0, 1, 5, 29, 0xFFFF]), EXTRA_MACS[: c.int(0, 2)])
        self.configure(random_vips(c) if vips is None else vips)
        gen = FrameGen(c, self.vips)
        since = 0
        for _ in range(frames):
            roll = c.int(0, 9999)
            if roll < 3:
                self.settings(c.pick([0, 1, 5, 29, 0xFFFF]), EXTRA_MACS[: c.int(0, 2)])
            elif roll < 10 and vips is None:
                self.configure(change_vips(c, self.vips))
                gen.vips = list(self.vips)
                since = 0
            elif roll < 60:
                self.seed_bucket(c, gen)
            self.frame(gen.frame())
            since += 1
            if since >= check_every:
                self.check_state()
                self.sync(keep_state=False)
                since = 0
                if progress is not None:
                    progress(self.frames)
        self.check_state()
        j, _shift = stable_clock()
        assert j >> self.shift == self.jiffies >> self.shift, "the tick moved during the run"
        return self.seen


# One config with a bit of everything, for runs that do not change it: v4 and
# v6, tcp and udp on one address, a draining real, a VIP without reals, and a
# real serving two VIPs.
FIXED_VIPS = [
    vip("10.3.0.1", 80, "tcp", [real(ip, real_mac(ip), w) for ip, w in
                                (("10.3.1.1", 1), ("10.3.1.2", 2), ("10.3.1.3", 0))]),
    vip("10.3.0.1", 53, "udp", [real(ip, real_mac(ip), 1) for ip in ("10.3.1.1", "10.3.1.4")]),
    vip("10.3.0.2", 443, "tcp", []),
    vip("10.3.0.3", 8080, "udp", [real("10.3.1.5", real_mac("10.3.1.5"), 0)]),
    vip("fd03::1", 80, "tcp", [real(ip, real_mac(ip), 1) for ip in ("fd03:1::1", "fd03:1::2")]),
    vip("fd03::2", 53, "udp", [real("fd03:1::3", real_mac("fd03:1::3"), 1)]),
]


def seed_from_env(default: Optional[int] = None) -> int:
    env = os.environ.get("XDPLB_DIFF_SEED")
    if env:
        return int(env, 0)
    return default if default is not None else random.SystemRandom().randrange(2**63)
