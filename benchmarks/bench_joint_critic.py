"""The critic's loss pass joint (one pass over cat([real, fake])) against separate (a pass per kind).

Times forward + backward of the critic's loss on B real and B fake images (``fastmine.trainer.
critic_scores``) for the built-in DCGAN critic, the two ways in alternating blocks of one process,
and reports the ratio of the medians (separate / joint: above 1, the joint pass is faster) with its
bootstrap interval (``perf.joint_critic`` picks between them; auto = joint on CUDA only).

    python -m fastmine_benchmarks.bench_joint_critic --device cpu --image-size 32 --batch 64
"""
from __future__ import annotations

import argparse
import statistics

import torch

from fastmine.nets import DCGANCritic
from fastmine.trainer import critic_scores
from fastmine_benchmarks.common import RESULTS_DIR, Clock, device_info, timed, write_result
from fastmine_benchmarks.step_timing import MIN_BLOCKS, describe_speedup, speedup


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--calls", type=int, default=10, help="loss passes per timed block")
    ap.add_argument("--reps", type=int, default=MIN_BLOCKS, help="timed blocks per side, alternating")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/bench_joint_critic_<device>.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, clock = torch.device(args.device), Clock(args.device)
    torch.manual_seed(0)
    critic = DCGANCritic(image_size=args.image_size, channels=3, width=args.width).to(device)
    real, fake = (torch.rand(args.batch, 3, args.image_size, args.image_size, device=device) * 2 - 1 for _ in "rf")
    if device.type == "cpu":  # the trainer's CPU layout (perf.channels_last defaults on there)
        critic = critic.to(memory_format=torch.channels_last)
        real, fake = (x.contiguous(memory_format=torch.channels_last) for x in (real, fake))

    def loss_pass(joint):
        def call():
            d_real, d_fake = critic_scores(critic, real, fake, joint)
            (d_fake.mean() - d_real.mean()).backward()
        return call

    sides = {"joint": loss_pass(True), "separate": loss_pass(False)}
    for call in sides.values():  # warm-up
        call()
    blocks = {k: [] for k in sides}
    for r in range(args.reps):
        for side in (("joint", "separate") if r % 2 == 0 else ("separate", "joint")):
            blocks[side].append(timed(sides[side], args.calls, clock) / args.calls)
    s = speedup(blocks["separate"], blocks["joint"])
    med = {k: 1000 * statistics.median(v) for k, v in blocks.items()}
    print(f"| critic | batch | joint ms | separate ms | joint speed-up (separate / joint, 95 % CI) |\n"
          f"|---|---:|---:|---:|---|\n| DCGAN {args.image_size} px width {args.width} | {args.batch} + "
          f"{args.batch} | {med['joint']:.2f} | {med['separate']:.2f} | {describe_speedup(s)} |")
    out = args.out or RESULTS_DIR / f"bench_joint_critic_{device.type}.json"
    write_result(out, device=device_info(args.device, args.threads), config=vars(args),
                 results=[{"joint_blocks_s": blocks["joint"], "separate_blocks_s": blocks["separate"], **s}])
    return s


if __name__ == "__main__":
    main()
