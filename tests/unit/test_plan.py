"""The plan: ops, their order, id allocation, and rendering.

Ops are applied to a tiny in-memory model of the maps, and after every single op
the data plane must be consistent: every VIP has a ring, and every ring slot
names an existing backend of that VIP.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Set, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdplbd.core.model import (
    Config,
    IPAddress,
    LiveBackend,
    LiveState,
    LiveVip,
    Real,
    Tunables,
    Vip,
    VipKey,
)
from xdplbd.core.plan import (
    DelBackend,
    DelRing,
    DelVip,
    Op,
    Plan,
    PlanError,
    PutBackend,
    PutVip,
    SwapRing,
    _Ids,
    build_ring,
    desired_digest,
    make_plan,
    render_plan,
)

M = 101  # small prime: keeps rings cheap; ring logic itself is tested in test_maglev


def ip(s: str) -> IPAddress:
    return ipaddress.ip_address(s)


def key(addr: str = "10.0.0.100", port: int = 80, proto: str = "tcp") -> VipKey:
    return VipKey(ip(addr), port, proto)


def mac(n: int) -> str:
    return f"02:00:00:00:00:{n:02x}"


def real(n: int, weight: int = 1, mac_n: Optional[int] = None) -> Real:
    return Real(ip(f"10.0.0.{n}"), mac(n if mac_n is None else mac_n), weight)


def config(*vips: Vip, max_vips: int = 8, max_reals: int = 32, m: int = M) -> Config:
    return Config(vips=vips, tunables=Tunables(max_vips=max_vips, max_reals=max_reals, ring_size=m))


# -- an in-memory data plane --------------------------------------------------------


@dataclass
class Maps:
    vips: Dict[VipKey, Tuple[int, int]] = field(default_factory=dict)  # key -> (id, digest)
    rings: Dict[int, Tuple[int, ...]] = field(default_factory=dict)
    backends: Dict[int, Tuple[int, IPAddress, str, int]] = field(default_factory=dict)

    def check(self, m: int) -> None:
        """Consistent for any packet: VIP -> ring -> backends of that VIP."""
        for k, (vid, _) in self.vips.items():
            assert vid in self.rings, f"{k}: no ring {vid}"
            ring = self.rings[vid]
            assert len(ring) == m
            for bid in set(ring) - {0}:
                assert bid in self.backends, f"{k}: ring names missing backend {bid}"
                assert self.backends[bid][0] == vid, f"{k}: backend {bid} of another VIP"

    def apply(self, op: Op) -> None:
        if isinstance(op, PutBackend):
            old = self.backends.get(op.backend_id)
            # Ids are never reused while another VIP or real still holds them.
            assert old is None or (old[0], old[1]) == (op.vip_id, op.ip), op
            self.backends[op.backend_id] = (op.vip_id, op.ip, op.mac, op.weight)
        elif isinstance(op, SwapRing):
            owner = [k for k, (vid, _) in self.vips.items() if vid == op.vip_id]
            assert owner in ([], [op.vip]), op
            self.rings[op.vip_id] = op.ring
        elif isinstance(op, PutVip):
            assert op.vip_id not in {v for k, (v, _) in self.vips.items() if k != op.vip}
            self.vips[op.vip] = (op.vip_id, op.digest)
        elif isinstance(op, DelVip):
            assert self.vips.pop(op.vip)[0] == op.vip_id
        elif isinstance(op, DelRing):
            del self.rings[op.vip_id]
        elif isinstance(op, DelBackend):
            del self.backends[op.backend_id]
        else:  # pragma: no cover
            raise AssertionError(op)

    def live(self) -> LiveState:
        """Read the maps back the way the daemon does."""
        by_vid: Dict[int, List[LiveBackend]] = {}
        for bid, (vid, bip, bmac, w) in self.backends.items():
            by_vid.setdefault(vid, []).append(LiveBackend(bid, bip, bmac, w))
        vips = tuple(
            LiveVip(k, vid, digest, tuple(sorted(by_vid.get(vid, []), key=lambda b: b.id)))
            for k, (vid, digest) in self.vips.items()
        )
        used = {v.id for v in vips}
        return LiveState(
            vips=vips,
            orphan_vip_ids=frozenset(set(self.rings) - used),
            orphan_backend_ids=frozenset(
                bid for bid, (vid, *_rest) in self.backends.items() if vid not in used
            ),
        )


def run(maps: Maps, plan: Plan, m: int = M, upto: Optional[int] = None) -> Maps:
    maps.check(m)
    for op in plan.ops[:upto]:
        maps.apply(op)
        maps.check(m)
    return maps


def assert_matches(maps: Maps, cfg: Config) -> None:
    """The maps hold exactly cfg, each ring the one its reals' ids give."""
    m = cfg.tunables.ring_size
    assert set(maps.vips) == {v.key for v in cfg.vips}
    assert len(maps.rings) == len(cfg.vips)
    assert len(maps.backends) == sum(len(v.reals) for v in cfg.vips)
    for v in cfg.vips:
        vid, digest = maps.vips[v.key]
        assert digest == desired_digest(v, m)
        mine = {b[1]: (bid, b) for bid, b in maps.backends.items() if b[0] == vid}
        assert {r.ip: (r.mac, r.weight) for r in v.reals} == {
            i: (b[2], b[3]) for i, (_, b) in mine.items()
        }
        want = build_ring([(r.ip, r.weight, mine[r.ip][0]) for r in v.reals], m)
        assert maps.rings[vid] == want


