"""The control plane's shell against real maps: read_live's reuse of decoded
records, new rings installed ahead in batches, and counters that outlive
their real."""

from __future__ import annotations

from typing import List

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.dataplane import harness
from tests.dataplane.conftest import PIN_DIR
from tests.dataplane.harness import TEST_TUNABLES, DataPlaneHarness, real, vip
from xdplbd.core import schema
from xdplbd.core.model import Config, Vip
from xdplbd.core.plan import SwapRing, make_plan
from xdplbd.kernel.dataplane import DataPlane


def _vips(*addrs: str) -> List[Vip]:
    return [vip(a, 80, "tcp", [real(f"10.9.{i}.{j}", f"02:00:00:09:{i:02x}:{j:02x}")
                               for j in range(1, 4)])
            for i, a in enumerate(addrs)]


def _fresh_read() -> object:
    with DataPlane(PIN_DIR, TEST_TUNABLES) as other:  # nothing cached
        return other.read_live()


def _assert_consistent(dp: DataPlane) -> None:
    """Every VIP has a ring, and every ring slot names a backend of that VIP."""
    backends = dp.backend_entries()
    for v in dp.read_live().vips:
        ring = dp.ring(v.id)
        assert ring is not None, f"{v.key} has no ring"
        for bid in set(ring) - {0}:
            assert bid in backends and backends[bid].vip_id == v.id, (v.key, bid)


def test_read_live_reuses_what_did_not_change_and_sees_what_did(dpx: DataPlaneHarness) -> None:
    dpx.configure(_vips("10.9.0.100", "10.9.0.101", "10.9.0.102"))
    first = dpx.read_live()
    again = dpx.read_live()
    assert again == first == _fresh_read()
    assert all(a is b for a, b in zip(again.vips, first.vips))  # decoded once

    # Behind the cache's back: a weight, a VIP's digest, a VIP entry gone.
    b = first.vips[0].backends[1]
    dpx.maps["backends"].update(
        schema.U32.pack(b.id), schema.pack_backend(b.ip, b.mac, first.vips[0].id, 7))
    v1 = first.vips[1]
    dpx.maps["vips"].update(schema.pack_vip_key(v1.key), schema.VIP_INFO.pack(v1.id, 0, 42))
    dpx.maps["vips"].delete(schema.pack_vip_key(first.vips[2].key))
    after = dpx.read_live()
    assert after == _fresh_read()
    assert after.vips[0].backends[1].weight == 7 and after.vips[1].ring_digest == 42
    assert [v.key for v in after.vips] == [first.vips[0].key, v1.key]
    assert after.orphan_vip_ids == {first.vips[2].id}  # its ring, now unreferenced
    assert after.vips[0].backends[0] is first.vips[0].backends[0]  # untouched: reused


def test_new_rings_go_in_ahead_in_one_batch_and_nothing_is_inconsistent(
    dpx: DataPlaneHarness,
) -> None:
    old = _vips("10.9.0.100")
    dpx.configure(old)
    # The old VIP goes; three come, one of them taking the old VIP's id 0.
    new = _vips("10.9.0.110", "10.9.0.111", "10.9.0.112")
    plan = make_plan(dpx.read_live(), Config(vips=tuple(new), tunables=TEST_TUNABLES))
    swaps = [op for op in plan.ops if isinstance(op, SwapRing)]
    assert sorted(op.vip_id for op in swaps) == [0, 1, 2]

    batches: List[List[int]] = []
    put_rings = dpx._put_rings

    def spy(keys: bytes, fds: List[int]) -> None:
        batches.append([schema.U32.unpack_from(keys, 4 * i)[0] for i in range(len(fds))])
        put_rings(keys, fds)

    dpx._put_rings = spy  # type: ignore[method-assign]
    dpx.apply(plan.ops, lambda op: _assert_consistent(dpx))
    # Id 0 was still the old VIP's: its ring waits for its turn.
    assert batches == [[1, 2]]
    for op in swaps:
        assert dpx.ring(op.vip_id) == op.ring
    assert make_plan(dpx.read_live(), Config(vips=tuple(new), tunables=TEST_TUNABLES)).empty


def test_removing_a_real_keeps_the_totals_and_its_slot_starts_again_at_zero(
    dpx: DataPlaneHarness,
) -> None:
    # A hit counts on its real alone: tx, ct_hit and the VIP's total are
    # derived from per-real counters, which must survive their real.
    one, two, three = (real(f"10.8.0.{i}", f"02:00:00:08:00:0{i}") for i in (1, 2, 3))
    dpx.configure([vip("10.8.0.100", 80, "tcp", [one, two])])
    for sport in range(1000, 1040):
        for flags in ("S", "A", "A"):
            frame = bytes(Ether(src=harness.CLIENT_MAC, dst=harness.LB_MAC)
                          / IP(src="10.7.0.1", dst="10.8.0.100")
                          / TCP(sport=sport, dport=80, flags=flags))
            assert dpx.run(frame)[0] == "tx"
    before = dpx.outcomes()
    assert before["tx"][0] == 120 and before["ct_hit"][0] == 80 and before["ct_insert"][0] == 40
    key, vid, _digest = dpx.vip_entries()[0]
    vip_before = dpx.vip_counter(vid)
    assert vip_before[0] == 120
    gone = dpx.backend_id(key, "10.8.0.2")
    assert dpx.real_counter(gone)[0] > 0

    dpx.configure([vip("10.8.0.100", 80, "tcp", [one])])
    assert dpx.outcomes() == before and dpx.vip_counter(vid) == vip_before
    dpx.configure([vip("10.8.0.100", 80, "tcp", [one, three])])
    assert dpx.backend_id(key, "10.8.0.3") == gone  # the freed slot, reused
    assert dpx.real_counter(gone) == (0, 0)
    assert dpx.outcomes() == before and dpx.vip_counter(vid) == vip_before
    # A new VIP in the same id starts from nothing.
    dpx.configure([])
    dpx.configure([vip("10.8.0.101", 80, "tcp", [one])])
    assert dpx.vip_entries()[0][1] == vid and dpx.vip_counter(vid) == (0, 0)
    assert dpx.outcomes() == before
