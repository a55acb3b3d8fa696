"""Mining a ≥1B-parameter frozen generator: 1 process unsharded vs 2 processes sharded.

    python benchmarks/bench_sharded.py                 # none (1 proc) vs fsdp2 (2 procs)
    python benchmarks/bench_sharded.py --modes none fsdp2 zero3 --steps 4 --arch wide

The generator is the project's MLP generator made big, frozen: "deep" (default) 128 -> 8192
x16 -> 128, 1.009 B parameters in 17 blocks of <= 268 MB; "wide" 128 -> 18432 x4 -> 128,
1.024 B parameters in 5 blocks, three of 1.36 GB (4.1 GB in fp32 either way); a fastmine Miner and an MLP critic train in front of
it with the ordinary `fastmine.mine` path (WGAN-GP, n_critic=1). Both runs see the same
global batch (1 process: batch 2b with train.streams=2; 2 processes: b each), so their
losses must agree too; the script checks it.

Per process it records: the generator's parameters held by that rank (its shard), peak
RSS over the whole process (VmHWM, includes building the full model before sharding it),
peak RSS over the training steps after the first (VmHWM reset through
/proc/self/clear_refs), and the median wall time of a training step (steps 2..n). Cores:
the 1-process run gets 2 threads, each of the 2 processes 1 thread (the same 2 cores).
Writes benchmarks/results/bench_sharded.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
# two ≥1B generators: many 268 MB blocks ("deep", the default) or three 1.36 GB ones ("wide"):
# a rank gathers one block at a time, so the block size bounds what sharding saves
ARCHS = {"deep": {"type": "mlp", "latent_dim": 128, "out_dim": 128, "width": 8192, "depth": 17},
         "wide": {"type": "mlp", "latent_dim": 128, "out_dim": 128, "width": 18432, "depth": 5}}
ARCH = ARCHS[os.environ.get("FASTMINE_BENCH_ARCH", "deep")]

from fastmine_benchmarks.bench_step import _free_port, _status  # noqa: E402  (shared with the step benchmark)


def mlp_generator_1b():
    """The benchmark's generator (also usable as ``source.generator: bench_sharded:mlp_generator_1b``)."""
    from fastmine.nets import build_generator

    return build_generator(ARCH)


def _reset_peak():
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def child(mode, steps, per_rank_batch, out):
    import torch

    import fastmine as fm
    from fastmine import distributed

    world = distributed.launched_world_size()
    torch.set_num_threads(2 if world == 1 else 1)
    acc = distributed.setup(None, "cpu")
    rank = acc.process_index if acc else 0
    torch.manual_seed(0)
    t0 = time.perf_counter()
    adapter = fm.GeneratorAdapter(mlp_generator_1b(), {"z": ((128,), "normal")}, build={"arch": ARCH})
    build_s = time.perf_counter() - t0
    target = torch.randn(256, 128, generator=torch.Generator().manual_seed(1))
    stamps, peak_reset, peak_before = [], [], []

    def on_log(trainer, step):
        stamps.append(time.perf_counter())
        if step == 1:  # peak so far: building the full model, sharding it, the first step
            peak_before.append(_status("VmHWM"))
            peak_reset.append(_reset_peak())
        return {}

    batch = per_rank_batch if world > 1 else 2 * per_rank_batch
    result = fm.mine(adapter, target, steps=steps, batch_size=batch, n_critic=1, streams=2, log_every=1,
                     progress=False, device="cpu", seed=0, accelerator=acc, dist_cfg={"shard": mode},
                     callbacks=[on_log], model_cfg=fm.config.ModelConfig(width=256, depth=3))
    gen = result.sampler.generator.module
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    row = {"mode": mode, "world": world, "rank": rank, "per_rank_batch": batch, "global_batch": batch * world,
           "steps": steps, "full_params": distributed.full_param_count(gen),
           "local_params": distributed.local_param_count(gen),
           "peak_rss_setup_bytes": peak_before[0] if peak_before else None,
           "peak_rss_training_bytes": _status("VmHWM") if peak_reset and peak_reset[0] else None,
           "rss_end_bytes": _status("VmRSS"), "build_s": round(build_s, 2),
           "step_s_median": statistics.median(step_times) if step_times else None,
           "step_s_all": [round(t, 3) for t in step_times], "last_metrics": result.metrics}
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, f"{os.environ.get('FASTMINE_BENCH_ARCH', 'deep')}-{mode}-rank{rank}.json").write_text(json.dumps(row))


def _peak_whole_process(cmd, env):
    """Run ``cmd`` and also return each process's lifetime peak RSS (from wait4's rusage)."""
    p = subprocess.Popen(cmd, env=env, cwd=ROOT)
    _, status, usage = os.wait4(p.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=["none", "fsdp2"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="per-rank batch of the 2-process runs")
    ap.add_argument("--child", default=None)
    ap.add_argument("--arch", default="deep", choices=sorted(ARCHS))
    ap.add_argument("--reuse", action="store_true", help="summarise runs already in --out instead of rerunning them")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_sharded_raw"))
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.steps, args.batch, args.out)
    env = dict(os.environ, TQDM_DISABLE="1", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", FASTMINE_BENCH_ARCH=args.arch)
    rows = []
    for mode in args.modes:
        script = [str(HERE), "--child", mode, "--steps", str(args.steps), "--batch", str(args.batch), "--out", args.out]
        if mode == "none":
            cmd = [sys.executable, *script]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
                   "--master-addr=127.0.0.1", f"--master-port={_free_port()}", *script]
        t0 = time.perf_counter()
        done = sorted(Path(args.out).glob(f"{args.arch}-{mode}-rank*.json"))
        if not (args.reuse and done):
            for f in done:
                f.unlink()
            rc, _ = _peak_whole_process(cmd, env)
            if rc != 0:
                raise SystemExit(f"{mode}: exit code {rc}")
        wall = time.perf_counter() - t0
        for f in sorted(Path(args.out).glob(f"{args.arch}-{mode}-rank*.json")):
            row = json.loads(f.read_text())
            row.setdefault("run_wall_s", round(wall, 1))
            rows.append(row)
    res = ROOT / "benchmarks" / "results" / f"bench_sharded_{args.arch}.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    import platform

    meta = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "arch": ARCHS[args.arch],
            "note": "CPU, gloo; 1-process run: 2 threads; 2-process runs: 1 thread each"}
    res.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    gib = lambda b: f"{b / 2**30:.2f}" if b else "–"
    print("| run | rank | generator params on rank | peak RSS, setup + step 1 (GiB) | peak RSS, steps 2.. (GiB) "
          "| step time s (median) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        name = "1 process, unsharded" if r["mode"] == "none" else f"2 processes, {r['mode']}"
        print(f"| {name} | {r['rank']} | {r['local_params']:,} / {r['full_params']:,} | "
              f"{gib(r['peak_rss_setup_bytes'])} | {gib(r['peak_rss_training_bytes'])} | {r['step_s_median']:.2f} |")
    losses = {r["mode"]: r["last_metrics"]["loss_sampler"] for r in rows if r["rank"] == 0}
    print("last logged loss_sampler per mode (same global batch):", losses)


if __name__ == "__main__":
    main()
