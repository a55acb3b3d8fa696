#!/usr/bin/env python
"""Train fastmine's offline feature extractor: a small CNN on scikit-learn's digits.

Writes fastmine/metrics/weights/digits_classifier.safetensors (float32, < 1 MB) with
metadata: test accuracy (overall, at 8/16/32 px, per-class recall), input size, seed,
date, versions, and this script's path.

Data: sklearn.datasets.load_digits(); pixels 0..16 -> x/16*2-1 in [-1, 1], [N,1,8,8];
fixed split train_test_split(idx, test_size=0.25, random_state=0, stratify=labels).
Training sees each batch at a random resolution (8, 16 or 32 px, the sizes fastmine
generators produce) with light augmentation -- small shifts/rotations/scales, an
occasional slight blur, pixel noise -- so the features tolerate GAN artifacts.

    python scripts/train_digits_classifier.py [--epochs 60] [--seed 0] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a checkout without installing fastmine

from fastmine.data import load_digits  # noqa: E402
from fastmine.metrics.features import DIGITS_WEIGHTS_PATH, DigitsFeatureNet  # noqa: E402

SIZES = (8, 16, 32)


def load_digits_split(size: int = 8):
    """(x_train, y_train, x_test, y_test): float32 [N,1,size,size] in [-1,1], int64."""
    # the library's fixed stratified 75/25 split (random_state=0), the one the shipped net used
    x_train, y_train = load_digits(size=size, split="train", return_labels=True)
    x_test, y_test = load_digits(size=size, split="test", return_labels=True)
    return x_train, y_train, x_test, y_test


def augment(x8: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x8: [B,1,8,8] in [-1,1] -> augmented batch at a random size in SIZES."""
    b = x8.shape[0]
    size = SIZES[int(torch.randint(len(SIZES), (1,), generator=g))]
    x = x8 if size == 8 else F.interpolate(x8, size=(size, size), mode="bilinear", align_corners=False)
    # random affine: rotation +-12 deg, scale 0.9..1.1, shift +-1 px of the 8 px grid
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.radians(12)
    sc = 1 + (torch.rand(b, generator=g) * 2 - 1) * 0.1
    sh = (torch.rand(b, 2, generator=g) * 2 - 1) * (2.0 / 8.0)  # 1 px of 8 = 2/8 in [-1,1] coords
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack(
        [torch.stack([cos, -sin, sh[:, 0]], 1), torch.stack([sin, cos, sh[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # sample (x + 1) so out-of-image pixels become the background value -1
    x = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    # slight blur on ~1/3 of the samples
    blur = torch.rand(b, generator=g) < 1 / 3
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :]).view(1, 1, 3, 3)
        xb = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2)
        x = torch.where(blur.view(-1, 1, 1, 1), xb, x)
    # pixel noise, std up to 0.1
    x = x + torch.randn(x.shape, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) * 0.1)
    return x.clamp(-1, 1)


@torch.no_grad()
def evaluate(net, x, y):
    pred = net(x).argmax(1)
    acc = (pred == y).float().mean().item()
    recall = [(pred[y == c] == c).float().mean().item() for c in range(10)]
    return acc, recall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=DIGITS_WEIGHTS_PATH)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)

    xtr, ytr, _, _ = load_digits_split(8)
    tests = {s: load_digits_split(s)[2:] for s in SIZES}

    net = DigitsFeatureNet(input_size=16, feature_dim=64)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(ytr) / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch, pct_start=0.15
    )
    t0 = time.time()
    for ep in range(args.epochs):
        net.train()
        perm = torch.randperm(len(ytr), generator=g)
        tot = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = augment(xtr[idx], g)
            loss = F.cross_entropy(net(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        if (ep + 1) % 10 == 0 or ep == 0:
            net.eval()
            acc16, _ = evaluate(net, *tests[16])
            print(f"epoch {ep + 1:3d}  loss {tot / len(ytr):.4f}  test acc@16px {acc16:.4f}  ({time.time() - t0:.0f}s)")

    net.eval()
    accs, recalls = {}, {}
    for s in SIZES:
        accs[s], recalls[s] = evaluate(net, *tests[s])
    print("test accuracy: " + "  ".join(f"{s}px {accs[s]:.4f}" for s in SIZES))
    print("recall@8px per class: " + " ".join(f"{r:.3f}" for r in recalls[8]))

    state = {k: v.detach().contiguous().float() for k, v in net.state_dict().items()}
    meta = {
        "format": "fastmine.DigitsFeatureNet",
        "test_accuracy": accs[8],  # native 8x8 digits
        "test_accuracy_by_size": {str(s): accs[s] for s in SIZES},
        "test_recall_by_class": recalls[8],
        "n_train": len(ytr),
        "n_test": len(tests[8][1]),
        "split": "train_test_split(arange(1797), test_size=0.25, random_state=0, stratify=labels)",
        "input_size": net.input_size,
        "feature_dim": net.num_features,
        "num_classes": net.num_classes,
        "features": "penultimate layer (fc, after ReLU)",
        "image_convention": "NCHW float in [-1,1]; sklearn digits x/16*2-1; any HxW resized to input_size",
        "seed": args.seed,
        "epochs": args.epochs,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "script": "scripts/train_digits_classifier.py",
        "torch_version": torch.__version__,
        "train_seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: json.dumps(v) for k, v in meta.items()})
    os.replace(tmp, args.out)
    os.chmod(args.out, 0o644)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return meta


if __name__ == "__main__":
    main()
