"""End-to-end helpers: naming and clean-up of e2e labs, HTTP/UDP clients in the client
netns, connection maps read with ss, frame capture, and the results report.

Every e2e lab is named ``e2e<pid>-<tag>`` (pid of the pytest session that owns it), and
its pins live in ``/sys/fs/bpf/e2e<pid>-<tag>``; so leftovers can be told apart from
other people's labs, and those of a dead session recognised and removed.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Collection, Dict, Iterator, List, Optional, Set, Tuple, Union

from xdplbd.kernel.loader import remove_pins
from xdplbd.lab.demo import LbDaemon, Wrk, WrkResult, iface_counters, lb_config, wait_for
from xdplbd.lab.load import WrkPool
from xdplbd.lab.longconn import read_response
from xdplbd.lab.topology import IFNAME, NETNS_DIR, STATE_ROOT, Lab, LabSpec, in_netns
from xdplbd.service.daemonize import alive as _pid_alive  # gone or a zombie: not alive

BPFFS = "/sys/fs/bpf"
NAME_RE = re.compile(r"^e2e(\d+)-([a-z0-9]+)$")
NS_RE = re.compile(r"^(e2e\d+-[a-z0-9]+)-(br|client|lb|real\d+)$")


def e2e_prefix(tag: str) -> str:
    """The prefix of this session's lab *tag* (lowercase letters and digits)."""
    return f"e2e{os.getpid()}-{tag}"


def pin_dir_for(prefix: str) -> str:
    return os.path.join(BPFFS, prefix)


# --------------------------------------------------------------------------- clean-up


def e2e_prefixes() -> Set[str]:
    """Every e2e prefix with something left: namespaces, lab state dirs or pins."""
    found: Set[str] = set()
    with contextlib.suppress(FileNotFoundError):
        for n in os.listdir(NETNS_DIR):
            m = NS_RE.match(n)
            if m:
                found.add(m.group(1))
    for root in (STATE_ROOT, BPFFS):
        with contextlib.suppress(FileNotFoundError):
            found.update(n for n in os.listdir(root) if NAME_RE.match(n))
    return found


def processes_mentioning(text: str) -> List[Tuple[int, str]]:
    """Live (non-zombie) processes whose command line contains *text*, not followed by
    a letter or digit (so e2e12-n does not match e2e12-nx)."""
    pat = re.compile(re.escape(text) + r"(?![A-Za-z0-9])")
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{d}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if pat.search(cmd) and state not in ("Z", "X"):
            out.append((int(d), cmd))
    return out


