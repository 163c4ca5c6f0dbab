"""Fixtures for the systemd tests: a cached rootfs and one booted container per session."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .container import Container

ROOT = Path(__file__).resolve().parents[2]
MAKE_ROOTFS = ROOT / "scripts" / "make-systemd-rootfs.sh"


def build_rootfs() -> Path:
    """Run scripts/make-systemd-rootfs.sh (instant when cached) and return the tarball."""
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(MAKE_ROOTFS)], capture_output=True, text=True,
                       check=False, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(
            f"{MAKE_ROOTFS.name} failed ({r.returncode}):\n{r.stderr[-6000:]}"
        )
    tarball = Path(r.stdout.strip().splitlines()[-1])
    if not tarball.is_file():
        raise RuntimeError(f"{MAKE_ROOTFS.name} printed {tarball}, which is not a file")
    elapsed = time.monotonic() - t0
    if elapsed > 5:
        print(f"\nsystemd rootfs built in {elapsed:.0f}s: {tarball}")
    return tarball


@pytest.fixture(scope="session")
def systemd_rootfs() -> Path:
    """The cached Debian rootfs tarball (built on first use, about a minute)."""
    if os.geteuid() != 0:
        raise RuntimeError("the systemd tests need root (systemd-nspawn, bpffs)")
    return build_rootfs()


@pytest.fixture(scope="session")
def systemd_container(systemd_rootfs: Path) -> Iterator[Container]:
    """A booted systemd container shared by the session; always powered off and removed.

    Tests that change it (units, interfaces, pins) clean up after themselves.
    """
    with Container(systemd_rootfs) as c:
        yield c
