"""Mining a ≥1B-parameter frozen generator: 1 process unsharded vs 2 processes sharded,
with the peak memory of every phase.

    python -m fastmine_benchmarks.bench_sharded                # none (1 proc) vs fsdp2 (2 procs)
    python -m fastmine_benchmarks.bench_sharded --modes none fsdp2 zero3 fsdp2-whole --steps 3

The generator is the project's MLP generator made big, frozen: "deep" (default) 128 -> 8192
x16 -> 128, 1.009 B parameters in 17 blocks of <= 268 MB; "deep2b" the same x32, 2.16 B
parameters; "wide" 128 -> 18432 x4 -> 128, 1.024 B parameters in 5 blocks, three of 1.36 GB.
It is written once as a fastmine safetensors file (``--workdir``), and every run starts from
that file, as a user's would. A fastmine Miner and an MLP critic train in front of it with the
ordinary ``fastmine.mine`` path (WGAN-GP, n_critic=1), and the run exports its model file.
Both sides see the same global batch (1 process: batch 2b with dist.streams=2; 2 processes: b
each), so their losses must agree too.

Modes: ``none`` (1 process, ``fastmine.load_generator``), ``fsdp2`` / ``zero3`` (2 processes,
``fastmine.sharded.load_generator``: built on the meta device / under ``deepspeed.zero.Init``,
each rank reading its slices), ``fsdp2-whole`` (2 processes, the generator loaded whole on each
rank and sharded afterwards: what a generator given as a module costs).

Per process it records the peak RSS (VmHWM, reset through /proc/self/clear_refs between phases)
of: construction, loading (for ``none`` and ``*-whole`` the two together), the first step (the
critic and miner are built in it), training steps 2..n, and the export of the model file; the
generator's parameters held by that rank, and the median step time. Cores: the 1-process run
gets 2 threads, each of the 2 processes 1 thread. The parent then compares every run's exported
file with the 1-process one: the header and the generator's bytes, and the largest difference of
the trained (replicated) miner and critic. Writes benchmarks/results/bench_sharded_<arch>.json
and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

import fastmine as fm
from fastmine import distributed, sharded
from fastmine.config import SourceConfig
from fastmine.nets import build_generator
from fastmine_benchmarks.common import (
    RESULTS_DIR,
    child_result,
    device_info,
    proc_status,
    reset_rss_peak,
    run_child,
    write_result,
)

# ≥1B generators: many 268 MB blocks ("deep", the default; "deep2b" twice as many) or three
# 1.36 GB ones ("wide"): a rank gathers one block at a time, so the block size bounds what
# sharding saves
ARCHS = {"deep": {"type": "mlp", "latent_dim": 128, "out_dim": 128, "width": 8192, "depth": 17},
         "deep2b": {"type": "mlp", "latent_dim": 128, "out_dim": 128, "width": 8192, "depth": 33},
         "wide": {"type": "mlp", "latent_dim": 128, "out_dim": 128, "width": 18432, "depth": 5},
         "tiny": {"type": "mlp", "latent_dim": 8, "out_dim": 16, "width": 64, "depth": 3}}  # the test's
PHASES = ("construction", "loading", "first_step", "training", "export")


def mlp_generator_1b():
    """The benchmark's generator, as a factory for configs (``source.generator:
    fastmine_benchmarks.bench_sharded:mlp_generator_1b``; FASTMINE_BENCH_ARCH picks the variant)."""
    return build_generator(ARCHS[os.environ.get("FASTMINE_BENCH_ARCH", "deep")])


def write_source(job):
    """The generator file every run starts from (a child process: the whole model lives here only)."""
    torch.manual_seed(0)
    arch = job["arch"]
    adapter = fm.GeneratorAdapter(build_generator(arch), {"z": ((arch["latent_dim"],), "normal")},
                                  build={"arch": arch})
    fm.save_sampler(job["path"], fm.Sampler(adapter))
    child_result(job, {"bytes": Path(job["path"]).stat().st_size})


class Phases:
    """Peak RSS per phase: VmHWM read, then reset, at each phase's end."""

    def __init__(self):
        self.peak = {}
        reset_rss_peak()

    def end(self, name):
        self.peak[name] = proc_status("VmHWM")
        reset_rss_peak()