def converge(maps: Maps, cfg: Config) -> Plan:
    plan = make_plan(maps.live(), cfg)
    run(maps, plan, cfg.tunables.ring_size)
    assert_matches(maps, cfg)
    assert make_plan(maps.live(), cfg).ops == ()
    return plan


def kinds(plan: Plan) -> List[str]:
    return [type(op).__name__ for op in plan.ops]


def notes(plan: Plan) -> List[str]:
    return [op.note for op in plan.ops if op.note]


V1 = Vip(key(), (real(11), real(12)))
V2 = Vip(key("10.0.0.101", 53, "udp"), (real(13),))


# -- basic changes --------------------------------------------------------------------


def test_add_vip_from_empty() -> None:
    maps = Maps()
    plan = converge(maps, config(V1))
    assert kinds(plan) == ["PutBackend", "PutBackend", "SwapRing", "PutVip"]
    assert notes(plan) == [
        "vip 10.0.0.100:80/tcp: +real 10.0.0.11",
        "vip 10.0.0.100:80/tcp: +real 10.0.0.12",
        "vip 10.0.0.100:80/tcp: +vip",
    ]
    swap = plan.ops[2]
    assert isinstance(swap, SwapRing) and swap.moved == M and swap.vip_id == 0
    assert set(swap.ring) == {1, 2}
    assert [(s.action, s.moved) for s in plan.vips] == [("added", M)]


def test_same_config_gives_empty_plan() -> None:
    maps = Maps()
    converge(maps, config(V1, V2))
    plan = make_plan(maps.live(), config(V1, V2))
    assert plan.ops == () and plan.empty
    assert [s.action for s in plan.vips] == ["unchanged", "unchanged"]
    assert render_plan(plan) == "no changes"


def test_remove_vip() -> None:
    maps = Maps()
    converge(maps, config(V1, V2))
    plan = converge(maps, config(V2))
    assert kinds(plan) == ["DelVip", "DelRing", "DelBackend", "DelBackend"]
    assert notes(plan) == [
        "vip 10.0.0.100:80/tcp: -vip",
        "vip 10.0.0.100:80/tcp: -real 10.0.0.11",
        "vip 10.0.0.100:80/tcp: -real 10.0.0.12",
    ]
    assert [s.action for s in plan.vips] == ["removed", "unchanged"]


