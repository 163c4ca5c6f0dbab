"""Health checks, the pure part: what to probe, and rise/fall hysteresis.

The config says how each real is checked (model.HealthCheck). This module turns
that into Checks: one per distinct endpoint and schedule, so an endpoint that
several VIPs share is probed once. A Probe is *what* is sent (its identity is
its key text, which state files store); a Check adds *when* and how results
are judged (interval, rise, fall). The shell (service/health.py) runs them and
feeds each result to `observe`.

Rules (issue 13):
* a real is up after `rise` consecutive successes, down after `fall` failures;
* a check never seen before starts down: a real added by a reload takes new
  flows only once it has passed `rise` checks (effective.py fails the VIP open
  if no real is up, so a VIP whose reals are all new still forwards).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from xdplbd.core.model import HealthCheck, IPAddress, Real, Vip, VipKey

# Probe kinds. "tcp-dsr" is the default TCP check: a SYN to VIP:port framed to
# the real's MAC, the way a client's SYN leaves the data plane.
TCP_DSR, TCP, HTTP, UDP = "tcp-dsr", "tcp", "http", "udp"


def host_port(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


@dataclass(frozen=True)
class Probe:
    """One thing to send and what answer counts as a success."""

    kind: str  # tcp-dsr | tcp | http | udp
    addr: IPAddress  # where it goes: the VIP for tcp-dsr, else the real's IP
    port: int
    timeout: float
    mac: str = ""  # tcp-dsr: the real's MAC (the frame's destination)
    path: str = ""  # http
    host: str = ""  # http Host header
    expect: Tuple[int, int] = (0, 0)  # http
    send: str = ""  # udp
    receive: str = ""  # udp

    # Cached: vip_verdicts() looks up every check's state by key on every apply (16,000
    # string builds, ~50 ms at 1000 VIPs, when it was a plain property).
    @cached_property
    def key(self) -> str:
        """Stable text naming the probe (state files are keyed by it)."""
        at = host_port(self.addr, self.port)
        if self.kind == TCP_DSR:
            return f"tcp-dsr {at} at {self.mac} timeout {self.timeout:g}"
        if self.kind == HTTP:
            return (f"http {at} {self.path} host {self.host} expect "
                    f"{self.expect[0]}-{self.expect[1]} timeout {self.timeout:g}")
        if self.kind == UDP:
            return f"udp {at} send {self.send!r} receive {self.receive!r} timeout {self.timeout:g}"
        return f"tcp {at} timeout {self.timeout:g}"

    def describe(self) -> str:
        """For logs: what was probed, without the timing."""
        at = host_port(self.addr, self.port)
        if self.kind == TCP_DSR:
            return f"tcp {at} at {self.mac}"
        if self.kind == HTTP:
            return f"http {at}{self.path}"
        return f"{self.kind} {at}"


@dataclass(frozen=True)
class Check:
    probe: Probe
    interval: float
    rise: int
    fall: int

    @cached_property
    def key(self) -> str:
        """Names the check's state: the probe and how its results are judged."""
        return f"{self.probe.key} every {self.interval:g} rise {self.rise} fall {self.fall}"


def check_of(vip: VipKey, real: Real) -> Optional[Check]:
    """The Check of one real of a VIP, None if it is not checked."""
    hc: Optional[HealthCheck] = real.healthcheck
    if hc is None or hc.type == "none":
        return None
    port = hc.port if hc.port is not None else vip.port
    if hc.type == "tcp" and hc.dsr:
        if not real.mac:
            return None  # framed to the real's MAC: not checked until it is resolved
        probe = Probe(TCP_DSR, vip.addr, port, hc.timeout, mac=real.mac)
    elif hc.type == "tcp":
        probe = Probe(TCP, real.ip, port, hc.timeout)
    elif hc.type == "http":
        probe = Probe(HTTP, real.ip, port, hc.timeout, path=hc.path,
                      host=hc.host or host_port(real.ip, port).rsplit(":", 1)[0],
                      expect=hc.expect)
    else:
        probe = Probe(UDP, real.ip, port, hc.timeout, send=hc.send, receive=hc.receive)
    return Check(probe, hc.interval, hc.rise, hc.fall)


def checks_of(vip: Vip) -> Tuple[Tuple[IPAddress, Check], ...]:
    """(real IP, its Check) for every checked real of a VIP."""
    out = []
    for r in vip.reals:
        c = check_of(vip.key, r)
        if c is not None:
            out.append((r.ip, c))
    return tuple(out)


