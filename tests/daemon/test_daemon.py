"""xdplbd against the real kernel: start, watch, reload, reject, stop, restart, crash."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Dict, List

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from tests.daemon.conftest import (
    LB_IF,
    LB_MAC,
    PEER_IF,
    Daemon,
    Netns,
    dump_maps,
    make_config,
    real,
    vip4,
)
from xdplbd.core import schema
from xdplbd.core.config import parse_config
from xdplbd.core.plan import desired_digest
from xdplbd.kernel import libbpf, loader
from xdplbd.kernel.netns import in_netns
from xdplbd.service.daemon import DEBOUNCE_S


def live_reals(d: Daemon) -> Dict[str, Dict[str, int]]:
    """{vip key: {real ip: weight}} as the maps hold it."""
    with d.dataplane() as dp:
        return {str(v.key): {str(b.ip): b.weight for b in v.backends}
                for v in dp.read_live().vips}


def wait_reals(d: Daemon, want: Dict[str, Dict[str, int]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live_reals(d) == want:
            return
        time.sleep(0.02)
    raise AssertionError(f"maps {live_reals(d)} never became {want}\n{d.read_log()}")


def assert_consistent(d: Daemon) -> None:
    """Every live VIP has a ring; every ring slot names a live backend of that VIP."""
    with d.dataplane() as dp:
        live = dp.read_live()
        backends = dp.backend_entries()
        for v in live.vips:
            ring = dp.ring(v.id)
            assert ring is not None, f"{v.key} has no ring"
            for bid in set(ring) - {0}:
                assert bid in backends and backends[bid].vip_id == v.id, (v.key, bid)


VIP = "10.50.0.100:80/tcp"


def test_start_applies_config_notifies_and_writes_state(daemon: Daemon) -> None:
    daemon.start()
    ready = daemon.messages[-1]
    assert "STATUS=generation 1: 1 VIPs, 3 reals on lb0" in ready.split("\n")
    assert live_reals(daemon) == {VIP: {"10.50.0.11": 1, "10.50.0.12": 1, "10.50.0.13": 1}}
    st = daemon.state()
    assert st["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    assert daemon.netns.xdp_prog_id() == st["prog_id"]
    assert st["xdp_mode"] == "native" and st["interface"] == LB_IF
    with daemon.dataplane() as dp:
        live = dp.read_live()
        assert [(v["vip"], v["port"], v["vip_id"]) for v in st["vips"]] == \
            [(str(v.key.addr), v.key.port, v.id) for v in live.vips]
        assert [(r["ip"], r["backend_id"], r["weight"]) for r in st["vips"][0]["reals"]] == \
            [(str(b.ip), b.id, b.weight) for b in live.vips[0].backends]
        assert dp.settings()[1] == 30 * 10**9
    log = daemon.read_log()
    assert "vip 10.50.0.100:80/tcp: +real 10.50.0.12" in log
    assert "vip 10.50.0.100:80/tcp: +vip" in log


def _rename(d: Daemon, text: str) -> None:  # editors: write a temp file, rename it over
    d.write_config(text)


def _cp(d: Daemon, text: str) -> None:
    src = os.path.join(d.dir, "staged.json")
    with open(src, "w") as f:
        f.write(text)
    subprocess.run(["cp", src, d.config], check=True)


def _tee(d: Daemon, text: str) -> None:
    subprocess.run(["tee", d.config], input=text.encode(), stdout=subprocess.DEVNULL, check=True)


def _in_place(d: Daemon, text: str) -> None:  # truncate, then write in two flushed chunks
    with open(d.config, "r+") as f:
        f.truncate(0)
        half = len(text) // 2
        f.write(text[:half])
        f.flush()
        time.sleep(0.02)
        f.write(text[half:])


def _delete_create(d: Daemon, text: str) -> None:
    os.unlink(d.config)
    time.sleep(0.05)
    with open(d.config, "w") as f:
        f.write(text)


EDITS = {"rename": _rename, "cp": _cp, "tee": _tee, "in-place": _in_place,
         "delete-then-create": _delete_create}


@pytest.mark.parametrize("how", sorted(EDITS))
def test_every_way_of_writing_the_file_reloads_exactly_once(daemon: Daemon, how: str) -> None:
    daemon.start()
    before = daemon.state()["reloads"]
    EDITS[how](daemon, make_config([vip4(reals=[real(1), real(4, weight=3)])]))
    wait_reals(daemon, {VIP: {"10.50.0.11": 1, "10.50.0.14": 3}})
    time.sleep(DEBOUNCE_S * 4)  # give any straggling event the chance to reload again
    st = daemon.state()
    assert st["reloads"] == before + 1, daemon.read_log()
    assert st["last_reload"]["result"] == "ok"
    assert_consistent(daemon)


def test_half_written_file_is_rejected_and_the_complete_write_wins(daemon: Daemon) -> None:
    daemon.start()
    text = make_config([vip4(reals=[real(5)])])
    with open(daemon.config, "w") as f:
        f.write(text[: len(text) // 2])
    daemon.wait_state(lambda s: s.get("last_reload", {}).get("result") == "rejected")
    assert live_reals(daemon) == {VIP: {"10.50.0.11": 1, "10.50.0.12": 1, "10.50.0.13": 1}}
    with open(daemon.config, "w") as f:
        f.write(text)
    wait_reals(daemon, {VIP: {"10.50.0.15": 1}})


def test_same_content_again_makes_zero_map_writes(daemon: Daemon) -> None:
    daemon.start()
    before = dump_maps(daemon)
    gen = daemon.state()["generation"]
    with open(daemon.config) as f:
        text = f.read()
    daemon.write_config(text)
    st = daemon.wait_state(lambda s: s["reloads"] == 1)
    assert st["last_reload"]["result"] == "ok" and st["last_reload"]["operations"] == 0
    assert st["generation"] == gen
    daemon.kill(signal.SIGHUP)
    st = daemon.wait_state(lambda s: s["reloads"] == 2)
    assert st["last_reload"]["operations"] == 0
    assert dump_maps(daemon) == before


BAD_CONFIGS = {
    "not JSON": ('{"vips": [', "line 1 column"),
    "unknown key": (make_config([vip4(reals=[real(1)])]).replace('"port"', '"prot"'),
                    "vips[0].prot"),
    "bad mac": (make_config([vip4(reals=[{"ip": "10.50.0.11", "mac": "00:0c:29:zz:09:78"}])]),
                'vips[0].reals[0].mac: "00:0c:29:zz:09:78" is not a MAC address'),
    "duplicate vip": (make_config([vip4(reals=[real(1)]), vip4(reals=[real(2)])]), "vips[1]"),
    "tunables change": (make_config([vip4(reals=[real(1)])]).replace('"max_vips": 64',
                                                                      '"max_vips": 128'),
                        "tunables changed"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_rejected_config_changes_nothing(daemon: Daemon, name: str) -> None:
    daemon.start()
    before = dump_maps(daemon)
    text, needle = BAD_CONFIGS[name]
    daemon.write_config(text)
    st = daemon.wait_state(lambda s: s.get("last_reload", {}).get("result") == "rejected")
    assert needle in st["last_reload"]["error"]
    assert dump_maps(daemon) == before
    status = daemon.wait_message("READY=1")
    assert any(line.startswith("STATUS=config rejected") for line in status.split("\n"))
    assert needle in daemon.read_log()
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_sighup_sends_reloading_then_ready(daemon: Daemon) -> None:
    daemon.start()
    daemon.write_config(make_config([vip4(reals=[real(1)])]))
    daemon.wait_message("RELOADING=1")  # the file-change reload
    daemon.wait_message("READY=1")
    daemon.messages.clear()
    t0 = time.monotonic_ns() // 1000
    daemon.kill(signal.SIGHUP)
    reloading = daemon.wait_message("RELOADING=1")
    usec = [int(x.split("=")[1]) for x in reloading.split("\n")
            if x.startswith("MONOTONIC_USEC=")]
    assert usec and t0 <= usec[0] <= time.monotonic_ns() // 1000
    daemon.wait_message("READY=1")
    assert live_reals(daemon) == {VIP: {"10.50.0.11": 1}}


def test_watchdog_pings_when_asked(daemon: Daemon) -> None:
    daemon.start(env={"WATCHDOG_USEC": "200000"})
    t0 = time.monotonic()
    daemon.wait_message("WATCHDOG=1", timeout=2)
    daemon.wait_message("WATCHDOG=1", timeout=2)
    assert time.monotonic() - t0 < 1.0


def test_sigterm_exits_and_leaves_the_data_plane_forwarding(daemon: Daemon) -> None:
    daemon.start()
    prog_id = daemon.state()["prog_id"]
    before = dump_maps(daemon)
    assert daemon.stop(signal.SIGTERM) == 0
    assert "STOPPING=1" in "\n".join(daemon.messages) or daemon.recv(2) == "STOPPING=1"
    assert daemon.netns.xdp_prog_id() == prog_id
    assert dump_maps(daemon) == before


def _syn_frames(n: int) -> List[bytes]:
    return [bytes(Ether(src="02:00:00:00:00:99", dst=LB_MAC)
                  / IP(src="172.16.0.1", dst="10.50.0.100") / TCP(sport=20000 + i, dport=80,
                                                                   flags="S"))
            for i in range(n)]


def _prog_fd(d: Daemon) -> int:
    (name,) = loader.pinned_programs(d.pin_dir)
    return libbpf.obj_get(os.path.join(d.pin_dir, name))


def test_restart_reuses_the_program_and_keeps_conntrack(daemon: Daemon) -> None:
    daemon.start()
    prog_id = daemon.state()["prog_id"]
    fd = _prog_fd(daemon)
    try:
        for frame in _syn_frames(50):
            assert libbpf.test_run(fd, frame).retval == 3  # XDP_TX
    finally:
        os.close(fd)
    with daemon.dataplane() as dp:
        ct_before = sorted(dp.conntrack())
    assert len(ct_before) == 50
    daemon.stop()
    daemon.start()
    assert daemon.state()["prog_id"] == prog_id
    assert daemon.netns.xdp_prog_id() == prog_id
    assert "reused pinned data plane" in daemon.read_log()
    with daemon.dataplane() as dp:
        assert sorted(dp.conntrack()) == ct_before


def test_changed_source_replaces_the_program_atomically(daemon: Daemon) -> None:
    daemon.start()
    old_id = daemon.state()["prog_id"]
    daemon.stop()
    src = os.path.join(daemon.dir, "xdplb.c")
    shutil.copy(loader.source_path(), src)
    with open(src, "a") as f:
        f.write("\n/* a new build */\n")
    # A map that an older build pinned and this one retired.
    retired = os.path.join(daemon.pin_dir, schema.RETIRED_PINS[0])
    fd = libbpf.create_array("old_outcomes", schema.COUNTER.size, 10)
    try:
        libbpf.obj_pin(fd, retired)
    finally:
        os.close(fd)
    daemon.start(env={"XDPLB_BPF_SOURCE": src})
    new_id = daemon.state()["prog_id"]
    assert new_id != old_id and daemon.netns.xdp_prog_id() == new_id
    assert f"replaced XDP program {old_id} with {new_id}" in daemon.read_log()
    assert len(loader.pinned_programs(daemon.pin_dir)) == 1  # the old pin is gone
    assert not os.path.exists(retired)


def test_kill_9_mid_apply_then_restart_converges(daemon: Daemon) -> None:
    daemon.start(env={"XDPLB_TEST_APPLY_DELAY_MS": "40"})
    want_cfg = [vip4(addr=f"10.50.1.{i}", reals=[real(j) for j in range(1, 5)])
                for i in range(1, 7)]
    want_cfg.append(vip4(reals=[real(2), real(7)]))
    daemon.write_config(make_config(want_cfg))
    # Observe the maps while the daemon applies, then kill it halfway.
    deadline = time.monotonic() + 10
    while "+vip" not in daemon.read_log().split("ready on", 1)[-1]:
        assert_consistent(daemon)
        assert time.monotonic() < deadline
    assert_consistent(daemon)
    daemon.stop(signal.SIGKILL)
    assert_consistent(daemon)
    assert live_reals(daemon) != {}
    daemon.start()  # no delay now
    assert_consistent(daemon)
    cfg = parse_config(make_config(want_cfg), "test")
    want = {str(v.key): {str(r.ip): r.weight for r in v.reals} for v in cfg.vips}
    assert live_reals(daemon) == want
    with daemon.dataplane() as dp:
        digests = {str(v.key): v.ring_digest for v in dp.read_live().vips}
    assert digests == {str(v.key): desired_digest(v, cfg.tunables.ring_size) for v in cfg.vips}
    st = daemon.state()
    assert sorted(f"{v['vip']}:{v['port']}/{v['protocol']}" for v in st["vips"]) == sorted(want)


def test_several_instances_run_side_by_side(daemon: Daemon, workdir: str) -> None:
    other_ns = Netns()
    other = Daemon(other_ns, os.path.join(workdir, "second"))
    try:
        other.write_config(make_config([vip4(addr="10.60.0.100", reals=[real(9)])]))
        daemon.start(wait=False)
        other.start(wait=False)
        daemon.wait_message("READY=1", timeout=60)
        other.wait_message("READY=1", timeout=60)
        assert live_reals(daemon) == {VIP: {"10.50.0.11": 1, "10.50.0.12": 1, "10.50.0.13": 1}}
        assert live_reals(other) == {"10.60.0.100:80/tcp": {"10.50.0.19": 1}}
        assert daemon.state()["prog_id"] != other.state()["prog_id"]
    finally:
        other.cleanup()
        other_ns.delete()


def test_invalid_config_at_start_exits_1_naming_the_field(daemon: Daemon) -> None:
    daemon.write_config(make_config([vip4(port=0, reals=[real(1)])]))
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1
    assert "vips[0].port: 0 is out of range 1..65535" in daemon.read_log()


def test_world_writable_config_is_refused(daemon: Daemon) -> None:
    os.chmod(daemon.config, 0o666)
    daemon.start(wait=False)
    assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1
    assert "is world-writable" in daemon.read_log()


# --- zero loss across restarts ---------------------------------------------------

class Sender(threading.Thread):
    """Blast VIP frames into the LB's veth from its peer with AF_PACKET."""

    def __init__(self, netns: Netns, pps: int) -> None:
        super().__init__(daemon=True)
        with in_netns(netns.name):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            self.sock.bind((PEER_IF, 0))
        self.frames = _syn_frames(256)
        for i, f in enumerate(self.frames):  # established flows: ACKs, not SYNs
            b = bytearray(f)
            b[47] = 0x10
            self.frames[i] = bytes(b)
        self.pps = pps
        self.sent = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        batch = 100
        interval = batch / self.pps
        next_t = time.monotonic()
        while not self.stop_flag.is_set():
            for i in range(batch):
                self.sock.send(self.frames[(self.sent + i) % len(self.frames)])
            self.sent += batch
            next_t += interval
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def test_five_restarts_under_traffic_lose_zero_packets(daemon: Daemon) -> None:
    daemon.start()
    with daemon.dataplane() as dp:
        before = dp.outcomes()
    sender = Sender(daemon.netns, pps=20_000)
    sender.start()
    try:
        src = os.path.join(daemon.dir, "xdplb.c")
        for i in range(5):
            daemon.stop()
            env: Dict[str, Any] = {}
            if i == 2:  # one restart with a new build: an atomic program replacement
                shutil.copy(loader.source_path(), src)
                with open(src, "a") as f:
                    f.write(f"\n/* build {i} */\n")
                env = {"XDPLB_BPF_SOURCE": src}
            daemon.start(env=env)
    finally:
        sender.stop_flag.set()
        sender.join()
    time.sleep(0.2)  # let the last frames drain through the veth
    with daemon.dataplane() as dp:
        after = dp.outcomes()
    delta = {k: after[k][0] - before[k][0] for k in after}
    assert sender.sent > 20_000
    assert delta["tx"] == sender.sent, (delta, sender.sent)
    assert delta["pass"] == 0 and delta["drop"] == 0
    assert "replaced XDP program" in daemon.read_log()
