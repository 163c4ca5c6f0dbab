"""The scale-out lab: a router running BIRD with ECMP over N LB nodes, each running BIRD
and xdplbd, in front of DSR reals; and, on request, a keepalived VRRP pair.

Layout (default prefix ``so``, 3 LB nodes, 3 reals)::

    netns so-client  eth0 10.97.1.2/24 fd00:97:1::2/64, default route via the router
    netns so-rtr     c0   10.97.1.1/24 fd00:97:1::1/64   (the client network)
                     eth0 10.97.0.1/24 fd00:97::1/64     (the LB segment)
                     BIRD: BGP + BFD (100 ms x 3) with every LB node; `merge paths` puts
                     the nodes' equal VIP routes in the kernel as one ECMP route, hashed on
                     the 5-tuple (fib_multipath_hash_policy=1); a tc program on c0's
                     ingress clears the skb hash (see HASHCLR_INSNS)
    netns so-br      bridge br0: v-rtr, v-lb1..N, v-real1..M (+ v-va, v-vb)
    netns so-lbK     eth0 10.97.0.(10+K)/24: BIRD announcing what xdplbd writes in its
                     fragment, and xdplbd (native XDP) with `announce.bird`
    netns so-realJ   eth0 10.97.0.(100+J)/24, every VIP on lo, arp_ignore=1 /
                     arp_announce=2, nginx answering its name; default route via the
                     router, so replies go straight to the client (DSR)
    netns so-va/vb   (--vrrp) eth0 10.97.0.21/.22: keepalived VRRP only, holding the
                     VRRP VIP 10.97.0.200 on the master's eth0, and xdplbd with one shared
                     config; the router reaches that VIP on-link (ARP, moved by GARP)

The BGP VIPs are 10.97.9.100 and fd00:97:9::100 (port 80/tcp): not on any link, the
router reaches them only through the nodes' routes.

Facts from DESIGN.md section 3 this lab is built around:

* the bridge ports of the LB nodes have unknown-unicast flooding off, as a switch
  with a learned table: otherwise a dead node's frames are flooded to the others;
* the bridge-side peer of every LB node carries an XDP_PASS program, because XDP_TX
  out of a veth is delivered only if the peer has an XDP program;
* a node is killed link first (:meth:`ScaleLab.kill`): killed first, its BIRD would
  close the BGP session cleanly and BFD would never be exercised;
* the router's BGP timers are short (error wait 1-4 s): BIRD's default keeps a peer
  that failed out for about a minute.

Nothing outside the lab's namespaces is touched, except its state directory
``/run/xdplb-lab/<prefix>/`` and its pins under ``/sys/fs/bpf/<prefix>/``.

Command line::

    python -m xdplbd.lab.scaleout up [--lbs N] [--reals M] [--vrrp] [--prefix P]
    python -m xdplbd.lab.scaleout status|down [--prefix P]
    python -m xdplbd.lab.scaleout kill|rejoin NODE        (lb2, va, ...)
    python -m xdplbd.lab.scaleout demo                    (`make demo-scaleout`)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from xdplbd.kernel import libbpf
from xdplbd.kernel.loader import remove_pins
from xdplbd.lab.demo import LbDaemon, Wrk, wait_for
from xdplbd.lab.longconn import READY_TAG, RESULT_TAG, Report
from xdplbd.lab.topology import (
    _NGINX_CONF,
    _PKG_PARENT,
    IFNAME,
    NETNS_DIR,
    STATE_ROOT,
    _children,
    _kill_and_wait,
    _run,
    _run_all,
    attach_stub,
    in_netns,
    link_info,
    nsenter_cmd,
    pids_in_netns,
    write_sysctls,
)
from xdplbd.service.daemonize import alive as _alive

BPFFS = "/sys/fs/bpf"
BRIDGE = "br0"
ROUTER_AS, LB_AS = 65000, 65001
VIP4, VIP6 = "10.97.9.100", "fd00:97:9::100"
VRRP_VIP = "10.97.0.200"
CLIENT4, CLIENT6 = "10.97.1.2", "fd00:97:1::2"
RTR_C4, RTR_C6 = "10.97.1.1", "fd00:97:1::1"  # the router, client side
RTR4, RTR6 = "10.97.0.1", "fd00:97::1"  # the router, LB segment
SEG4, SEG6 = 24, 64
VRRP_NODES = {"va": (21, 150), "vb": (22, 100)}  # name: (host number, priority)
VRRP_ADVERT_S = 0.1  # VRRPv3; sub-second adverts need it (docs/scale-out.md)
HTTP_PORT = 80
TUNABLES = {"max_vips": 16, "max_reals": 256, "conntrack_size": 65536, "ring_size": 65537}
# Every VIP of the lab is health-checked with the default check (DSR-aware TCP: a SYN
# to VIP:80 framed to the real's MAC, from the node's own address), on a short
# schedule so a node's view changes within about a second: down after 2 failures
# 0.5 s apart, up after 2 successes.
HEALTHCHECK = {"type": "tcp", "interval": 0.5, "timeout": 0.3, "rise": 2, "fall": 2}
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,29}$")

# The router's tc ingress program on c0: bpf_set_hash_invalid(skb); return TC_ACT_OK.
# A veth hands the client socket's skb hash to the router, and multipath routing uses
# that hash instead of the 5-tuple when there is one; TCP re-rolls it on every
# retransmission timeout, so without this an established flow hops to another LB node
# exactly when a failover makes it retransmit (measured: 7 of 12 flows). A physical
# router hashes the packet; clearing the hash makes this one do the same.
BPF_FUNC_SET_HASH_INVALID = 41
HASHCLR_INSNS = (libbpf.insn(0x85, imm=BPF_FUNC_SET_HASH_INVALID)  # call (r1 = skb)
                 + libbpf.insn(0xB7, dst=0, imm=0)  # r0 = TC_ACT_OK
                 + libbpf.insn(0x95))  # exit

BFD = """\
protocol bfd {
  interface "eth0" {
    min rx interval 100 ms;
    min tx interval 100 ms;
    multiplier 3;
  };
}
"""
# Seconds, not BIRD's default minute, before a failed peer may come back.
BGP_TIMERS = """\
  hold time 3; keepalive time 1;
  error wait time 1, 4; error forget time 10;
  connect delay time 1; connect retry time 2;