def payload(spec: str) -> bytes:
    """A udp send/receive value: "hex:0a0b" is bytes, anything else UTF-8 text."""
    return bytes.fromhex(spec[4:]) if spec.startswith("hex:") else spec.encode()


# -- hysteresis ---------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str  # "SYN-ACK in 0.3 ms", "no SYN-ACK from 10.0.0.100:80", "status 503 ..."
    at: float  # wall time (time.time()) the probe finished


@dataclass(frozen=True)
class HealthState:
    """A check's verdict and the evidence for it."""

    up: bool
    streak: int = 0  # consecutive results against the verdict (towards a transition)
    since: float = 0.0  # wall time of the last transition (or of the first sight)
    last: Optional[Result] = None


NOT_CHECKED = "not checked yet"


def new_state(now: Optional[float] = None) -> HealthState:
    """A check never seen before starts down (it must prove itself `rise` times)."""
    return HealthState(False, 0, time.time() if now is None else now,
                       Result(False, NOT_CHECKED, 0.0))


def observe(st: HealthState, r: Result, rise: int, fall: int) -> Tuple[HealthState, bool]:
    """Fold one result in; (new state, whether the verdict changed)."""
    if r.ok == st.up:
        return replace(st, streak=0, last=r), False
    streak = st.streak + 1
    if streak >= (rise if r.ok else fall):
        return HealthState(r.ok, 0, r.at, r), True
    return replace(st, streak=streak, last=r), False


def transition_text(vip: VipKey, ip: IPAddress, st: HealthState, check: Check) -> str:
    """The log line of a transition, e.g. `vip 10.0.0.100:80/tcp: real 10.0.0.12 down:
    tcp: no SYN-ACK from 10.0.0.100:80 at 02:00:00:00:00:12 (3/3 failed)`."""
    last = st.last.detail if st.last else ""
    if st.up:
        return f"vip {vip}: real {ip} up: {last} ({check.rise}/{check.rise} passed)"
    return f"vip {vip}: real {ip} down: {last} ({check.fall}/{check.fall} failed)"


# -- persistence (the shell writes these dicts as JSON in the state dir) ---------------


def state_to_dict(st: HealthState) -> Dict[str, Any]:
    d: Dict[str, Any] = {"up": st.up, "streak": st.streak, "since": st.since}
    if st.last is not None:
        d["last"] = {"ok": st.last.ok, "detail": st.last.detail, "at": st.last.at}
    return d


def state_from_dict(d: Mapping[str, Any]) -> Optional[HealthState]:
    """A saved state; None if the record is malformed (then the check starts afresh)."""
    try:
        last = d.get("last")
        res = Result(bool(last["ok"]), str(last["detail"]), float(last["at"])) if last else None
        up, streak, since = d["up"], int(d.get("streak", 0)), float(d["since"])
    except (KeyError, TypeError, ValueError):
        return None
    if not isinstance(up, bool) or streak < 0:
        return None
    return HealthState(up, streak, since, res)


def carry(old: Iterable[Check], new: Iterable[Check], states: Mapping[str, HealthState],
          optimistic: bool, now: Optional[float] = None) -> Dict[str, HealthState]:
    """The states of a new set of checks, by key (the states of checks gone are dropped).

    A check kept keeps its state, as does one restored from a state file; a check whose
    probe is unchanged (only its timing changed) keeps its verdict; any other new check
    starts down (`new_state`), or up if `optimistic` (a daemon's very first start)."""
    by_probe = {c.probe.key: states[c.key] for c in old if c.key in states}
    out: Dict[str, HealthState] = {}
    for c in new:
        st = states.get(c.key)
        if st is None:
            st = by_probe.get(c.probe.key)
        if st is None:
            st = new_state(now)
            if optimistic:
                st = replace(st, up=True)
        out[c.key] = st
    return out


def vip_verdicts(checks: Tuple[Tuple[IPAddress, Check], ...], states: Mapping[str, HealthState],
                 unknown: str = "down") -> Dict[IPAddress, str]:
    """One VIP's part of the health mapping effective() takes: up/down for each
    checked real; a real whose check has no state yet is `unknown`: down (it has not
    passed `rise` checks), but up on a daemon's very first start (service/health.py)."""
    out: Dict[IPAddress, str] = {}
    for ip, c in checks:
        st = states.get(c.key)
        out[ip] = unknown if st is None else ("up" if st.up else "down")
    return out
