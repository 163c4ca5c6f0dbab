"""Binary layouts shared with bpf/xdplb.c: the packing helpers the apply path uses."""

from __future__ import annotations

import ipaddress
import struct
from array import array

import pytest

from xdplbd import schema


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