"""


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class ScaleSpec:
    prefix: str = "so"
    n_lbs: int = 3  # LB nodes on BGP
    n_reals: int = 3
    vrrp: bool = False  # also the keepalived pair va/vb
    health: bool = True  # every VIP health-checked (HEALTHCHECK)
    state_root: str = STATE_ROOT

    def __post_init__(self) -> None:
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix {self.prefix!r}: want [A-Za-z0-9][A-Za-z0-9_-]{{0,29}}")
        if not 0 <= self.n_lbs <= 8:
            raise ValueError(f"n_lbs {self.n_lbs}: want 0..8")
        if not 1 <= self.n_reals <= 99:
            raise ValueError(f"n_reals {self.n_reals}: want 1..99")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.state_root, self.prefix)

    @property
    def pin_root(self) -> str:
        return os.path.join(BPFFS, self.prefix)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"


@dataclass(frozen=True)
class Node:
    """One LB node: its namespace, addresses, and where its files and pins live."""

    name: str  # lb1.., va, vb
    kind: str  # "bgp" | "vrrp"
    ns: str
    host: int  # host number on the LB segment
    dir: str
    pin_dir: str
    priority: int = 0  # VRRP

    @property
    def ip4(self) -> str:
        return f"10.97.0.{self.host}"

    @property
    def ip6(self) -> str:
        return f"fd00:97::{self.host}"

    # LbHost (demo.LbDaemon): the daemon's namespace and where its files go.
    @property
    def ns_lb(self) -> str:
        return self.ns

    @property
    def state_dir(self) -> str:
        return self.dir

    @property
    def port(self) -> str:
        """Its bridge port (the bridge end of its veth)."""
        return f"v-{self.name}"

    @property
    def bird_conf(self) -> str:
        return os.path.join(self.dir, "bird.conf")

    @property
    def bird_socket(self) -> str:
        return os.path.join(self.dir, "bird.ctl")

    @property
    def bird_pid(self) -> str:
        return os.path.join(self.dir, "bird.pid")

    @property
    def fragment(self) -> str:
        """The include file xdplbd writes (announce.bird.file)."""
        return os.path.join(self.dir, "xdplb-vips.conf")


# --------------------------------------------------------------------------- configs


def router_bird_conf(d: str, nodes: Sequence[Node]) -> str:
    """BIRD on the router: BGP + BFD with every LB node; ECMP into the kernel."""
    s = f"""log "{d}/bird.log" all;
router id {RTR4};
protocol device {{ }}
# ECMP: equal best routes from several nodes become one multipath kernel route.
protocol kernel kernel4 {{
  merge paths on limit 16;
  ipv4 {{ import none; export all; }};
}}
protocol kernel kernel6 {{
  merge paths on limit 16;
  ipv6 {{ import none; export all; }};
}}
{BFD}
template bgp lbnode {{
  local as {ROUTER_AS};
  bfd on;
{BGP_TIMERS}}}
"""
    for n in nodes:
        s += f"""
protocol bgp {n.name}_4 from lbnode {{
  local {RTR4}; neighbor {n.ip4} as {LB_AS};
  ipv4 {{ import where net ~ [ 10.97.9.0/24{{32,32}} ]; export none; }};
}}
protocol bgp {n.name}_6 from lbnode {{
  local {RTR6}; neighbor {n.ip6} as {LB_AS};
  ipv6 {{ import where net ~ [ fd00:97:9::/64{{128,128}} ]; export none; }};
}}
"""
    return s


def node_bird_conf(n: Node) -> str:
    """BIRD on an LB node, as etc/xdplb/bird.conf.example with the lab's addresses."""
    return f"""log "{n.dir}/bird.log" all;
router id {n.ip4};
protocol device {{ }}
include "{n.fragment}";
# The VIP blackhole routes are for BGP only, never for this node's own kernel.
protocol kernel kernel4 {{
  ipv4 {{ import none; export where proto != "xdplb_vips4"; }};
}}
protocol kernel kernel6 {{
  ipv6 {{ import none; export where proto != "xdplb_vips6"; }};
}}
{BFD}
protocol bgp upstream4 {{
  local {n.ip4} as {LB_AS};
  neighbor {RTR4} as {ROUTER_AS};
  bfd on;
{BGP_TIMERS}  ipv4 {{ import none; export where proto = "xdplb_vips4"; next hop self; }};
}}
protocol bgp upstream6 {{
  local {n.ip6} as {LB_AS};
  neighbor {RTR6} as {ROUTER_AS};
  bfd on;
{BGP_TIMERS}  ipv6 {{ import none; export where proto = "xdplb_vips6"; next hop self; }};
}}
"""


