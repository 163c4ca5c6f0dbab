"""A namespace lab for end-to-end tests and demos: one L2 segment, a client, the LB, N reals.

Layout (default prefix ``xl``, 3 reals)::

    netns xl-br:      bridge br0 with ports v-client, v-lb, v-real1..N (bridge ends of the veths)
    netns xl-client:  eth0 10.99.0.2/24  fd00:99::2/64
    netns xl-lb:      eth0 10.99.0.3/24  fd00:99::3/64 + VIPs 10.99.0.100/32, fd00:99::100/128
    netns xl-realK:   eth0 10.99.0.(10+K)/24  fd00:99::(10+K)/64 (same digits), the VIPs on lo,
                      arp_ignore=1 / arp_announce=2, nginx on :80, a UDP name echo on :5353

The LB answers ARP/NDP for the VIPs; the reals accept frames addressed to the VIP
(it is on their ``lo``) but never announce it, and reply straight to the client (DSR).
``v-lb``, the bridge-side peer of the LB, carries an XDP_PASS program in native mode,
because XDP_TX out of a veth is only delivered if the peer veth has an XDP program.
The client has ``tx`` checksum offload off: with native XDP_TX on veth, offloaded
frames would reach the reals with bad checksums. Each real's ``eth0`` steers every flow
to one CPU (RPS), as a physical NIC's RSS does; see ``Lab._steer_flows``.

Nothing outside the lab's namespaces is touched, except the state directory
``/run/xdplb-lab/<prefix>/`` (nginx configs, pid and log files, ``lb_conf.json``).

Library use::

    lab = Lab(LabSpec(prefix="t1", n_reals=2))
    lab.up()
    assert lab.curl("http://10.99.0.11/") == "real1\\n"
    lab.down()

Command line: ``python -m xdplbd.lab up|down|status|config [--reals N] [--prefix NAME]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

from xdplbd.kernel import libbpf
from xdplbd.kernel.netns import NETNS_RUN_DIR
from xdplbd.kernel.netns import in_netns as in_netns
from xdplbd.kernel.netns import netns_path as netns_path
from xdplbd.kernel.netns import nsenter_cmd as nsenter_cmd
from xdplbd.lab import sources
from xdplbd.service.daemonize import alive as _alive

NETNS_DIR = NETNS_RUN_DIR  # the name the tests and demo use

STATE_ROOT = "/run/xdplb-lab"
BRIDGE = "br0"
IFNAME = "eth0"  # the namespace end of every veth
_SIOCGIFHWADDR = 0x8927
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
# The directory holding the xdplbd package (this file is xdplbd/<layer>/<module>.py).
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --------------------------------------------------------------------------- XDP stubs


def attach_insns(ifindex: int, insns: Sequence[bytes], mode: str = "native",
                 name: str = "xdp_test") -> int:
    """Load encoded instructions and attach them in the calling thread's netns, replacing
    whatever is there (the lab's rule, not the daemon's); return the program id. A
    netlink-attached program stays after its fd is closed and the process exits."""
    fd = libbpf.load_insns(b"".join(insns), name)
    try:
        libbpf.xdp_attach(ifindex, fd, mode, exclusive=False)
    finally:
        os.close(fd)
    return libbpf.xdp_prog_id(ifindex, mode)


def attach_stub(ifindex: int, action: int = libbpf.XDP_PASS, mode: str = "native",
                name: str = "xdp_stub") -> int:
    """``r0 = action; exit`` attached to `ifindex` (see attach_insns)."""
    return attach_insns(ifindex, [libbpf.stub_insns(action)], mode, name)


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class LabSpec:
    """What to build. Host numbers are offsets inside the subnets."""

    prefix: str = "xl"
    n_reals: int = 3
    subnet4: str = "10.99.0.0/24"
    subnet6: str = "fd00:99::/64"
    vip4: str = "10.99.0.100"
    vip6: str = "fd00:99::100"
    http_port: int = 80
    udp_port: int = 5353
    client_host: int = 2
    lb_host: int = 3
    real_host_base: int = 11  # real1 = .11, real2 = .12, ...
    # The client's extra source addresses (.230, .231, ...): lab/sources.py.
    client_sources: int = 4
    client_source_base: int = 230
    peer_xdp_mode: str = "native"  # mode of the XDP_PASS program on v-lb
    state_root: str = STATE_ROOT

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix {self.prefix!r}: want [A-Za-z0-9][A-Za-z0-9_-]{{0,39}}")
        if not 1 <= self.n_reals <= 200:
            raise ValueError(f"n_reals {self.n_reals}: want 1..200")
        if self.peer_xdp_mode not in libbpf.XDP_MODES:
            raise ValueError(f"peer_xdp_mode {self.peer_xdp_mode!r}: want native or generic")
        net4, net6 = self.net4, self.net6
        hosts = [self.client_host, self.lb_host]
        hosts += [self.real_host_base + i for i in range(self.n_reals)]
        hosts += [self.client_source_base + i for i in range(self.client_sources)]
        addrs4 = [net4.network_address + h for h in hosts] + [ipaddress.IPv4Address(self.vip4)]
        addrs6 = [ipaddress.IPv6Address(self.host6(h)) for h in hosts] + [
            ipaddress.IPv6Address(self.vip6)
        ]
        for net, addrs in ((net4, addrs4), (net6, addrs6)):
            if len(set(addrs)) != len(addrs):
                raise ValueError(f"addresses in {net} collide: {[str(a) for a in addrs]}")
            bad = [str(a) for a in addrs if a not in net or a in (net.network_address,)]
            if bad or (net.version == 4 and net.broadcast_address in addrs):
                raise ValueError(f"addresses outside {net} or reserved: {bad}")

    @property
    def net4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet4)

    @property
    def net6(self) -> ipaddress.IPv6Network:
        return ipaddress.IPv6Network(self.subnet6)

    def host4(self, n: int) -> str:
        return str(self.net4.network_address + n)

    def host6(self, n: int) -> str:
        """Host *n* in the v6 subnet, its decimal digits read as hex: 11 -> fd00:99::11."""
        return str(self.net6.network_address + int(str(n), 16))

    @property
    def state_dir(self) -> str:
        return os.path.join(self.state_root, self.prefix)

    def ns(self, role: str) -> str:
        """Namespace name of a role: br, client, lb, real1.."""
        return f"{self.prefix}-{role}"

    @property
    def real_names(self) -> List[str]:
        return [f"real{i + 1}" for i in range(self.n_reals)]

    def real_host(self, real: str) -> int:
        return self.real_host_base + self.real_names.index(real)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> LabSpec:
        return cls(**d)


@dataclass(frozen=True)
class RealInfo:
    name: str  # "real1"
    ns: str  # "xl-real1"
    ip4: str
    ip6: str
    mac: str  # of its eth0, lowercase


# --------------------------------------------------------------------------- namespaces

# setns()/nsenter, never `ip netns exec` for anything that needs bpffs: see netns.py.


def link_info(ns: str, ifname: str) -> Tuple[int, str]:
    """(ifindex, mac) of *ifname* in netns *ns*, over ioctl in that netns."""
    with in_netns(ns):
        index = socket.if_nametoindex(ifname)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16s24x", ifname.encode())
            res = fcntl.ioctl(s.fileno(), _SIOCGIFHWADDR, req)
    return index, ":".join(f"{b:02x}" for b in res[18:24])


def write_sysctls(ns: str, values: Dict[str, str]) -> None:
    """Write net.* sysctls of netns *ns* (/proc/sys/net is per netns of the writing thread)."""
    with in_netns(ns):
        for key, value in values.items():
            path = "/proc/sys/" + key.replace(".", "/")
            with open(path, "w") as f:
                f.write(value)


def read_sysctl(ns: str, key: str) -> str:
    with in_netns(ns), open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()


def _run(argv: Sequence[str], *, input: str | None = None, timeout: float = 15.0) -> str:
    p = subprocess.run(
        list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if p.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()}"
        )
    return p.stdout


def _run_all(cmds: Sequence[Tuple[Sequence[str], str | None]], timeout: float = 15.0) -> None:
    """Run commands concurrently (argv, stdin text); raise on the first failure."""
    procs = []
    for argv, stdin in cmds:
        p = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append((argv, stdin, p))
    errors = []
    for argv, stdin, p in procs:
        out, err = p.communicate(stdin, timeout=timeout)
        if p.returncode != 0:
            errors.append(f"{' '.join(argv)} failed ({p.returncode}): {(err or out).strip()}")
    if errors:
        raise RuntimeError("; ".join(errors))


def _ns_id(path: str) -> Tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _proc_pids() -> List[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def pids_in_netns(namespaces: Iterable[str]) -> Dict[str, List[int]]:
    """Processes whose netns is one of *namespaces* (what `ip netns pids` does, in one scan)."""
    ids = {}
    for ns in namespaces:
        nid = _ns_id(netns_path(ns))
        if nid is not None:
            ids[nid] = ns
    out: Dict[str, List[int]] = {ns: [] for ns in ids.values()}
    if not ids:
        return out
    me = os.getpid()
    for pid in _proc_pids():
        if pid == me:
            continue
        nid = _ns_id(f"/proc/{pid}/ns/net")
        if nid in ids:
            out[ids[nid]].append(pid)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pids: Set[int]) -> Set[int]:
    out: Set[int] = set()
    for pid in _proc_pids():
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid in pids:
            out.add(pid)
    return out


def _kill_and_wait(pids: Iterable[int], timeout: float = 3.0) -> None:
    todo = set(pids)
    for pid in todo:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while todo and time.monotonic() < deadline:
        todo = {p for p in todo if _alive(p)}
        if todo:
            time.sleep(0.005)
    if todo:
        raise RuntimeError(f"processes {sorted(todo)} survived SIGKILL")


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- nginx

_NGINX_CONF = """\
# xdplb lab: {name} ({ns}); written by xdplbd.lab
daemon on;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    server {{
        listen {port} backlog=4096;
        listen [::]:{port} ipv6only=on backlog=4096;
        location / {{ return 200 "{name}\\n"; }}
        # For HTTP health checks: 503 while the file "unhealthy" exists (Lab.set_unhealthy).
        location = /healthz {{
            if (-f {d}/unhealthy) {{ return 503 "unhealthy\\n"; }}
            return 200 "ok\\n";
        }}
    }}
}}
"""


# --------------------------------------------------------------------------- lab


class Lab:
    """Build, query and tear down the lab described by a LabSpec."""

    lb_ifname = IFNAME

    def __init__(self, spec: LabSpec | None = None) -> None:
        self.spec = spec if spec is not None else LabSpec()

    # -- names and addresses
    @property
    def prefix(self) -> str:
        return self.spec.prefix

    @property
    def ns_br(self) -> str:
        return self.spec.ns("br")

    @property
    def ns_client(self) -> str:
        return self.spec.ns("client")

    @property
    def ns_lb(self) -> str:
        return self.spec.ns("lb")

    @property
    def real_names(self) -> List[str]:
        return self.spec.real_names

    def real_ns(self, real: str) -> str:
        return self.spec.ns(real)

    @property
    def namespaces(self) -> List[str]:
        """Every namespace of this spec, bridge first."""
        return [self.ns_br, self.ns_client, self.ns_lb] + [self.real_ns(r) for r in self.real_names]

    @property
    def state_dir(self) -> str:
        return self.spec.state_dir

    def real_dir(self, real: str) -> str:
        return os.path.join(self.state_dir, real)

    @property
    def client_ip4(self) -> str:
        return self.spec.host4(self.spec.client_host)

    @property
    def client_ip6(self) -> str:
        return self.spec.host6(self.spec.client_host)

    @property
    def lb_ip4(self) -> str:
        return self.spec.host4(self.spec.lb_host)

    @property
    def lb_ip6(self) -> str:
        return self.spec.host6(self.spec.lb_host)

    @property
    def vip4(self) -> str:
        return self.spec.vip4

    @property
    def vip6(self) -> str:
        return self.spec.vip6

    def real_ip4(self, real: str) -> str:
        return self.spec.host4(self.spec.real_host(real))

    def real_ip6(self, real: str) -> str:
        return self.spec.host6(self.spec.real_host(real))

    # -- live facts (read from the namespaces)
    @property
    def lb_mac(self) -> str:
        return link_info(self.ns_lb, IFNAME)[1]

    @property
    def lb_ifindex(self) -> int:
        return link_info(self.ns_lb, IFNAME)[0]

    @property
    def client_mac(self) -> str:
        return link_info(self.ns_client, IFNAME)[1]

    def real_macs(self) -> Dict[str, str]:
        return {r: link_info(self.real_ns(r), IFNAME)[1] for r in self.real_names}

    @property
    def reals(self) -> List[RealInfo]:
        macs = self.real_macs()
        return [
            RealInfo(r, self.real_ns(r), self.real_ip4(r), self.real_ip6(r), macs[r])
            for r in self.real_names
        ]

    def config(self) -> Dict[str, Any]:
        """lb_conf.json for this lab: v4 tcp, v4 udp and v6 tcp VIPs over all reals. No
        MACs: xdplbd resolves them from the LB's neighbour table, as operators run it."""
        reals = self.reals
        port, uport = self.spec.http_port, self.spec.udp_port

        def vip(addr: str, p: int, proto: str, v6: bool) -> Dict[str, Any]:
            rs = [{"ip": r.ip6 if v6 else r.ip4, "weight": 1} for r in reals]
            return {"vip": addr, "port": p, "protocol": proto, "reals": rs}

        return {
            "interface": IFNAME,
            "xdp_mode": "native",
            "vips": [
                vip(self.vip4, port, "tcp", False),
                vip(self.vip4, uport, "udp", False),
                vip(self.vip6, port, "tcp", True),
            ],
        }

    # -- running things
    def ns_exec(
        self, ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in netns *ns* (nsenter: bpffs stays visible). Output is captured as text
        unless stdout/stderr are given; other keywords go to subprocess.run."""
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(nsenter_cmd(ns, argv), check=check, timeout=timeout, **kw)

    def client_exec(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return self.ns_exec(self.ns_client, argv, check=check, timeout=timeout, **kw)

    def lb_exec(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return self.ns_exec(self.ns_lb, argv, check=check, timeout=timeout, **kw)

    def curl(self, url: str, *, timeout: float = 3.0, extra: Sequence[str] = ()) -> str:
        """GET *url* from the client; return the body. Raises CalledProcessError on failure."""
        argv = ["curl", "-sSfg", "--noproxy", "*", "--max-time", str(timeout), *extra, url]
        return self.client_exec(argv, timeout=timeout + 5).stdout

    def udp(
        self, host: str, port: int | None = None, *, payload: bytes = b"?", timeout: float = 2.0
    ) -> str:
        """Send one datagram from the client (connected socket); return the reply text."""
        port = self.spec.udp_port if port is None else port
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with in_netns(self.ns_client):
            s = socket.socket(fam, socket.SOCK_DGRAM)
        with s:
            s.settimeout(timeout)
            s.connect((host, port))
            s.send(payload)
            return s.recv(2048).decode()

    # -- lifecycle
    def existing_namespaces(self) -> List[str]:
        """Namespaces with this prefix that exist now (any number of reals)."""
        pat = re.compile(rf"^{re.escape(self.prefix)}-(br|client|lb|real[0-9]+)$")
        try:
            names = os.listdir(NETNS_DIR)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if pat.match(n))

    def is_up(self) -> bool:
        """Built from this very spec, with every namespace and every real's services alive."""
        if load_spec(self.prefix, self.spec.state_root) != self.spec:
            return False
        if set(self.namespaces) != set(self.existing_namespaces()):
            return False
        st = self.status()
        return all(r["nginx"] and r["udp"] for r in st["reals"].values())

    def status(self) -> Dict[str, Any]:
        existing = self.existing_namespaces()
        reals: Dict[str, Dict[str, Any]] = {}
        for r in self.real_names:
            d = self.real_dir(r)
            reals[r] = {
                "ns": self.real_ns(r),
                "ip4": self.real_ip4(r),
                "ip6": self.real_ip6(r),
                "nginx": self._pid_alive(os.path.join(d, "nginx.pid")),
                "udp": self._pid_alive(os.path.join(d, "udp.pid")),
            }
        return {
            "prefix": self.prefix,
            "state_dir": self.state_dir if os.path.isdir(self.state_dir) else None,
            "namespaces": existing,
            "missing": [n for n in self.namespaces if n not in existing],
            "vip4": self.vip4,
            "vip6": self.vip6,
            "reals": reals,
            "processes": {k: v for k, v in pids_in_netns(existing).items() if v},
        }

    def up(self) -> None:
        """Build the lab. A no-op if it is already up; on any failure, tear down and re-raise."""
        if self.is_up():
            return
        self.down()
        try:
            self._create_namespaces()
            self._create_links()
            self._client_population()
            self._steer_flows()
            self._attach_peer_xdp()
            self._start_services()
            self._write_state()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove everything of this prefix: processes, namespaces, state dir. Idempotent."""
        existing = self.existing_namespaces()
        victims: Set[int] = set()
        # Processes whose namespace is already gone: find them by pid file, and only if
        # their command line names our state dir (the pid may have been reused).
        marker = self.state_dir + "/"
        if os.path.isdir(self.state_dir):
            for root, _dirs, files in os.walk(self.state_dir):
                for fn in files:
                    if fn.endswith(".pid"):
                        pid = _read_pid(os.path.join(root, fn))
                        if pid and pid != os.getpid() and marker in _cmdline(pid):
                            victims.add(pid)
        # Then everything inside the namespaces, rescanning until none is left: a process
        # seen alive may fork before it is killed (nginx's master starting its workers).
        for _ in range(20):
            for pids in pids_in_netns(existing).values():
                victims.update(pids)
            if victims:
                victims |= _children(victims)
            victims = {p for p in victims if _alive(p)}
            if not victims:
                break
            _kill_and_wait(victims)
            victims = set()  # dead now; never signal those pids again (they may be reused)
        else:
            raise RuntimeError(f"lab {self.prefix}: processes keep appearing in its namespaces")
        if existing:
            batch = "".join(f"netns del {n}\n" for n in existing)
            _run(["ip", "-force", "-batch", "-"], input=batch)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # -- steps of up() (separate so tests can break one)
    def _create_namespaces(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        _run_all([(["ip", "netns", "add", n], None) for n in self.namespaces])
        off_dad = {"net.ipv6.conf.default.accept_dad": "0", "net.ipv6.conf.all.accept_dad": "0"}
        br = {"net.ipv6.conf.default.disable_ipv6": "1", "net.ipv6.conf.all.disable_ipv6": "1"}
        for key in ("iptables", "ip6tables", "arptables"):  # if br_netfilter is loaded
            if os.path.exists(f"/proc/sys/net/bridge/bridge-nf-call-{key}"):
                br[f"net.bridge.bridge-nf-call-{key}"] = "0"
        write_sysctls(self.ns_br, br)
        write_sysctls(self.ns_client, off_dad)
        write_sysctls(self.ns_lb, off_dad)
        dsr = {
            "net.ipv4.conf.all.arp_ignore": "1",
            "net.ipv4.conf.all.arp_announce": "2",
        }
        for r in self.real_names:
            write_sysctls(self.real_ns(r), {**off_dad, **dsr})

    def _create_links(self) -> None:
        s = self.spec
        p4, p6 = s.net4.prefixlen, s.net6.prefixlen
        roles = ["client", "lb", *self.real_names]
        br = [
            f"link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0",
            f"link set {BRIDGE} up",
        ]
        for role in roles:
            br.append(f"link add v-{role} type veth peer name {IFNAME} netns {s.ns(role)}")
            br.append(f"link set v-{role} master {BRIDGE} up")
        _run(["ip", "-n", self.ns_br, "-batch", "-"], input="\n".join(br) + "\n")

        def host_cmds(h: int) -> List[str]:
            return [
                "link set lo up",
                f"addr add {s.host4(h)}/{p4} dev {IFNAME}",
                f"addr add {s.host6(h)}/{p6} dev {IFNAME} nodad",
                f"link set {IFNAME} up",
            ]

        batches: Dict[str, List[str]] = {
            self.ns_client: host_cmds(s.client_host),
            self.ns_lb: [
                *host_cmds(s.lb_host),
                f"addr add {s.vip4}/32 dev {IFNAME}",
                f"addr add {s.vip6}/128 dev {IFNAME} nodad",
            ],
        }
        for r in self.real_names:
            batches[self.real_ns(r)] = [
                *host_cmds(s.real_host(r)),
                f"addr add {s.vip4}/32 dev lo",
                f"addr add {s.vip6}/128 dev lo nodad",
            ]
        cmds: List[Tuple[Sequence[str], str | None]] = [
            (["ip", "-n", ns, "-batch", "-"], "\n".join(lines) + "\n")
            for ns, lines in batches.items()
        ]
        # Checksum offload breaks with native XDP_TX on veth (DESIGN.md section 3).
        cmds.append((nsenter_cmd(self.ns_client, ["ethtool", "-K", IFNAME, "tx", "off"]), None))
        _run_all(cmds)
        # As the operator README says: on all and on the interface facing the clients.
        for r in self.real_names:
            write_sysctls(
                self.real_ns(r),
                {
                    f"net.ipv4.conf.{IFNAME}.arp_ignore": "1",
                    f"net.ipv4.conf.{IFNAME}.arp_announce": "2",
                },
            )

    def _client_population(self) -> None:
        """Source addresses, tw_reuse and a wide port range for the client (sources.py)."""
        write_sysctls(self.ns_client, sources.CLIENT_SYSCTLS)
        v4, v6 = sources.client_batches(self.spec, IFNAME)
        _run_all([(["ip", "-n", self.ns_client, "-4", "-batch", "-"], "\n".join(v4) + "\n"),
                  (["ip", "-n", self.ns_client, "-6", "-batch", "-"], "\n".join(v6) + "\n")])

    def _steer_flows(self) -> None:
        """Receive Packet Steering on every real's eth0, to all CPUs: each flow is then
        processed on one CPU, as behind a physical NIC with RSS.

        A veth hands each packet to the stack on the CPU that sent it, so the handshake's
        last ACK and the first request of one connection can reach a real on two CPUs at
        once (through the LB, about once in 10^5 connections here). Kernels without
        upstream's fix for the lockless ehash lookup racing inet_ehash_insert() (6.18
        here) then miss the socket and answer the request with a RST.
        """
        full, groups = (1 << (os.cpu_count() or 1)) - 1, []
        while full:
            groups.append(f"{full & 0xFFFFFFFF:08x}")
            full >>= 32
        mask = ",".join(reversed(groups))
        script = (
            f"for q in /sys/class/net/{IFNAME}/queues/rx-*; do "
            f"[ ! -w $q/rps_cpus ] || echo {mask} > $q/rps_cpus || exit 1; done"
        )
        # sysfs shows a namespace's devices only when mounted from inside it, which is
        # what `ip netns exec` does (its /sys remount is harmless here: no bpffs needed).
        _run_all([(["ip", "netns", "exec", self.real_ns(r), "sh", "-c", script], None)
                  for r in self.real_names])

    def _attach_peer_xdp(self) -> None:
        """XDP_PASS on v-lb: XDP_TX from the LB's eth0 is dropped unless its peer has XDP."""
        with in_netns(self.ns_br):
            attach_stub(socket.if_nametoindex("v-lb"), libbpf.XDP_PASS, self.spec.peer_xdp_mode)

    def _start_services(self) -> None:
        cmds: List[Tuple[Sequence[str], str | None]] = []
        for r in self.real_names:
            cmds.append((self._nginx_argv(r), None))
            cmds.append((self._udp_argv(r), None))
        _run_all(cmds)
        for r in self.real_names:
            self._wait_pidfile(os.path.join(self.real_dir(r), "nginx.pid"))

    def _write_state(self) -> None:
        with open(os.path.join(self.state_dir, "lab.json"), "w") as f:
            json.dump(self.spec.to_dict(), f, indent=2)
        with open(os.path.join(self.state_dir, "lb_conf.json"), "w") as f:
            json.dump(self.config(), f, indent=2)

    # -- per-real services
    def _nginx_argv(self, real: str) -> List[str]:
        d = self.real_dir(real)
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(
                _NGINX_CONF.format(name=real, ns=self.real_ns(real), d=d, port=self.spec.http_port)
            )
        err = os.path.join(d, "nginx-error.log")
        return nsenter_cmd(self.real_ns(real), ["nginx", "-p", d + "/", "-c", conf, "-e", err])

    def _udp_argv(self, real: str) -> List[str]:
        d = self.real_dir(real)
        os.makedirs(d, exist_ok=True)
        argv = [sys.executable, "-m", "xdplbd.lab", "udp-echo", "--name", real]
        argv += ["--port", str(self.spec.udp_port), "--pidfile", os.path.join(d, "udp.pid")]
        argv += ["--log", os.path.join(d, "udp.log")]
        # env cannot be passed through nsenter_cmd's argv, so use env(1) for PYTHONPATH.
        return nsenter_cmd(self.real_ns(real), ["env", f"PYTHONPATH={_PKG_PARENT}", *argv])

    @staticmethod
    def _pid_alive(pidfile: str) -> bool:
        pid = _read_pid(pidfile)
        return pid is not None and _alive(pid)

    @staticmethod
    def _wait_pidfile(pidfile: str, timeout: float = 3.0) -> int:
        deadline = time.monotonic() + timeout
        while True:
            pid = _read_pid(pidfile)
            if pid is not None and _alive(pid):
                return pid
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pidfile}: no live process after {timeout}s")
            time.sleep(0.005)

    def start_nginx(self, real: str) -> None:
        pidfile = os.path.join(self.real_dir(real), "nginx.pid")
        if self._pid_alive(pidfile):
            return
        _run(self._nginx_argv(real))
        self._wait_pidfile(pidfile)

    def stop_nginx(self, real: str) -> None:
        """Stop nginx on *real* now (SIGTERM, its fast shutdown; workers are waited for)."""
        pidfile = os.path.join(self.real_dir(real), "nginx.pid")
        pid = _read_pid(pidfile)
        if pid is None or not _alive(pid):
            return
        workers = _children({pid})
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while any(_alive(p) for p in {pid, *workers}) and time.monotonic() < deadline:
            time.sleep(0.005)
        _kill_and_wait(p for p in {pid, *workers} if _alive(p))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)

    def set_unhealthy(self, real: str, unhealthy: bool = True) -> None:
        """Make *real*'s nginx answer /healthz with 503 (or 200 again)."""
        flag = os.path.join(self.real_dir(real), "unhealthy")
        if unhealthy:
            with open(flag, "w"):
                pass
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(flag)

    def start_udp(self, real: str) -> None:
        if not self._pid_alive(os.path.join(self.real_dir(real), "udp.pid")):
            _run(self._udp_argv(real))

    def stop_udp(self, real: str) -> None:
        pidfile = os.path.join(self.real_dir(real), "udp.pid")
        pid = _read_pid(pidfile)
        if pid is not None and _alive(pid):
            _kill_and_wait([pid])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pidfile)


