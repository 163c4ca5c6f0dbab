"""Binary layouts shared with bpf/xdplb.c: the packing helpers the apply path uses."""

from __future__ import annotations

import ipaddress
import struct
from array import array

import pytest

from xdplbd.core import schema


@pytest.mark.parametrize("m", [2, 3, 101, 65537])
def test_pack_ring_is_little_endian_u16_four_to_a_value(m: int) -> None:
    ring = tuple((i * 7919) % 60000 for i in range(m))
    n = schema.ring_values(m)
    want = struct.pack(f"<{n * 4}H", *ring, *([0] * (n * 4 - m)))
    assert schema.pack_ring(ring, m) == want
    assert schema.pack_ring(array("H", ring), m) == want
    assert schema.unpack_ring([want[8 * i : 8 * i + 8] for i in range(n)], m) == ring


def test_backend_vip_id_reads_the_packed_record() -> None:
    raw = schema.pack_backend(ipaddress.ip_address("10.0.0.1"), "02:00:00:00:00:01", 513, 7)
    rec = schema.unpack_backend(raw)
    assert rec is not None and schema.backend_vip_id(raw) == rec.vip_id == 513


def test_outcomes_are_sums_of_disjoint_paths() -> None:
    # Path i carries 10**i packets, so every sum shows which paths it took;
    # 10**9 hits count only on their reals, as does every forwarded packet.
    paths = [(10**i, 100 * 10**i) for i in range(len(schema.PATHS))]
    by = {name: 10**i for i, name in enumerate(schema.PATHS)}
    hits = 10**9
    forwarded = hits + by["ct_new"] + by["icmp_routed"]
    out = schema.outcomes_from_paths(paths, (forwarded, 100 * forwarded))
    assert tuple(out) == schema.OUTCOMES
    assert out["ct_hit"] == (hits, 100 * hits)
    assert out["tx"] == (forwarded, 100 * forwarded)
    assert out["pass"][0] == by["pass"] + by["fragment"] + by["malformed"] + by["other_mac"]
    assert out["drop"] == out["no_real"] == paths[schema.PATHS.index("no_real")]
    assert out["ct_miss"][0] == by["ct_new"] + by["no_real"]
    assert out["ct_insert"][0] == by["ct_new"]
    # Every packet has exactly one verdict: tx, pass and drop split them.
    total = hits + sum(p for p, _ in paths)
    assert out["tx"][0] + out["pass"][0] + out["drop"][0] == total
    assert out["tx"][1] + out["pass"][1] + out["drop"][1] == 100 * total


def test_a_packet_between_two_reads_never_runs_ct_hit_ahead() -> None:
    # The data plane counts a new flow's path before its real, and the tools
    # read the reals first: a packet caught between shows in ct_new but not
    # yet in tx, so ct_hit reads low (never below zero), then catches up.
    paths = [(0, 0)] * len(schema.PATHS)
    paths[schema.PATHS.index("ct_new")] = (1, 60)
    assert schema.outcomes_from_paths(paths, (0, 0))["ct_hit"] == (0, 0)
    assert schema.outcomes_from_paths(paths, (1, 60))["ct_hit"] == (0, 0)


def test_sum_counter_array_totals_every_slot_and_sums_the_asked_ones() -> None:
    ncpu = 3
    # slot s, cpu c: packets s*10 + c, bytes 100 * that
    raw = b"".join(schema.COUNTER.pack(s * 10 + c, 100 * (s * 10 + c))
                   for s in range(4) for c in range(ncpu))
    total, some = schema.sum_counter_array(raw, ncpu, [1, 3])
    every = [schema.sum_counters(raw[s * 16 * ncpu:], ncpu) for s in range(4)]
    assert total == (sum(p for p, _ in every), sum(b for _, b in every))
    assert some == {1: every[1], 3: every[3]}