def test_add_real() -> None:
    maps = Maps()
    converge(maps, config(V1))
    plan = converge(maps, config(replace(V1, reals=(*V1.reals, real(14)))))
    assert kinds(plan) == ["PutBackend", "PutVip", "SwapRing", "PutVip"]
    assert notes(plan) == ["vip 10.0.0.100:80/tcp: +real 10.0.0.14"]
    put = plan.ops[0]
    assert isinstance(put, PutBackend) and put.backend_id == 3
    swap = plan.ops[2]
    assert isinstance(swap, SwapRing)
    assert 0 < swap.moved < M / 2  # roughly a third of the slots go to the new real
    # The new real's slots all moved; Maglev shuffles a few more among the others.
    assert sum(1 for b in swap.ring if b == 3) <= swap.moved


def test_remove_real() -> None:
    maps = Maps()
    converge(maps, config(V1))
    plan = converge(maps, config(replace(V1, reals=(real(12),))))
    assert kinds(plan) == ["PutVip", "SwapRing", "PutVip", "DelBackend"]
    assert notes(plan) == ["vip 10.0.0.100:80/tcp: -real 10.0.0.11"]
    assert plan.ops[-1] == DelBackend(1, key(), ip("10.0.0.11"), notes(plan)[0])


def test_weight_change_and_drain() -> None:
    maps = Maps()
    converge(maps, config(V1))
    plan = converge(maps, config(replace(V1, reals=(real(11, 0), real(12)))))
    assert kinds(plan) == ["PutBackend", "PutVip", "SwapRing", "PutVip"]
    assert notes(plan) == ["vip 10.0.0.100:80/tcp: real 10.0.0.11 weight 1 -> 0 (draining)"]
    swap = plan.ops[2]
    assert isinstance(swap, SwapRing) and set(swap.ring) == {2}
    plan = converge(maps, config(replace(V1, reals=(real(11, 2), real(12)))))
    assert notes(plan) == ["vip 10.0.0.100:80/tcp: real 10.0.0.11 weight 0 -> 2"]


def test_drained_real_keeps_backend_until_removed() -> None:
    maps = Maps()
    converge(maps, config(replace(V1, reals=(real(11, 0), real(12)))))
    assert 1 in maps.backends  # still there for the flows it holds
    assert 1 not in maps.rings[0]


def test_mac_change_needs_no_ring_swap() -> None:
    maps = Maps()
    converge(maps, config(V1))
    plan = converge(maps, config(replace(V1, reals=(real(11, mac_n=0x99), real(12)))))
    assert kinds(plan) == ["PutBackend"]
    assert notes(plan) == [
        "vip 10.0.0.100:80/tcp: real 10.0.0.11 mac 02:00:00:00:00:0b -> 02:00:00:00:00:99"
    ]
    assert plan.vips[0].action == "changed" and not plan.vips[0].swapped


def test_mac_and_weight_change_log_one_line_each() -> None:
    maps = Maps()
    converge(maps, config(V1))
    plan = converge(maps, config(replace(V1, reals=(real(11, 3, mac_n=0x99), real(12)))))
    assert notes(plan) == [
        "vip 10.0.0.100:80/tcp: real 10.0.0.11 mac 02:00:00:00:00:0b -> 02:00:00:00:00:99",
        "vip 10.0.0.100:80/tcp: real 10.0.0.11 weight 1 -> 3",
    ]


def test_vip_with_no_reals() -> None:
    maps = Maps()
    plan = converge(maps, config(Vip(key(), ())))
    swap = plan.ops[0]
    assert isinstance(swap, SwapRing) and swap.ring == (0,) * M
    converge(maps, config(V1))
    converge(maps, config(Vip(key(), ())))
    assert maps.backends == {}


def test_ipv6_vip_notes() -> None:
    v6 = Vip(key("2001:db8::1"), (Real(ip("2001:db8::a"), mac(1)),))
    plan = converge(Maps(), config(v6))
    assert notes(plan) == [
        "vip [2001:db8::1]:80/tcp: +real 2001:db8::a",
        "vip [2001:db8::1]:80/tcp: +vip",
    ]


# -- ids ----------------------------------------------------------------------------------


