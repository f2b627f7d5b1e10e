"""How many CPUs this process may really use (``--procs auto``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_dirs(root: Path, proc_cgroup: str) -> list[Path]:
    """The cgroup directories whose CPU quota applies to this process: its
    own and every ancestor, for cgroup v2 (``0::/path``) and for a v1 ``cpu``
    controller (``N:cpu,cpuacct:/path``). A quota may sit at any level."""
    found: list[Path] = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            base = root
        elif "cpu" in controllers.split(","):
            base = root / "cpu"
        else:
            continue
        own = base / path.lstrip("/")
        found += [own, *[p for p in own.parents if p.is_relative_to(base)]]
    return found or [root, root / "cpu"]


def _quota(directory: Path) -> float | None:
    """The quota in CPUs set in one cgroup directory (v2 or v1), if any."""
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())
        period_us = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The tightest cgroup CPU quota along this process's cgroup path, in
    CPUs, or None when no level sets one."""
    try:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        proc_cgroup = ""
    quotas = [q for d in _cgroup_dirs(root, proc_cgroup) if (q := _quota(d)) is not None]
    return min(quotas, default=None)


def available_cpus() -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota;
    never less than 1. Not the host's core count."""
    count = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(math.ceil(limit), 1))
    return max(count, 1)
