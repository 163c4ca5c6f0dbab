"""The calibration against the kernel's own jiffies (/proc/timer_list)."""

from __future__ import annotations

import re

from xdplbd.core.clock import coarse_ns
from xdplbd.kernel import jiffies


def _kernel_jiffies() -> int:
    with open("/proc/timer_list") as f:
        m = re.search(r"^jiffies: (\d+)$", f.read(), re.M)
    assert m, "/proc/timer_list has no jiffies line"
    return int(m.group(1))


def test_calibration_gives_the_kernels_jiffies() -> None:
    cal = jiffies.calibrate()
    assert cal.jiffy_ns in {(10**9 + hz // 2) // hz for hz in (100, 250, 300, 1000)}
    before = (coarse_ns() + cal.offset_ns) // cal.jiffy_ns
    kernel = _kernel_jiffies()
    after = (coarse_ns() + cal.offset_ns) // cal.jiffy_ns
    assert before - 1 <= kernel <= after + 1