def cleanup_prefix(prefix: str) -> None:
    """Remove everything of one e2e lab: processes, namespaces, state, pins.

    The daemon runs in the LB namespace, so Lab.down() kills it (and wrk, nginx...);
    deleting the namespaces deletes the veths and with them the XDP attachment.
    """
    try:
        Lab(LabSpec(prefix=prefix)).down()
    finally:
        for pid, _cmd in processes_mentioning(pin_dir_for(prefix)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        remove_pins(pin_dir_for(prefix))


def cleanup_stale() -> List[str]:
    """Remove the leftovers of e2e sessions that are no longer running."""
    removed = []
    for prefix in sorted(e2e_prefixes()):
        m = NAME_RE.match(prefix)
        if m and not _pid_alive(int(m.group(1))):
            cleanup_prefix(prefix)
            removed.append(prefix)
    return removed


def cleanup_session(pid: int) -> List[str]:
    """Remove every lab of the session *pid*."""
    mine = [p for p in sorted(e2e_prefixes()) if p.startswith(f"e2e{pid}-")]
    for prefix in mine:
        cleanup_prefix(prefix)
    return mine


def leftovers(prefix: str) -> List[str]:
    """Anything of one lab still there: namespaces, state dir, pins, processes."""
    out = []
    with contextlib.suppress(FileNotFoundError):
        ns = [n for n in os.listdir(NETNS_DIR) if n.startswith(prefix + "-")]
        if ns:
            out.append(f"namespaces {ns}")
    for path in (os.path.join(STATE_ROOT, prefix), pin_dir_for(prefix)):
        if os.path.exists(path):
            out.append(f"{path} exists")
    for pid, cmd in processes_mentioning(prefix):
        out.append(f"process {pid}: {cmd}")
    return out


# --------------------------------------------------------------------------- the lab + LB


@dataclass
class Env:
    """One lab with one xdplbd, shared by the tests of a module or a session."""

    lab: Lab
    lb: LbDaemon
    baseline: Dict[str, int]

    def config(self, weights: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
        """lb_conf.json with the reals of *weights* (default: the baseline)."""
        return lb_config(self.lab, self.baseline if weights is None else weights)

    def reset(self) -> None:
        """The daemon running with the baseline config (after whatever a test did)."""
        if not self.lb.running():
            self.lb.write_config(self.config())
            self.lb.start()
        else:
            self.lb.apply(self.config())


def start_env(prefix: str, n_reals: int, baseline: Dict[str, int],
              xdp_mode: Optional[str] = None) -> Env:
    lab = Lab(LabSpec(prefix=prefix, n_reals=n_reals))
    lab.up()
    lb = LbDaemon(lab, pin_dir_for(prefix), xdp_mode=xdp_mode)
    env = Env(lab, lb, baseline)
    lb.write_config(env.config())
    lb.start()
    return env


def stop_env(env: Env) -> None:
    try:
        env.lb.close()
    finally:
        cleanup_prefix(env.lab.prefix)


# real4 is in the lab but not in the baseline config: the "add a real" scenarios add it.
BASELINE = {"real1": 1, "real2": 1, "real3": 1}


def running_env(request: Any, tag: str, xdp_mode: str) -> Iterator[Env]:
    """A fixture body: the 4-real lab with xdplbd on the baseline config."""
    prefix = e2e_prefix(tag)
    request.addfinalizer(lambda: cleanup_prefix(prefix))  # even if start_env fails
    env = start_env(prefix, 4, BASELINE, xdp_mode=xdp_mode)
    yield env
    stop_env(env)


# --------------------------------------------------------------------------- clients


def _sockaddr(host: str, port: int) -> Tuple[int, Tuple[Any, ...]]:
    if ":" in host:
        return socket.AF_INET6, (host, port, 0, 0)
    return socket.AF_INET, (host, port)


class KeepAlive:
    """One keep-alive HTTP connection from the client netns to host:port."""

    def __init__(self, lab: Lab, host: str, port: int = 80, timeout: float = 3.0) -> None:
        fam, self.addr = _sockaddr(host, port)
        with in_netns(lab.ns_client):
            self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(self.addr)
        self.host = host
        self._buf = b""

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def get(self) -> str:
        """GET / and return the body (the real's name); raises on any failure."""
        self.sock.sendall(f"GET / HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        status, body, self._buf = read_response(self.sock, self._buf)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return body

    def close(self) -> None:
        self.sock.close()


def http_once(lab: Lab, host: str, port: int = 80, timeout: float = 3.0) -> str:
    """One request on a new connection; the real's name."""
    fam, addr = _sockaddr(host, port)
    with in_netns(lab.ns_client):
        s = socket.socket(fam, socket.SOCK_STREAM)
    with s:
        s.settimeout(timeout)
        s.connect(addr)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, body, _ = read_response(s)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return body


def _port_range(lab: Lab) -> Tuple[int, int]:
    with in_netns(lab.ns_client), open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = f.read().split()
    return int(lo), int(hi)


def spread(lab: Lab, host: str, n: int, workers: int = 8,
           errors: Optional[List[str]] = None) -> Tuple[Counter[str], int]:
    """*n* requests, each on a new connection from a distinct random source port:
    (answers per real, failed requests).

    Random ports, not the kernel's choice: after heavy new-connection load, thousands
    of the client's ports sit in TIME_WAIT and the kernel's sequential search then keeps
    reusing the few free ones, so n connections would be far fewer distinct flows.
    A port whose 4-tuple is still in TIME_WAIT here is skipped (not a failure).
    """
    lo, hi = _port_range(lab)
    ports = iter(random.sample(range(lo, hi + 1), min(hi - lo + 1, 3 * n)))
    fam, addr = _sockaddr(host, 80)
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    counts: Counter[str] = Counter()
    failures = 0
    lock = threading.Lock()

    def one(_i: int) -> None:
        nonlocal failures
        while True:
            with lock:
                port = next(ports)
            with in_netns(lab.ns_client):
                s = socket.socket(fam, socket.SOCK_STREAM)
            with s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.settimeout(3.0)
                try:
                    s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port))
                    s.connect(addr)
                except OSError as e:
                    if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                        continue  # this port is busy here: take another
                    what = f"port {port}: connect: {e!r}"
                else:
                    try:
                        s.sendall(request)
                        status, name, _ = read_response(s)
                        what = "" if status == 200 else f"port {port}: HTTP {status}"
                    except (OSError, ValueError, IndexError) as e:
                        what = f"port {port}: request: {e!r}"
            with lock:
                if not what:
                    counts[name] += 1
                else:
                    failures += 1
                    if errors is not None:
                        errors.append(what)
            return

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(n)))
    return counts, failures


