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


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def write_state(state_dir: str, data: Dict[str, Any]) -> None:
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".state.", suffix=".toml")
    try:
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump(data, f)
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
