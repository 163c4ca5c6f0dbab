"""xdplbd with a health view read from a file: TEST ONLY, for "one node's own view".

TODO(lead): the health checks of issue 13 are the real source of the verdicts this
file stands in for. When they merge, give the one node a real reason to see every
real of the VIP down (e.g. drop its probes to the reals' check port with a firewall
rule in that node's namespace only) and retire this wrapper.

It is the real daemon (xdplbd.service.daemon), run through its designed seam: the
health provider (``Daemon.health_view``) that issue 13 replaces, and
``request_apply()`` when the verdicts change, as a checker calls it. Everything
downstream is the production path: core/effective.py (fail-open), core/announce.py
(last resort), the announcer, BIRD and the router.

The file (``XDPLB_TEST_HEALTH_FILE``) holds JSON: ``{"down": ["10.97.9.100:80/tcp"]}``
marks every real of each listed VIP down.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Dict, Mapping, Set

from xdplbd.core.effective import DOWN, RealId
from xdplbd.core.model import Config
from xdplbd.service import daemon as daemon_mod

HEALTH_FILE_ENV = "XDPLB_TEST_HEALTH_FILE"


def read_down(path: str) -> Set[str]:
    try:
        with open(path) as f:
            return set(json.load(f).get("down", []))
    except (OSError, ValueError):
        return set()


class HealthFileDaemon(daemon_mod.Daemon):
    def __init__(self, opts: daemon_mod.Options) -> None:
        super().__init__(opts)
        self._health_path = os.environ[HEALTH_FILE_ENV]
        self._down = read_down(self._health_path)
        self.health_view = self._view
        threading.Thread(target=self._watch, daemon=True).start()

    def _view(self) -> Mapping[RealId, str]:
        cfg: Config | None = self.cfg
        out: Dict[RealId, str] = {}
        if cfg is None:
            return out
        for vip in cfg.vips:
            if str(vip.key) in self._down:
                for r in vip.reals:
                    out[(vip.key, r.ip)] = DOWN
        return out

    def _watch(self) -> None:
        while True:
            time.sleep(0.05)
            down = read_down(self._health_path)
            if down != self._down:
                self._down = down
                self.request_apply("health (test file)")


if __name__ == "__main__":
    daemon_mod.Daemon = HealthFileDaemon  # type: ignore[misc]
    sys.exit(daemon_mod.main())
