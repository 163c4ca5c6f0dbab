"""A map removed or replaced under a running xdplbd is detected and reported, and the
daemon never writes on (xdplbd/service/pinwatch.py)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.daemon.conftest import Daemon, make_config, real, vip4
from xdplbd.kernel import libbpf


def _reload(daemon: Daemon, n: int) -> dict:
    daemon.kill(signal.SIGHUP)
    return daemon.wait_state(lambda s: s.get("reloads") == n)


@pytest.mark.parametrize("how", ["replaced", "removed"])
def test_changed_pin_is_reported_and_never_written(daemon: Daemon, how: str) -> None:
    daemon.start()
    path = os.path.join(daemon.pin_dir, "backends")
    held = libbpf.obj_get(path)  # the daemon's map, to restore it afterwards
    other = libbpf.create_array("impostor", 32, 256)
    try:
        os.unlink(path)
        if how == "replaced":
            libbpf.obj_pin(other, path)
        before = libbpf.Map(libbpf.obj_get(path), "b").lookup_array_raw() \
            if how == "replaced" else b""
        # A config change: the daemon must refuse it rather than write on.
        daemon.write_config(make_config([vip4(reals=[real(1), real(2), real(3), real(4)])]))
        st = daemon.wait_state(lambda s: s.get("last_reload", {}).get("result") == "rejected")
        err = st["last_reload"]["error"]
        assert f"{path} was {how}" in err and "not writing to the maps" in err, err
        assert f"pins changed: {path} was {how}" in daemon.read_log()
        if how == "replaced":
            after = libbpf.Map(libbpf.obj_get(path), "b").lookup_array_raw()
            assert after == before  # nothing written into the impostor
        # Restored: the next reload applies.
        if os.path.exists(path):
            os.unlink(path)
        libbpf.obj_pin(held, path)
        st = _reload(daemon, st["reloads"] + 1)
        assert st["last_reload"]["result"] == "ok", daemon.read_log()
        with daemon.dataplane() as dp:
            assert len(dp.read_live().vips[0].backends) == 4
    finally:
        os.close(held)
        os.close(other)
