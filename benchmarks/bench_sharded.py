"""Mining a ≥1B-parameter frozen generator: 1 process unsharded vs 2 processes sharded.

    python -m fastmine_benchmarks.bench_sharded                # none (1 proc) vs fsdp2 (2 procs)
    python -m fastmine_benchmarks.bench_sharded --modes none fsdp2 zero3 --steps 4 --arch wide

The generator is the project's MLP generator made big, frozen: "deep" (default) 128 -> 8192
x16 -> 128, 1.009 B parameters in 17 blocks of <= 268 MB; "wide" 128 -> 18432 x4 -> 128,
1.024 B parameters in 5 blocks, three of 1.36 GB (4.1 GB in fp32 either way); a fastmine
Miner and an MLP critic train in front of it with the ordinary `fastmine.mine` path (WGAN-GP,
n_critic=1). Both runs see the same global batch (1 process: batch 2b with dist.streams=2;
2 processes: b each), so their losses must agree too; the script prints them.

Per process it records: the generator's parameters held by that rank (its shard), peak
RSS over the whole process (VmHWM, includes building the full model before sharding it),
peak RSS over the training steps after the first (VmHWM reset through
/proc/self/clear_refs), and the median wall time of a training step (steps 2..n). Cores:
the 1-process run gets 2 threads, each of the 2 processes 1 thread (the same 2 cores).
Writes benchmarks/results/bench_sharded_<arch>.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import fastmine as fm
from fastmine import distributed
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

# two ≥1B generators: many 268 MB blocks ("deep", the default) or three 1.36 GB ones ("wide"):
# a rank gathers one block at a time, so the block size bounds what sharding saves
ARCHS = {"deep": {"type": "mlp", "latent_dim": 128, "out_dim": 128, "width": 8192, "depth": 17},
         "wide": {"type": "mlp", "latent_dim": 128, "out_dim": 128, "width": 18432, "depth": 5}}


def mlp_generator_1b():
    """The benchmark's generator, as a factory for configs (``source.generator:
    fastmine_benchmarks.bench_sharded:mlp_generator_1b``; FASTMINE_BENCH_ARCH picks the variant)."""
    return build_generator(ARCHS[os.environ.get("FASTMINE_BENCH_ARCH", "deep")])


def child(job):
    world = distributed.launched_world_size()
    torch.set_num_threads(2 if world == 1 else 1)
    acc = distributed.setup(None, "cpu")
    rank = acc.process_index if acc else 0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    arch = job["arch"]
    adapter = fm.GeneratorAdapter(build_generator(arch), {"z": ((arch["latent_dim"],), "normal")}, build={"arch": arch})
    build_s = time.perf_counter() - t0
    target = torch.randn(256, arch["out_dim"], generator=torch.Generator().manual_seed(1))
    stamps, peak_reset, peak_before = [], [], []

    def on_log(trainer, step):
        stamps.append(time.perf_counter())
        if step == 1:  # peak so far: building the full model, sharding it, the first step
            peak_before.append(proc_status("VmHWM"))
            peak_reset.append(reset_rss_peak())
        return {}

    batch = job["batch"] if world > 1 else 2 * job["batch"]
    result = fm.mine(adapter, target, steps=job["steps"], batch_size=batch, n_critic=1, streams=2, log_every=1,
                     progress=False, device="cpu", seed=0, accelerator=acc, dist_cfg={"shard": job["mode"]},
                     callbacks=[on_log], model_cfg={"width": 256, "depth": 3})
    gen = result.sampler.generator.module
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    child_result(job, {
        "mode": job["mode"], "world": world, "rank": rank, "per_rank_batch": batch, "global_batch": batch * world,
        "steps": job["steps"], "full_params": distributed.full_param_count(gen),
        "local_params": distributed.local_param_count(gen),
        "peak_rss_setup_bytes": peak_before[0] if peak_before else None,
        "peak_rss_training_bytes": proc_status("VmHWM") if peak_reset and peak_reset[0] else None,
        "rss_end_bytes": proc_status("VmRSS"), "build_s": round(build_s, 2),
        "step_s_median": statistics.median(step_times) if step_times else None,
        "step_s_all": [round(t, 3) for t in step_times], "last_metrics": result.metrics})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=["none", "fsdp2"], help="dist.shard of each run")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="per-rank batch of the 2-process runs")
    ap.add_argument("--arch", default="deep", choices=sorted(ARCHS))
    ap.add_argument("--reuse", action="store_true", help="summarise runs already in --raw instead of rerunning them")
    ap.add_argument("--raw", default=str(RESULTS_DIR / "bench_sharded_raw"), help="folder of the per-rank results")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/bench_sharded_<arch>.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))
    env = dict(os.environ, TQDM_DISABLE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    raw = Path(args.raw)
    rows = []
    for mode in args.modes:
        t0 = time.perf_counter()
        done = sorted(raw.glob(f"{args.arch}-{mode}-rank*.json"))
        if not (args.reuse and done):
            for f in done:
                f.unlink()
            job = {"mode": mode, "arch": ARCHS[args.arch], "steps": args.steps, "batch": args.batch}
            for r in run_child("fastmine_benchmarks.bench_sharded", job, env, processes=1 if mode == "none" else 2):
                raw.mkdir(parents=True, exist_ok=True)
                (raw / f"{args.arch}-{mode}-rank{r['rank']}.json").write_text(json.dumps(r))
        wall = time.perf_counter() - t0
        for f in sorted(raw.glob(f"{args.arch}-{mode}-rank*.json")):
            row = json.loads(f.read_text())
            row.setdefault("run_wall_s", round(wall, 1))
            rows.append(row)
    settings = {"arch": ARCHS[args.arch], "modes": args.modes, "steps": args.steps, "per_rank_batch": args.batch,
                "note": "CPU, gloo; 1-process run: 2 threads; 2-process runs: 1 thread each"}
    out = write_result(args.out or RESULTS_DIR / f"bench_sharded_{args.arch}.json", device=device_info("cpu"),
                       config=settings, results=rows)
    gib = lambda b: f"{b / 2**30:.2f}" if b else "–"
    print("| run | rank | generator params on rank | peak RSS, setup + step 1 (GiB) | peak RSS, steps 2.. (GiB) "
          "| step time s (median) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "1 process, unsharded" if r["mode"] == "none" else f"2 processes, {r['mode']}"
        step_s = r["step_s_median"] or float("nan")  # one step: no time between two
        print(f"| {name} | {r['rank']} | {r['local_params']:,} / {r['full_params']:,} | "
              f"{gib(r['peak_rss_setup_bytes'])} | {gib(r['peak_rss_training_bytes'])} | {step_s:.2f} |")
    losses = {r["mode"]: r["last_metrics"]["loss_sampler"] for r in rows if r["rank"] == 0}
    print("last logged loss_sampler per mode (same global batch):", losses)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