def test_ids_are_stable_and_smallest_free_is_used() -> None:
    maps = Maps()
    converge(maps, config(V1, V2))  # V1: vip 0, backends 1, 2; V2: vip 1, backend 3
    assert maps.vips[V1.key][0] == 0 and maps.vips[V2.key][0] == 1
    # Remove V1 and real 12 is gone: V2 keeps its ids, a new VIP takes vip id 0.
    v3 = Vip(key("10.0.0.102"), (real(15), real(16)))
    converge(maps, config(V2, v3))
    assert maps.vips[V2.key][0] == 1 and maps.vips[v3.key][0] == 0
    assert {b[1]: bid for bid, b in maps.backends.items()} == {
        ip("10.0.0.13"): 3,
        ip("10.0.0.15"): 1,
        ip("10.0.0.16"): 2,
    }


def test_new_backends_do_not_take_ids_of_backends_still_in_use() -> None:
    maps = Maps()
    converge(maps, config(V1))
    plan = converge(maps, config(replace(V1, reals=(real(12), real(14)))))
    put = plan.ops[0]
    assert isinstance(put, PutBackend) and put.backend_id == 3  # 1 is freed only later


def test_out_of_backend_ids_counts_peak_usage() -> None:
    maps = Maps()
    converge(maps, config(V1, max_reals=3))  # ids 1 and 2 in use, none spare
    # Replacing both reals needs 2 new ids before the old ones go: 4 at peak.
    with pytest.raises(PlanError, match=r"not enough backend ids"):
        make_plan(maps.live(), config(Vip(key(), (real(14), real(15))), max_reals=3))
    converge(maps, config(Vip(key(), (real(14), real(15))), max_reals=5))


def test_out_of_vip_ids() -> None:
    with pytest.raises(PlanError, match=r"not enough VIP ids: tunables\.max_vips = 1"):
        make_plan(LiveState(), config(V1, V2, max_vips=1))


def test_removed_vip_frees_ids_for_new_ones_in_the_same_plan() -> None:
    maps = Maps()
    converge(maps, config(V1, max_vips=1, max_reals=3))
    converge(maps, config(Vip(key("10.0.0.102"), (real(21), real(22))), max_vips=1, max_reals=3))


# -- live state left by a crash -----------------------------------------------------------


def test_orphans_are_deleted_first() -> None:
    maps = Maps()
    converge(maps, config(V1))
    maps.rings[5] = (0,) * M
    maps.backends[7] = (5, ip("10.0.0.99"), mac(1), 1)
    live = maps.live()
    assert live.orphan_vip_ids == {5} and live.orphan_backend_ids == {7}
    plan = converge(maps, config(V1, V2))
    assert plan.ops[:2] == (DelRing(5), DelBackend(7, None, None))
    assert plan.orphan_rings == 1 and plan.orphan_backends == 1
    assert (
        render_plan(plan).splitlines()[0] == "cleanup: delete 1 orphan ring(s), 1 orphan backend(s)"
    )


def test_orphan_ids_are_used_until_deleted() -> None:
    live = LiveState(orphan_vip_ids=frozenset({0}), orphan_backend_ids=frozenset({1}))
    plan = make_plan(live, config(V1))
    assert plan.ops[:2] == (DelRing(0), DelBackend(1, None, None))
    put = plan.ops[2]
    assert isinstance(put, PutBackend) and put.backend_id == 1 and put.vip_id == 0


def test_duplicate_live_backends_keep_lowest_id() -> None:
    maps = Maps()
    converge(maps, config(V1))
    maps.backends[9] = (0, ip("10.0.0.11"), mac(11), 1)  # a second (vip, 10.0.0.11)
    plan = converge(maps, config(V1))
    assert plan.ops[-1] == DelBackend(9, key(), ip("10.0.0.11"))
    assert {b[1]: bid for bid, b in maps.backends.items()} == {
        ip("10.0.0.11"): 1,
        ip("10.0.0.12"): 2,
    }


