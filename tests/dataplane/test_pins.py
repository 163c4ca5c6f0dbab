"""Pinned maps that do not match this build are refused, naming the map."""

from __future__ import annotations

import os

import pytest

from tests.dataplane.harness import TEST_TUNABLES
from xdplbd.kernel import libbpf, loader


def test_wrong_value_size_under_a_pinned_name_is_refused() -> None:
    pin_dir = f"/sys/fs/bpf/xdplb-badpin-{os.getpid()}"
    os.makedirs(pin_dir, exist_ok=True)
    fd = libbpf.create_array("backends", 8, TEST_TUNABLES.max_reals)  # real value is 32 bytes
    try:
        libbpf.obj_pin(fd, f"{pin_dir}/backends")
        with pytest.raises(loader.LoadError) as err:
            loader.load(pin_dir, TEST_TUNABLES)
        msg = str(err.value)
        assert f"{pin_dir}/backends" in msg
        assert "value size is 8, expected 32" in msg
        assert "type is array, expected array" not in msg
        assert not loader.pinned_programs(pin_dir), "nothing may be loaded after a refusal"
    finally:
        os.close(fd)
        loader.remove_pins(pin_dir)


def test_changed_tunable_is_refused(program: loader.Program) -> None:
    from tests.dataplane.conftest import PIN_DIR

    bigger = TEST_TUNABLES.__class__(**{**TEST_TUNABLES.__dict__, "conntrack_size": 524288})
    with pytest.raises(loader.LoadError, match=r"conntrack: max entries is 32768, expected 65536"):
        loader.load(PIN_DIR, bigger)


def test_unchanged_source_reuses_the_pinned_program(program: loader.Program) -> None:
    from tests.dataplane.conftest import PIN_DIR

    again = loader.load(PIN_DIR, TEST_TUNABLES)
    try:
        assert not again.compiled
        assert again.info.id == program.info.id
    finally:
        os.close(again.fd)


def test_a_new_vip_index_next_to_older_pins_learns_the_live_vips() -> None:
    """An upgrade from a build without vip_index: BCC creates the index empty
    while `vips` keeps its entries, and the plan will write nothing for them."""
    import ipaddress

    from xdplbd.core import schema
    from xdplbd.core.model import VipKey
    from xdplbd.kernel.dataplane import DataPlane

    pin_dir = f"/sys/fs/bpf/xdplb-upgrade-{os.getpid()}"
    os.makedirs(pin_dir, exist_ok=True)
    key = schema.pack_vip_key(VipKey(ipaddress.ip_address("10.9.0.1"), 443, "tcp"))
    fd = libbpf.lib().bpf_map_create(1, b"vips", schema.VIP_KEY.size, schema.VIP_INFO.size,
                                     TEST_TUNABLES.max_vips, None)  # BPF_MAP_TYPE_HASH
    assert fd >= 0
    prog = None
    try:
        libbpf.Map(fd, "vips", owned=False).update(key, schema.VIP_INFO.pack(5, 0, 0))
        libbpf.obj_pin(fd, f"{pin_dir}/vips")
        prog = loader.load(pin_dir, TEST_TUNABLES)
        assert prog.compiled
        with DataPlane(pin_dir, TEST_TUNABLES) as dp:
            slot = schema.vip_slot(key, schema.vip_index_slots(TEST_TUNABLES))
            raw = dp.maps["vip_index"].lookup(schema.U32.pack(slot))
            assert raw is not None
            assert schema.VIP_SLOT.unpack(raw[: schema.VIP_SLOT.size]) == (
                schema.VIP_SLOT_EXACT, 5, key)
    finally:
        os.close(fd)
        if prog is not None:
            os.close(prog.fd)
        loader.remove_pins(pin_dir)