def udp_flows(lab: Lab, host: str, port: int, n: int, timeout: float = 2.0
              ) -> Tuple[Counter[str], int]:
    """One datagram from each of *n* sockets open at once (n distinct flows), sent in
    batches small enough for the echo servers' socket buffers."""
    fam, addr = _sockaddr(host, port)
    with in_netns(lab.ns_client):
        socks = [socket.socket(fam, socket.SOCK_DGRAM) for _ in range(n)]
    counts: Counter[str] = Counter()
    failures = 0
    try:
        for i in range(0, n, 50):
            batch = socks[i : i + 50]
            for s in batch:
                s.settimeout(timeout)
                s.connect(addr)
                s.send(b"?")
            for s in batch:
                try:
                    counts[s.recv(2048).decode().strip()] += 1
                except OSError:
                    failures += 1
    finally:
        for s in socks:
            s.close()
    return counts, failures


# --------------------------------------------------------------------------- ss


def _ss(ns: str, args: List[str]) -> List[Tuple[List[str], str]]:
    """Established TCP sockets in *ns*: (columns, info line)."""
    out = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR}/{ns}", "ss", "-Htn", *args, "state", "established"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows: List[Tuple[List[str], str]] = []
    for line in out.splitlines():
        if line[:1].isspace():
            if rows:
                rows[-1] = (rows[-1][0], line)
        elif line.strip():
            rows.append((line.split(), ""))
    return rows


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


_LASTRCV = re.compile(r"\blastrcv:(\d+)")


def _idle_ms(info: str) -> int:
    """ss -i's lastrcv: ms since the socket last received data (absent: 0)."""
    m = _LASTRCV.search(info)
    return int(m.group(1)) if m else 0


@dataclass(frozen=True)
class Conn:
    real: str  # the real holding the other end, "?" if none does
    idle_ms: int  # client side: ms since the connection last received anything


STUCK_MS = 2000  # a connection that received nothing for this long is stuck


def connections(lab: Lab, pid: Union[int, Collection[int]], vport: int = 80
                ) -> Dict[int, Conn]:
    """Established connections of client process(es) *pid* to port *vport*, by client
    port (a port is unique across the client's source addresses in practice: they are
    drawn at random from 64k).

    A real can hold a stale socket with the same 4-tuple as a live connection on
    another real: the one left behind when the LB moved a removed real's flow, whose
    client then reconnected from the same port. The real that received from it last
    (ss's lastrcv) holds the live end.
    """
    pids = [pid] if isinstance(pid, int) else list(pid)
    idle: Dict[int, int] = {}
    for cols, info in _ss(lab.ns_client, ["-p", "-i"]):
        local, peer = cols[2], cols[3]
        users = " ".join(cols[4:])
        if _port(peer) == vport and any(f"pid={p}," in users for p in pids):
            idle[_port(local)] = _idle_ms(info)
    owner: Dict[int, Tuple[int, str]] = {}
    for real in lab.real_names:
        for cols, info in _ss(lab.real_ns(real), ["-i"]):
            local, peer = cols[2], cols[3]
            port = _port(peer)
            if _port(local) != vport or port not in idle:
                continue
            real_idle = _idle_ms(info)
            if port not in owner or real_idle < owner[port][0]:
                owner[port] = (real_idle, real)
    return {p: Conn(owner[p][1] if p in owner else "?", ms) for p, ms in idle.items()}


