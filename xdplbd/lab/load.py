"""New-connection load from the whole client population: one wrk per source address.

wrk cannot bind a source address, so the pool runs one wrk per address of the
lab client (lab/sources.py: each address is the route source of one uid) with
the connections split between them, and sums their results as one run's.
"""

from __future__ import annotations

import signal
from typing import Dict, List

from xdplbd.lab import sources
from xdplbd.lab.demo import Wrk, WrkResult
from xdplbd.lab.topology import Lab


def _add(a: Dict[str, int], b: Dict[str, int]) -> Dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def merge(results: List[WrkResult]) -> WrkResult:
    """Several concurrent wrk runs as one: counts summed, the longest duration, the
    worst p99 (a bound, not the pooled percentile)."""
    first = results[0]
    out = WrkResult(first.duration_s, 0, 0, {}, {}, {}, 0.0, 0, first.new_connections,
                    "\n".join(r.output for r in results))
    for r in results:
        out.duration_s = max(out.duration_s, r.duration_s)
        out.requests += r.requests
        out.bytes += r.bytes
        out.errors = _add(out.errors, r.errors)
        out.reals = _add(out.reals, r.reals)
        out.statuses = _add(out.statuses, r.statuses)
        out.p99_ms = max(out.p99_ms, r.p99_ms)
        out.connections += r.connections
    return out


class WrkPool:
    """`connections` wrk connections spread over the client's source addresses
    (all on the primary address if the lab has none). Same interface as Wrk."""

    def __init__(self, lab: Lab, url: str, *, connections: int = 16,
                 new_connections: bool = True, duration: float = 60.0,
                 timeout: float = 3.0) -> None:
        n = lab.spec.client_sources
        split = sources.split(connections, n) if n else [connections]
        self.procs = [
            Wrk(lab, url, connections=c, new_connections=new_connections, duration=duration,
                timeout=timeout, source=k if n else None)
            for k, c in enumerate(split)
        ]
        self.connections = connections

    @property
    def pids(self) -> List[int]:
        return [w.pid for w in self.procs]

    def start(self) -> WrkPool:
        for w in self.procs:
            w.start()
        return self

    def stop(self, timeout: float = 15.0) -> WrkResult:
        for w in self.procs:  # SIGINT to all first: they stop together
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGINT)
        return merge([w.stop(timeout) for w in self.procs])

    def wait(self) -> WrkResult:
        return merge([w.wait() for w in self.procs])

    def kill(self) -> None:
        for w in self.procs:
            w.kill()

    def run(self) -> WrkResult:
        self.start()
        try:
            return self.wait()
        finally:
            self.kill()
