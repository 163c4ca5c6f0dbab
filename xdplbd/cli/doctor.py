"""`xdplb doctor [VIP]`: is every real set up the way Direct Server Return needs?

For every real of the live config (found through state.toml) it runs one round
of the real's health check and the DSR setup checks, each failure with its fix:

* dsr-syn: a SYN to VIP:port in a frame to the real's MAC gets a SYN-ACK from
  the VIP (TCP VIPs): the VIP is on the real's loopback and something listens;
* arp / ndp: the real does not answer ARP (IPv4) or Neighbor Solicitations
  (IPv6) for the VIP: only the LB may, or clients bypass it;
* mac: the configured MAC is what the kernel's neighbour table holds for the
  real's IP.

Run it where the daemon runs (nsenter into its netns); it needs CAP_NET_RAW.
"""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

from xdplbd.cli.status import vip_name
from xdplbd.core import frames
from xdplbd.core.config import ConfigError, read_config_file
from xdplbd.core.effective import Neighbour, with_macs
from xdplbd.core.health import TCP_DSR, Probe, Result, check_of, host_port
from xdplbd.core.model import Config, IPAddress, Vip
from xdplbd.kernel import iface, rawsock
from xdplbd.service.probes import TcpDsrProber, run_socket_probe
from xdplbd.service.statefile import read_state

SYN_TIMEOUT_S = 1.0
ARP_WAIT_S = 0.5
NEIGH_WAIT_S = 1.0


@dataclass
class Finding:
    check: str  # healthcheck | dsr-syn | arp | ndp | mac
    ok: bool
    detail: str
    fix: str = ""


class DoctorError(Exception):
    pass


def load(state_dir: str) -> Tuple[Config, str]:
    """The applied config (state.toml names it) and the interface."""
    st = read_state(state_dir)
    path = st.get("config")
    if not path:
        raise DoctorError(f"{state_dir}/state.toml names no config: is xdplbd running with "
                          "--state-dir " + state_dir + "?")
    try:
        cfg, digest = read_config_file(str(path))
    except ConfigError as e:
        raise DoctorError(str(e)) from e
    ifname = str(st.get("interface") or cfg.interface or "")
    if not ifname:
        raise DoctorError("no interface in state.toml or the config")
    if digest != st.get("config_digest"):
        # Still useful: the file is what the daemon will apply next.
        print(f"note: {path} changed since it was applied; checking the file as it is now")
    return cfg, ifname


def select_vips(cfg: Config, which: Optional[str]) -> List[Vip]:
    """All VIPs, or those matching ADDR, ADDR:PORT or ADDR:PORT/PROTO."""
    if not which:
        return list(cfg.vips)
    out = [v for v in cfg.vips if which in (str(v.key.addr), host_port(v.key.addr, v.key.port),
                                            str(v.key))]
    if not out:
        raise DoctorError(f"no VIP {which} in the config (VIPs: "
                          f"{', '.join(str(v.key) for v in cfg.vips)})")
    return out


def _lo_fix(vip: IPAddress) -> str:
    if vip.version == 4:
        return f"ip addr add {vip}/32 dev lo"
    return f"ip addr add {vip}/128 dev lo nodad"


