"""One compiled data plane shared by every packet test in the session.

The program is also attached (native XDP) to a veth in a private netns: a
program attached somewhere stays in the kernel's XDP dispatcher, so each
test_run skips a 4-30 ms RCU wait and 10,000-packet tests stay fast.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Iterator

import pytest

from tests.dataplane.harness import LB_MAC, TEST_TUNABLES, DataPlaneHarness
from xdplbd.kernel import iface, libbpf, loader
from xdplbd.kernel.netns import in_netns

PIN_DIR = f"/sys/fs/bpf/xdplb-test-{os.getpid()}"
NETNS = f"xdplbt-{os.getpid()}"


@contextlib.contextmanager
def attached_program(pin_dir: str, netns: str) -> Iterator[loader.Program]:
    """Load (compile) the data plane into `pin_dir` and attach it to a veth in
    `netns`; undone on exit."""
    loader.remove_pins(pin_dir)
    try:  # a build that fails to compile still leaves the pin directory made
        prog = loader.load(pin_dir, TEST_TUNABLES)
    except BaseException:
        loader.remove_pins(pin_dir)
        raise
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        # No IPv6 on the veths: their router solicitations and MLD reports would
        # reach the attached program and move the counters the tests compare.
        subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        subprocess.run(
            ["ip", "-n", netns, "link", "add", "xt0", "type", "veth", "peer", "name", "xt1"],
            check=True,
        )
        subprocess.run(["ip", "-n", netns, "link", "set", "xt0", "up"], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "xt1", "up"], check=True)
        with in_netns(netns):
            libbpf.xdp_attach(iface.ifindex("xt0"), prog.fd, "native")
        yield prog
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
        os.close(prog.fd)
        loader.remove_pins(pin_dir)


@pytest.fixture(scope="session")
def program() -> Iterator[loader.Program]:
    with attached_program(PIN_DIR, NETNS) as prog:
        yield prog


@contextlib.contextmanager
def clean_dataplane(program: loader.Program) -> Iterator[DataPlaneHarness]:
    """A clean data plane: no VIPs, empty conntrack, zero counters."""
    h = DataPlaneHarness(program, PIN_DIR)
    h.reset(LB_MAC)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def dpx(program: loader.Program) -> Iterator[DataPlaneHarness]:
    """A clean data plane per test."""
    with clean_dataplane(program) as h:
        yield h


assert shutil.which("ip"), "iproute2 is required (scripts/bootstrap.sh installs it)"


@pytest.fixture(scope="module")
def dpx_fuzz(program: loader.Program) -> Iterator[DataPlaneHarness]:
    """Module-scoped (hypothesis runs many examples per test function)."""
    from tests.dataplane.test_fuzz import _configure

    h = DataPlaneHarness(program, PIN_DIR)
    h.reset(LB_MAC)
    _configure(h)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture(scope="module")
def dpx_diff(program: loader.Program) -> Iterator[DataPlaneHarness]:
    """Module-scoped, for hypothesis's differential examples (each syncs its model)."""
    with clean_dataplane(program) as h:
        yield h
