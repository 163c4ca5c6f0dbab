"""The lab client as a client population: several source addresses, not one host.

Why: new-connection load from one address to one VIP:port has one ephemeral port
range to draw from, and every closed connection holds its port in TIME_WAIT for
60 s. At ~10k connections/s the default range (28k ports) is spent in ~3 s, and
wrk's rate then falls to what TIME_WAIT releases (~500/s): the later e2e
scenarios were barely exercised. A real client population has many addresses.

What the client namespace gets (``client_setup``):

* ``net.ipv4.ip_local_port_range = 1024 65535`` (also used by IPv6);
* ``net.ipv4.tcp_tw_reuse = 1``: connect() may take a port whose TIME_WAIT is
  over a second old (timestamps make that safe);
* ``client_sources`` extra addresses on eth0 (v4 and v6), each the source of
  one uid: ``ip rule uidrange U-U lookup T`` with table T's on-link route
  naming the address as ``src``. wrk has no option to bind a source address,
  so :func:`as_source` runs one wrk process per address under that uid
  (setpriv); root's connections keep the primary address.

Policy routing by uid was chosen over the alternatives measured: SNAT needs
nftables and a conntrack entry per connection in the client; an LD_PRELOAD
bind() shim is not "what really works with wrk", it is a modified wrk.
"""

from __future__ import annotations

from typing import Any, List, Tuple

# uids that own nothing on the host: only the lab's routing rules know them.
UID_BASE = 47000
TABLE_BASE = 1000
CLIENT_SYSCTLS = {
    "net.ipv4.ip_local_port_range": "1024 65535",
    "net.ipv4.tcp_tw_reuse": "1",
}


def source_uid(k: int) -> int:
    """The uid whose sockets leave from source address *k* (0-based)."""
    return UID_BASE + 1 + k


def source_hosts(spec: Any) -> List[int]:
    """Host numbers of the client's extra source addresses (LabSpec)."""
    return [spec.client_source_base + k for k in range(spec.client_sources)]


def client_batches(spec: Any, ifname: str) -> Tuple[List[str], List[str]]:
    """`ip -4 -batch` and `ip -6 -batch` lines for the client netns (a batch line
    cannot name its family): the addresses, the rules, the tables. Run them after
    eth0 is up, or the on-link routes are refused."""
    p4, p6 = spec.net4.prefixlen, spec.net6.prefixlen
    v4: List[str] = []
    v6: List[str] = []
    for k, h in enumerate(source_hosts(spec)):
        uid, table = source_uid(k), TABLE_BASE + 1 + k
        a4, a6 = spec.host4(h), spec.host6(h)
        rule = f"rule add uidrange {uid}-{uid} lookup {table} pref {table}"
        v4 += [f"addr add {a4}/{p4} dev {ifname}", rule,
               f"route add {spec.net4} dev {ifname} src {a4} table {table}"]
        # Deprecated (preferred_lft 0): never picked as a source by address
        # selection, so root's sockets keep the primary; a route's src still works.
        v6 += [f"addr add {a6}/{p6} dev {ifname} nodad preferred_lft 0", rule,
               f"route add {spec.net6} dev {ifname} src {a6} table {table}"]
    return v4, v6


def as_source(k: int, argv: List[str]) -> List[str]:
    """*argv* run as source *k*'s uid (no groups, no capabilities)."""
    uid = source_uid(k)
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


def split(total: int, parts: int) -> List[int]:
    """*total* connections over *parts* processes, as evenly as possible, none empty."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
