"""The differential test catches a fault: a deliberate bug in a copy of bpf/xdplb.c.

The mutant compares a VIP's port against the flow's *source* port (a wrong
port comparison in vip_key_matches). It is compiled once, into its own pin
directory, and driven with the same generator and a fixed seed; the test
passes only if the comparison with the reference model fails.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator

import pytest

from tests.dataplane.conftest import attached_program
from tests.dataplane.differential import Chooser, Session
from tests.dataplane.harness import LB_MAC, DataPlaneHarness
from xdplbd.kernel import loader

CORRECT = "key->port == flow->dport"
MUTANT = "key->port == flow->sport"
SEED = 16


@pytest.fixture(scope="module")
def mutant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlaneHarness]:
    source = loader.source_path().read_text()
    assert source.count(CORRECT) == 1, "the mutation no longer applies: update test_mutant.py"
    path = Path(tmp_path_factory.mktemp("mutant")) / "xdplb.c"
    path.write_text(source.replace(CORRECT, MUTANT))
    pin_dir, netns = f"/sys/fs/bpf/xdplb-mutant-{os.getpid()}", f"xdplbm-{os.getpid()}"
    old = os.environ.get("XDPLB_BPF_SOURCE")
    os.environ["XDPLB_BPF_SOURCE"] = str(path)
    try:
        with attached_program(pin_dir, netns) as prog:
            h = DataPlaneHarness(prog, pin_dir)
            try:
                h.reset(LB_MAC)
                yield h
            finally:
                h.close()
    finally:
        if old is None:
            del os.environ["XDPLB_BPF_SOURCE"]
        else:
            os.environ["XDPLB_BPF_SOURCE"] = old


def test_a_wrong_port_comparison_is_caught(mutant: DataPlaneHarness) -> None:
    s = Session(mutant, SEED)
    with pytest.raises(AssertionError) as caught:
        s.run(Chooser(random.Random(SEED)), 20_000, check_every=500)
    print(f"\nmutant caught after {s.frames} frames: {str(caught.value).splitlines()[0]}")
    assert s.frames < 20_000
