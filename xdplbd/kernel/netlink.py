"""Neighbours and links over rtnetlink (pyroute2), in the network namespace current
when a Netlink is made. A thin shell: the rules are in core/neighbours.py.

pyroute2 facts this relies on (python3-pyroute2 0.7.2, kernel 6.18; measured in
/work/proto/probe/NOTES.md): an IPRoute is not thread-safe, so one thread owns a
Netlink; events come on a second socket bound to the link and neighbour groups,
so they never interleave with replies; ENOBUFS on it means events were lost, and
the owner resyncs with a dump.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import List, Optional, Union

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import NTF_USE, NUD_NONE, ndmsg

from xdplbd.core.model import IPAddress
from xdplbd.core.neighbours import LinkEvent, NeighEntry

NTF_EXT_MANAGED = 0x01  # NDA_FLAGS_EXT: the kernel keeps the entry resolved (>= 5.16)
IFF_UP = 0x1
EVENT_RCVBUF = 16 << 20  # a burst of 4096 neighbour updates must fit
SO_RCVBUFFORCE = 33
NETLINK_ROUTE = 0
EVENT_BUF = 1 << 16
EVENT_READS = 256  # datagrams per events() call, then the caller acts on them


class _ndmsg_ext(ndmsg):  # type: ignore[misc]
    """ndmsg with NDA_FLAGS_EXT (15), which 0.7.2 lacks. pyroute2 caches the compiled
    attribute map in class attributes that a subclass would inherit (and then drop
    the new ones silently): reset them so this class compiles its own."""

    _nlmsg_base__compiled_nla = False
    _nlmsg_base__t_nla_map = None
    _nlmsg_base__r_nla_map = None
    nla_map = (*ndmsg.nla_map,
               ("NDA_LINK_NETNSID", "uint32"), ("NDA_SRC_VNI", "uint32"),
               ("NDA_PROTOCOL", "uint8"), ("NDA_NH_ID", "uint32"),
               ("NDA_FDB_EXT_ATTRS", "hex"), ("NDA_FLAGS_EXT", "uint32"))


def _os_error(e: NetlinkError, what: str) -> OSError:
    """pyroute2's NetlinkError is no OSError; callers handle OSError."""
    return OSError(e.code, f"{what}: {os.strerror(e.code)}")


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


Event = Union[NeighEntry, LinkEvent]


def _parse(msg: object) -> Optional[Event]:
    m: object = msg
    mtype = m["header"]["type"]  # type: ignore[index]
    if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
        if m["family"] not in (socket.AF_INET, socket.AF_INET6):  # type: ignore[index]
            return None  # bridge fdb entries and the like
        dst = m.get_attr("NDA_DST")  # type: ignore[attr-defined]
        if dst is None:
            return None
        return NeighEntry.of(dst, m["ifindex"], m.get_attr("NDA_LLADDR"),  # type: ignore
                             m["state"], deleted=mtype == RTM_DELNEIGH)  # type: ignore[index]
    if mtype in (RTM_NEWLINK, RTM_DELLINK):
        return LinkEvent(m["index"], m.get_attr("IFLA_IFNAME"),  # type: ignore
                         m.get_attr("IFLA_ADDRESS"), bool(m["flags"] & IFF_UP),  # type: ignore
                         deleted=mtype == RTM_DELLINK)
    return None


class Netlink:
    """A request socket and an event socket; owned by one thread."""

    def __init__(self) -> None:
        self._req = IPRoute()
        # Events on a plain non-blocking socket, parsed by pyroute2's marshal: its
        # own get() buffers internally (select then misses what it holds) and
        # swallows ENOBUFS.
        self._ev = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            try:  # past net.core.rmem_max (~200 KB: ~500 events), as root may
                self._ev.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, EVENT_RCVBUF)
            except OSError:
                self._ev.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, EVENT_RCVBUF)
            self._ev.bind((0, RTMGRP_LINK | RTMGRP_NEIGH))
        except BaseException:
            self.close()
            raise
        self._marshal = MarshalRtnl()
        self.managed = True  # until the kernel says it has no managed entries

    def fileno(self) -> int:
        return self._ev.fileno()

    def events(self) -> List[Event]:
        """The events that are waiting (call when fileno() is readable). Raises
        OverflowError if the kernel dropped some (ENOBUFS): resync with a dump."""
        msgs: List[object] = []
        for _ in range(EVENT_READS):
            try:
                data = self._ev.recv(EVENT_BUF)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    raise OverflowError("netlink events lost (ENOBUFS)") from None
                raise
            msgs.extend(self._marshal.parse(data))
        out = []
        for m in msgs:
            ev = _parse(m)
            if ev is not None:
                out.append(ev)
        return out

    def link(self, ifname: str) -> Optional[LinkEvent]:
        """The interface called ifname in this netns, or None."""
        try:
            msgs = self._req.link("get", ifname=ifname)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        ev = _parse(msgs[0]) if msgs else None
        return ev if isinstance(ev, LinkEvent) else None

    def neighbours(self, ifindex: int) -> List[NeighEntry]:
        """Every IPv4/IPv6 neighbour entry on ifindex (one dump)."""
        out = []
        for m in self._req.get_neighbours(ifindex=ifindex):
            ev = _parse(m)
            if isinstance(ev, NeighEntry):
                out.append(ev)
        return out

    def lookup(self, ifindex: int, ip: IPAddress) -> Optional[NeighEntry]:
        """The kernel's entry for ip on ifindex, or None."""
        try:
            msgs = self._req.neigh("get", dst=str(ip), ifindex=ifindex, family=_family(ip))
        except NetlinkError as e:
            if e.code == errno.ENOENT:
                return None
            raise _os_error(e, f"look up {ip}") from None
        ev = _parse(msgs[0]) if msgs else None
        return ev if isinstance(ev, NeighEntry) else None

    def resolve(self, ifindex: int, ip: IPAddress) -> None:
        """Make the kernel resolve ip on ifindex now (it sends the ARP request or NS).

        A managed entry (kernel >= 5.16, as Cilium uses) is then kept resolved by the
        kernel, re-probed when it goes stale and never garbage-collected (nor counted
        against gc_thresh3); older kernels get NTF_USE, which probes once."""
        if self.managed:
            msg = _ndmsg_ext()
            msg["family"] = _family(ip)
            msg["ifindex"] = ifindex
            msg["state"] = NUD_NONE
            msg["flags"] = 0
            msg["attrs"] = [["NDA_DST", str(ip)], ["NDA_FLAGS_EXT", NTF_EXT_MANAGED]]
            try:
                self._req.nlm_request(msg, msg_type=RTM_NEWNEIGH, msg_flags=NLM_F_REQUEST
                                      | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
                return
            except NetlinkError as e:
                if e.code not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise _os_error(e, f"resolve {ip}") from None
                self.managed = False
        try:
            self._req.neigh("replace", dst=str(ip), ifindex=ifindex, family=_family(ip),
                            state=NUD_NONE, flags=NTF_USE)
        except NetlinkError as e:
            raise _os_error(e, f"resolve {ip}") from None

    def forget(self, ifindex: int, ip: IPAddress) -> None:
        """Delete the entry (a real left the config); absent is fine."""
        try:
            self._req.neigh("del", dst=str(ip), ifindex=ifindex, family=_family(ip))
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise _os_error(e, f"forget {ip}") from None

    def close(self) -> None:
        for s in (self._req, self._ev):
            s.close()