def reals_of(conns: Dict[int, Conn]) -> Dict[int, str]:
    return {p: c.real for p, c in conns.items()}


def stuck(conns: Dict[int, Conn]) -> List[int]:
    return sorted(p for p, c in conns.items() if c.idle_ms >= STUCK_MS)


# --------------------------------------------------------------------------- capture

PACKET_OUTGOING = 4


@dataclass(frozen=True)
class Frame:
    outgoing: bool  # sent by this interface (as opposed to received)
    src_mac: str
    dst_mac: str
    src_ip: str
    dst_ip: str
    proto: int  # IP protocol / next header: 6 TCP, 17 UDP


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse_frame(data: bytes, outgoing: bool) -> Optional[Frame]:
    if len(data) < 34:
        return None
    etype = data[12:14]
    src: ipaddress._BaseAddress
    dst: ipaddress._BaseAddress
    if etype == b"\x08\x00":
        src, dst = ipaddress.IPv4Address(data[26:30]), ipaddress.IPv4Address(data[30:34])
        proto = data[23]
    elif etype == b"\x86\xdd" and len(data) >= 54:
        src, dst = ipaddress.IPv6Address(data[22:38]), ipaddress.IPv6Address(data[38:54])
        proto = data[20]
    else:
        return None
    return Frame(outgoing, _mac(data[6:12]), _mac(data[0:6]), str(src), str(dst), proto)


@contextlib.contextmanager
def capture(ns: str, ifname: str) -> Iterator[List[Frame]]:
    """Capture the IP frames crossing *ifname* in *ns* (both directions) while the
    body runs; the list is filled when the body ends."""
    with in_netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((ifname, 0))
    frames: List[Frame] = []
    stop = threading.Event()

    def reader() -> None:
        s.settimeout(0.05)
        while not stop.is_set():
            try:
                data, addr = s.recvfrom(256)
            except socket.timeout:
                continue
            f = parse_frame(data, addr[2] == PACKET_OUTGOING)
            if f is not None:
                frames.append(f)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    out: List[Frame] = []
    try:
        yield out
        time.sleep(0.1)  # let the last frames of the body arrive
    finally:
        stop.set()
        t.join(5)
        s.close()
        out.extend(frames)


# --------------------------------------------------------------------------- under load

# Measured results, printed in the terminal summary (conftest.py).
RESULTS: List[Dict[str, Any]] = []


def record(scenario: str, result: WrkResult, stuck: int = 0, allowed: int = 0,
           note: str = "") -> None:
    RESULTS.append({
        "scenario": scenario, "mode": result.mode, "connections": result.connections,
        "requests": result.requests, "rate": result.rate, "failed": result.failed + stuck,
        "errors": dict(result.errors), "non_2xx": result.non_2xx, "stuck": stuck,
        "allowed": allowed, "duration": result.duration_s, "note": note,
    })


# New connections per second a scenario's load must keep. Healthy here: 4-16k/s
# depending on the other tenants of the 2 CPUs; out of ports: ~500/s. Well below the
# former, well above the latter: it checks ports, not CPU.
NEWCONN_FLOOR = 1500


