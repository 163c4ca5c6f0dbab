"""Long-lived HTTP keep-alive connections that record which real answered each request.

wrk counts failed requests, but it cannot tell whether a connection that survived
a failover still talks to the same real: a flow that moved to another real would
be reset, and wrk would simply reconnect. This client keeps *conns* keep-alive
connections open, sends one request on each every *interval* seconds, and records,
per connection, every real that answered (the lab's nginx answers with its name),
every failed request and the longest wait for an answer.

A request is never given up early: the socket timeout (*timeout*, default 30 s) is
far longer than TCP's retransmission back-off over a failover, so a stall is
measured as a slow answer, not counted as a failure. A request fails on a reset,
an early close, a non-200 answer or the full timeout; the connection is then
opened again (counted in ``reconnects``), so one failure is not a cascade.

Run in the client's namespace (the lab does, through nsenter)::

    python -m xdplbd.lab.longconn --host 10.97.9.100 --conns 24 --interval 0.02

It prints ``READY {"ports": [...]}`` once every connection answered once, runs
until SIGINT, SIGTERM or *duration*, and then prints ``RESULT {...}`` (see
:meth:`Report.to_dict`).
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

READY_TAG = "READY "
RESULT_TAG = "RESULT "


def read_response(s: socket.socket, buf: bytes = b"") -> Tuple[int, str, bytes]:
    """One HTTP/1.1 response with a Content-Length: (status, body, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while len(rest) < length:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed in the body")
        rest += chunk
    return status, rest[:length].decode(errors="replace").strip(), rest[length:]


@dataclass
class ConnRecord:
    """What one connection slot saw (a reconnect starts a new TCP connection in it)."""

    port: int  # local port of the first connection
    reals: List[str] = field(default_factory=list)  # distinct answering reals, in order
    moved_requests: int = 0  # answers from another real than the TCP connection's first
    requests: int = 0
    failed: int = 0
    reconnects: int = 0
    longest_s: float = 0.0  # longest wait for one answer
    longest_at: float = 0.0  # monotonic time that answer arrived
    errors: List[str] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        """The same TCP connection was answered by more than one real (a reconnect after
        a failure starts a new connection, which may land anywhere)."""
        return self.moved_requests > 0


@dataclass
class Report:
    conns: List[ConnRecord]
    duration_s: float

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.conns)

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.conns)

    @property
    def moved(self) -> List[int]:
        return [c.port for c in self.conns if c.moved]

    @property
    def longest_stall_s(self) -> float:
        return max((c.longest_s for c in self.conns), default=0.0)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "duration_s": round(self.duration_s, 3), "requests": self.requests,
            "failed": self.failed, "moved": self.moved,
            "longest_stall_s": round(self.longest_stall_s, 4),
            "conns": [{"port": c.port, "reals": c.reals, "requests": c.requests,
                       "failed": c.failed, "reconnects": c.reconnects,
                       "moved_requests": c.moved_requests,
                       "longest_s": round(c.longest_s, 4), "errors": c.errors[:5]}
                      for c in self.conns],
        }

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> Report:
        conns = [ConnRecord(port=c["port"], reals=list(c["reals"]), requests=c["requests"],
                            failed=c["failed"], reconnects=c["reconnects"],
                            moved_requests=c["moved_requests"],
                            longest_s=c["longest_s"], errors=list(c["errors"]))
                 for c in d["conns"]]
        return cls(conns, d["duration_s"])

    def real_of(self) -> Dict[int, str]:
        """Client port -> the real that answered first."""
        return {c.port: c.reals[0] for c in self.conns if c.reals}


class _Slot:
    """One connection and its loop (a thread)."""

    def __init__(self, host: str, port: int, interval: float, timeout: float,
                 stop: threading.Event) -> None:
        self.addr: Tuple[Any, ...] = (host, port, 0, 0) if ":" in host else (host, port)
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        self.interval, self.timeout, self.stop = interval, timeout, stop
        self.sock = self._connect()
        self.rec = ConnRecord(port=self.sock.getsockname()[1])
        self.buf = b""
        self.conn_real: Optional[str] = None  # who answered this TCP connection first
        self.first = threading.Event()

    def _connect(self) -> socket.socket:
        s = socket.socket(self.family, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.addr)
        return s

    def one(self) -> None:
        t0 = time.monotonic()
        try:
            self.sock.sendall(self.request)
            status, body, self.buf = read_response(self.sock, self.buf)
            if status != 200:
                raise ConnectionError(f"HTTP {status}")
        except (OSError, ValueError, IndexError) as e:
            self._failed(e)
            return
        took = time.monotonic() - t0
        rec = self.rec
        rec.requests += 1
        if body not in rec.reals:
            rec.reals.append(body)
        if self.conn_real is None:
            self.conn_real = body
        elif body != self.conn_real:
            rec.moved_requests += 1  # this TCP connection reached another real
        if took > rec.longest_s:
            rec.longest_s, rec.longest_at = took, time.monotonic()
        self.first.set()

    def _failed(self, e: BaseException) -> None:
        rec = self.rec
        rec.requests += 1
        rec.failed += 1
        rec.errors.append(f"{time.time():.3f} {e!r}")
        self.sock.close()
        self.buf, self.conn_real = b"", None
        while not self.stop.is_set():
            try:
                self.sock = self._connect()
                rec.reconnects += 1
                return
            except OSError as e2:
                rec.errors.append(f"{time.time():.3f} reconnect: {e2!r}")
                self.stop.wait(0.2)

    def loop(self) -> None:
        nxt = time.monotonic()
        while not self.stop.is_set():
            self.one()
            nxt = max(nxt + self.interval, time.monotonic())
            self.stop.wait(max(0.0, nxt - time.monotonic()))
        self.sock.close()


def run(host: str, port: int, conns: int, interval: float, timeout: float,
        duration: Optional[float], out: Any = None) -> Report:
    """Open *conns* connections, print READY, request until stopped, return the report."""
    out = out if out is not None else sys.stdout
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    slots = [_Slot(host, port, interval, timeout, stop) for _ in range(conns)]
    threads = [threading.Thread(target=s.loop, daemon=True) for s in slots]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for s in slots:
        if not s.first.wait(timeout):
            stop.set()
            raise RuntimeError(f"connection from port {s.rec.port} never got an answer")
    print(READY_TAG + json.dumps({"ports": [s.rec.port for s in slots]}), file=out, flush=True)
    stop.wait(duration)
    stop.set()
    for t in threads:
        t.join(timeout + 5)
    return Report([s.rec for s in slots], time.monotonic() - t0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdplbd.lab.longconn",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--host", required=True, help="the VIP")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--conns", type=int, default=24, help="keep-alive connections (default 24)")
    ap.add_argument("--interval", type=float, default=0.02,
                    help="seconds between requests on one connection (default 0.02)")
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="give a request up after this long (default 30 s: longer than "
                    "TCP's back-off over a failover)")
    ap.add_argument("--duration", type=float, default=None, help="stop after this long")
    args = ap.parse_args(argv)
    rep = run(args.host, args.port, args.conns, args.interval, args.timeout, args.duration)
    print(RESULT_TAG + json.dumps(rep.to_dict()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
