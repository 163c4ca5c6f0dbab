"""Fixtures for the namespace lab tests: one lab per session, always torn down."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from xdplbd.lab.topology import Lab, LabSpec

# Unique per session so parallel runs do not collide (namespaces, state dir).
SESSION_PREFIX = f"t{os.getpid()}"


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    assert os.geteuid() == 0, "the lab tests need root (network namespaces, XDP)"
    lab = Lab(LabSpec(prefix=SESSION_PREFIX, n_reals=3))
    request.addfinalizer(lab.down)  # registered before up(): runs even if up() fails
    lab.up()
    yield lab
