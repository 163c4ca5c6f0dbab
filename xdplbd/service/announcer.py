"""Keep BIRD's view of this node's VIPs in step with what the node can serve.

After every apply the daemon hands over the effective state, whether the
data plane is attached, and the maintenance flag; the announcer renders the
fragment (core/announce.py), writes it atomically when it changed, and asks
BIRD to reconfigure. BIRD being down or its socket missing is logged and
retried, never fatal: forwarding does not depend on it. A daemon that stops
leaves the file as it is, so the announcement stays with the data plane
(fail-static); only `xdplb maintenance on` and `xdplb detach` withdraw.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Dict, Optional

from xdplbd.core.announce import Decision, decide, render_bird
from xdplbd.core.effective import Effective
from xdplbd.core.model import BirdAnnounce
from xdplbd.service import bird

log = logging.getLogger("xdplbd")

MAINTENANCE_FILE = "maintenance"  # in the state dir; present = this node is in maintenance
RETRY_S = 2.0


def maintenance_on(state_dir: str) -> bool:
    return os.path.exists(os.path.join(state_dir, MAINTENANCE_FILE))


def set_maintenance(state_dir: str, on: bool) -> None:
    path = os.path.join(state_dir, MAINTENANCE_FILE)
    if on:
        os.makedirs(state_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write("on\n")
    elif os.path.exists(path):
        os.unlink(path)


def withdraw(fragment: str, socket: str) -> None:
    """Empty the fragment and make BIRD re-read it (raises OSError or BirdError)."""
    bird.write_atomically(fragment, render_bird(()))
    bird.configure(socket)


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


class Announcer:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.bird: Optional[BirdAnnounce] = None
        self.decision: Optional[Decision] = None
        self.maintenance = False
        self.configured_at = ""  # when BIRD last took the file
        self.error = ""  # why the last attempt failed, "" if it did not
        self.retry_due = 0.0  # monotonic time of the next attempt, 0 = none pending
        self._text = ""  # the fragment BIRD should have

    def update(self, bird_cfg: Optional[BirdAnnounce], eff: Effective, attached: bool) -> None:
        """Announce what this node can serve now (after every apply)."""
        if bird_cfg != self.bird and self.bird is not None:
            self._withdraw_old(self.bird, bird_cfg)
        self.bird = bird_cfg
        self.maintenance = maintenance_on(self.state_dir)
        if bird_cfg is None:
            self.decision, self._text, self.retry_due = None, "", 0.0
            return
        decision = decide(eff, attached, self.maintenance)
        text = render_bird(decision.routes)
        if decision != self.decision:
            self._log_changes(self.decision, decision)
        self.decision = decision
        if text != self._text or self.error:
            self._text = text
            self._push()

    def retry(self) -> None:
        if self.retry_due and time.monotonic() >= self.retry_due and self.bird is not None:
            self._push()

    def _push(self) -> None:
        assert self.bird is not None
        try:
            bird.write_atomically(self.bird.file, self._text)
        except OSError as e:
            self._failed(f"cannot write {self.bird.file}: {e.strerror or e}")
            return
        try:
            bird.configure(self.bird.socket)
        except bird.BirdError as e:
            self._failed(str(e))
            return
        if self.error:
            log.info("BIRD took the VIP routes again (%s)", self.bird.socket)
        self.error, self.retry_due, self.configured_at = "", 0.0, _now()

    def _failed(self, why: str) -> None:
        if why != self.error:  # once per distinct problem, not once per retry
            log.warning("route announcement: %s; retrying every %.0f s (forwarding goes on)",
                        why, RETRY_S)
        self.error = why
        self.retry_due = time.monotonic() + RETRY_S

    def _withdraw_old(self, old: BirdAnnounce, new: Optional[BirdAnnounce]) -> None:
        """The config moved or dropped the announcement: leave nothing behind."""
        if new is not None and new.file == old.file:
            return
        try:
            withdraw(old.file, old.socket)
            log.info("route announcement: emptied %s (no longer configured)", old.file)
        except (OSError, bird.BirdError) as e:
            log.warning("route announcement: cannot empty the old %s: %s", old.file, e)

    def _log_changes(self, old: Optional[Decision], new: Decision) -> None:
        before = old.vips if old is not None else {}
        for key, (kind, why) in sorted(new.vips.items(), key=lambda kv: str(kv[0])):
            if before.get(key, (None, ""))[0] != kind:
                log.info("vip %s: %s%s", key, kind, f" ({why})" if why else "")

    def status(self) -> Dict[str, Any]:
        """For state.toml and `xdplb status`."""
        if self.bird is None:
            return {}
        vips = {}
        if self.decision is not None:
            vips = {str(k): {"state": kind, "reason": why}
                    for k, (kind, why) in self.decision.vips.items()}
        return {
            "file": self.bird.file, "socket": self.bird.socket,
            "maintenance": self.maintenance,
            "routes": [{"prefix": r.prefix, "last_resort": r.last_resort}
                       for r in (self.decision.routes if self.decision else ())],
            "configured_at": self.configured_at, "error": self.error, "vips": vips,
        }
