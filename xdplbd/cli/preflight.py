"""Before a command runs: privileges, state.toml and the pin directory, each bad case
answered with one sentence and its own exit code (man xdplb(8), docs/bad-input.md).

Checked up front, not where a map read deep inside a command would trip over it:
one place decides what each command needs, so every command answers a given
bad input the same way.
"""

from __future__ import annotations

import argparse
import os
from typing import Dict, Optional, Tuple

from xdplbd.kernel import pincheck
from xdplbd.service import statefile

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
EXIT_NOT_RUNNING = 3  # `status`, as LSB init scripts do
EXIT_PERMISSION = 4  # not root (nor CAP_BPF / CAP_SYS_ADMIN)
EXIT_NO_PINS = 5  # nothing pinned under --pin-dir
EXIT_FOREIGN_PINS = 6  # --pin-dir holds something that is not xdplb's
EXIT_CORRUPT_PINS = 7  # xdplb's pins, but a map missing or of the wrong shape
EXIT_STATE_CORRUPT = 8  # state.toml unreadable as TOML, or keys of the wrong type
EXIT_STATE_NEWER = 9  # state.toml from a newer schema
EXIT_INTERNAL = 70  # a bug (EX_SOFTWARE): the message names the exception

PIN_EXIT = {pincheck.MISSING: EXIT_NO_PINS, pincheck.FOREIGN: EXIT_FOREIGN_PINS,
            pincheck.CORRUPT: EXIT_CORRUPT_PINS, pincheck.PERMISSION: EXIT_PERMISSION}
STATE_EXIT = {"corrupt": EXIT_STATE_CORRUPT, "newer": EXIT_STATE_NEWER}

# command -> (needs root, reads state.toml, pins: None | "required" | "optional" | "detach")
# "optional": no pins is a normal answer (status: not loaded; check --plan: all new).
# "detach": no pins is fine, damaged pins are what detach removes, foreign ones never.
# "start": no pins is a first start; the daemon must not pin into someone else's
# directory, nor start on damaged pins.
NEEDS: Dict[str, Tuple[bool, bool, Optional[str]]] = {
    "start": (True, False, "start"),
    "stop": (True, False, None),
    "debug": (True, False, "start"),
    "top": (True, True, "required"),
    "stats": (True, True, "required"),
    "explain": (True, True, "required"),
    "status": (True, True, "optional"),
    "reload": (True, True, None),
    "detach": (True, True, "detach"),
    "check": (False, False, None),  # --plan: (True, True, "optional")
}

_CAP_SYS_ADMIN, _CAP_BPF = 21, 39


def privileged() -> bool:
    """root, or the capabilities that reading pinned maps needs."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << _CAP_SYS_ADMIN | 1 << _CAP_BPF))
    except (OSError, ValueError):
        pass
    return False


def check(args: argparse.Namespace) -> Optional[Tuple[int, str]]:
    """(exit code, message) if the command must not run, else None."""
    needs = NEEDS.get(args.command)
    if needs is None:
        return None
    root, state, pins = needs
    if args.command == "check" and getattr(args, "plan", False):
        root, state, pins = True, True, "optional"
    if root and not privileged():
        return EXIT_PERMISSION, (f"`xdplb {args.command}` needs root (it reads the pinned BPF "
                                 "maps or controls the daemon): run it with sudo")
    if state:
        try:
            statefile.check_state(args.state_dir)
        except statefile.StateError as e:
            return STATE_EXIT[e.kind], str(e)
    if pins is not None:
        try:
            pincheck.inspect(args.pin_dir)
        except pincheck.PinProblem as e:
            if e.kind == pincheck.MISSING and pins in ("optional", "detach", "start"):
                return None
            if e.kind == pincheck.CORRUPT and pins == "detach":
                return None
            return PIN_EXIT[e.kind], str(e)
    return None
