"""What each part of the few-shot toolkit costs per call, against the step it joins.

Augmentations (``fastmine.augment``) run on every critic input: timed forward + backward on a
batch of images, against the critic's own forward + backward on that batch. Regularizers
(``fastmine.regularizers``) add a term to the sampler's loss: timed forward + backward of the
term, against the sampler's adversarial pass (generator, critic, backward). Both on the
built-in DCGAN at the given size, in one process, alternating blocks.

    python -m fastmine_benchmarks.bench_toolkit --device cpu --image-size 16 --batch 64

``fastmine bench --variant "loss.objective=hinge"`` (and the other objectives, spectral norm,
``augment.kind=...``) times whole updates against the eager reference; the regularizers act
only while a generator trains, which the mining reference never does, hence this script.
"""
from __future__ import annotations

import argparse

import torch

from fastmine.augment import build_augment
from fastmine.config import AugmentConfig, ModelConfig, RegularizeConfig
from fastmine.miner import Miner
from fastmine.nets import DCGANCritic
from fastmine.regularizers import build_regularizers
from fastmine.runs import new_generator
from fastmine.samplers import Sampler
from fastmine_benchmarks.common import RESULTS_DIR, Clock, device_info, timed, write_result

AUGMENTS = {"diffaugment": AugmentConfig(kind="diffaugment"), "ada p=0.5": AugmentConfig(kind="ada", ada_p=0.5)}
REGULARIZERS = {"ewc": RegularizeConfig(ewc=1.0), "cdc": RegularizeConfig(cdc=1.0)}


def parts(size, batch, device):
    torch.manual_seed(0)
    images = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    adapter = new_generator(images.cpu(), ModelConfig(latent_dim=64, width=32)).to(device)
    sampler = Sampler(adapter, Miner(adapter.latent_spec)).to(device)
    critic = DCGANCritic(image_size=size, channels=3, width=32).to(device)
    return images, sampler, critic


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_toolkit_cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, clock = torch.device(args.device), Clock(args.device)
    images, sampler, critic = parts(args.image_size, args.batch, device)
    gen = torch.Generator(device).manual_seed(0)

    def critic_pass():
        x = images.clone().requires_grad_(True)
        critic(x).mean().backward()

    def sampler_pass():
        critic(sampler(sampler.draw_seeds(args.batch, gen, device))).mean().backward()

    def median(fn):  # ms per call, the median of the timed blocks (one warm-up call first)
        fn()
        return 1000 * sorted(timed(fn, args.calls, clock) for _ in range(args.reps))[args.reps // 2]

    rows = []
    base = median(critic_pass)
    for name, cfg in AUGMENTS.items():
        aug = build_augment(cfg).to(device)

        def augmented():
            x = images.clone().requires_grad_(True)
            aug(x, gen).mean().backward()

        ms = median(augmented)
        rows.append({"part": f"augment {name}", "ms": ms, "against": "critic forward+backward", "against_ms": base,
                     "ratio": ms / base})
    adapter = sampler.generator.freeze(False)  # the regularizers act while the generator trains
    base = median(sampler_pass)
    for name, cfg in REGULARIZERS.items():
        (reg,) = build_regularizers(cfg)
        reg.to(device).setup(sampler, critic, torch.Generator(device).manual_seed(1), device)
        seeds = sampler.draw_seeds(args.batch, gen, device)
        ms = median(lambda: reg.sampler_term(sampler, seeds).backward())
        rows.append({"part": f"regularize {name}", "ms": ms, "against": "sampler adversarial pass",
                     "against_ms": base, "ratio": ms / base})
    adapter.freeze(True)
    print("| part | ms per call | against | its ms | ratio |\n|---|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['part']} | {r['ms']:.2f} | {r['against']} | {r['against_ms']:.2f} | {r['ratio']:.2f} |")
    path = write_result(args.out, device=device_info(args.device, args.threads),
                        config={k: v for k, v in vars(args).items() if k != "out"}, results=rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