@dataclass
class LoadRun:
    keepalive: WrkResult
    newconn: WrkResult
    before: Dict[int, Conn]  # keep-alive connections just before the change
    after: Dict[int, Conn]  # ... and at the end, with wrk still running
    newconn_end: Dict[int, Conn]  # new-connection mode's open connections at the end
    change_s: float

    @property
    def keepalive_stuck(self) -> List[int]:
        return stuck(self.after)

    @property
    def newconn_stuck(self) -> List[int]:
        return stuck(self.newconn_end)

    def rate_problems(self) -> List[str]:
        """The new-connection load held its rate (NEWCONN_FLOOR): the scenario really
        ran under new connections, not under a client out of ports."""
        r = self.newconn
        if r.rate < NEWCONN_FLOOR:
            return [f"new-connection load fell to {r.rate:.0f}/s (floor {NEWCONN_FLOOR}/s): "
                    "is the client out of ports?"]
        return []

    def record(self, scenario: str, allowed_ka: int = 0, allowed_nc: int = 0,
               note_ka: str = "", note_nc: str = "") -> None:
        record(scenario, self.keepalive, len(self.keepalive_stuck), allowed_ka, note_ka)
        record(scenario, self.newconn, len(self.newconn_stuck), allowed_nc, note_nc)


def under_load(env: Env, change: Callable[[], None], *, host: Optional[str] = None,
               before_s: float = 1.5, after_s: float = 1.5,
               keepalive_conns: int = 24, newconn_conns: int = 8) -> LoadRun:
    """wrk in keep-alive mode and in new-connection mode at once, against the VIP; *change*
    runs after *before_s* of steady load, and the load goes on for *after_s* after it
    returned. The keep-alive connections are mapped to their reals before and after.

    wrk's own timeout is longer than the run (so it never counts one request twice);
    a request that hangs instead shows up at the end as a stuck connection: one that
    has received nothing for STUCK_MS (wrk sends its next request on a connection as
    soon as the last answer is in, so a healthy one is never idle that long).
    """
    lab = env.lab
    host = host or lab.vip4
    url = f"http://[{host}]/" if ":" in host else f"http://{host}/"
    ka = Wrk(lab, url, connections=keepalive_conns, duration=120, timeout=30)
    # New connections come from the whole client population (lab/sources.py), so the
    # rate holds across scenarios instead of draining one address's ports.
    nc = WrkPool(lab, url, connections=newconn_conns, new_connections=True, duration=120,
                 timeout=30)
    try:
        ka.start()
        nc.start()
        wait_for(lambda: len(connections(lab, ka.pid)) >= keepalive_conns, 10,
                 "wrk's keep-alive connections")
        time.sleep(before_s)  # steady load before the change
        before = connections(lab, ka.pid)
        t0 = time.monotonic()
        change()
        change_s = time.monotonic() - t0
        time.sleep(max(after_s, STUCK_MS / 1000 + 0.2))  # and after it
        after = connections(lab, ka.pid)
        newconn_end = connections(lab, nc.pids)
        r_ka, r_nc = ka.stop(), nc.stop()
    finally:
        ka.kill()
        nc.kill()
    return LoadRun(r_ka, r_nc, before, after, newconn_end, change_s)
# --------------------------------------------------------------------------- DSR


@dataclass
class DsrEvidence:
    to_lb: List[Frame]  # VIP frames the bridge sent the LB (client -> VIP)
    from_lb: List[Frame]  # VIP frames the LB sent back out (XDP_TX to a real)
    via_lb_from_vip: List[Frame]  # frames from the VIP that crossed the LB's link: replies
    at_client_from_vip: List[Frame]  # the replies, as the client received them
    answers: Counter[str]
    failures: int
    lb_vip_packets: int  # the LB's counter for this VIP over the run
    lb_tx_packets: int  # the LB's eth0 over the run
    client_tx_packets: int
    client_rx_bytes: int
    lb_tx_bytes: int


