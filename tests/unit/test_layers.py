"""The layers (xdplbd/core < kernel < service < cli < lab) hold, and `make lint` catches a
break: import-linter runs the project's own contracts on a deliberately broken copy."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYERS = ("core", "kernel", "service", "cli", "lab")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: run `make setup`"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "pyproject.toml")],
        cwd=tree, env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "xdplbd", tmp_path / "xdplbd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_its_contracts(tree_copy: Path) -> None:
    r = _lint(tree_copy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


@pytest.mark.parametrize("upper", ["kernel.libbpf", "service.notify", "cli.status", "lab.topology"])
def test_a_core_module_importing_an_upper_layer_fails_lint(tree_copy: Path, upper: str) -> None:
    maglev = tree_copy / "xdplbd" / "core" / "maglev.py"
    pkg, mod = upper.split(".")
    maglev.write_text(maglev.read_text() + f"\nfrom xdplbd.{pkg} import {mod}  # broken\n")
    r = _lint(tree_copy)
    assert r.returncode != 0
    assert "BROKEN" in r.stdout
    assert f"xdplbd.core.maglev -> xdplbd.{upper}" in r.stdout


def test_a_lower_layer_importing_the_lab_fails_lint(tree_copy: Path) -> None:
    daemon = tree_copy / "xdplbd" / "service" / "daemon.py"
    daemon.write_text(daemon.read_text() + "\nfrom xdplbd.lab import topology  # broken\n")
    r = _lint(tree_copy)
    assert r.returncode != 0
    assert "xdplbd.service.daemon -> xdplbd.lab.topology" in r.stdout


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)
    return out


def test_core_imports_only_the_standard_library() -> None:
    """import-linter names forbidden packages; this checks the rest: stdlib or core."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = {}
    for path in sorted((ROOT / "xdplbd" / "core").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            if top not in stdlib and not name.startswith("xdplbd.core"):
                bad.setdefault(path.name, []).append(name)
    assert not bad, bad


def test_every_layer_says_what_it_owns_and_may_import() -> None:
    for layer in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / "xdplbd" / layer / "__init__.py").read_text()))
        assert doc and "import" in doc, layer
    assert {p.name for p in (ROOT / "xdplbd").glob("*.py")} == {"__init__.py"}
