"""Issue 14 in the lab, under wrk load: MACs from the neighbour table (the lab's config
has none), a real's MAC changing, an unresolvable real, and the LB's interface going
and coming back."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from typing import Any, Dict, Iterator, Optional

import pytest
from scapy.layers.l2 import ARP, Ether

from tests.e2e.harness import Env, reals_of, running_env, under_load
from xdplbd.core.model import Tunables
from xdplbd.kernel import iface, libbpf
from xdplbd.kernel.dataplane import DataPlane
from xdplbd.lab.demo import wait_for
from xdplbd.lab.topology import IFNAME, in_netns

UNKNOWN_REAL = "10.99.0.77"  # in the lab's subnet, where no host lives


@pytest.fixture(scope="module")
def nenv(request: pytest.FixtureRequest) -> Iterator[Env]:
    """A lab of this module's own (it changes MACs and deletes the LB's interface)."""
    yield from running_env(request, "nb", "native")


@pytest.fixture
def env(nenv: Env) -> Env:
    nenv.reset()
    return nenv


def backend_macs(env: Env) -> Dict[str, str]:
    """{real ip: MAC} as the maps hold it (every VIP agrees: one MAC per host)."""
    with DataPlane(env.lb.pin_dir, Tunables()) as dp:
        return {str(b.ip): b.mac for v in dp.read_live().vips for b in v.backends}


def status(env: Env) -> Dict[str, Any]:
    out = env.lb.cli("status", "--json")
    data: Dict[str, Any] = json.loads(out.stdout)
    return data


def set_mac_and_announce(env: Env, real: str, mac: str) -> float:
    """`ip link set eth0 address MAC` on the real, then its gratuitous ARP; returns the
    monotonic time the announcement left."""
    ns = env.lab.real_ns(real)
    ip = env.lab.real_ip4(real)
    subprocess.run(["ip", "-n", ns, "link", "set", IFNAME, "address", mac], check=True)
    garp = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=mac, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip)
    with in_netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    with sock:
        sock.bind((IFNAME, 0))
        t = time.monotonic()
        sock.send(bytes(garp))
    return t


def test_no_mac_in_the_config_and_every_real_resolved(env: Env) -> None:
    cfg = env.config()
    assert not any("mac" in r for v in cfg["vips"] for r in v["reals"])
    macs = env.lab.real_macs()
    want = {env.lab.real_ip4(r): macs[r] for r in env.baseline}
    want.update({env.lab.real_ip6(r): macs[r] for r in env.baseline})
    assert backend_macs(env) == want
    for v in env.lb.state()["vips"]:
        assert {r["mac_source"] for r in v["reals"]} == {"neighbour"}
    assert env.lab.curl(f"http://{env.lab.vip4}/").strip() in env.baseline
    assert env.lab.curl(f"http://[{env.lab.vip6}]/").strip() in env.baseline


def test_real_mac_change_under_load(env: Env) -> None:
    real = "real2"
    ip = env.lab.real_ip4(real)
    old = env.lab.real_macs()[real]
    new = "02:14:00:00:00:12"
    seen: Dict[str, Optional[float]] = {"sent": None, "updated": None}

    def change() -> None:
        seen["sent"] = set_mac_and_announce(env, real, new)
        wait_for(lambda: backend_macs(env).get(ip) == new, 5, "the map entry to follow")
        seen["updated"] = time.monotonic()

    try:
        run = under_load(env, change)
        assert seen["sent"] is not None and seen["updated"] is not None
        follow_s = seen["updated"] - seen["sent"]
        print(f"\nmap entry of {ip} followed the gratuitous ARP in {follow_s * 1000:.1f} ms")
        assert follow_s < 1.0
        run.record("real MAC change")
        ka, nc = run.keepalive, run.newconn
        before = reals_of(run.before)
        on_it = [p for p, r in before.items() if r == real]
        assert on_it, before  # the change did concern open connections
        assert ka.failed == 0 and run.keepalive_stuck == [], (ka.errors, run.after)
        assert nc.failed == 0, nc.errors
        assert reals_of(run.after) == before  # flows stayed on their real
        log = env.lb.log_lines()
        assert sum(1 for ln in log if f"neighbour {ip} on eth0: MAC {old} -> {new}" in ln) == 1
    finally:
        set_mac_and_announce(env, real, old)
        wait_for(lambda: backend_macs(env).get(ip) == old, 5, "the MAC to come back")


def test_unresolvable_real_gets_no_flows(env: Env) -> None:
    cfg = env.config()
    cfg["vips"][0]["reals"].append({"ip": UNKNOWN_REAL})

    def change() -> None:
        env.lb.apply(cfg)

    run = under_load(env, change, after_s=3.5)  # the kernel gives up after ~3 s
    run.record("unresolvable real added")
    assert run.keepalive.failed == 0 and run.newconn.failed == 0
    assert reals_of(run.after) == reals_of(run.before)
    assert UNKNOWN_REAL not in backend_macs(env)  # no backend, so no flow can reach it
    st = status(env)
    reals = {r["ip"]: r for r in st["vips"][0]["reals"]}
    assert reals[UNKNOWN_REAL]["state"] == "down"
    assert reals[UNKNOWN_REAL]["mac"] is None
    assert reals[UNKNOWN_REAL]["reason"] == "unresolved: no ARP reply", reals[UNKNOWN_REAL]
    assert {reals[env.lab.real_ip4(r)]["state"] for r in env.baseline} == {"active"}
    text = env.lb.cli("status").stdout
    assert f"{UNKNOWN_REAL}" in text and "unresolved: no ARP reply" in text
    answers = {env.lab.curl(f"http://{env.lab.vip4}/").strip() for _ in range(30)}
    assert answers <= set(env.baseline)


def _recreate_lb_link(env: Env, mac: str) -> float:
    lab = env.lab
    s = lab.spec
    subprocess.run(["ip", "-n", lab.ns_br, "link", "add", "v-lb", "type", "veth", "peer",
                    "name", IFNAME, "netns", lab.ns_lb, "address", mac], check=True)
    t = time.monotonic()  # the link exists from here
    subprocess.run(["ip", "-n", lab.ns_br, "link", "set", "v-lb", "master", "br0", "up"],
                   check=True)
    lab._attach_peer_xdp()
    batch = "\n".join([
        f"addr add {lab.lb_ip4}/{s.net4.prefixlen} dev {IFNAME}",
        f"addr add {lab.lb_ip6}/{s.net6.prefixlen} dev {IFNAME} nodad",
        f"addr add {s.vip4}/32 dev {IFNAME}",
        f"addr add {s.vip6}/128 dev {IFNAME} nodad",
        f"link set {IFNAME} up"]) + "\n"
    subprocess.run(["ip", "-n", lab.ns_lb, "-batch", "-"], input=batch, text=True, check=True)
    return t


def _attached(env: Env) -> int:
    with in_netns(env.lab.ns_lb):
        try:
            return libbpf.xdp_query(iface.ifindex(IFNAME)).prog_id
        except (iface.InterfaceError, OSError):
            return 0


def test_lb_interface_goes_and_comes_back(env: Env) -> None:
    prog = env.lb.state()["prog_id"]
    lb_mac = env.lab.lb_mac
    n_log = len(env.lb.log_lines())
    subprocess.run(["ip", "-n", env.lab.ns_lb, "link", "del", IFNAME], check=True)
    wait_for(lambda: env.lb.state().get("interface_problem"), 5, "the daemon to notice")
    st = status(env)
    assert st["dataplane"]["attached"] is False
    assert st["dataplane"]["problem"] == "interface eth0 gone; the data plane is not attached"
    assert "interface eth0 gone; the data plane is not attached" in env.lb.cli("status").stdout
    appeared = _recreate_lb_link(env, lb_mac)
    wait_for(lambda: _attached(env) == prog, 5, "the program to be re-attached")
    reattach_s = time.monotonic() - appeared
    print(f"\nre-attached {reattach_s * 1000:.0f} ms after the link appeared (upper bound)")
    assert reattach_s < 1.0
    wait_for(lambda: "interface_problem" not in env.lb.state(), 5, "the problem to clear")
    # Traffic resumes, through the data plane (its counters move).
    answers = {env.lab.curl(f"http://{env.lab.vip4}/", timeout=5).strip() for _ in range(20)}
    assert answers <= set(env.baseline) and answers
    new = env.lb.log_lines()[n_log:]
    lost = [ln for ln in new if "interface eth0 gone" in ln]
    back = [ln for ln in new if "interface eth0 is back" in ln]
    assert len(lost) == 1 and len(back) == 1, "\n".join(new)
    assert status(env)["dataplane"]["attached"] is True


def test_reload_reattaches_a_missing_program(env: Env) -> None:
    prog = env.lb.state()["prog_id"]
    with in_netns(env.lab.ns_lb):
        libbpf.xdp_detach(iface.ifindex(IFNAME), "native")
    env.lb.cli("reload")
    assert _attached(env) == prog
    last = env.lb.state()["last_reload"]
    assert "re-attached" in last.get("link", ""), last
