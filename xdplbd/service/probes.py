"""The probes behind health checks, on one asyncio loop: no thread or fd per probe.

* TcpDsrProber: the default TCP check. A SYN to VIP:port in a frame addressed to
  the real's MAC, out of the LB's interface, as a client's SYN leaves the data
  plane. Success is a SYN-ACK from VIP:port sent by that MAC; the half-open
  connection is then reset. A real that lost the VIP from its `lo` (or whose
  MAC is wrong) stays silent, although its own address still answers.
* tcp_connect, http_get, udp_check: against the real's own address, from the
  LB's own address (never from a VIP).

Every probe ends with a Result and never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from xdplbd.core import frames
from xdplbd.core.health import HTTP, TCP, UDP, Probe, Result, host_port, payload
from xdplbd.core.model import IPAddress
from xdplbd.kernel import iface, rawsock

# Above Linux's default ephemeral range (32768-60999): no local connect() can pick
# the same 4-tuple as a probe.
PROBE_PORTS = (61000, 65535)
Done = Callable[[Result], None]


@dataclass
class _Pending:
    probe: Probe
    vip: bytes
    mac: bytes
    t0: float
    done: Done
    timer: Optional[asyncio.TimerHandle] = field(default=None)


class TcpDsrProber:
    """SYN probes for one interface (one sending and one filtered receiving socket)."""

    def __init__(self, ifname: str, sources: Callable[[IPAddress], Optional[IPAddress]],
                 ports: Tuple[int, int] = PROBE_PORTS) -> None:
        self.ifname = ifname
        self.sources = sources  # the LB's own address to send from, per destination
        self.lo, self.hi = ports
        self._next = random.randrange(self.lo, self.hi + 1)
        self._pending: Dict[Tuple[int, int], _Pending] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.lb_mac = frames.mac_bytes(iface.mac_address(ifname))
        self.tx = rawsock.sender(ifname)
        try:
            self.rx = rawsock.receiver(ifname, frames.reply_filter(self.lo, self.hi))
        except OSError:
            self.tx.close()
            raise

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.rx.fileno(), self._on_readable)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.rx.fileno())
        for p in self._pending.values():  # dropped unanswered: the checker is stopping
            if p.timer is not None:
                p.timer.cancel()
        self._pending.clear()
        self.tx.close()
        self.rx.close()

    def launch(self, probe: Probe, done: Done) -> None:
        """Send one SYN; done(Result) is called exactly once, on the loop."""
        assert self._loop is not None
        vip = probe.addr
        src = self.sources(vip)
        if src is None:
            done(Result(False, f"tcp: no IPv{vip.version} address on {self.ifname} to send "
                        "from", time.time()))
            return
        while True:
            sport = self._next
            self._next = self.lo if sport >= self.hi else sport + 1
            seq = random.getrandbits(32)
            if (sport, seq) not in self._pending:
                break
        mac = frames.mac_bytes(probe.mac)
        frame = frames.tcp_frame(mac, self.lb_mac, src, vip, sport, probe.port, seq,
                                 ident=random.getrandbits(16))
        try:
            self.tx.send(frame)
        except OSError as e:
            done(Result(False, f"tcp: cannot send on {self.ifname}: {e.strerror or e}",
                        time.time()))
            return
        p = _Pending(probe, vip.packed, mac, time.monotonic(), done)
        self._pending[(sport, seq)] = p
        p.timer = self._loop.call_later(probe.timeout, self._finish, (sport, seq), False, "")

    def _finish(self, key: Tuple[int, int], ok: bool, detail: str) -> None:
        p = self._pending.pop(key, None)
        if p is None:
            return
        if p.timer is not None:
            p.timer.cancel()
        at = host_port(p.probe.addr, p.probe.port)
        ms = (time.monotonic() - p.t0) * 1000
        if ok:
            text = f"tcp: SYN-ACK from {at} at {p.probe.mac} in {ms:.1f} ms"
        elif detail:
            text = f"tcp: {detail} from {at} at {p.probe.mac}"
        else:
            text = (f"tcp: no SYN-ACK from {at} at {p.probe.mac} within "
                    f"{p.probe.timeout:g} s")
        p.done(Result(ok, text, time.time()))

    def _on_readable(self) -> None:
        for _ in range(256):  # a bounded batch per wake-up
            try:
                frame = self.rx.recv(256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._on_frame(frame)

    def _on_frame(self, frame: bytes) -> None:
        t = frames.parse_tcp(frame)
        if t is None:
            return
        key = (t.dport, (t.ack - 1) & 0xFFFFFFFF)
        p = self._pending.get(key)
        synack = t.flags & (frames.TH_SYN | frames.TH_ACK) == frames.TH_SYN | frames.TH_ACK
        if synack:
            self._reset(t)  # ours or late: the real frees its half-open request at once
        if p is None or t.src_ip != p.vip or t.sport != p.probe.port or t.src_mac != p.mac:
            return
        if synack:
            self._finish(key, True, "")
        elif t.flags & frames.TH_RST:
            self._finish(key, False, "RST (nothing listens)")

    def _reset(self, t: frames.TcpInfo) -> None:
        """RST with seq = their ack, from the LB through the real's MAC (the LB's kernel
        would answer the SYN-ACK itself, but to its own copy of the VIP)."""
        src, dst = ipaddress.ip_address(t.dst_ip), ipaddress.ip_address(t.src_ip)
        frame = frames.tcp_frame(t.src_mac, self.lb_mac, src, dst, t.dport, t.sport, t.ack, 0,
                                 flags=frames.TH_RST)
        with contextlib.suppress(OSError):
            self.tx.send(frame)


def _local(src: Optional[IPAddress]) -> Optional[Tuple[str, int]]:
    return (str(src), 0) if src is not None else None


def _why(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno)) + f" ({e.strerror})"
    return f"{type(e).__name__}: {e}"


_LINGER_RST = struct.pack("ii", 1, 0)  # close with a RST: no TIME_WAIT left per probe


def launch_connect(loop: asyncio.AbstractEventLoop, probe: Probe, src: Optional[IPAddress],
                   done: Done) -> None:
    """A TCP connect to the real's own address with plain callbacks (no task, no stream:
    a few tens of microseconds a probe, which thousands a second need)."""
    at = host_port(probe.addr, probe.port)
    t0 = time.monotonic()
    fam = socket.AF_INET6 if probe.addr.version == 6 else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
    except OSError as e:
        done(Result(False, f"tcp: connect to {at}: {_why(e)}", time.time()))
        return
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    fd = s.fileno()
    timer: Optional[asyncio.TimerHandle] = None

    def finish(ok: bool, why: str) -> None:
        loop.remove_writer(fd)
        if timer is not None:
            timer.cancel()
        s.close()
        if ok:
            text = f"tcp: connected to {at} in {(time.monotonic() - t0) * 1000:.1f} ms"
        else:
            text = f"tcp: connect to {at}: {why}"
        done(Result(ok, text, time.time()))

    def writable() -> None:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        finish(err == 0, _why(OSError(err, os.strerror(err))) if err else "")

    try:
        if src is not None:
            s.bind((str(src), 0))
        err = s.connect_ex((str(probe.addr), probe.port))
    except OSError as e:
        s.close()
        done(Result(False, f"tcp: connect to {at}: {_why(e)}", time.time()))
        return
    if err not in (0, errno.EINPROGRESS):
        s.close()
        done(Result(False, f"tcp: connect to {at}: {_why(OSError(err, os.strerror(err)))}",
                    time.time()))
        return
    loop.add_writer(fd, writable)
    timer = loop.call_later(probe.timeout, finish, False, "timed out")


async def tcp_connect(probe: Probe, src: Optional[IPAddress]) -> Result:
    at = host_port(probe.addr, probe.port)
    t0 = time.monotonic()
    try:
        _r, w = await asyncio.wait_for(
            asyncio.open_connection(str(probe.addr), probe.port, local_addr=_local(src)),
            probe.timeout)
        w.close()
        return Result(True, f"tcp: connected to {at} in {(time.monotonic() - t0) * 1000:.1f} ms",
                      time.time())
    except (OSError, asyncio.TimeoutError) as e:
        return Result(False, f"tcp: connect to {at}: {_why(e)}", time.time())


async def http_get(probe: Probe, src: Optional[IPAddress]) -> Result:
    """GET path; reads the status line only. Up iff the status is in `expect`."""
    url = f"http://{host_port(probe.addr, probe.port)}{probe.path}"
    req = (f"GET {probe.path} HTTP/1.1\r\nHost: {probe.host}\r\nUser-Agent: xdplb-health\r\n"
           "Accept: */*\r\nConnection: close\r\n\r\n").encode("ascii")

    async def run() -> Tuple[bool, str]:
        r, w = await asyncio.open_connection(str(probe.addr), probe.port, limit=8192,
                                             local_addr=_local(src))
        try:
            w.write(req)
            line = await r.readline()
        finally:
            w.close()
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return False, f"bad status line {line[:40]!r}"
        code = int(parts[1])
        lo, hi = probe.expect
        if lo <= code <= hi:
            return True, f"status {code}"
        return False, f"status {code}, expected {lo}" + (f"-{hi}" if hi != lo else "")

    try:
        ok, detail = await asyncio.wait_for(run(), probe.timeout)
    except (OSError, ValueError, asyncio.TimeoutError) as e:
        ok, detail = False, _why(e)
    return Result(ok, f"http: {url}: {detail}", time.time())


class _OneReply(asyncio.DatagramProtocol):
    def __init__(self, fut: asyncio.Future[bytes]) -> None:
        self.fut = fut

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.fut.done():
            self.fut.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable
        if not self.fut.done():
            self.fut.set_exception(exc)


async def udp_check(probe: Probe, src: Optional[IPAddress]) -> Result:
    """One datagram on a connected socket; up iff a reply starts with `receive`."""
    at = host_port(probe.addr, probe.port)
    want = payload(probe.receive)
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bytes] = loop.create_future()
    transport = None
    try:
        fam = socket.AF_INET6 if probe.addr.version == 6 else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _OneReply(fut), remote_addr=(str(probe.addr), probe.port), family=fam,
            local_addr=_local(src))
        transport.sendto(payload(probe.send))
        data = await asyncio.wait_for(fut, probe.timeout)
    except (OSError, asyncio.TimeoutError) as e:
        why = "no reply" if isinstance(e, asyncio.TimeoutError) else _why(e)
        return Result(False, f"udp: {at}: {why}", time.time())
    finally:
        if transport is not None:
            transport.close()
    if data.startswith(want):
        return Result(True, f"udp: {at}: reply of {len(data)} bytes", time.time())
    return Result(False, f"udp: {at}: reply {data[:24]!r} does not start with {want[:24]!r}",
                  time.time())


async def run_socket_probe(probe: Probe, src: Optional[IPAddress]) -> Result:
    """A probe that uses ordinary sockets (everything but tcp-dsr)."""
    if probe.kind == HTTP:
        return await http_get(probe, src)
    if probe.kind == UDP:
        return await udp_check(probe, src)
    assert probe.kind == TCP, probe.kind
    return await tcp_connect(probe, src)

