"""Mining each zoo family with the defaults, beside StyleGAN2 at the same resolution (issue #26, Measured).

As scripts/compare_miner_stylegan.py: a randomly initialised network of each family (fastmine's own
code, the official architecture, small widths, 16 px), its critic as the first critic, and a target
of 100 of the generator's own images from one region of its z space (a typical z of norm sqrt(dim),
spread 0.3). Mined with ``fm.mine`` and its defaults (MineGAN w/o FT, the inversion start) for
STEPS updates of batch 16, seed 0.

Target share: the fraction of 200 samples whose nearest target image is nearer than the 95th
percentile of the targets' own nearest-other-target distances (a sample that would pass as one of
the targets): the source's samples, the miner's after its init (the inversion start) and after
mining. ``source_spread``: the mean pixel distance between the source's samples (how much its
images vary at all), beside the threshold. Seconds per update: the time of
``fit`` (the updates only, not the inversion start) over STEPS, as a ratio to StyleGAN2's in the
same process.

    python scripts/compare_zoo_mining.py --out benchmarks/results/zoo_mining.json
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import fastmine as fm
from fastmine.samplers import GeneratorAdapter
from fastmine.zoo import StyleGANCritic, make_source
from fastmine_benchmarks.common import device_info, write_result

STEPS, BATCH, N_TARGET, N_SAMPLES, SPREAD = 100, 16, 100, 200, 0.3
FAMILIES = {  # family -> (generator kwargs, critic kwargs), all 16 px with widths 32 -> 16
    "stylegan2": ({"z_dim": 32, "c_dim": 0, "w_dim": 32, "img_resolution": 16, "img_channels": 3,
                   "mapping_kwargs": {"num_layers": 4}, "synthesis_kwargs": {"channel_base": 256, "channel_max": 32}},
                  {"c_dim": 0, "img_resolution": 16, "img_channels": 3, "channel_base": 256, "channel_max": 32}),
    "pggan_genforce": ({"resolution": 16, "z_space_dim": 32, "fmaps_base": 256, "fmaps_max": 32},
                       {"resolution": 16, "fmaps_base": 256, "fmaps_max": 32}),
    "pggan_ganzoo": ({"dimLatent": 32, "depthScale0": 32, "depthOtherScales": [32, 16]},
                     {"depthScale0": 32, "depthOtherScales": [32, 16], "miniBatchNormalization": True}),
    "stylegan1": ({"resolution": 16, "z_space_dim": 32, "w_space_dim": 32, "mapping_layers": 4, "mapping_fmaps": 32,
                   "fmaps_base": 256, "fmaps_max": 32},
                  {"resolution": 16, "fmaps_base": 256, "fmaps_max": 32}),
}


def target_share(samples, target, threshold):
    return (torch.cdist(samples.flatten(1), target.flatten(1)).min(1).values < threshold).float().mean().item()


def run(family, g_kwargs, d_kwargs):
    torch.manual_seed(0)
    src = make_source(family, g_kwargs)
    if src.needs_calibration:
        src.calibrate()
    critic = StyleGANCritic(family, d_kwargs)
    z_dim = src.latent_spec["z"].shape[0]
    gen = torch.Generator().manual_seed(1)
    centre = torch.randn(z_dim, generator=gen)
    centre = centre / centre.norm() * z_dim ** 0.5
    with torch.no_grad():
        target = src(z=centre + SPREAD * torch.randn(N_TARGET, z_dim, generator=gen))
        source = src(z=torch.randn(N_SAMPLES, z_dim, generator=gen))
    own = torch.cdist(target.flatten(1), target.flatten(1)).fill_diagonal_(float("inf")).min(1).values
    threshold = own.quantile(0.95).item()
    adapter = GeneratorAdapter(src, src.latent_spec, build={"arch": src.arch()})
    mining = fm.prepare(adapter, target, critic=critic, steps=STEPS, batch_size=BATCH, seed=0, log_every=10_000,
                        progress=False)
    with torch.no_grad():
        start_samples = mining.trainer.sampler.sample(N_SAMPLES, seed=3)  # after the init (inversion), before updates
    start = time.perf_counter()
    result = mining.fit()
    seconds = (time.perf_counter() - start) / STEPS
    after = result.sampler.sample(N_SAMPLES, seed=3)
    return {"share_before": target_share(source, target, threshold),
            "share_start": target_share(start_samples, target, threshold),
            "share_after": target_share(after, target, threshold),
            "source_spread": torch.cdist(source.flatten(1), source.flatten(1)).mean().item(),
            "threshold": threshold,
            "s_per_update": seconds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {}
    for family, (g_kwargs, d_kwargs) in FAMILIES.items():
        rows[family] = run(family, g_kwargs, d_kwargs)
        rows[family]["ratio_to_stylegan2"] = rows[family]["s_per_update"] / rows["stylegan2"]["s_per_update"]
        print(family, rows[family], flush=True)
    write_result(args.out, device=device_info("cpu", threads=1), config={"steps": STEPS, "batch": BATCH},
                 results=[{"family": family, **row} for family, row in rows.items()])


if __name__ == "__main__":
    main()
