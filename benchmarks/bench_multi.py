"""Multi-generator selection: naive path vs fast path, time and peak memory of a sampler step.

A sampler step (the one with autograd) draws K supersamples from N frozen generators,
each behind its own miner, lets the critic pick one candidate per supersample and
backpropagates -E[D(chosen)] into the miners. The naive path keeps the autograd graph of
all N·K candidates; the fast path scores them without autograd and re-runs the K chosen.

The sampler and critic are those of a ``minegan_multi`` run built by ``fastmine.runs.prepare``
(random DCGAN generators, NCHW). Each configuration runs in its own process so that peak
memory is its own: on CUDA ``max_memory_allocated``, on the CPU the peak RSS (VmHWM, reset
through /proc/self/clear_refs) less the RSS before the step, after the models were built and
one warm-up step ran on a smaller batch. Prints a table and writes JSON to benchmarks/results/.

    python -m fastmine_benchmarks.bench_multi [--quick] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from fastmine.api import make_config
from fastmine.runs import Inputs, new_generator, prepare
from fastmine_benchmarks.common import RESULTS_DIR, Clock, child_result, device_info, run_child, timed, write_result


def child(job):
    torch.set_num_threads(job["threads"])
    device, size = job["device"], job["size"]
    # NCHW as when the recorded results were measured (the trainer's CPU default is channels_last)
    cfg = make_config("minegan_multi", {"device": device, "seed": 0, "rule": "permute", "window": 1000,
                                        "multi_cfg": {"path": job["path"]}, "channels_last": False,
                                        "model_cfg": {"latent_dim": job["latent"], "width": job["width"]}})
    target = torch.rand(64, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    torch.manual_seed(0)
    gens = [new_generator(target, cfg.model) for _ in range(job["n"])]
    trainer = prepare(cfg, Inputs(target=target, generators=gens), write=False).trainer
    sampler, critic = trainer.sampler.train(), trainer.critic
    for p in critic.parameters():
        p.requires_grad_(False)  # as in the trainer's sampler step
    gen = torch.Generator(device).manual_seed(1)

    def step(k):
        seeds = sampler.draw_seeds(k, gen, device)
        loss = -critic(sampler(seeds)).mean()
        loss.backward()
        for s in sampler.samplers:
            s.miner.zero_grad(set_to_none=True)

    step(max(2, job["k"] // 8))  # warm-up on a small batch
    clock = Clock(device)
    base = clock.start_peak()
    step(job["k"])
    peak = clock.peak() - base
    times = [timed(lambda: step(job["k"]), 1, clock) for _ in range(job["reps"])]
    child_result(job, {"median_s": statistics.median(times), "min_s": min(times), "peak_bytes": int(peak)})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=2 and 4 at K=64, 2 reps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_multi.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    for name, default in [("size", 32), ("width", 32), ("latent", 64), ("reps", 5), ("threads", 1)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    configs = [(2, 64), (4, 64)] if args.quick else [(2, 64), (4, 64), (8, 64), (4, 256)]
    reps = 2 if args.quick else args.reps
    env = dict(os.environ, TQDM_DISABLE="1")
    rows = []
    for n, k in configs:
        for path in ("naive", "fast"):
            job = {"device": args.device, "n": n, "k": k, "size": args.size, "width": args.width,
                   "latent": args.latent, "reps": reps, "threads": args.threads, "path": path}
            (r,) = run_child("fastmine_benchmarks.bench_multi", job, env)
            rows.append({"generators": n, "supersamples": k, "path": path, **r})
    print(f"sampler step, DCGAN {args.size}px width {args.width}, device {args.device}, {args.threads} thread(s)")
    print(f"{'N':>3} {'K':>5} {'path':>6} {'median ms':>10} {'peak MiB':>9}  speed-up  memory")
    for i in range(0, len(rows), 2):
        naive, fast = rows[i], rows[i + 1]
        for r in (naive, fast):
            extra = ""
            if r is fast:
                extra = (f"  {naive['median_s'] / r['median_s']:7.2f}x  "
                         f"{r['peak_bytes'] / max(1, naive['peak_bytes']):5.2f}x naive")
            print(f"{r['generators']:>3} {r['supersamples']:>5} {r['path']:>6} {1e3 * r['median_s']:>10.1f} "
                  f"{r['peak_bytes'] / 2**20:>9.1f}{extra}")
    settings = {"image_size": args.size, "width": args.width, "latent": args.latent, "reps": reps,
                "memory": "cuda max_memory_allocated" if args.device.startswith("cuda") else "CPU peak RSS growth",
                "note": "shared CPU: other jobs run beside it, times are noisy"}
    out = write_result(args.out, device=device_info(args.device, args.threads), config=settings, results=rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
