"""The benchmark reports the kernel's share of the server's CPU only when enough CPU backs it.

Linux splits CPU time into user and system by sampling the timer tick, so a split of a few
milliseconds is one or two samples: the table shows `-` rather than a share that means nothing.
"""

from __future__ import annotations

import pytest
from bench.ads_run import SYS_SHARE_MIN_CPU_S, sys_share


def test_the_share_of_enough_cpu_is_its_kernel_part() -> None:
    assert sys_share(0.1, 0.4) == pytest.approx(0.25)
    assert sys_share(0.0, SYS_SHARE_MIN_CPU_S) == 0.0


def test_too_little_cpu_has_no_share() -> None:
    assert sys_share(0.004, 0.006) is None
    assert sys_share(0.0, 0.0) is None
    assert sys_share(0.1, SYS_SHARE_MIN_CPU_S * 0.99) is None
