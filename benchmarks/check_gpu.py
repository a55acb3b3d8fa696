"""``fastmine check-gpu``: the GPU acceptance run, one command, within 8 minutes on a CUDA machine.

    fastmine check-gpu                    # on the GPU machine: OUT/check_gpu.json + OUT/check_gpu.md
    fastmine check-gpu --dry-run          # any machine: every step with its time budget, nothing run
    fastmine check-gpu --quick --device cpu   # tiny shapes and budgets: the run itself, checked on a CPU

Steps, each in a child process under its own time limit (a step that fails or runs out of time is
reported and the next one runs):
1. the kernel tests run natively (pytest on tests/test_kernels_*.py, TRITON_INTERPRET removed);
2. each Triton kernel against its eager reference: ms, GB/s and its share of the copy rate measured in
   the same run (``bench_kernels``);
3. ``fastmine bench`` single-b64, single-b256 and multi-n8 against the eager reference, with the
   fp32 / float64 loss-equality checks and each side's peak memory;
4. the StyleGAN2 configuration (256 px on CUDA) in fp32 and ``perf.amp=bf16``, the same checks;
5. a 60-second mining run of that 256 px StyleGAN2 in w+: updates per second and GPU utilisation
   (``torch.cuda.utilization``, else ``nvidia-smi``), sampled twice a second.
The markdown file is the table for benchmarks/RESULTS.md, the device named in its first line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fastmine_benchmarks.bench_step import table
from fastmine_benchmarks.common import device_info, write_result
from fastmine_benchmarks.step_configs import build_run

REPO = Path(__file__).resolve().parent.parent  # a checkout (tests/ beside benchmarks/)
TOTAL_S = 480


@dataclass
class Step:
    """A step and its time limits: on CUDA, and with --quick (tiny shapes, generous: on a shared CPU the
    children's imports of torch and fastmine can take minutes)."""

    name: str
    budget_s: int
    quick_budget_s: int
    what: str


STEPS = (
    Step("kernel_tests", 90, 600, "pytest tests/test_kernels_*.py natively (TRITON_INTERPRET unset)"),
    Step("kernels", 60, 300, "bench_kernels --quick: each kernel vs eager, ms and GB/s as a share of copy"),
    Step("bench", 120, 900, "fastmine bench single-b64 single-b256 multi-n8 vs eager, loss checks, peak memory"),
    Step("stylegan2", 120, 900, "fastmine bench stylegan2-wplus-b16 (256 px on CUDA), fp32 and perf.amp=bf16"),
    Step("mining", 75, 600, "60 s mining a 256 px StyleGAN2 in w+: updates/s, GPU utilisation"),
)
assert sum(s.budget_s for s in STEPS) <= TOTAL_S  # the 8-minute promise of the command


def _child(cmd, budget_s, env=None) -> dict:
    """Run ``cmd`` under ``budget_s`` seconds: status, seconds used and the output's tail."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget_s, env=env, cwd=REPO)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        tail = (proc.stdout + proc.stderr)[-3000:]
    except subprocess.TimeoutExpired as e:  # its captured output comes as bytes even with text=True
        output = e.stdout or b""
        tail = (output.decode(errors="replace") if isinstance(output, bytes) else output)[-3000:]
        status = f"timed out after {budget_s} s"
    return {"status": status, "seconds": round(time.perf_counter() - t0, 1), "output_tail": tail}


def _bench_cmd(configs, device, quick, out, variants=()):
    cmd = [sys.executable, "-m", "fastmine_benchmarks.bench_step", "--configs", *configs, "--device", device,
           "--out", str(out)]
    for v in variants:
        cmd += ["--variant", v]
    if quick:  # tiny shapes, one short block: the plumbing, not a measurement
        cmd += ["--image-size", "8", "--width", "4", "--warmup", "1", "--steps", "1", "--reps", "1", "--no-check"]
    return cmd


def step_kernel_tests(args, out):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_kernels_*.py"))
    if not tests:
        return {"status": "skipped: no tests/test_kernels_*.py (run it from a fastmine checkout)", "seconds": 0}
    # on a machine without CUDA the kernels cannot run natively: collecting them checks the step's plumbing
    extra = ["--collect-only"] if args.device == "cpu" else []
    res = _child([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, *tests], args.budget, env)
    res["summary"] = next((line for line in reversed(res["output_tail"].splitlines()) if line.strip()), "")
    return res


def step_kernels(args, out):
    path = out / "kernels.json"
    res = _child([sys.executable, "-m", "fastmine_benchmarks.bench_kernels", "--quick", "--out", str(path)],
                 args.budget)
    if path.is_file():
        data = json.loads(path.read_text())
        res["copy_GBps"] = data["device"].get("copy_bandwidth_GBps")
        res["rows"] = data["results"]
    else:
        res["rows"] = []  # no CUDA: bench_kernels says so and exits 0
    return res


def _bench_step(args, out, name, configs, variants=()):
    path = out / f"{name}.json"
    res = _child(_bench_cmd(configs, args.device, args.quick, path, variants), args.budget)
    res["rows"] = json.loads(path.read_text())["results"] if path.is_file() else []
    return res


def step_bench(args, out):
    # --quick: one configuration (each bench child imports torch and fastmine anew: minutes on a busy CPU)
    configs = ["single-b64"] if args.quick else ["single-b64", "single-b256", "multi-n8"]
    return _bench_step(args, out, "bench", configs)


def step_stylegan2(args, out):
    return _bench_step(args, out, "stylegan2", ["stylegan2-wplus-b16"], ["perf.amp=bf16"])


class _Utilisation:
    """GPU utilisation (%) sampled every 0.5 s in a thread: torch.cuda.utilization (pynvml), else nvidia-smi."""

    def __init__(self, cuda: bool):
        self.samples, self.source, self._stop = [], None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if cuda else None

    def _read(self):
        try:
            self.source = "torch.cuda.utilization"
            return float(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 (pynvml missing or unsupported: fall back to nvidia-smi)
            if shutil.which("nvidia-smi") is None:
                self.source = None
                return None
            self.source = "nvidia-smi"
            line = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                   f"--id={torch.cuda.current_device()}"], capture_output=True, text=True).stdout
            return float(line.split()[0]) if line.strip() else None

    def _run(self):
        while not self._stop.wait(0.5):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()


def mining(device, seconds, image_size=None) -> dict:
    """Mine the built-in StyleGAN2 (256 px on CUDA) in w+ for ``seconds``: updates/s and GPU utilisation."""
    spec = {"label": "stylegan2-wplus-b16", "name": "stylegan2-wplus-b16",
            **({"image_size": image_size} if image_size else {})}
    trainer = build_run(spec, device).trainer
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    trainer.train_step(0)  # warm-up: first-call allocations and kernel selection
    sync()
    updates, t0 = 0, time.perf_counter()
    with _Utilisation(cuda) as util:
        while time.perf_counter() - t0 < seconds:
            trainer.train_step(updates + 1)
            updates += 1
            if updates % 10 == 0:
                sync()
        sync()
    elapsed = time.perf_counter() - t0
    samples = util.samples
    return {"updates": updates, "seconds": round(elapsed, 2), "updates_per_s": updates / elapsed,
            "gpu_util_mean_pct": sum(samples) / len(samples) if samples else None, "gpu_util_samples": len(samples),
            "gpu_util_source": util.source, "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}


def step_mining(args, out):
    path = out / "mining.json"
    seconds = 2 if args.quick else 60
    cmd = [sys.executable, "-m", "fastmine_benchmarks.check_gpu", "--mining-child", str(path), "--device", args.device,
           "--seconds", str(seconds)] + (["--image-size", "8"] if args.quick else [])
    res = _child(cmd, args.budget)
    if path.is_file():
        res.update(json.loads(path.read_text()))
    return res


RUNNERS = {"kernel_tests": step_kernel_tests, "kernels": step_kernels, "bench": step_bench,
           "stylegan2": step_stylegan2, "mining": step_mining}


def markdown(device: dict, steps: dict) -> str:
    """The RESULTS.md table: a line per step, then the kernel and bench rows."""
    lines = [f"**{device.get('gpu') or device.get('cpu')}** ({device['type']}; `fastmine check-gpu`, "
             f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')})", "",
             "| step | status | s | result |", "|---|---|---:|---|"]
    for name, r in steps.items():
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {_summary(name, r)} |")
    kernels = [r for r in steps.get("kernels", {}).get("rows", []) if "eager_ms" in r]
    if kernels:
        lines += ["", "| kernel | config | eager ms | triton ms | speed-up | triton GB/s | % of copy |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['kind']} | {r['config']} | {r['eager_ms']:.3f} | {r['triton_ms']:.3f} | {r['speedup']:.2f}x | "
                  f"{r.get('triton_GBps', float('nan')):.0f} | {r.get('triton_pct_of_copy', float('nan')):.0f} |"
                  for r in kernels]
    rows = [r for k in ("bench", "stylegan2") for r in steps.get(k, {}).get("rows", [])]
    if rows:
        lines += ["", table(rows)]
    return "\n".join(lines) + "\n"


def _summary(name, r) -> str:
    if name == "kernel_tests":
        return r.get("summary", "")
    if name == "kernels":
        return f"{len(r['rows'])} rows, copy {r.get('copy_GBps') or 0:.0f} GB/s" if r["rows"] else "no CUDA: none"
    if name in ("bench", "stylegan2"):
        return ", ".join(f"{x['config']} {x['variant']}: {x.get('speedup_text', 'n/a')}" for x in r["rows"])
    if "updates_per_s" in r:
        util = r["gpu_util_mean_pct"]
        return (f"{r['updates_per_s']:.2f} updates/s over {r['seconds']} s, GPU util "
                + (f"{util:.0f} % ({r['gpu_util_source']})" if util is not None else "not read"))
    return ""


def parser():
    ap = argparse.ArgumentParser(prog="fastmine check-gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="check_gpu", help="folder for check_gpu.json, check_gpu.md and each step's JSON")
    ap.add_argument("--device", default="auto", help="cuda (auto when visible) or cpu (with --quick: a plumbing check)")
    ap.add_argument("--dry-run", action="store_true", help="list the steps and their time budgets; run nothing")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and runs (checks the command, measures nothing)")
    ap.add_argument("--only", nargs="+", choices=list(RUNNERS), default=None, help="a subset of the steps")
    ap.add_argument("--mining-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=60, help=argparse.SUPPRESS)
    ap.add_argument("--image-size", type=int, default=None, help=argparse.SUPPRESS)
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    if args.mining_child:
        Path(args.mining_child).write_text(json.dumps(mining(args.device, args.seconds, args.image_size)))
        return 0
    steps = [s for s in STEPS if args.only is None or s.name in args.only]
    if args.dry_run:
        budget = lambda s: s.quick_budget_s if args.quick else s.budget_s  # noqa: E731
        print(f"fastmine check-gpu: {len(steps)} steps, at most {sum(map(budget, steps))} s")
        for i, s in enumerate(steps, 1):
            print(f"{i}. {s.name:<13} {budget(s):>4} s  {s.what}")
        return 0
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fastmine check-gpu: error: no CUDA device is visible (use --dry-run to list the steps, "
                         "or --quick --device cpu to check the command)")
    if args.device == "cpu" and not args.quick:
        raise SystemExit("fastmine check-gpu: error: on the CPU only --quick (a check of the command) or --dry-run")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for s in steps:
        args.budget = s.quick_budget_s if args.quick else s.budget_s
        print(f"[check-gpu] {s.name} (at most {args.budget} s): {s.what}", flush=True)
        results[s.name] = {"budget_s": args.budget, **RUNNERS[s.name](args, out)}
        print(f"[check-gpu] {s.name}: {results[s.name]['status']} in {results[s.name]['seconds']} s", flush=True)
    device = device_info(args.device)
    write_result(out / "check_gpu.json", device=device, config={"quick": args.quick, "steps": [s.name for s in steps]},
                 results=[{"step": k, **v} for k, v in results.items()])
    (out / "check_gpu.md").write_text(markdown(device, results))
    print((out / "check_gpu.md").read_text())
    return 0 if all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
