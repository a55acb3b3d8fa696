"""Mining the zoo families (StudioGAN, Mimicry) with fastmine's defaults, measured on the CPU.

As scripts/compare_miner_stylegan.py: no pretrained weights are downloaded, so each source is a
randomly initialised network of the family (fastmine's own, official architecture, small widths,
32 px; spectral norms settled by power iteration, batch-norm statistics measured on 256 of its
samples, as a trained network's are), its discriminator the first critic, and the target is 100
of the generator's own images from one region: z = centre + 0.3 noise with |centre| = sqrt(z_dim)
(a typical z's length), and for a conditional network class 0.

Target share: of 100 samples, the fraction whose nearest image (pixels) among the 100 targets and
100 other samples of the source (a fresh draw) is a target; the source's own share is the
baseline. Mining: MineGAN w/o FT with every default (the inversion start included), batch 16.
Seconds per update: the training updates' wall time over their number (the inversion start
excluded), divided by the same for a StyleGAN2 at 32 px timed in the same process (its miner
starts residually: the start does not change an update's cost).

    python scripts/compare_zoo_miner.py --steps 100 --seeds 2

Prints one JSON row per run and a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

import fastmine as fm
from fastmine.conditional import _settle_spectral_norm
from fastmine.samplers import GeneratorAdapter
from fastmine.zoo import StyleGANCritic, make_source

FAMILIES = {
    "studiogan BigGAN (big_resnet, cBN, attention)": (
        "studiogan",
        {"backbone": "big_resnet", "z_dim": 20, "g_shared_dim": 16, "img_size": 32, "g_conv_dim": 16,
         "apply_attn": True, "attn_g_loc": [2], "g_cond_mtd": "cBN", "num_classes": 10, "apply_g_sn": True},
        {"backbone": "big_resnet", "img_size": 32, "d_conv_dim": 16, "apply_d_sn": True, "apply_attn": True,
         "attn_d_loc": [1], "d_cond_mtd": "PD", "num_classes": 10}),
    "mimicry SNGAN 32": ("mimicry", {"resolution": 32, "nz": 32, "ngf": 64}, {"resolution": 32, "ndf": 64}),
}
STYLEGAN2 = {"z_dim": 32, "c_dim": 0, "w_dim": 32, "img_resolution": 32, "img_channels": 3,
             "mapping_kwargs": {"num_layers": 4}, "synthesis_kwargs": {"channel_base": 1024, "channel_max": 64}}
N = 100


def standing_statistics(source, n=256):
    for m in source.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    source.train()
    with torch.no_grad():
        source(**draw(source, n, torch.Generator().manual_seed(9)))
    source.eval()


def draw(source, n, gen, centre=None):
    spec = source.latent_spec
    z = torch.randn(n, *spec["z"].shape, generator=gen)
    latents = {"z": z if centre is None else centre + 0.3 * z}
    if "c" in spec:
        labels = torch.zeros(n, dtype=torch.long) if centre is not None else torch.randint(
            spec["c"].shape[0], (n,), generator=gen)
        latents["c"] = torch.nn.functional.one_hot(labels, spec["c"].shape[0]).float()
    return latents


def share(samples, target, others):
    d = torch.cdist(samples.flatten(1), torch.cat([target, others]).flatten(1))
    return (d.argmin(1) < len(target)).float().mean().item()


def build(family, g_kwargs, d_kwargs):
    torch.manual_seed(0)
    if family == "stylegan2":
        source = make_source("stylegan2", g_kwargs).calibrate()
        critic = StyleGANCritic("stylegan2", {"c_dim": 0, "img_resolution": 32, "img_channels": 3,
                                              "channel_base": 1024, "channel_max": 64})
        return source, critic
    source, critic = make_source(family, g_kwargs), StyleGANCritic(family, d_kwargs)
    _settle_spectral_norm(source)
    _settle_spectral_norm(critic)
    standing_statistics(source)
    return source, critic


def one(label, family, g_kwargs, d_kwargs, seed, steps, settings=None):
    source, critic = build(family, g_kwargs, d_kwargs)
    gen = torch.Generator().manual_seed(1)
    z_dim = source.latent_spec["z"].shape[0]
    centre = torch.randn(z_dim, generator=gen)
    centre = centre / centre.norm() * z_dim ** 0.5
    with torch.no_grad():
        target = source(**draw(source, N, gen, centre))
        others = source(**draw(source, N, gen))
        before = share(source(**draw(source, N, torch.Generator().manual_seed(100))), target, others)
    adapter = GeneratorAdapter(source, source.latent_spec, build={"arch": source.arch()})
    t0 = time.perf_counter()
    run = fm.prepare(adapter, target, critic=copy.deepcopy(critic), steps=steps, batch_size=16, seed=seed,
                     log_every=10**6, progress=False, **(settings or {}))
    t1 = time.perf_counter()
    result = run.fit()
    t2 = time.perf_counter()
    with torch.no_grad():
        after = share(result.sampler.sample(N, seed=100), target, others)
    return {"family": label, "seed": seed, "steps": steps, "share_before": before, "share_after": after,
            "prepare_s": t1 - t0, "s_per_update": (t2 - t1) / steps}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--init", default=None, help="miner.init for the mined families (default: fastmine's)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for seed in range(args.seeds):
        # the reference is timed only: its miner starts residually, skipping the inversion start's minutes
        reference = one("stylegan2 32 px", "stylegan2", STYLEGAN2, None, seed, args.steps, {"init": "residual"})
        rows.append(reference)
        print(json.dumps(reference), flush=True)
        for label, (family, g, d) in FAMILIES.items():
            row = one(label, family, g, d, seed, args.steps, {"init": args.init} if args.init else None)
            row["per_update_vs_stylegan2"] = row["s_per_update"] / reference["s_per_update"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("| source | target share: source → mined | s per update ÷ StyleGAN2 32 px (same run) |")
    print("|---|---|---|")
    for label in FAMILIES:
        rs = [r for r in rows if r["family"] == label]
        b, a = np.array([r["share_before"] for r in rs]), np.array([r["share_after"] for r in rs])
        ratio = np.array([r["per_update_vs_stylegan2"] for r in rs])
        print(f"| {label} | {b.mean():.2f} → {a.mean():.2f} ± {a.std():.2f} | {ratio.mean():.2f} ± {ratio.std():.2f} |")


if __name__ == "__main__":
    main()
