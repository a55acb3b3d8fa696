"""How many CPU threads torch may use (``perf.threads``), decided in one place for every entry point.

torch's default is the machine's core count, which on a shared or container-limited machine is
more threads than this process may run: they then wait on each other (the README's snippet ran at
15-18 s per step with the default and 2 s with one thread on a busy 2-core machine). The default
here is the CPUs this process may use: its affinity mask, capped by the cgroup's CPU quota
(``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of v1), unless
``OMP_NUM_THREADS`` says otherwise.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (all CPUs where the OS has no such mask)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup folders, its own first, then its ancestors up to ``root``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return [root]
    dirs = []
    for line in lines:  # "0::/user.slice/x" (v2) or "4:cpu,cpuacct:/docker/abc" (v1, mounted at ROOT/cpu)
        _, controllers, path = line.split(":", 2)
        if controllers and "cpu" not in controllers.split(","):
            continue
        base = root / "cpu" if controllers else root
        parts = Path(path.lstrip("/")).parts
        dirs += [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return dirs or [root]


def _quota(folder: Path) -> float | None:
    """The CPU quota in CPUs set in one cgroup folder (None: unlimited or not set there)."""
    try:
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def cgroup_cpus(root: Path | str = "/sys/fs/cgroup", proc_cgroup: Path | str = "/proc/self/cgroup") -> int | None:
    """The tightest CPU quota of this process's cgroup and its ancestors, rounded up (None: none)."""
    quotas = [q for q in (_quota(d) for d in _cgroup_dirs(Path(root), Path(proc_cgroup))) if q is not None]
    return max(1, math.ceil(min(quotas))) if quotas else None


def default_threads(env=None, affinity: int | None = None, quota: int | None = -1) -> tuple[int, str]:
    """(threads, why): OMP_NUM_THREADS when set to a positive number, else the CPUs this process may
    use (affinity ∩ cgroup quota). ``affinity``/``quota`` are for tests (-1: read the system's)."""
    env = os.environ if env is None else env
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cpus = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpus() if quota == -1 else quota
    if quota is not None and quota < cpus:
        return quota, f"cgroup CPU quota (affinity: {cpus} CPUs)"
    return cpus, "CPUs in this process's affinity mask"


def resolve_threads(setting, env=None, affinity: int | None = None, quota: int | None = -1) -> tuple[int, str]:
    """``perf.threads``: a positive number, or None for :func:`default_threads`."""
    if setting is None:
        return default_threads(env, affinity, quota)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ValueError(f"perf.threads must be a positive number of threads or null (the CPUs this process may "
                         f"use), got {setting!r}")
    return setting, "perf.threads"


def apply_threads(setting) -> str:
    """Set torch's intra-op threads from ``perf.threads``; returns the line a run logs first."""
    threads, why = resolve_threads(setting)
    torch.set_num_threads(threads)
    return f"threads: {threads} torch CPU threads ({why}; perf.threads sets them)"
