"""A running daemon's pins, watched: a map removed or replaced under it is reported,
and never written to silently.

The daemon writes through the map fds it opened at start, which the attached
program also uses. If someone unpins a map, or pins another one at its name, the
tools (status, stats, top, metrics) read what the pin names now, not what the
program uses: writing on would leave the two silently apart. So every apply
first compares the pinned map ids with the ids of the fds held (kernel/pincheck),
and refuses on a difference; the main loop also checks now and then and logs a
change once.
"""

from __future__ import annotations

import logging
from typing import Dict, List

from xdplbd.core.plan import PlanError
from xdplbd.kernel import pincheck
from xdplbd.kernel.dataplane import DataPlane

log = logging.getLogger("xdplbd")
POLL_S = 5.0  # the main loop's check: ~a dozen bpf_obj_get, well under a millisecond


class PinsChanged(PlanError):
    """The pins no longer name the maps this daemon holds: nothing is written."""


class PinWatch:
    def __init__(self, dp: DataPlane) -> None:
        self.pin_dir = dp.pin_dir
        self.held: Dict[str, int] = {name: m.info.id for name, m in dp.maps.items()}
        self._reported: List[str] = []

    def problems(self) -> List[str]:
        return pincheck.drift(self.pin_dir, self.held)

    def message(self, problems: List[str]) -> str:
        return ("; ".join(problems) + " under the running daemon: not writing to the maps "
                "(the attached program still uses the maps this daemon holds); restore the "
                "pins, or run `xdplb detach` and restart xdplbd (this drops traffic)")

    def check(self) -> None:
        """Before an apply: raise PinsChanged if any pin moved."""
        p = self.problems()
        if p:
            self._report(p)
            raise PinsChanged(self.message(p))

    def poll(self) -> bool:
        """Periodic check: log a change (once); True while the pins are as held."""
        p = self.problems()
        self._report(p)
        return not p

    def _report(self, problems: List[str]) -> None:
        if problems != self._reported:
            if problems:
                log.error("pins changed: %s", self.message(problems))
            else:
                log.info("pins under %s are the daemon's maps again", self.pin_dir)
            self._reported = problems