def dsr_run(env: Env, host: str, n: int = 200, udp_port: Optional[int] = None) -> DsrEvidence:
    """*n* new connections (and as many UDP flows if *udp_port*) to *host* while the LB's
    link (its bridge-side veth, where its XDP_TX frames show up) and the client's eth0 are
    captured. XDP runs before any capture on the LB's own eth0, so that one shows nothing.
    """
    lab = env.lab

    def vip_packets() -> int:
        return sum(v["packets"] for v in env.lb.stats()["vips"] if v["vip"] == host)

    p0, lb0, cl0 = vip_packets(), iface_counters(lab.ns_lb), iface_counters(lab.ns_client)
    with capture(lab.ns_br, "v-lb") as lbf, capture(lab.ns_client, IFNAME) as clf:
        answers, failures = spread(lab, host, n, workers=4)
        if udp_port is not None:
            udp, udp_failures = udp_flows(lab, host, udp_port, n)
            answers += udp
            failures += udp_failures
    p1, lb1, cl1 = vip_packets(), iface_counters(lab.ns_lb), iface_counters(lab.ns_client)
    l4 = [f for f in lbf if f.proto in (6, 17)]
    return DsrEvidence(
        to_lb=[f for f in l4 if f.outgoing and f.dst_ip == host],
        from_lb=[f for f in l4 if not f.outgoing and f.dst_ip == host],
        via_lb_from_vip=[f for f in l4 if f.src_ip == host],
        at_client_from_vip=[f for f in clf if not f.outgoing and f.proto in (6, 17)
                            and f.src_ip == host],
        answers=answers,
        failures=failures,
        lb_vip_packets=p1 - p0,
        lb_tx_packets=lb1["tx_packets"] - lb0["tx_packets"],
        client_tx_packets=cl1["tx_packets"] - cl0["tx_packets"],
        client_rx_bytes=cl1["rx_bytes"] - cl0["rx_bytes"],
        lb_tx_bytes=lb1["tx_bytes"] - lb0["tx_bytes"],
    )


def dsr_problems(env: Env, ev: DsrEvidence, client_ip: str) -> List[str]:
    """What in *ev* contradicts Direct Server Return (empty: it is DSR)."""
    lab_macs = {r.mac for r in env.lab.reals}
    lb_mac = env.lab.lb_mac
    p = []
    if ev.failures:
        p.append(f"{ev.failures} requests failed")
    if not ev.to_lb or not ev.at_client_from_vip:
        p.append(f"capture saw {len(ev.to_lb)} client->VIP frames on the LB's link and "
                 f"{len(ev.at_client_from_vip)} replies at the client: too few to judge")
    if ev.via_lb_from_vip:
        p.append(f"{len(ev.via_lb_from_vip)} frames from the VIP crossed the LB's link, "
                 f"e.g. {ev.via_lb_from_vip[0]}")
    bad_in = [f for f in ev.to_lb if f.src_ip != client_ip or f.dst_mac != lb_mac]
    if bad_in:
        p.append(f"{len(bad_in)} VIP frames to the LB not client->LB: {bad_in[0]}")
    bad_out = [f for f in ev.from_lb if f.src_mac != lb_mac or f.dst_mac not in lab_macs
               or f.src_ip != client_ip]
    if bad_out:
        p.append(f"{len(bad_out)} frames out of the LB not rewritten to a real: {bad_out[0]}")
    if len(ev.from_lb) != len(ev.to_lb):
        p.append(f"LB received {len(ev.to_lb)} VIP frames but sent {len(ev.from_lb)}")
    bad_reply = [f for f in ev.at_client_from_vip if f.src_mac not in lab_macs]
    if bad_reply:
        p.append(f"{len(bad_reply)} replies reached the client not from a real's MAC: "
                 f"{bad_reply[0]}")
    if ev.lb_vip_packets < len(ev.to_lb):
        p.append(f"the LB counted {ev.lb_vip_packets} VIP packets, the capture {len(ev.to_lb)}")
    return p


def _xdp_info(env: Env) -> Dict[str, Any]:
    out = env.lab.lb_exec(["ip", "-j", "-d", "link", "show", IFNAME]).stdout
    info: Dict[str, Any] = json.loads(out)[0].get("xdp") or {}
    return info


def attached_prog(env: Env) -> Optional[int]:
    """Id of the XDP program attached to the LB's eth0, from `ip link` (None: none)."""
    prog = _xdp_info(env).get("prog") or {}
    return int(prog["id"]) if "id" in prog else None


def attached_mode(env: Env) -> str:
    """How the LB's eth0 program is attached, from `ip link`: native, generic or ""."""
    mode = _xdp_info(env).get("mode")
    return {1: "native", 2: "generic", 3: "offload"}.get(mode, "") if mode else ""
