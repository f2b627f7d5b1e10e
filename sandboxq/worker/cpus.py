"""How many CPUs this process may really use (``--procs auto``)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup CPU quota in CPUs (v2 ``cpu.max`` or v1 CFS), or None."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus() -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota;
    never less than 1. Not the host's core count."""
    count = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(math.ceil(limit), 1))
    return max(count, 1)
