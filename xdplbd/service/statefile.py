"""<state-dir>/state.toml: what the daemon last applied, for `xdplb status`.

Written atomically (temp file + rename) with tomli-w; read with tomllib
(tomli before Python 3.11).
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any, Dict

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on the distro pythons 3.9/3.10
    import tomli as tomllib

STATE_FILE = "state.toml"
# Bumped when a key changes meaning or type (keys are only ever added within one):
# a reader refuses a newer schema rather than misreading it (check_state).
STATE_SCHEMA = 1
# Keys whose type a reader relies on; a file where they have another is corrupt.
_TYPES = {"pid": int, "generation": int, "reloads": int, "vips": list, "tunables": dict,
          "last_reload": dict, "schema": int}


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def write_state(state_dir: str, data: Dict[str, Any]) -> None:
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".state.", suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump({"schema": STATE_SCHEMA, **data}, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, state_path(state_dir))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_state(state_dir: str) -> Dict[str, Any]:
    """The last state written, or {} if there is none (or it is unreadable)."""
    try:
        with open(state_path(state_dir), "rb") as f:
            data: Dict[str, Any] = tomllib.load(f)
            return data
    except (OSError, tomllib.TOMLDecodeError):
        return {}


class StateError(Exception):
    """state.toml cannot be trusted: `kind` is "corrupt" or "newer"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_state(state_dir: str) -> None:
    """Raise StateError if state.toml exists but is not one this version can read.
    (read_state stays lenient: the daemon overwrites a bad file on its next write.)"""
    path = state_path(state_dir)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise StateError("corrupt", f"{path} is corrupt ({e}); xdplbd rewrites it on its "
                         "next start or reload, or remove it") from None
    schema = data.get("schema", STATE_SCHEMA)
    if isinstance(schema, int) and schema > STATE_SCHEMA:
        raise StateError("newer", f"{path} was written by a newer xdplb (state schema "
                         f"{schema}; this xdplb reads up to {STATE_SCHEMA}): use the xdplb "
                         "that matches the running xdplbd")
    bad = [k for k, t in _TYPES.items() if k in data and not isinstance(data[k], t)]
    if bad:
        raise StateError("corrupt", f"{path} is corrupt ({', '.join(bad)} of the wrong "
                         "type); xdplbd rewrites it on its next start or reload, or "
                         "remove it")
