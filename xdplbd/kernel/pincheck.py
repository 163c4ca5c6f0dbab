"""Is this pin directory xdplb's, whole and of the right shape? And are the pins still
the maps a running daemon holds?

Tools must answer a bad pin directory with one clear sentence, not a traceback
from deep inside a map read; and must never write to (or `detach` away) a
directory of someone else's pins. The daemon must notice a map removed or
replaced under it instead of writing on into a map no tool can see any more.
"""

from __future__ import annotations

import errno
import os
from typing import Dict, List, Optional

from xdplbd.core.model import Tunables
from xdplbd.core.schema import map_specs
from xdplbd.kernel import libbpf
from xdplbd.kernel.loader import PROG_PREFIX

MISSING, FOREIGN, CORRUPT, PERMISSION = "missing", "foreign", "corrupt", "permission"


class PinProblem(Exception):
    """What is wrong with a pin directory: `kind` is one of the constants above."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _denied(e: OSError) -> bool:
    return e.errno in (errno.EPERM, errno.EACCES)


def inspect(pin_dir: str) -> None:
    """Raise PinProblem unless `pin_dir` holds xdplb's maps, all of them, each of the
    declared type, key size and value size. (max_entries follows the tunables, which
    only the daemon knows; loader.check_pins checks it against them.)"""
    try:
        names = sorted(os.listdir(pin_dir))
    except FileNotFoundError:
        raise PinProblem(MISSING, f"no data plane pinned under {pin_dir}") from None
    except NotADirectoryError:
        raise PinProblem(FOREIGN, f"{pin_dir} is not a directory") from None
    except PermissionError:
        raise PinProblem(PERMISSION, f"cannot read {pin_dir}: permission denied "
                         "(the pins are root's: run as root)") from None
    specs = {s.name: s for s in map_specs(Tunables())}
    ours = [n for n in names if n in specs]
    if not ours:
        if not names or names == [n for n in names if n.startswith(PROG_PREFIX)]:
            raise PinProblem(MISSING, f"no data plane pinned under {pin_dir}")
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise PinProblem(FOREIGN, f"{pin_dir} holds pins that are not xdplb's ({shown}); "
                         "wrong --pin-dir?")
    absent = sorted(set(specs) - set(ours))
    problems = [f"map {n} is missing" for n in absent]
    for name in ours:
        spec = specs[name]
        path = os.path.join(pin_dir, name)
        try:
            fd = libbpf.obj_get(path)
        except OSError as e:
            if _denied(e):
                raise PinProblem(PERMISSION, f"cannot open {path}: permission denied "
                                 "(reading the maps needs root: CAP_BPF or CAP_SYS_ADMIN)"
                                 ) from None
            problems.append(f"{name} cannot be opened ({os.strerror(e.errno or 0)})")
            continue
        try:
            info = libbpf.map_info(fd)
        except OSError as e:
            problems.append(f"{name} is not a map ({os.strerror(e.errno or 0)})")
            continue
        finally:
            os.close(fd)
        bad = [f"{what} {got} (want {want})" for what, want, got in (
            ("type", spec.type, info.type_name), ("key size", spec.key_size, info.key_size),
            ("value size", spec.value_size, info.value_size)) if want != got]
        if bad:
            problems.append(f"{name} has " + ", ".join(bad))
    if problems:
        raise PinProblem(CORRUPT, f"the pins under {pin_dir} are damaged: "
                         + "; ".join(problems)
                         + ". `xdplb detach` removes them (this drops traffic); restarting "
                         "xdplbd then recreates them")


def pinned_ids(pin_dir: str, names: List[str]) -> Dict[str, Optional[int]]:
    """The map id now pinned at each name (None: no pin there, or not a map)."""
    out: Dict[str, Optional[int]] = {}
    for name in names:
        try:
            fd = libbpf.obj_get(os.path.join(pin_dir, name))
        except OSError:
            out[name] = None
            continue
        try:
            out[name] = libbpf.map_info(fd).id
        except OSError:
            out[name] = None
        finally:
            os.close(fd)
    return out


def drift(pin_dir: str, held: Dict[str, int]) -> List[str]:
    """Pins that no longer name the maps a process holds (`held`: name -> map id)."""
    now = pinned_ids(pin_dir, sorted(held))
    out = []
    for name, want in sorted(held.items()):
        got = now[name]
        if got is None:
            out.append(f"{os.path.join(pin_dir, name)} was removed")
        elif got != want:
            out.append(f"{os.path.join(pin_dir, name)} was replaced (map id {want} -> {got})")
    return out
