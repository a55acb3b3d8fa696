"""Multi-generator selection: naive path vs fast path, time and peak memory of a sampler step.

A sampler step (the one with autograd) draws K supersamples from N frozen generators,
each behind its own miner, lets the critic pick one candidate per supersample and
backpropagates -E[D(chosen)] into the miners. The naive path keeps the autograd graph of
all N·K candidates; the fast path scores them without autograd and re-runs the K chosen.

Each configuration runs in its own process so that peak memory is its own: on CUDA
``torch.cuda.max_memory_allocated``; on the CPU the growth of the process's peak RSS
(``ru_maxrss``) over the step, after the models were built and one warm-up step ran on a
smaller batch. Prints a table and writes JSON to benchmarks/results/.

    python benchmarks/bench_multi.py [--quick] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


def _child(args):
    import torch

    from fastmine.miner import Miner
    from fastmine.models import GeneratorAdapter, Sampler
    from fastmine.multi import MultiSampler
    from fastmine.nets import DCGANCritic, build_generator

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    arch = {"type": "dcgan", "latent_dim": args.latent, "image_size": args.size, "channels": 3, "width": args.width,
            "norm": "batch"}
    samplers = []
    for _ in range(args.n):
        g = GeneratorAdapter(build_generator(arch), {"z": ((args.latent,), "normal")}, build={"arch": arch})
        samplers.append(Sampler(g, Miner(g.latent_spec)))
    ms = MultiSampler(samplers, rule="permute", path=args.path, window=1000).to(device).train()
    critic = DCGANCritic(image_size=args.size, channels=3, width=args.width).to(device)
    for p in critic.parameters():
        p.requires_grad_(False)  # as in the trainer's sampler step
    ms.bind_critic(critic)
    gen = torch.Generator(device).manual_seed(1)

    def step(k):
        seeds = ms.draw_seeds(k, gen, device)
        loss = -critic(ms(seeds)).mean()
        loss.backward()
        for s in ms.samplers:
            s.miner.zero_grad(set_to_none=True)

    step(max(2, args.k // 8))  # warm-up on a small batch
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step(args.k)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024  # KiB on Linux
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step(args.k)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"median_s": times[len(times) // 2], "min_s": times[0], "peak_bytes": int(peak)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_multi.json"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name, default in [("n", 2), ("k", 64), ("size", 32), ("width", 32), ("latent", 64), ("reps", 5),
                          ("threads", 1)]:
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--path", default="fast")
    args = ap.parse_args()
    if args.child:
        return _child(args)

    configs = [(2, 64), (4, 64)] if args.quick else [(2, 64), (4, 64), (8, 64), (4, 256)]
    rows = []
    for n, k in configs:
        for path in ("naive", "fast"):
            cmd = [sys.executable, __file__, "--child", "--device", args.device, "--n", str(n), "--k", str(k),
                   "--size", str(args.size), "--width", str(args.width), "--latent", str(args.latent),
                   "--reps", str(2 if args.quick else args.reps), "--threads", str(args.threads), "--path", path]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
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
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "image_size": args.size, "width": args.width, "latent": args.latent,
            "memory": "cuda max_memory_allocated" if args.device.startswith("cuda") else "CPU peak RSS growth",
            "note": "shared CPU: other jobs run beside it, times are noisy"}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
