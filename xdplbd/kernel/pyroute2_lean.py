"""Import only the parts of pyroute2 that kernel/netlink.py uses.

pyroute2/__init__.py (0.7.2) imports every subsystem (iproute, ndb, ipset, nftables,
and with them asyncio, ssl, sqlite3): `import pyroute2` costs ~24 MB of RSS, while the
netlink marshal, message classes and exceptions alone cost ~5 MB. Importing this
module, before the first pyroute2 import, puts in sys.modules a `pyroute2` package
whose __init__ has not run, so its submodules import alone.

The stub stays a complete pyroute2 for anyone else in the process: the first access
to a name it lacks (`from pyroute2 import IPRoute`) runs the real __init__ into it.
If pyroute2 is already imported, or not installed, this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from importlib.machinery import PathFinder
from typing import Any, List

PACKAGE = "pyroute2"


def _install() -> None:
    if PACKAGE in sys.modules:
        return  # imported already (fully, or by us): nothing to save
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not installed as a package: the plain import will say so
    loader = spec.loader
    mod = importlib.util.module_from_spec(spec)  # __path__, __spec__...; nothing run
    lock = threading.RLock()
    loaded: List[bool] = []

    def __getattr__(name: str) -> Any:  # PEP 562: only for names the module lacks
        if name.startswith("__") and name not in ("__all__", "__version__"):
            raise AttributeError(name)  # introspection (__wrapped__...): no cause to load
        if PathFinder.find_spec(f"{PACKAGE}.{name}", mod.__path__) is not None:
            # `from pyroute2 import config` in a submodule: hasattr() must fail for
            # the import system to import the submodule (and set the attribute)
            raise AttributeError(name)
        with lock:  # other threads wait for the real __init__ to finish
            if not loaded:
                loaded.append(True)  # a lookup from within __init__ fails, as usual
                try:
                    loader.exec_module(mod)
                except BaseException:
                    loaded.clear()  # the next lookup raises the import's error again
                    raise
                mod.__dict__.pop("__getattr__", None)
        try:
            return mod.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}") from None

    mod.__dict__["__getattr__"] = __getattr__
    sys.modules[PACKAGE] = mod


_install()
