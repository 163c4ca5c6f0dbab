"""kernel/netlink.py imports only the part of pyroute2 it uses (kernel/pyroute2_lean.py):
not IPRoute, NDB and the rest that pyroute2/__init__.py pulls in (~24 MB of RSS, against ~5 MB), and
pyroute2 stays whole for anyone else in the process. Each case in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pyroute2.iproute", "pyroute2.ndb")


def _run(code: str) -> None:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_netlink_imports_no_iproute_and_pyroute2_stays_whole() -> None:
    _run(f"""
import sys
import xdplbd.kernel.netlink
heavy = [m for m in sys.modules if m.startswith({HEAVY!r})]
assert not heavy, heavy
import pyroute2
from pyroute2 import IPRoute  # runs the real __init__ now
from pyroute2.iproute.linux import IPRoute as Real
assert IPRoute is Real and pyroute2.NDB is not None
assert "pyroute2.iproute" in sys.modules
assert "__getattr__" not in vars(pyroute2)
try:
    pyroute2.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("pyroute2.no_such_name")
""")


def test_pyroute2_imported_first_is_left_alone() -> None:
    _run("""
import sys
import pyroute2
import xdplbd.kernel.netlink
assert sys.modules["pyroute2"] is pyroute2 and "__getattr__" not in vars(pyroute2)
from pyroute2 import IPRoute
""")