def lab_config(spec: LabSpec | None = None) -> Dict[str, Any]:
    """The lb_conf.json dict for a running lab (MACs read from its namespaces)."""
    return Lab(spec).config()


def load_spec(prefix: str, state_root: str = STATE_ROOT) -> LabSpec | None:
    """The spec a running lab was built with (from its lab.json), if any."""
    try:
        with open(os.path.join(state_root, prefix, "lab.json")) as f:
            return LabSpec.from_dict(json.load(f))
    except (OSError, ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- UDP echo

_IP_PKTINFO = 8  # socket.IP_PKTINFO exists only on Python 3.13+
_IPV6_RECVPKTINFO = 49
_IPV6_PKTINFO = 50


def udp_echo(name: str, port: int, pidfile: str | None, log: str | None) -> None:
    """Answer every datagram on *port* (v4 and v6) with ``name\\n``.

    The reply leaves from the same socket, with the source address set to the packet's
    destination (IP_PKTINFO / IPV6_PKTINFO): a reply to a datagram sent to the VIP comes
    from the VIP, as DSR needs, although the socket is bound to the wildcard address.
    Binds first, then daemonizes: when the starting command returns, the port is open.
    """
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
    s4.bind(("0.0.0.0", port))
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
    s6.bind(("::", port))
    if pidfile is not None:
        pid = os.fork()
        if pid:
            with open(pidfile + ".tmp", "w") as f:
                f.write(f"{pid}\n")
            os.rename(pidfile + ".tmp", pidfile)
            os._exit(0)
        os.setsid()
        fd = os.open(log or os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
    reply = f"{name}\n".encode()
    sel = selectors.DefaultSelector()
    sel.register(s4, selectors.EVENT_READ)
    sel.register(s6, selectors.EVENT_READ)
    cmsg_space = socket.CMSG_SPACE(20)
    while True:
        for key, _ in sel.select():
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                _data, anc, _flags, peer = sock.recvmsg(2048, cmsg_space)
                out = []
                for level, typ, cdata in anc:
                    if level == socket.IPPROTO_IP and typ == _IP_PKTINFO:
                        # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}
                        out.append((level, typ, struct.pack("=i4s4s", 0, cdata[8:12], bytes(4))))
                    elif level == socket.IPPROTO_IPV6 and typ == _IPV6_PKTINFO:
                        # struct in6_pktinfo {in6_addr addr; unsigned ifindex}
                        out.append((level, typ, struct.pack("=16sI", cdata[:16], 0)))
                sock.sendmsg([reply], out, 0, peer)
            except OSError as e:
                print(f"udp-echo {name}: {e}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- CLI


def _spec_from_args(args: argparse.Namespace, for_up: bool) -> LabSpec:
    saved = None if for_up else load_spec(args.prefix)
    if saved is not None and args.reals is None:
        return saved
    return LabSpec(prefix=args.prefix, n_reals=args.reals if args.reals is not None else 3)


def _print_summary(lab: Lab) -> None:
    print(f"lab {lab.prefix}: up ({len(lab.real_names)} reals), state in {lab.state_dir}")
    print(f"  client  {lab.ns_client:<14} {lab.client_ip4:<12} {lab.client_ip6}")
    print(f"  lb      {lab.ns_lb:<14} {lab.lb_ip4:<12} {lab.lb_ip6}  {lab.lb_mac}  (eth0)")
    for r in lab.reals:
        print(f"  {r.name:<7} {r.ns:<14} {r.ip4:<12} {r.ip6}  {r.mac}")
    print(f"  VIPs    {lab.vip4}, {lab.vip6}  (tcp/{lab.spec.http_port}, udp/{lab.spec.udp_port})")
    print(f"  config  {os.path.join(lab.state_dir, 'lb_conf.json')}")
    print(f"  try     nsenter --net=/run/netns/{lab.ns_client} curl http://{lab.vip4}/")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdplbd.lab", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, hlp in (
        ("up", "build the lab (no-op if already up)"),
        ("down", "remove every namespace, process and file of the prefix"),
        ("status", "show what exists; exit 0 only if the lab is fully up"),
        ("config", "print lb_conf.json for the running lab"),
    ):
        p = sub.add_parser(cmd, help=hlp)
        p.add_argument("--prefix", default="xl", help="namespace prefix (default xl)")
        p.add_argument("--reals", type=int, default=None, help="number of reals (default 3)")
        if cmd in ("up", "status"):
            p.add_argument("--json", action="store_true", help="machine-readable output")
    echo = sub.add_parser("udp-echo", help=argparse.SUPPRESS)
    echo.add_argument("--name", required=True)
    echo.add_argument("--port", type=int, default=5353)
    echo.add_argument("--pidfile")
    echo.add_argument("--log")
    args = ap.parse_args(argv)

    if args.cmd == "udp-echo":
        udp_echo(args.name, args.port, args.pidfile, args.log)
        return 0
    lab = Lab(_spec_from_args(args, for_up=args.cmd == "up"))
    if args.cmd == "up":
        t0 = time.monotonic()
        lab.up()
        if args.json:
            print(json.dumps({"status": lab.status(), "config": lab.config()}, indent=2))
        else:
            _print_summary(lab)
            print(f"  took    {time.monotonic() - t0:.2f}s")
        return 0
    if args.cmd == "down":
        lab.down()
        return 0
    if args.cmd == "status":
        st = lab.status()
        up = lab.is_up()
        if args.json:
            print(json.dumps({"up": up, **st}, indent=2))
        elif up:
            _print_summary(lab)
        else:
            print(f"lab {lab.prefix}: {'partial' if st['namespaces'] else 'down'}")
            if st["namespaces"]:
                print(f"  namespaces: {' '.join(st['namespaces'])}")
                print(f"  missing:    {' '.join(st['missing']) or '-'}")
        return 0 if up else 1
    if args.cmd == "config":
        if not lab.is_up():
            print(f"lab {lab.prefix} is not up", file=sys.stderr)
            return 1
        print(json.dumps(lab.config(), indent=2))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