def test_live_ids_beyond_tunables_are_refused() -> None:
    maps = Maps()
    converge(maps, config(V1, V2))
    with pytest.raises(PlanError, match=r"maps must be recreated"):
        make_plan(maps.live(), config(V1, V2, max_vips=1))


# -- ordering under any change, and after a crash at any point ----------------------------

ADDRS = ["10.0.0.100", "10.0.0.101", "10.0.0.102"]


@st.composite
def configs(draw: st.DrawFn) -> Config:
    vips = []
    for a in draw(st.lists(st.sampled_from(ADDRS), unique=True, max_size=3)):
        ns = draw(st.lists(st.integers(11, 16), unique=True, max_size=4))
        reals = tuple(
            real(n, draw(st.integers(0, 3)), draw(st.sampled_from([n, 0x40 + n]))) for n in ns
        )
        vips.append(Vip(key(a), reals))
    return config(*vips, max_vips=4, max_reals=40)


@settings(max_examples=60, deadline=None)
@given(a=configs(), b=configs(), cut=st.integers(0, 40), c=configs())
def test_property_consistent_at_every_op_and_after_crash(
    a: Config, b: Config, cut: int, c: Config
) -> None:
    maps = Maps()
    converge(maps, a)
    plan = make_plan(maps.live(), b)
    run(maps, plan, upto=cut)  # the daemon dies after `cut` ops ...
    converge(maps, c)  # ... and a restart with any config (b, a or another) heals it
    converge(maps, b)


@settings(max_examples=30, deadline=None)
@given(a=configs(), b=configs(), cut=st.integers(0, 40))
def test_property_revert_after_crash(a: Config, b: Config, cut: int) -> None:
    maps = Maps()
    converge(maps, a)
    run(maps, make_plan(maps.live(), b), upto=cut)
    converge(maps, a)


# -- memoised work: the fast path for unchanged VIPs, lazy rings and ids -----------------


@settings(max_examples=80, deadline=None)
@given(a=configs(), b=configs(), cut=st.integers(0, 40))
def test_property_fast_path_gives_the_same_plan(a: Config, b: Config, cut: int) -> None:
    maps = Maps()
    converge(maps, a)
    run(maps, make_plan(maps.live(), b), upto=cut)  # any live state, half-applied ones too
    live = maps.live()
    fast = make_plan(live, b)
    with pytest.MonkeyPatch.context() as mp:
        # Texts that never compare equal: every VIP takes the general path.
        mp.setattr(Vip, "state_text", property(lambda self: None))
        general = make_plan(live, b)
    assert fast == general


def test_fast_path_sees_every_kind_of_change() -> None:
    maps = Maps()
    converge(maps, config(V1))
    live = maps.live()
    assert make_plan(live, config(V1)).ops == ()
    for changed in (
        replace(V1, reals=(real(11), real(12, mac_n=0x40))),  # a MAC
        replace(V1, reals=(real(11), real(12, weight=2))),  # a weight
        replace(V1, reals=(real(11),)),  # a real fewer
        replace(V1, reals=(real(11), real(12), real(13))),  # a real more
    ):
        assert make_plan(live, config(changed)).ops != ()
    # The stored digest unknown (a crash mid-swap): the ring is rebuilt.
    lv = live.vips[0]
    crashed = LiveState(vips=(replace(lv, ring_digest=0),))
    assert [type(op).__name__ for op in make_plan(crashed, config(V1)).ops] == [
        "PutVip", "SwapRing", "PutVip"]


