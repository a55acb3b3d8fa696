#!/usr/bin/env python
"""Make the Mimicry equivalence fixture from kwotsin/mimicry's own code (torch_mimicry).

    python scripts/reference_mimicry.py --official /path/to/mimicry --out tests/fixtures/official/

For each configuration of CONFIGS the script builds Mimicry's generator and discriminator classes
at small widths, fills their parameters with the fixed values of reference_studiogan.fixed_tensor
(a function of the tensor's name and shape, repeated in tests/test_zoo_mimicry.py), converges each
spectral norm's singular vectors on its weight and measures the batch-norm statistics on 64
latents (as reference_studiogan.py does), then records, in eval mode, the generator's images for
fixed z (and labels) and the discriminator's GAN logits on them.

Only Mimicry's network code runs: ``torch_mimicry/__init__.py`` imports its training, metrics and
dataset modules (TensorFlow, torchvision …), so the package is entered without it.

Writes mimicry.safetensors: per configuration NAME, NAME.z, NAME.labels, NAME.images, NAME.scores
and the buffers NAME.G.* / NAME.D.*; metadata: per configuration the classes and keywords, the
state dict layouts, the checkout's commit and this script.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import torch
from reference_io import official_arguments, official_commit, write_fixture
from reference_studiogan import CALIBRATION, buffers, fill, standing_statistics

SCRIPT = "scripts/reference_mimicry.py"
BATCH = 3
BATCH_128 = 1  # the 128 px images are large: one keeps the fixture small
CONFIGS = {
    "sngan32": ("sngan", "SNGANGenerator32", {"nz": 16, "ngf": 16}, "SNGANDiscriminator32", {"ndf": 16}),
    "ssgan48": ("ssgan", "SSGANGenerator48", {"nz": 16, "ngf": 32}, "SSGANDiscriminator48", {"ndf": 32}),
    "sngan64": ("sngan", "SNGANGenerator64", {"nz": 16, "ngf": 32}, "SNGANDiscriminator64", {"ndf": 32}),
    "cgan_pd32": ("cgan_pd", "CGANPDGenerator32", {"nz": 16, "ngf": 16, "num_classes": 3},
                  "CGANPDDiscriminator32", {"ndf": 16, "num_classes": 3}),
    "sngan128": ("sngan", "SNGANGenerator128", {"nz": 16, "ngf": 32}, "SNGANDiscriminator128", {"ndf": 32}),
}


def import_nets(official: Path, kind: str):
    """torch_mimicry.nets.KIND without running torch_mimicry/__init__.py (see the docstring)."""
    root = official / "torch_mimicry"
    for name, folder in (("torch_mimicry", root), ("torch_mimicry.nets", root / "nets")):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(folder)]
            sys.modules[name] = package
    return importlib.import_module(f"torch_mimicry.nets.{kind}")


def main():
    args = official_arguments(__doc__.splitlines()[1], "kwotsin/mimicry",
                              ("torch_mimicry/modules/resblocks.py", "torch_mimicry/nets/sngan"),
                              "mimicry.safetensors", CONFIGS)
    tensors, layouts, classes = {}, {}, {}
    for name in args.configs.split(","):
        kind, g_cls, g_kwargs, d_cls, d_kwargs = CONFIGS[name]
        nets = import_nets(args.official.resolve(), kind)
        G, D = getattr(nets, g_cls)(**g_kwargs), getattr(nets, d_cls)(**d_kwargs)
        layouts[name] = {"G": fill(G, f"{name}.G"), "D": fill(D, f"{name}.D")}
        classes[name] = {"G": [g_cls, g_kwargs], "D": [d_cls, d_kwargs]}
        classes_n = g_kwargs.get("num_classes", 0)
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(CALIBRATION, g_kwargs["nz"], generator=gen)
        labels = torch.arange(CALIBRATION) % max(classes_n, 1)
        g_args = (z, labels) if classes_n else (z,)
        standing_statistics(G, *g_args)  # D has no batch norm
        G.eval(), D.eval()
        batch = BATCH_128 if "128" in g_cls else BATCH
        z, labels = z[:batch], labels[:batch]
        with torch.no_grad():
            images = G(z, labels) if classes_n else G(z)
            scores = D(images, labels) if classes_n else D(images)
            if isinstance(scores, tuple):  # SSGAN: (GAN logits, rotation logits)
                scores = scores[0]
        tensors.update(buffers(G, f"{name}.G") | buffers(D, f"{name}.D"))
        tensors.update({f"{name}.z": z, f"{name}.labels": labels, f"{name}.images": images.float(),
                        f"{name}.scores": scores.squeeze(1).float()})
        print(f"{name}: images {tuple(images.shape)} std {images.std():.3f} (across the batch "
              f"{images.std(0).mean():.3f}), scores {[round(s, 4) for s in scores.squeeze(1).tolist()]}")
    metadata = {"classes": json.dumps(classes), "layouts": json.dumps(layouts),
                "official_commit": official_commit(args.official), "script": SCRIPT}
    write_fixture(Path(args.out) / "mimicry.safetensors", tensors, metadata, f"configs {args.configs}")


if __name__ == "__main__":
    main()
