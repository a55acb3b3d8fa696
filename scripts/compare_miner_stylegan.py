"""Miner defaults per StyleGAN latent space (z, w, w+): init and width, measured.

No pretrained StyleGAN weights can be downloaded on the machines fastmine is developed on, so
the task is synthetic but exact: a randomly initialised StyleGAN2 (fastmine's own, official
architecture) is the source, its discriminator the first critic, and the target is 64 of the
generator's own images from one region of its w space (5 standardised units from w_avg, spread
0.3; a typical w lies 4 units away). The target is reachable in every space, so the numbers
say how fast and how well each miner gets there, not whether it can.

Metrics on 64 samples against the 64 targets, in pixels: ``precision distance`` (each sample to
its nearest target; low = samples look like targets) and ``recall distance`` (each target to its
nearest sample; low = the target's spread is covered, high = collapse), both divided by the
same distances of the source's own samples. Two tasks: 8 px (z/w 16-d, 4 ws) and 16 px (z/w
32-d, 6 ws); seeds 0-2 vary the mining runs; MineGAN w/o FT (and GAN reprogramming in w+).

    python scripts/compare_miner_stylegan.py --out runs/miner_stylegan

Writes OUT/compare.md and benchmarks/results/miner_stylegan.json.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

import fastmine as fm
from fastmine.samplers import GeneratorAdapter
from fastmine.zoo import StyleGANCritic, StyleGANSource
from fastmine_benchmarks.common import RESULTS_DIR, device_info, write_result

TASKS = {
    "8px": {"z_dim": 16, "c_dim": 0, "w_dim": 16, "img_resolution": 8, "img_channels": 3,
            "mapping_kwargs": {"num_layers": 2}, "synthesis_kwargs": {"channel_base": 128, "channel_max": 16}},
    "16px": {"z_dim": 32, "c_dim": 0, "w_dim": 32, "img_resolution": 16, "img_channels": 3,
             "mapping_kwargs": {"num_layers": 4}, "synthesis_kwargs": {"channel_base": 512, "channel_max": 32}},
}
# (method, latent space, miner.init, miner.hidden: None = fastmine's default, "w" = w_dim)
RUNS = [("minegan_noft", lat, init, None) for lat in ("z", "w", "w+") for init in ("normal", "residual", "inversion")]
RUNS += [("minegan_noft", "w+", init, "w") for init in ("normal", "residual")]
RUNS += [("reprogram", "w+", init, None) for init in ("normal", "residual", "inversion")]


@functools.lru_cache(maxsize=None)
def task(name):
    """(generator weights, discriminator, target images, source samples) of a task (once per process)."""
    kwargs = TASKS[name]
    torch.manual_seed(0)
    base = StyleGANSource("stylegan2", kwargs, latent="w").calibrate()
    critic = StyleGANCritic("stylegan2", {"c_dim": 0, "img_resolution": kwargs["img_resolution"], "img_channels": 3,
                                          "channel_base": kwargs["synthesis_kwargs"]["channel_base"],
                                          "channel_max": kwargs["synthesis_kwargs"]["channel_max"]})
    gen = torch.Generator().manual_seed(1)
    d = kwargs["w_dim"]
    centre = torch.randn(d, generator=gen)
    centre = 5.0 * centre / centre.norm()
    with torch.no_grad():
        target = base(w=centre + 0.3 * torch.randn(64, d, generator=gen))
        source = base(w=torch.randn(64, d, generator=gen))
    return base, critic, target, source


def distances(x, target):
    d = torch.cdist(x.flatten(1), target.flatten(1))
    return d.min(1).values.mean().item(), d.min(0).values.mean().item()


def one(name, method, latent, init, hidden, seed, steps):
    torch.set_num_threads(1)
    base, critic, target, source_samples = task(name)
    source_dist = distances(source_samples, target)
    source = StyleGANSource("stylegan2", base.kwargs, latent=latent)
    source.load_state_dict(base.state_dict())
    adapter = GeneratorAdapter(source, source.latent_spec, build={"arch": source.arch()})
    settings = {"init": init}
    if hidden == "w":
        settings["hidden"] = base.net.w_dim
    t0 = time.time()
    run = fm.prepare(adapter, target, method=method, critic=copy.deepcopy(critic), steps=steps, batch_size=16,
                     seed=seed, log_every=10**6, progress=False, miner_cfg=settings)
    start = distances(run.trainer.sampler.sample(64, seed=100), target)
    result = run.fit()
    end = distances(result.sampler.sample(64, seed=100), target)
    return {"task": name, "method": method, "latent": latent, "init": init, "hidden": hidden or "default",
            "seed": seed, "steps": steps, "seconds": time.time() - t0,
            "miner_parameters": sum(p.numel() for p in result.sampler.miner.parameters()),
            "precision_start": start[0] / source_dist[0], "recall_start": start[1] / source_dist[1],
            "precision": end[0] / source_dist[0], "recall": end[1] / source_dist[1]}


def table(rows):
    keys = sorted({(r["task"], r["method"], r["latent"], r["init"], r["hidden"]) for r in rows},
                  key=lambda k: (k[0], k[1], ("z", "w", "w+").index(k[2]), k[3], k[4]))
    out = ["| task | method | latent | init | hidden | miner params | precision dist. (start → end) | "
           "recall dist. (start → end) |", "|---|---|---|---|---|---:|---|---|"]
    for k in keys:
        rs = [r for r in rows if (r["task"], r["method"], r["latent"], r["init"], r["hidden"]) == k]

        def ms(field):
            v = np.array([r[field] for r in rs])
            return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"

        out.append(f"| {' | '.join(map(str, k))} | {rs[0]['miner_parameters']:,} | {ms('precision_start')} → "
                   f"{ms('precision')} | {ms('recall_start')} → {ms('recall')} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/miner_stylegan")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (one thread each)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = [(name, *run, seed, args.steps) for name in args.tasks for run in RUNS for seed in range(args.seeds)]
    rows = []
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        for row in pool.map(one, *zip(*items)):
            rows.append(row)
            print(json.dumps(row), flush=True)
    md = table(rows)
    (out / "compare.md").write_text(md + "\n")
    write_result(RESULTS_DIR / "miner_stylegan.json", device=device_info("cpu", threads=1),
                 config={"script": "scripts/compare_miner_stylegan.py", "steps": args.steps, "seeds": args.seeds,
                         "tasks": TASKS}, results=rows)
    print(md)


if __name__ == "__main__":
    main()
