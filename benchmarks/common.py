"""What every benchmark script shares: a clock with peak memory, a free port, a child-process
runner and the one layout of a result file.

Result files (:func:`write_result`) all have the same top-level fields::

    {"device": {...}, "versions": {...}, "date": "YYYY-MM-DD", "config": {...}, "results": [...]}

``device`` names the hardware (and the torch threads), ``versions`` the software, ``config``
the script's settings, ``results`` one row per measurement. (Files in benchmarks/results/
written before this layout keep theirs: ``{"meta": ..., "rows": ...}``.)
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------- time and memory
def proc_status(key: str) -> int:
    """A size from /proc/self/status in bytes (VmRSS, VmHWM, ...); -1 where there is none."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return -1
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


def reset_rss_peak() -> bool:
    """VmHWM := VmRSS (Linux); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Clock:
    """Device synchronisation and peak memory of this process on ``device``: on CUDA
    ``max_memory_allocated``, on the CPU the peak RSS (VmHWM, reset through clear_refs)."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def start_peak(self) -> int:
        """Restart the peak; returns what is in use now (to subtract from :meth:`peak`)."""
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated()
        reset_rss_peak()
        return proc_status("VmRSS")

    def peak(self) -> int:
        self.sync()
        return torch.cuda.max_memory_allocated() if self.cuda else proc_status("VmHWM")


def timed(fn, calls: int, clock: Clock) -> float:
    """Seconds per call of ``fn`` over ``calls`` calls, the device synchronised at the end."""
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    clock.sync()
    return (time.perf_counter() - t0) / calls


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(module: str, job: dict, env=None, processes: int = 1, retries: int = 0) -> list:
    """``python -m MODULE --child JOB`` in a fresh process (under torchrun on 127.0.0.1 with
    several ``processes``); every process hands its result back through :func:`child_result`.
    Returns the results in rank order; raises RuntimeError with the child's stderr when a
    process failed or returned nothing."""
    with tempfile.TemporaryDirectory() as result_dir:
        cmd = [sys.executable, "-m", module, "--child", json.dumps(dict(job, result_dir=result_dir))]
        if processes > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={free_port()}", *cmd[1:]]
        for _ in range(1 + retries):
            for f in Path(result_dir).glob("rank*.json"):
                f.unlink()
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            files = sorted(Path(result_dir).glob("rank*.json"), key=lambda f: int(f.stem[4:]))
            results = [json.loads(f.read_text()) for f in files]
            if out.returncode == 0 and len(results) == processes:
                return results
    raise RuntimeError(f"benchmark child {module} failed (exit code {out.returncode}, {len(results)} of {processes} "
                       f"results):\n{out.stderr[-3000:]}")


def child_result(job: dict, result):
    """In a child of :func:`run_child`: hand ``result`` back, one file per process (two
    ranks' prints would interleave)."""
    rank = os.environ.get("RANK", "0")
    Path(job["result_dir"], f"rank{rank}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- result files
def device_info(device: str, threads: int | None = None) -> dict:
    info = {"type": str(device), "machine": platform.machine(), "cores": os.cpu_count()}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    else:
        info["cpu"] = platform.processor() or platform.machine()
    if threads is not None:
        info["threads"] = threads
    return info


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("fastmine", "triton"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def write_result(path, *, device: dict, config: dict, results: list) -> Path:
    """Write one result file in the shared layout (module docstring); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"device": device, "versions": versions(), "date": date.today().isoformat(), "config": config,
           "results": results}
    path.write_text(json.dumps(doc, indent=1))
    return path
