"""Neighbours and links over rtnetlink, in the network namespace current when a
Netlink is made. A thin shell: the rules are in core/neighbours.py.

Two plain netlink sockets, owned by one thread (nothing here is thread-safe). The
requests are built here with struct; what the kernel sends is parsed by pyroute2's
marshal (python3-pyroute2 0.7.2), and only that part of pyroute2 is imported
(kernel/pyroute2_lean.py). Events come on a socket bound to the link and neighbour
groups, so they never interleave with replies; ENOBUFS on it means events were lost,
and the owner resyncs with a dump. Requests go over the other socket, each with its
own sequence number; a reply is the messages that carry it, so a late ack of a
resolve batch read there is skipped. Asking the kernel to resolve many IPs packs the
requests many to a datagram and reads their acks afterwards (one pyroute2 request at
a time, each waiting for its ack, took ~0.2 ms: 0.9 s for 4096 reals; kernel 6.18,
/work/proto/probe/NOTES.md).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

from xdplbd.kernel import pyroute2_lean  # noqa: F401  (first: pyroute2 without its __init__)

# isort: split
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import NTF_USE, NUD_NONE, NUD_PERMANENT

from xdplbd.core.model import IPAddress
from xdplbd.core.neighbours import LinkEvent, NeighEntry

NTF_EXT_MANAGED = 0x01  # NDA_FLAGS_EXT: the kernel keeps the entry resolved (>= 5.16)
IFF_UP = 0x1
EVENT_RCVBUF = 16 << 20  # a burst of 4096 neighbour updates must fit
SO_RCVBUFFORCE = 33
SOL_NETLINK = 270
NETLINK_ROUTE = 0
EVENT_BUF = 1 << 16
EVENT_READS = 256  # datagrams per events() call, then the caller acts on them
# Resolve requests packed into one datagram. The kernel handles a datagram within
# the sendto() call and queues every ack before it returns, so the acks of one must
# fit the socket's buffer; and each request sends an ARP request or NS, which a veth
# queues to its peer's backlog (net.core.netdev_max_backlog, 1000): a few hundred at
# a time never overflow it.
REQ_BATCH = 128
REQ_RCVBUF = 4 << 20
ACK_TIMEOUT_S = 2.0
NETLINK_CAP_ACK = 10  # an error ack carries the request's header, not the whole request
NDA_DST, NDA_FLAGS_EXT = 1, 15
IFLA_IFNAME = 3
_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NDMSG = struct.Struct("=BBHiHBB")  # family, pad, pad, ifindex, state, flags, type
_IFINFOMSG = struct.Struct("=BBHiII")  # family, pad, type, index, flags, change
_RTA = struct.Struct("=HH")  # len, type
_ERR = struct.Struct("=i")
_RESOLVE_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


def _os_error(e: NetlinkError, what: str) -> OSError:
    """pyroute2's NetlinkError is no OSError; callers handle OSError."""
    return OSError(e.code, f"{what}: {os.strerror(e.code)}")


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


Event = Union[NeighEntry, LinkEvent]


def _message(mtype: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, flags, seq, 0) + body


def _attr(kind: int, data: bytes) -> bytes:
    """An rtattr, padded to 4 bytes."""
    return _RTA.pack(_RTA.size + len(data), kind) + data + b"\0" * (-len(data) % 4)


def _resolve_request(seq: int, ifindex: int, ip: IPAddress, managed: bool) -> bytes:
    """RTM_NEWNEIGH for ip in state NONE: managed (NDA_FLAGS_EXT), or NTF_USE."""
    body = _neigh_request(ifindex, ip, NUD_NONE, 0 if managed else NTF_USE)
    if managed:
        body += _attr(NDA_FLAGS_EXT, struct.pack("=I", NTF_EXT_MANAGED))
    return _message(RTM_NEWNEIGH, _RESOLVE_FLAGS, seq, body)


def _neigh_request(ifindex: int, ip: IPAddress, state: int, flags: int = 0) -> bytes:
    """An ndmsg for ip on ifindex, as pyroute2's IPRoute.neigh() sends it."""
    return _NDMSG.pack(_family(ip), 0, 0, ifindex, state, flags, 0) + _attr(NDA_DST, ip.packed)


def _messages(data: bytes) -> Iterator[Tuple[int, int, int, int]]:
    """(offset, length, type, sequence number) of each message in a datagram."""
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, mtype, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size:
            return
        yield off, length, mtype, seq
        off += (length + 3) & ~3


def _errno(data: bytes, off: int, length: int) -> int:
    """The errno (0: none) in an NLMSG_ERROR (an ack) or NLMSG_DONE at off."""
    if length < _NLMSGHDR.size + _ERR.size:
        return 0
    return -int(_ERR.unpack_from(data, off + _NLMSGHDR.size)[0])