def child(job):
    if job.get("write"):
        return write_source(job)
    world = distributed.launched_world_size()
    torch.set_num_threads(2 if world == 1 else 1)
    acc = distributed.setup(None, "cpu")
    rank = acc.process_index if acc else 0
    mode, arch = job["mode"], job["arch"]
    shard = mode.removesuffix("-whole")
    phases = Phases()
    t0 = time.perf_counter()
    if mode in ("fsdp2", "zero3"):
        adapter = sharded.load_generator(job["source"], SourceConfig(), shard, "cpu", on_phase=phases.end)
    else:  # the whole generator in this process (sharded by fastmine.mine when shard is not none)
        adapter = fm.load_generator(job["source"])
        phases.end("loading")
    load_s = time.perf_counter() - t0
    target = torch.randn(256, arch["out_dim"], generator=torch.Generator().manual_seed(1))
    stamps = []

    def on_log(trainer, step):
        stamps.append(time.perf_counter())
        if step == 1:
            phases.end("first_step")
        if step == job["steps"]:
            phases.end("training")
        return {}

    batch = job["batch"] if world > 1 else 2 * job["batch"]
    run_dir = Path(job["workdir"]) / f"run-{mode}"
    result = fm.mine(adapter, target, steps=job["steps"], batch_size=batch, n_critic=1, streams=2, log_every=1,
                     progress=False, device="cpu", seed=0, accelerator=acc, dist_cfg={"shard": shard},
                     callbacks=[on_log], model_cfg={"width": 256, "depth": 3}, run_dir=run_dir,
                     miner_cfg={"init": "normal"},  # the step's cost: no inversion before it
                     sample_every=10**9, checkpoint_every=10**9)
    phases.end("export")
    gen = result.sampler.generator.module
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    child_result(job, {
        "mode": mode, "world": world, "rank": rank, "per_rank_batch": batch, "global_batch": batch * world,
        "steps": job["steps"], "full_params": distributed.full_param_count(gen),
        "local_params": distributed.local_param_count(gen), "peak_rss_bytes": phases.peak,
        "load_s": round(load_s, 2), "step_s_median": statistics.median(step_times) if step_times else None,
        "step_s_all": [round(t, 3) for t in step_times], "last_metrics": result.metrics,
        "export": str(run_dir / "model.safetensors")})


def compare_exports(reference: Path, other: Path) -> dict:
    """Whether ``other`` has ``reference``'s header and generator bytes; the trained parts' largest gap."""
    def head(path):  # the length, then the JSON header: names, shapes, offsets, metadata
        with path.open("rb") as f:
            n = f.read(8)
            return n + f.read(int.from_bytes(n, "little"))

    out = {"same_header": head(reference) == head(other), "same_bytes": None, "generator_identical": True,
           "trained_max_abs_diff": 0.0}
    with safe_open(str(reference), "pt") as a, safe_open(str(other), "pt") as b:
        for k in a.keys():
            x, y = a.get_tensor(k), b.get_tensor(k)
            if k.startswith("generator."):
                out["generator_identical"] &= torch.equal(x, y)
            else:
                out["trained_max_abs_diff"] = max(out["trained_max_abs_diff"], float((x - y).abs().max()))
    if out["same_header"] and out["generator_identical"]:
        out["same_bytes"] = out["trained_max_abs_diff"] == 0.0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["none", "fsdp2"],
                    help="none | fsdp2 | zero3 | fsdp2-whole | zero3-whole (the first is the reference)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="per-rank batch of the 2-process runs")
    ap.add_argument("--arch", default="deep", choices=sorted(ARCHS))
    ap.add_argument("--workdir", default="/tmp/fastmine_bench_sharded",
                    help="where the generator file and the runs' exports go (several GB; removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep --workdir")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/bench_sharded_<arch>.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    env = dict(os.environ, TQDM_DISABLE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    arch = ARCHS[args.arch]
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"generator-{args.arch}.safetensors"
    t0 = time.perf_counter()
    size = run_child("fastmine_benchmarks.bench_sharded", {"write": True, "arch": arch, "path": str(source)},
                     env)[0]["bytes"]
    print(f"wrote {source} ({size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    for mode in args.modes:
        shutil.rmtree(work / f"run-{mode}", ignore_errors=True)
        t0 = time.perf_counter()
        job = {"mode": mode, "arch": arch, "steps": args.steps, "batch": args.batch, "source": str(source),
               "workdir": str(work)}
        runs = run_child("fastmine_benchmarks.bench_sharded", job, env, processes=1 if mode == "none" else 2)
        for r in runs:
            r["run_wall_s"] = round(time.perf_counter() - t0, 1)
        rows += runs
        print(f"{mode}: {rows[-1]['run_wall_s']} s", flush=True)
    reference = Path(rows[0]["export"])
    exports = {mode: compare_exports(reference, work / f"run-{mode}" / "model.safetensors") for mode in args.modes[1:]}
    for r in rows:
        r["export_vs_first_mode"] = exports.get(r["mode"])
    settings = {"arch": arch, "arch_name": args.arch, "modes": args.modes, "steps": args.steps,
                "per_rank_batch": args.batch, "generator_file_bytes": size,
                "note": "CPU, gloo; 1-process run: 2 threads; 2-process runs: 1 thread each"}
    out = write_result(args.out or RESULTS_DIR / f"bench_sharded_{args.arch}.json", device=device_info("cpu"),
                       config=settings, results=rows)
    gib = lambda b: f"{b / 2**30:.2f}" if b and b > 0 else "–"
    print("| run | rank | generator params on rank | " + " | ".join(f"peak RSS {p} (GiB)" for p in PHASES)
          + " | step time s (median) |")
    print("|---|---|---|" + "---|" * len(PHASES) + "---|")
    for r in rows:
        name = "1 process, unsharded" if r["mode"] == "none" else f"2 processes, {r['mode']}"
        peaks = " | ".join(gib(r["peak_rss_bytes"].get(p)) for p in PHASES)
        step_s = r["step_s_median"] or float("nan")  # one step: no time between two
        print(f"| {name} | {r['rank']} | {r['local_params']:,} / {r['full_params']:,} | {peaks} | {step_s:.2f} |")
    losses = {r["mode"]: r["last_metrics"]["loss_sampler"] for r in rows if r["rank"] == 0}
    print("last logged loss_sampler per mode (same global batch):", losses)
    print("exported files against the first mode's:", json.dumps(exports))
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
