"""The lab client is a client population (xdplbd/lab/sources.py): wrk's new
connections leave from every source address, and the client keeps its ports."""

from __future__ import annotations

from typing import Set

from xdplbd.lab import sources
from xdplbd.lab.load import WrkPool
from xdplbd.lab.topology import Lab, read_sysctl


def _time_wait_addrs(lab: Lab, ns: str, column: int) -> Set[str]:
    out = lab.ns_exec(ns, ["ss", "-Htn", "state", "time-wait"]).stdout
    return {line.split()[column].rsplit(":", 1)[0].strip("[]")
            for line in out.splitlines() if line.strip()}


def test_client_sysctls(lab: Lab) -> None:
    assert read_sysctl(lab.ns_client, "net.ipv4.tcp_tw_reuse") == "1"
    assert read_sysctl(lab.ns_client, "net.ipv4.ip_local_port_range").split() == ["1024",
                                                                                  "65535"]


def test_wrk_pool_uses_every_source_address(lab: Lab) -> None:
    spec = lab.spec
    want = {spec.host4(h) for h in sources.source_hosts(spec)}
    assert len(want) == spec.client_sources >= 2
    real = lab.real_names[0]
    pool = WrkPool(lab, f"http://{lab.real_ip4(real)}/", connections=8, duration=1)
    r = pool.run()
    assert r.requests > 100 and r.failed == 0, r
    assert r.reals == {real: r.requests}
    # Each closed connection leaves a TIME_WAIT socket on one side or the other.
    seen = _time_wait_addrs(lab, lab.ns_client, 2) | _time_wait_addrs(lab, lab.real_ns(real), 3)
    assert want <= seen, (want, seen)
    # root's own sockets keep the primary address, v4 and v6 (the DSR tests rely on it).
    assert lab.client_exec(["ip", "-4", "route", "get", lab.real_ip4(real)]).stdout.split(
        "src ")[1].split()[0] == lab.client_ip4
    assert lab.client_exec(["ip", "-6", "route", "get", lab.real_ip6(real)]).stdout.split(
        "src ")[1].split()[0] == lab.client_ip6


def test_split() -> None:
    assert sources.split(8, 4) == [2, 2, 2, 2]
    assert sources.split(9, 4) == [3, 2, 2, 2]
    assert sources.split(2, 4) == [1, 1]