def _acks(data: bytes) -> Iterable[Tuple[int, int]]:
    """(sequence number, errno; 0 = done) of each ack in a datagram."""
    for off, length, mtype, seq in _messages(data):
        if mtype == NLMSG_ERROR and length >= _NLMSGHDR.size + _ERR.size:
            yield seq, _errno(data, off, length)


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
        try:
            self._rq = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                     NETLINK_ROUTE)
            try:
                self._rq.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, REQ_RCVBUF)
            except OSError:
                self._rq.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, REQ_RCVBUF)
            self._rq.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            self._rq.bind((0, 0))
            self._rq.settimeout(ACK_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        self._seq = 0

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
        body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0)
        body += _attr(IFLA_IFNAME, ifname.encode() + b"\0")
        try:
            msgs = self._ask(RTM_GETLINK, NLM_F_ACK, body)
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        ev = _parse(msgs[0]) if msgs else None
        return ev if isinstance(ev, LinkEvent) else None

    def neighbours(self, ifindex: int) -> List[NeighEntry]:
        """Every IPv4/IPv6 neighbour entry on ifindex (one dump)."""
        out = []
        body = _NDMSG.pack(socket.AF_UNSPEC, 0, 0, 0, NUD_NONE, 0, 0)
        for m in self._ask(RTM_GETNEIGH, NLM_F_DUMP, body):
            ev = _parse(m)
            if isinstance(ev, NeighEntry) and ev.ifindex == ifindex:
                out.append(ev)
        return out

    def lookup(self, ifindex: int, ip: IPAddress) -> Optional[NeighEntry]:
        """The kernel's entry for ip on ifindex, or None."""
        try:
            msgs = self._ask(RTM_GETNEIGH, NLM_F_ACK, _neigh_request(ifindex, ip, NUD_NONE))
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
        err = self.resolve_many(ifindex, [ip]).get(ip)
        if err is not None:
            raise err

    def resolve_many(self, ifindex: int, ips: Iterable[IPAddress]) -> Dict[IPAddress, OSError]:
        """resolve() for every ip, pipelined: REQ_BATCH requests to a datagram, then
        their acks. Returns the IPs the kernel refused, with its reason (ENOBUFS: the
        neighbour table is full). An ack that never comes is no error: the kernel
        handled the request all the same (the caller looks at the entry later)."""
        todo = list(ips)
        refused: Dict[IPAddress, int] = {}
        while todo:
            managed = self.managed
            refused.update(self._request(ifindex, todo, managed))
            unsupported = [ip for ip in todo
                           if refused.get(ip) in (errno.EINVAL, errno.EOPNOTSUPP)]
            if not managed or not unsupported:
                break
            self.managed = False  # no managed entries here: NTF_USE for these and after
            for ip in unsupported:
                del refused[ip]
            todo = unsupported
        return {ip: OSError(code, f"resolve {ip}: {os.strerror(code)}")
                for ip, code in refused.items()}

    def _request(self, ifindex: int, ips: List[IPAddress], managed: bool) -> Dict[IPAddress, int]:
        refused: Dict[IPAddress, int] = {}
        for i in range(0, len(ips), REQ_BATCH):
            pending: Dict[int, IPAddress] = {}
            parts = []
            for ip in ips[i:i + REQ_BATCH]:
                seq = self._next_seq()
                pending[seq] = ip
                parts.append(_resolve_request(seq, ifindex, ip, managed))
            self._rq.sendto(b"".join(parts), (0, 0))
            while pending:
                try:
                    data = self._rq.recv(EVENT_BUF)
                except (socket.timeout, BlockingIOError):
                    break
                except OSError as e:
                    if e.errno == errno.ENOBUFS:
                        break  # acks lost (not requests): stop waiting for them
                    raise
                for seq, code in _acks(data):
                    if seq in pending:  # else a late ack of an earlier batch
                        ip = pending.pop(seq)
                        if code:
                            refused[ip] = code
        return refused

    def _ask(self, mtype: int, flags: int, body: bytes) -> List[object]:
        """One request and its reply, parsed: the messages of a dump (NLM_F_DUMP), or
        those before the ack (NLM_F_ACK). Raises NetlinkError with the kernel's errno,
        as pyroute2's IPRoute does; socket.timeout if no reply comes."""
        seq = self._next_seq()
        self._rq.sendto(_message(mtype, NLM_F_REQUEST | flags, seq, body), (0, 0))
        reply = bytearray()
        while True:
            data = self._rq.recv(EVENT_BUF)
            for off, length, rtype, rseq in _messages(data):
                if rseq != seq:
                    continue  # a late ack of a resolve batch, or of an earlier request
                if rtype in (NLMSG_ERROR, NLMSG_DONE):
                    code = _errno(data, off, length)
                    if code:
                        raise NetlinkError(code)
                    return list(self._marshal.parse(bytes(reply)))
                reply += data[off:off + ((length + 3) & ~3)]

    def _next_seq(self) -> int:
        self._seq = self._seq % 0x7FFFFFFF + 1
        return self._seq

    def forget(self, ifindex: int, ip: IPAddress) -> None:
        """Delete the entry (a real left the config); absent is fine."""
        try:
            self._ask(RTM_DELNEIGH, NLM_F_ACK, _neigh_request(ifindex, ip, NUD_PERMANENT))
        except NetlinkError as e:
            if e.code != errno.ENOENT:
                raise _os_error(e, f"forget {ip}") from None

    def close(self) -> None:
        for s in (getattr(self, "_ev", None), getattr(self, "_rq", None)):
            if s is not None:
                s.close()