async def _round(vips: List[Vip], ifname: str) -> Dict[Tuple[str, str], List[Finding]]:
    """The health checks and the DSR SYN check of every real, concurrently."""
    avoid = {v.key.addr for v in vips}
    sources: Dict[IPAddress, Optional[IPAddress]] = {}

    def source(dest: IPAddress) -> Optional[IPAddress]:
        if dest not in sources:
            sources[dest] = rawsock.source_for(dest, ifname, avoid)
        return sources[dest]

    loop = asyncio.get_running_loop()
    prober = TcpDsrProber(ifname, source)
    prober.start(loop)

    def syn(probe: Probe) -> asyncio.Future[Result]:
        fut: asyncio.Future[Result] = loop.create_future()

        def done(r: Result) -> None:
            if not fut.done():
                fut.set_result(r)

        prober.launch(probe, done)
        return fut

    jobs: List[Tuple[Tuple[str, str], str, Any]] = []
    for v in vips:
        for r in v.reals:
            who = (str(v.key), str(r.ip))
            c = check_of(v.key, r)
            if c is not None:
                p = c.probe
                jobs.append((who, "healthcheck", syn(p) if p.kind == TCP_DSR else
                             loop.create_task(run_socket_probe(p, source(p.addr)))))
            if r.mac and v.key.proto == "tcp" and not (c is not None and c.probe.kind == TCP_DSR
                                                       and c.probe.port == v.key.port):
                jobs.append((who, "dsr-syn", syn(Probe(TCP_DSR, v.key.addr, v.key.port,
                                                        SYN_TIMEOUT_S, mac=r.mac))))
    try:
        results = await asyncio.gather(*(j[2] for j in jobs))
    finally:
        prober.close()
    out: Dict[Tuple[str, str], List[Finding]] = {}
    vip_of = {str(v.key): v for v in vips}
    for (who, name, _), res in zip(jobs, results):
        v = vip_of[who[0]]
        real = next(r for r in v.reals if str(r.ip) == who[1])
        fix = ""
        if not res.ok and (name == "dsr-syn" or TCP_DSR in res.detail or
                           res.detail.startswith("tcp: no SYN-ACK")):
            fix = (f"on real {real.ip}: hold the VIP on loopback ({_lo_fix(v.key.addr)}), make "
                   f"the service listen on {host_port(v.key.addr, v.key.port)} or the wildcard "
                   f"address, and check that {real.mac} is its MAC")
            name = "dsr-syn" if name == "dsr-syn" else name
        elif not res.ok:
            fix = f"on real {real.ip}: make the health check pass ({res.detail})"
        out.setdefault(who, []).append(Finding(name, res.ok, res.detail, fix))
    return out


def _answers(vips: List[Vip], ifname: str, lb_mac: bytes) -> Dict[Tuple[bytes, IPAddress], bool]:
    """Send ARP requests / Neighbor Solicitations for each VIP to each real's MAC (unicast:
    only that host sees it) and collect who claims the VIP."""
    pairs = {(frames.mac_bytes(r.mac), v.key.addr, r.ip) for v in vips for r in v.reals if r.mac}
    tx = rawsock.sender(ifname)
    rx = rawsock.receiver(ifname, None)
    claimed: Dict[Tuple[bytes, IPAddress], bool] = {(m, a): False for m, a, _ in pairs}
    try:
        for mac, vip, real_ip in pairs:
            src = rawsock.source_for(real_ip, ifname, {v.key.addr for v in vips})
            if src is None:
                continue
            if isinstance(vip, ipaddress.IPv4Address) and isinstance(src, ipaddress.IPv4Address):
                tx.send(frames.arp_request(mac, lb_mac, src, vip))
            elif isinstance(vip, ipaddress.IPv6Address) and isinstance(src,
                                                                       ipaddress.IPv6Address):
                tx.send(frames.neighbour_solicitation(mac, lb_mac, src, vip))
        deadline = time.monotonic() + ARP_WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([rx], [], [], left)[0]:
                break
            try:
                frame = rx.recv(256)
            except BlockingIOError:
                continue
            for (mac, vip) in claimed:
                if frames.claims(frame, vip) == mac:
                    claimed[(mac, vip)] = True
    finally:
        tx.close()
        rx.close()
    return claimed


def _neighbour(ifname: str, ip: IPAddress, src: Optional[IPAddress]) -> Optional[str]:
    """The kernel's MAC for ip; a datagram to the discard port first resolves it if needed."""
    mac = rawsock.kernel_neighbour(ifname, ip)
    if mac is not None or src is None:
        return mac
    fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.bind((str(src), 0))
            s.sendto(b"", (str(ip), 9))
        except OSError:
            return None
    deadline = time.monotonic() + NEIGH_WAIT_S
    while mac is None and time.monotonic() < deadline:
        time.sleep(0.05)
        mac = rawsock.kernel_neighbour(ifname, ip)
    return mac