EMPTY_FRAGMENT = ("protocol static xdplb_vips4 { ipv4; }\n"
                  "protocol static xdplb_vips6 { ipv6; }\n")


def keepalived_conf(n: Node, peers: Sequence[Node]) -> str:
    """keepalived, VRRP only, as etc/xdplb/keepalived.conf.example with the lab's values:
    VRRPv3 for sub-second adverts, the master is the node with the highest priority."""
    return f"""global_defs {{
  router_id {n.ns}
  vrrp_version 3
  vrrp_garp_master_delay 1
  vrrp_garp_master_repeat 3
}}
vrrp_instance xdplb {{
  state {"MASTER" if n.priority == max(p.priority for p in peers) else "BACKUP"}
  interface {IFNAME}
  virtual_router_id 97
  priority {n.priority}
  advert_int {VRRP_ADVERT_S}
  virtual_ipaddress {{
    {VRRP_VIP}/32 dev {IFNAME}
  }}
}}
"""


# --------------------------------------------------------------------------- the lab


class ScaleLab:
    """Build, drive and tear down the lab of a ScaleSpec."""

    def __init__(self, spec: Optional[ScaleSpec] = None) -> None:
        self.spec = spec if spec is not None else ScaleSpec()
        self.daemons: Dict[str, LbDaemon] = {
            n.name: LbDaemon(n, n.pin_dir, xdp_mode="native",
                             workdir=os.path.join(n.dir, "xdplbd"))
            for n in self.nodes
        }
        self._keepalived: Dict[str, subprocess.Popen[bytes]] = {}

    # -- names
    @property
    def prefix(self) -> str:
        return self.spec.prefix

    @property
    def state_dir(self) -> str:
        return self.spec.state_dir

    @property
    def ns_client(self) -> str:
        return self.spec.ns("client")

    @property
    def ns_rtr(self) -> str:
        return self.spec.ns("rtr")

    @property
    def ns_br(self) -> str:
        return self.spec.ns("br")

    @property
    def real_names(self) -> List[str]:
        return [f"real{j + 1}" for j in range(self.spec.n_reals)]

    def real_ns(self, real: str) -> str:
        return self.spec.ns(real)

    def real_ip4(self, real: str) -> str:
        return f"10.97.0.{100 + self.real_names.index(real) + 1}"

    def real_ip6(self, real: str) -> str:
        return f"fd00:97::{100 + self.real_names.index(real) + 1}"

    def _node(self, name: str, kind: str, host: int, prio: int = 0) -> Node:
        return Node(name, kind, self.spec.ns(name), host, os.path.join(self.state_dir, name),
                    os.path.join(self.spec.pin_root, name), prio)

    @property
    def bgp_nodes(self) -> List[Node]:
        return [self._node(f"lb{k}", "bgp", 10 + k) for k in range(1, self.spec.n_lbs + 1)]

    @property
    def vrrp_nodes(self) -> List[Node]:
        if not self.spec.vrrp:
            return []
        return [self._node(name, "vrrp", host, prio) for name, (host, prio) in VRRP_NODES.items()]

    @property
    def nodes(self) -> List[Node]:
        return self.bgp_nodes + self.vrrp_nodes

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node {name!r} in lab {self.prefix} "
                       f"(nodes: {', '.join(n.name for n in self.nodes)})")

    @property
    def namespaces(self) -> List[str]:
        roles = ["br", "client", "rtr", *(n.name for n in self.nodes), *self.real_names]
        return [self.spec.ns(r) for r in roles]

    def existing_namespaces(self) -> List[str]:
        pat = re.compile(rf"^{re.escape(self.prefix)}-(br|client|rtr|lb\d+|va|vb|real\d+)$")
        try:
            return sorted(n for n in os.listdir(NETNS_DIR) if pat.match(n))
        except FileNotFoundError:
            return []

    # -- configs
    def real_macs(self) -> Dict[str, str]:
        return {r: link_info(self.real_ns(r), IFNAME)[1] for r in self.real_names}

    def xdplb_config(self, node: Node) -> Dict[str, Any]:
        """lb_conf.json of *node*. Every BGP node has the same VIPs and reals (so the same
        rings); only where its BIRD fragment lives differs. The VRRP pair shares one."""
        macs = self.real_macs()

        def vip(addr: str, v6: bool) -> Dict[str, Any]:
            reals = [{"ip": self.real_ip6(r) if v6 else self.real_ip4(r), "mac": macs[r],
                      "weight": 1} for r in self.real_names]
            out: Dict[str, Any] = {"vip": addr, "port": HTTP_PORT, "protocol": "tcp",
                                   "reals": reals}
            if self.spec.health:
                out["healthcheck"] = dict(HEALTHCHECK)
            return out

        cfg: Dict[str, Any] = {"interface": IFNAME, "xdp_mode": "native",
                               "tunables": dict(TUNABLES)}
        if node.kind == "bgp":
            cfg["vips"] = [vip(VIP4, False), vip(VIP6, True)]
            cfg["announce"] = {"bird": {"file": node.fragment, "socket": node.bird_socket}}
        else:
            cfg["vips"] = [vip(VRRP_VIP, False)]
        return cfg

    # -- lifecycle
    def up(self) -> None:
        """Build the lab and wait until the router has every BGP node in its ECMP route
        (and the VRRP pair has a master). On any failure: tear down, re-raise."""
        self.down()
        try:
            self._namespaces()
            self._links()
            self._router_hash_fix()
            self._start_reals()
            self._start_bird(self.ns_rtr, os.path.join(self.state_dir, "rtr"),
                             router_bird_conf(os.path.join(self.state_dir, "rtr"),
                                              self.bgp_nodes))
            for n in self.nodes:
                self.start_node(n.name, wait=False)
            self._write_state()
            want = {n.ip4 for n in self.bgp_nodes}
            if want:
                wait_for(lambda: self.nexthops(VIP4) == want, 30, f"ECMP over {sorted(want)}")
                want6 = {n.ip6 for n in self.bgp_nodes}
                wait_for(lambda: self.nexthops(VIP6) == want6, 10, f"v6 ECMP over {sorted(want6)}")
            if self.spec.vrrp:
                wait_for(lambda: self.vrrp_master() == "va", 15, "va to become VRRP master")
                # ... and vb ready to take over (the master holds the VIP at once).
                wait_for(lambda: "Entering BACKUP STATE" in self.keepalived_log("vb", 1000),
                         15, "vb to enter the VRRP BACKUP state")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove everything of this prefix (idempotent): processes, namespaces, files, pins."""
        for p in self._keepalived.values():
            with contextlib.suppress(OSError):
                p.kill()
                p.wait(3)
        self._keepalived.clear()
        existing = self.existing_namespaces()
        for _ in range(20):  # a process seen may fork before it dies: rescan
            victims: Set[int] = set()
            for pids in pids_in_netns(existing).values():
                victims.update(pids)
            victims |= _children(victims)
            victims = {p for p in victims if _alive(p)}
            if not victims:
                break
            _kill_and_wait(victims)
        for d in self.daemons.values():  # reap our children
            if d.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    d.proc.wait(3)
        if existing:
            _run(["ip", "-force", "-batch", "-"],
                 input="".join(f"netns del {n}\n" for n in existing))
        shutil.rmtree(self.state_dir, ignore_errors=True)
        remove_pins(self.spec.pin_root)

    def is_up(self) -> bool:
        return set(self.namespaces) <= set(self.existing_namespaces())

    def _write_state(self) -> None:
        with open(os.path.join(self.state_dir, "scaleout.json"), "w") as f:
            json.dump(asdict(self.spec), f, indent=2)

    # -- steps of up()
    def _namespaces(self) -> None:
        os.makedirs(self.state_dir, exist_ok=True)
        _run_all([(["ip", "netns", "add", n], None) for n in self.namespaces])
        no_dad = {"net.ipv6.conf.default.accept_dad": "0", "net.ipv6.conf.all.accept_dad": "0"}
        br = {"net.ipv6.conf.default.disable_ipv6": "1", "net.ipv6.conf.all.disable_ipv6": "1"}
        for key in ("iptables", "ip6tables", "arptables"):  # if br_netfilter is loaded
            if os.path.exists(f"/proc/sys/net/bridge/bridge-nf-call-{key}"):
                br[f"net.bridge.bridge-nf-call-{key}"] = "0"
        write_sysctls(self.ns_br, br)
        for ns in self.namespaces[1:]:
            write_sysctls(ns, no_dad)
        write_sysctls(self.ns_rtr, {
            "net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1",
            # L4 hashing: the 5-tuple, so each flow sticks to one node.
            "net.ipv4.fib_multipath_hash_policy": "1",
            "net.ipv6.fib_multipath_hash_policy": "1",
            "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
        })
        for r in self.real_names:
            write_sysctls(self.real_ns(r), {
                "net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2",
                "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0",
            })

    def _links(self) -> None:
        on_bridge = ["rtr", *(n.name for n in self.nodes), *self.real_names]
        br = [f"link add {BRIDGE} type bridge stp_state 0 mcast_snooping 0",
              f"link set {BRIDGE} up"]
        for role in on_bridge:
            br.append(f"link add v-{role} type veth peer name {IFNAME} netns {self.spec.ns(role)}")
            br.append(f"link set v-{role} master {BRIDGE} up")
        _run(["ip", "-n", self.ns_br, "-batch", "-"], input="\n".join(br) + "\n")
        # A switch with a learned table does not send a dead node's frames to the others.
        for n in self.nodes:
            _run(["bridge", "-n", self.ns_br, "link", "set", "dev", n.port, "flood", "off"])

        def host(ip4: str, ip6: str, gw: bool = True) -> List[str]:
            cmds = ["link set lo up", f"addr add {ip4}/{SEG4} dev {IFNAME}",
                    f"addr add {ip6}/{SEG6} dev {IFNAME} nodad", f"link set {IFNAME} up"]
            if gw:
                cmds += [f"route add default via {RTR4}", f"route add ::/0 via {RTR6}"]
            return cmds

        batches: Dict[str, List[str]] = {
            self.ns_client: [
                f"link add {IFNAME} type veth peer name c0 netns {self.ns_rtr}",
                "link set lo up", f"addr add {CLIENT4}/24 dev {IFNAME}",
                f"addr add {CLIENT6}/64 dev {IFNAME} nodad", f"link set {IFNAME} up",
            ],
        }
        for n in self.nodes:
            batches[n.ns] = host(n.ip4, n.ip6)
        for r in self.real_names:
            batches[self.real_ns(r)] = [
                *host(self.real_ip4(r), self.real_ip6(r)),
                f"addr add {VIP4}/32 dev lo", f"addr add {VIP6}/128 dev lo nodad",
                f"addr add {VRRP_VIP}/32 dev lo",
            ]
        _run_all([(["ip", "-n", ns, "-batch", "-"], "\n".join(c) + "\n")
                  for ns, c in batches.items()])
        _run(["ip", "-n", self.ns_rtr, "-batch", "-"], input="\n".join([
            "link set lo up",
            f"addr add {RTR_C4}/24 dev c0", f"addr add {RTR_C6}/64 dev c0 nodad", "link set c0 up",
            f"addr add {RTR4}/{SEG4} dev {IFNAME}", f"addr add {RTR6}/{SEG6} dev {IFNAME} nodad",
            f"link set {IFNAME} up",
        ]) + "\n")
        _run(["ip", "-n", self.ns_client, "route", "add", "default", "via", RTR_C4])
        _run(["ip", "-n", self.ns_client, "-6", "route", "add", "default", "via", RTR_C6])
        # Checksum offload breaks with native XDP_TX on veth (DESIGN.md section 3): the
        # router forwards the client's frames to the nodes, so both compute checksums.
        _run_all([(nsenter_cmd(self.ns_client, ["ethtool", "-K", IFNAME, "tx", "off"]), None),
                  (nsenter_cmd(self.ns_rtr, ["ethtool", "-K", IFNAME, "tx", "off"]), None)])
        for r in self.real_names:
            write_sysctls(self.real_ns(r), {f"net.ipv4.conf.{IFNAME}.arp_ignore": "1",
                                            f"net.ipv4.conf.{IFNAME}.arp_announce": "2",
                                            f"net.ipv4.conf.{IFNAME}.rp_filter": "0"})
        # XDP_TX from a node's eth0 is only delivered if its peer has an XDP program.
        with in_netns(self.ns_br):
            for n in self.nodes:
                attach_stub(socket.if_nametoindex(n.port), libbpf.XDP_PASS, "native")

    def _router_hash_fix(self) -> None:
        """The tc program that clears the skb hash on the router's client-side ingress."""
        os.makedirs(self.spec.pin_root, exist_ok=True)
        pin = os.path.join(self.spec.pin_root, "hashclr")
        fd = libbpf.load_insns(HASHCLR_INSNS, "xdplb_hashclr", libbpf.PROG_TYPE_SCHED_CLS)
        try:
            libbpf.obj_pin(fd, pin)
        finally:
            os.close(fd)
        # nsenter keeps the host's mount namespace, so tc sees the pin in bpffs.
        _run(nsenter_cmd(self.ns_rtr, ["tc", "qdisc", "add", "dev", "c0", "clsact"]))
        _run(nsenter_cmd(self.ns_rtr, ["tc", "filter", "add", "dev", "c0", "ingress", "bpf",
                                       "direct-action", "object-pinned", pin]))

    def _start_reals(self) -> None:
        cmds: List[Tuple[Sequence[str], Optional[str]]] = []
        for r in self.real_names:
            d = os.path.join(self.state_dir, r)
            os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
            conf = os.path.join(d, "nginx.conf")
            with open(conf, "w") as f:
                f.write(_NGINX_CONF.format(name=r, ns=self.real_ns(r), d=d, port=HTTP_PORT))
            cmds.append((nsenter_cmd(self.real_ns(r), ["nginx", "-p", d + "/", "-c", conf, "-e",
                                                       os.path.join(d, "nginx-error.log")]),
                         None))
        _run_all(cmds)

    @staticmethod
    def _start_bird(ns: str, d: str, conf: str) -> None:
        os.makedirs(d, exist_ok=True)
        path, sock, pid = (os.path.join(d, f) for f in ("bird.conf", "bird.ctl", "bird.pid"))
        with open(path, "w") as f:
            f.write(conf)
        _run(["bird", "-p", "-c", path])  # parse only: a bad config fails here, clearly
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        _run(nsenter_cmd(ns, ["bird", "-c", path, "-s", sock, "-P", pid]))
        wait_for(lambda: os.path.exists(sock), 10, f"BIRD's socket {sock}")

    # -- nodes
    def start_node(self, name: str, wait: bool = True) -> None:
        """Start what runs on a node: BIRD (BGP nodes; the fragment is created empty if
        missing: BIRD refuses to start without it) or keepalived (VRRP nodes), and xdplbd.
        With *wait*, return once the router routes the VIP through it again."""
        n = self.node(name)
        os.makedirs(n.dir, exist_ok=True)
        lb = self.daemons[name]
        lb.write_config(self.xdplb_config(n))
        if n.kind == "bgp":
            if not os.path.exists(n.fragment):
                with open(n.fragment, "w") as f:
                    f.write(EMPTY_FRAGMENT)
            self._start_bird(n.ns, n.dir, node_bird_conf(n))
            lb.start()
            if wait:
                wait_for(lambda: n.ip4 in self.nexthops(VIP4), 30,
                         f"the router to route {VIP4} via {name}")
        else:
            lb.start()
            self._start_keepalived(n)

    def _start_keepalived(self, n: Node) -> None:
        conf = os.path.join(n.dir, "keepalived.conf")
        with open(conf, "w") as f:
            f.write(keepalived_conf(n, self.vrrp_nodes))
        pids = [os.path.join(n.dir, p) for p in ("keepalived.pid", "vrrp.pid")]
        for p in pids:  # it refuses to start while its pid file names a live process
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        with open(os.path.join(n.dir, "keepalived.log"), "ab") as log:
            self._keepalived[n.name] = subprocess.Popen(
                nsenter_cmd(n.ns, ["keepalived", "--vrrp", "--use-file", conf, "--pid", pids[0],
                                   "--vrrp_pid", pids[1], "--dont-fork", "--log-console",
                                   "--log-detail", "--no-syslog"]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def kill(self, name: str) -> float:
        """Kill a node hard: its link down first, then SIGKILL every process in its
        namespace (xdplbd, BIRD or keepalived). Returns the monotonic time of the link
        going down. The XDP program stays attached (a dead machine's NIC is just gone)."""
        n = self.node(name)
        t0 = time.monotonic()
        _run(["ip", "-n", self.ns_br, "link", "set", n.port, "down"])
        pids = set(pids_in_netns([n.ns]).get(n.ns, []))
        _kill_and_wait(pids | _children(pids))
        p = self._keepalived.pop(name, None)
        if p is not None:
            p.wait(3)
        lb = self.daemons[name]
        if lb.proc is not None:
            lb.proc.wait(3)
        return t0

    def rejoin(self, name: str, wait: bool = True) -> None:
        """Bring a killed node back: its link up, then its processes."""
        n = self.node(name)
        _run(["ip", "-n", self.ns_br, "link", "set", n.port, "up"])
        self.start_node(name, wait=wait)

    def cut_probes(self, name: str, on: bool = True) -> None:
        """Make only node *name* see every real's IPv4 health checks fail: each real
        gets (or loses) a blackhole route to that node's own IPv4 address. The DSR
        probe's SYN-ACK goes to the node's address and is dropped; client traffic is
        answered to the client (via the router) and the other nodes' probes to their
        own addresses, so nothing else changes."""
        n = self.node(name)
        verb = "add" if on else "del"
        _run_all([(["ip", "-n", self.real_ns(r), "route", verb, "blackhole", f"{n.ip4}/32"],
                   None) for r in self.real_names])

    def maintenance(self, name: str, on: bool) -> str:
        """`xdplb maintenance on|off` on a node; returns what it printed."""
        return self.daemons[name].cli("maintenance", "on" if on else "off").stdout.strip()

    # -- what the router and the nodes say
    def nexthops(self, vip: str) -> Set[str]:
        """The router's kernel next hops for *vip* (the ECMP route BIRD installed)."""
        v6 = ":" in vip
        argv = ["ip", "-j", "-n", self.ns_rtr] + (["-6"] if v6 else [])
        out = _run([*argv, "route", "show", f"{vip}/{128 if v6 else 32}"])
        hops: Set[str] = set()
        for r in json.loads(out or "[]"):
            if r.get("gateway"):
                hops.add(r["gateway"])
            for h in r.get("nexthops", []):
                if h.get("gateway"):
                    hops.add(h["gateway"])
        return hops

    def node_of_hop(self, hop: str) -> str:
        for n in self.nodes:
            if hop in (n.ip4, n.ip6):
                return n.name
        return hop

    def birdc(self, where: str, *cmd: str) -> str:
        """A birdc command on the router ("rtr") or a node."""
        d = os.path.join(self.state_dir, where)
        return _run(["birdc", "-s", os.path.join(d, "bird.ctl"), *cmd])

    def vrrp_master(self) -> Optional[str]:
        """The VRRP node holding the VIP on its eth0, if any."""
        for n in self.vrrp_nodes:
            out = _run(["ip", "-j", "-n", n.ns, "addr", "show", "dev", IFNAME])
            addrs = {a["local"] for i in json.loads(out) for a in i.get("addr_info", [])}
            if VRRP_VIP in addrs:
                return n.name
        return None

    def keepalived_log(self, name: str, lines: int = 15) -> str:
        """The end of a VRRP node's keepalived log (for failure messages)."""
        try:
            with open(os.path.join(self.node(name).dir, "keepalived.log"), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError as e:
            return str(e)

    def tx_packets(self) -> Dict[str, int]:
        """Each running node's XDP_TX count, from its pinned maps (`xdplb stats --json`)."""
        out = {}
        for name, lb in self.daemons.items():
            if lb.running():
                out[name] = int(lb.stats()["outcomes"]["tx"]["packets"])
        return out

    def flows_by_node(self, seconds: float, vip: str = VIP4) -> Dict[int, Set[str]]:
        """Client port -> the nodes its frames to *vip* reached during *seconds*,
        from what the bridge sent out of each node's port (captured in the bridge's
        namespace: a node's own XDP program sees frames before any capture there)."""
        with in_netns(self.ns_br):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        by_port = {n.port: n.name for n in self.nodes}
        v4 = ":" not in vip
        want = socket.inet_pton(socket.AF_INET if v4 else socket.AF_INET6, vip)
        seen: Dict[int, Set[str]] = {}
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            s.settimeout(0.05)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    data, addr = s.recvfrom(128)
                except socket.timeout:
                    continue
                node = by_port.get(addr[0])
                if node is None or addr[2] != 4:  # PACKET_OUTGOING: bridge -> node
                    continue
                if v4 and data[12:14] == b"\x08\x00" and data[23] == 6 and data[30:34] == want:
                    tcp = 14 + (data[14] & 0xF) * 4
                elif not v4 and data[12:14] == b"\x86\xdd" and data[20] == 6 \
                        and data[38:54] == want:
                    tcp = 54
                else:
                    continue
                sport = struct.unpack("!H", data[tcp:tcp + 2])[0]
                seen.setdefault(sport, set()).add(node)
        return seen

    def status(self) -> Dict[str, Any]:
        existing = self.existing_namespaces()
        procs = pids_in_netns(existing)
        nodes = {}
        for n in self.nodes:
            st = self.daemons[n.name].state()
            nodes[n.name] = {
                "ns": n.ns, "ip4": n.ip4, "kind": n.kind,
                "link_up": n.ns in existing and self._port_up(n.port),
                "processes": len(procs.get(n.ns, [])),
                "xdplbd": bool(st.get("pid")) and _alive(int(st["pid"])),
                "announced": [r["prefix"] for r in (st.get("announce") or {}).get("routes", [])],
                "maintenance": bool((st.get("announce") or {}).get("maintenance")),
            }
        up = self.ns_rtr in existing
        return {
            "prefix": self.prefix, "namespaces": existing,
            "router": {"vip4": sorted(self.nexthops(VIP4)) if up else [],
                       "vip6": sorted(self.nexthops(VIP6)) if up else []},
            "vrrp_master": self.vrrp_master() if self.spec.vrrp and up else None,
            "nodes": nodes,
        }

    def _port_up(self, port: str) -> bool:
        out = _run(["ip", "-j", "-n", self.ns_br, "link", "show", port])
        return "UP" in json.loads(out)[0].get("flags", [])


def load_spec(prefix: str, state_root: str = STATE_ROOT) -> Optional[ScaleSpec]:
    try:
        with open(os.path.join(state_root, prefix, "scaleout.json")) as f:
            return ScaleSpec(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


# --------------------------------------------------------------------------- clients


class LongConns:
    """xdplbd.lab.longconn in the client namespace: keep-alive connections that record
    which real answered each request."""

    def __init__(self, lab: ScaleLab, host: str, conns: int = 24, interval: float = 0.02,
                 timeout: float = 30.0) -> None:
        self.lab, self.host = lab, host
        self.argv = [sys.executable, "-m", "xdplbd.lab.longconn", "--host", host,
                     "--conns", str(conns), "--interval", str(interval),
                     "--timeout", str(timeout)]
        self.proc: Optional[subprocess.Popen[str]] = None
        self.ports: List[int] = []

    def start(self, timeout: float = 30.0) -> LongConns:
        self.proc = subprocess.Popen(
            nsenter_cmd(self.lab.ns_client, ["env", f"PYTHONPATH={_PKG_PARENT}", *self.argv]),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = ""
        if select.select([self.proc.stdout], [], [], timeout)[0]:
            line = self.proc.stdout.readline()  # READY comes as one flushed line
        if not line.startswith(READY_TAG):
            self.kill()
            raise RuntimeError(f"long-lived client did not start: {line!r} "
                               f"{self.proc.stderr.read()}")
        self.ports = json.loads(line[len(READY_TAG):])["ports"]
        return self

    def stop(self, timeout: float = 60.0) -> Report:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        out, err = self.proc.communicate(timeout=timeout)
        for line in out.splitlines():
            if line.startswith(RESULT_TAG):
                return Report.from_dict(json.loads(line[len(RESULT_TAG):]))
        raise RuntimeError(f"long-lived client printed no result: {out} {err}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def url_of(host: str) -> str:
    return f"http://[{host}]/" if ":" in host else f"http://{host}/"


# --------------------------------------------------------------------------- the demo


def demo(prefix: str = "sodemo", wrk_seconds: float = 3.0) -> int:
    """`make demo-scaleout`: three nodes on ECMP; spread, a node dies, it rejoins."""
    lab = ScaleLab(ScaleSpec(prefix=prefix, n_lbs=3))
    failed = 0

    def say(text: str = "") -> None:
        print(text, flush=True)

    try:
        say(f"== scale-out lab {prefix}: a router (BIRD, ECMP, BFD 100 ms x 3), "
            "3 LB nodes (BIRD + xdplbd), 3 reals (DSR)")
        t0 = time.monotonic()
        lab.up()
        say(f"up in {time.monotonic() - t0:.1f} s")
        say(f"$ ip route show {VIP4}   (on the router)")
        say(_run(["ip", "-n", lab.ns_rtr, "route", "show", f"{VIP4}/32"]).rstrip())

        say(f"\n== spread: wrk -c16 -d{wrk_seconds:.0f}s -H 'Connection: close' {url_of(VIP4)}")
        before = lab.tx_packets()
        r = Wrk(lab, url_of(VIP4), connections=16, new_connections=True,
                duration=wrk_seconds).run()
        after = lab.tx_packets()
        failed += r.failed
        say(f"{r.requests} requests, {r.failed} failed; by real: {r.reals}")
        say("XDP_TX per node (xdplb stats --json): "
            + ", ".join(f"{k} {after[k] - before.get(k, 0)}" for k in sorted(after)))

        say("\n== a node dies under load: 24 long-lived connections + wrk; lb2's link "
            "goes down, then kill -9 of its BIRD and xdplbd")
        lc = LongConns(lab, VIP4).start()
        w = Wrk(lab, url_of(VIP4), connections=8, duration=60, timeout=30).start()
        try:
            time.sleep(1.0)
            on = lab.flows_by_node(0.5)
            t_kill = lab.kill("lb2")
            wait_for(lambda: lab.node("lb2").ip4 not in lab.nexthops(VIP4), 5, "BFD")
            bfd_s = time.monotonic() - t_kill
            time.sleep(2.0)
            rep = lc.stop()
            wr = w.stop()
        finally:
            lc.kill()
            w.kill()
        was_on = [p for p in lc.ports if "lb2" in on.get(p, set())]
        failed += rep.failed + wr.failed
        say(f"the router dropped lb2 after {bfd_s * 1000:.0f} ms (BFD)")
        say(f"{len(was_on)} of {len(lc.ports)} connections were on lb2; connections answered "
            f"by another real since: {len(rep.moved)}; failed requests: {rep.failed} "
            f"(+ wrk {wr.failed} of {wr.requests}); longest stall {rep.longest_stall_s:.2f} s")

        say("\n== lb2 rejoins (link up, BIRD, xdplbd)")
        t0 = time.monotonic()
        lab.rejoin("lb2")
        say(f"back in the router's ECMP route after {time.monotonic() - t0:.1f} s: "
            f"{sorted(lab.node_of_hop(h) for h in lab.nexthops(VIP4))}")
        say("\n" + ("0 failed requests" if failed == 0 else f"{failed} FAILED requests"))
        return 0 if failed == 0 else 1
    finally:
        lab.down()


# --------------------------------------------------------------------------- CLI


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdplbd.lab.scaleout",
                                 description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for cmd, hlp in (("up", "build the lab (tears down an old one of the prefix first)"),
                     ("down", "remove every namespace, process, file and pin of the prefix"),
                     ("status", "nodes, the router's ECMP route, the VRRP master"),
                     ("kill", "kill a node hard: link down, then SIGKILL its processes"),
                     ("rejoin", "bring a killed node back"),
                     ("demo", "build, show spread and a node failure, tear down")):
        p = sub.add_parser(cmd, help=hlp)
        p.add_argument("--prefix", default="sodemo" if cmd == "demo" else "so")
        if cmd == "up":
            p.add_argument("--lbs", type=int, default=3, help="LB nodes on BGP (default 3)")
            p.add_argument("--reals", type=int, default=3, help="reals (default 3)")
            p.add_argument("--vrrp", action="store_true", help="also a keepalived VRRP pair")
            p.add_argument("--no-health", action="store_true",
                           help="no health checks on the VIPs")
        if cmd in ("kill", "rejoin"):
            p.add_argument("node", help="lb1.., va, vb")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("the scale-out lab needs root (network namespaces, XDP)", file=sys.stderr)
        return 1
    if args.cmd == "demo":
        return demo(args.prefix)
    if args.cmd == "up":
        spec = ScaleSpec(prefix=args.prefix, n_lbs=args.lbs, n_reals=args.reals, vrrp=args.vrrp,
                         health=not args.no_health)
    else:
        spec = load_spec(args.prefix) or ScaleSpec(prefix=args.prefix)
    lab = ScaleLab(spec)
    if args.cmd == "up":
        t0 = time.monotonic()
        lab.up()
        print(json.dumps(lab.status(), indent=2))
        print(f"up in {time.monotonic() - t0:.1f} s; try: nsenter --net={NETNS_DIR}/"
              f"{lab.ns_client} curl {url_of(VIP4)}")
        return 0
    if args.cmd == "down":
        lab.down()
        return 0
    if args.cmd == "status":
        st = lab.status()
        print(json.dumps(st, indent=2))
        return 0 if lab.is_up() else 1
    if args.cmd == "kill":
        lab.kill(args.node)
        return 0
    if args.cmd == "rejoin":
        lab.rejoin(args.node)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