def test_derived_texts_follow_the_values() -> None:
    v = Vip(key(), (real(12, 2), real(11)))
    assert v.state_text == "10.0.0.11 02:00:00:00:00:0b 1\n10.0.0.12 02:00:00:00:00:0c 2\n"
    assert v.ring_text == "10.0.0.11 1\n10.0.0.12 2\n"
    w = replace(v, reals=(real(12, 3), real(11)))  # a new object: its own texts
    assert w.ring_text == "10.0.0.11 1\n10.0.0.12 3\n" and v.ring_text.endswith("2\n")
    assert desired_digest(v, M) != desired_digest(w, M)
    assert desired_digest(v, M) == desired_digest(Vip(key(), (real(11), real(12, 2))), M)
    assert desired_digest(v, 103) != desired_digest(v, M)  # memoised per ring size
    lv = LiveVip(key(), 0, 0, (LiveBackend(3, ip("10.0.0.11"), mac(11), 1),
                               LiveBackend(1, ip("10.0.0.11"), mac(11), 5),
                               LiveBackend(2, ip("10.0.0.12"), mac(12), 2)))
    assert [b.id for b in lv.kept.values()] == [1, 2]
    assert [b.id for b in lv.surplus] == [3]
    assert lv.ring_text == "10.0.0.11 5\n10.0.0.12 2\n" and lv.top_backend_id == 3


def test_swap_ring_builds_its_ring_on_demand() -> None:
    plan = make_plan(LiveState(), config(V1))
    swap = next(op for op in plan.ops if isinstance(op, SwapRing))
    assert "ring" not in {f.name for f in dataclasses.fields(SwapRing)}
    assert swap.ring == build_ring(list(swap.members), M) and len(swap.ring) == M
    assert set(swap.ring) == {1, 2}


@settings(max_examples=200, deadline=None)
@given(
    used=st.sets(st.integers(1, 20)),
    steps=st.lists(st.one_of(st.just(0), st.integers(1, 20)), max_size=30),
)
def test_property_lazy_ids_match_a_plain_allocator(used: Set[int], steps: List[int]) -> None:
    ids = _Ids(1, 21, lambda: iter(used), "out")
    plain = set(used)
    for step in steps:  # 0: take one; n: free n
        if step:
            ids.free(step)
            plain.discard(step)
            continue
        free = [i for i in range(1, 21) if i not in plain]
        if not free:
            with pytest.raises(PlanError):
                ids.take()
            continue
        assert ids.take() == free[0]
        plain.add(free[0])


# -- rendering ----------------------------------------------------------------------------


def test_render_plan() -> None:
    maps = Maps()
    converge(maps, config(V1, V2))
    v3 = Vip(key("10.0.0.102"), (real(15),))
    plan = make_plan(maps.live(), config(replace(V1, reals=(real(11, 0), real(14))), v3))
    swap = next(op for op in plan.ops if isinstance(op, SwapRing) and op.vip == V1.key)
    pct = f"{swap.moved / M:.1%}"
    assert render_plan(plan).splitlines() == [
        "vip 10.0.0.101:53/udp: removed, 1 reals",
        "  -real 10.0.0.13",
        f"vip 10.0.0.100:80/tcp: changed, {swap.moved} of {M} ring slots move ({pct})",
        "  real 10.0.0.11 weight 1 -> 0 (draining)",
        "  +real 10.0.0.14",
        "  -real 10.0.0.12",
        "vip 10.0.0.102:80/tcp: added, 1 reals, 101 ring slots",
        "  +real 10.0.0.15",
    ]


def test_render_ring_unchanged() -> None:
    maps = Maps()
    converge(maps, config(V1))
    plan = make_plan(maps.live(), config(replace(V1, reals=(real(11, mac_n=1), real(12)))))
    assert render_plan(plan).splitlines()[0] == "vip 10.0.0.100:80/tcp: changed, ring unchanged"


def test_render_big_ring_percentage() -> None:
    cfg = config(V1, m=65537)
    maps = Maps()
    run(maps, make_plan(LiveState(), cfg), m=65537)
    plan = make_plan(maps.live(), config(replace(V1, reals=(*V1.reals, real(13))), m=65537))
    line = render_plan(plan).splitlines()[0]
    swap = next(op for op in plan.ops if isinstance(op, SwapRing))
    assert line == (
        f"vip 10.0.0.100:80/tcp: changed, {swap.moved} of 65537 ring slots move "
        f"({swap.moved / 65537:.1%})"
    )
    assert 0.30 < swap.moved / 65537 < 0.37  # a third of the slots go to the third real