def diagnose(cfg: Config, ifname: str, which: Optional[str] = None) -> List[Dict[str, Any]]:
    # Reals without a configured mac are checked at the MAC the kernel resolves for them,
    # as the daemon forwards to it.
    avoid = {v.key.addr for v in cfg.vips}
    kernel_macs = {r.ip: _neighbour(ifname, r.ip, rawsock.source_for(r.ip, ifname, avoid))
                   for v in cfg.vips for r in v.reals if not r.mac}
    configured = {(v.key, r.ip) for v in cfg.vips for r in v.reals if r.mac}
    cfg = with_macs(cfg, {ip: Neighbour(m, m is not None) for ip, m in kernel_macs.items()})
    vips = select_vips(cfg, which)
    found = asyncio.run(_round(vips, ifname))
    lb_mac = frames.mac_bytes(iface.mac_address(ifname))
    claims = _answers(vips, ifname, lb_mac)
    neigh: Dict[IPAddress, Optional[str]] = dict(kernel_macs)
    out = []
    for i, v in enumerate(cfg.vips):
        if v not in vips:
            continue
        reals = []
        for j, r in enumerate(v.reals):
            fs = found.get((str(v.key), str(r.ip)), [])
            proto = "arp" if v.key.addr.version == 4 else "ndp"
            if r.mac is None:
                fs.append(Finding("mac", False, f"no neighbour entry for {r.ip} on {ifname}: "
                                  "it does not answer ARP/NDP for its own address, so it gets "
                                  "no traffic (unresolved)",
                                  f"check that real {r.ip} is up and on {ifname}'s link"))
                reals.append({"ip": str(r.ip), "mac": None, "ok": False,
                              "checks": [asdict(f) for f in fs]})
                continue
            if claims.get((frames.mac_bytes(r.mac), v.key.addr)):
                fix = ("on the real: sysctl -w net.ipv4.conf.all.arp_ignore=1 "
                       "net.ipv4.conf.all.arp_announce=2 (and the same for its interface "
                       "facing the LB)" if proto == "arp" else
                       f"on the real: hold the VIP on lo only ({_lo_fix(v.key.addr)}; remove "
                       "it from every other interface)")
                fs.append(Finding(proto, False, f"real {r.ip} ({r.mac}) answers "
                                  f"{'ARP' if proto == 'arp' else 'Neighbor Solicitations'} "
                                  f"for the VIP {v.key.addr}: clients would bypass the LB", fix))
            else:
                fs.append(Finding(proto, True, f"real {r.ip} does not answer "
                                  f"{proto.upper()} for {v.key.addr}"))
            if r.ip not in neigh:
                neigh[r.ip] = _neighbour(ifname, r.ip, rawsock.source_for(r.ip, ifname, avoid))
            kmac = neigh[r.ip]
            if kmac is None:
                fs.append(Finding("mac", False, f"no neighbour entry for {r.ip} on {ifname}: "
                                  "it does not answer ARP/NDP for its own address",
                                  f"check that real {r.ip} is up and on {ifname}'s link"))
            elif (v.key, r.ip) not in configured:
                fs.append(Finding("mac", True, f"{kmac} from the neighbour table (no mac in "
                                  "the config)"))
            elif kmac != r.mac:
                fs.append(Finding("mac", False, f"the config says {r.mac} for {r.ip}, the "
                                  f"neighbour table {kmac}",
                                  f"set vips[{i}].reals[{j}].mac to \"{kmac}\" and reload"))
            else:
                fs.append(Finding("mac", True, f"{r.mac} matches the neighbour table"))
            reals.append({"ip": str(r.ip), "mac": r.mac,
                          "ok": all(f.ok for f in fs), "checks": [asdict(f) for f in fs]})
        out.append({"vip": str(v.key.addr), "port": v.key.port, "protocol": v.key.proto,
                    "ok": all(r["ok"] for r in reals), "reals": reals})
    return out


def render(vips: List[Dict[str, Any]]) -> str:
    lines = []
    for v in vips:
        lines.append(f"vip {vip_name(v)}: {'ok' if v['ok'] else 'FAIL'}")
        for r in v["reals"]:
            lines.append(f"  real {r['ip']} ({r['mac']}): {'ok' if r['ok'] else 'FAIL'}")
            for f in r["checks"]:
                lines.append(f"    {'ok  ' if f['ok'] else 'FAIL'} {f['check']:<11} {f['detail']}")
                if f["fix"]:
                    lines.append(f"         fix: {f['fix']}")
    return "\n".join(lines)
