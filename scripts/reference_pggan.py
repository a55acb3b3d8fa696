#!/usr/bin/env python
"""Make the Progressive GAN equivalence fixtures from the official code of both stores.

    python scripts/reference_pggan.py --official /path/to/pytorch_GAN_zoo --genforce /path/to/genforce \
        --out tests/fixtures/official/

Runs facebookresearch/pytorch_GAN_zoo's ProgressiveGAN (plain PyTorch, on the CPU) and genforce's
PGGANGenerator / PGGANDiscriminator; needs torch and numpy, not safetensors nor fastmine.

Small networks (16 px, widths 16 -> 8) with every weight and bias random and rounded to float16
values (the zero-initialised biases would hide a mistake), saved as each store saves them:

- pggan_ganzoo_tiny.pth: ``ProgressiveGAN.save`` (``{"config": BaseConfig, "netG", "netD", "avgG"}``,
  the config pickled as pytorch_GAN_zoo's own class, as the torch hub files hold it), trained loss
  WGANGP, minibatch std on;
- pggan_genforce_tiny.pth: ``{"generator", "discriminator", "generator_smooth"}`` as genforce's
  converter of NVIDIA's release writes it (fmaps_base 128, fmaps_max 16);
- dcgan_ganzoo_tiny.pth / dcgan_ganzoo.safetensors: pytorch_GAN_zoo's DCGAN (32 px, dimG 8, depth 2,
  DCGAN loss: tanh output) saved the same way, and the images ``test(z, getAvG=True)`` makes;
- pggan_{ganzoo,genforce}.safetensors: z, the images the official code makes from ``avgG`` /
  ``generator_smooth``, critic inputs and the official critic's scores for 8 images (two
  minibatch-std groups for pytorch_GAN_zoo's groups of 4; genforce's group of 16 takes all 8).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_pggan.py"
Z_DIM, DEPTHS, G_BATCH, D_BATCH = 16, (16, 16, 8), 3, 8
FMAPS_BASE, FMAPS_MAX, RESOLUTION = 128, 16, 16  # genforce widths: 16 at 4 and 8 px, 8 at 16 px


@torch.no_grad()
def randomise(net: torch.nn.Module, g: torch.Generator) -> None:
    for name, p in net.named_parameters():
        p.copy_(torch.randn(p.shape, generator=g) * (0.2 if name.endswith("bias") else 1.0))
        p.copy_(p.to(torch.float16).to(torch.float32))


class _Adam(torch.optim.Adam):
    """Adam taking pytorch_GAN_zoo's ``betas=[0, 0.99]``, which torch >= 2.6 refuses (an int beside a float)."""

    def __init__(self, params, betas=(0.9, 0.999), **kwargs):
        super().__init__(params, betas=tuple(float(b) for b in betas), **kwargs)


def ganzoo(official: Path, out: Path) -> None:
    torch.optim.Adam = _Adam  # the optimisers are built (and never stepped) when the model is
    from models.progressive_gan import ProgressiveGAN

    torch.manual_seed(0)
    model = ProgressiveGAN(useGPU=False, dimLatentVector=Z_DIM, depthScale0=DEPTHS[0], miniBatchStdDev=True,
                           lossMode="WGANGP")
    for depth in DEPTHS[1:]:
        model.addScale(depth)
    g = torch.Generator().manual_seed(1)
    for net in (model.netG, model.avgG, model.netD):
        randomise(net, g)
    path = out / "pggan_ganzoo_tiny.pth"
    model.save(str(path))
    z = torch.randn(G_BATCH, Z_DIM, generator=g)
    images = (torch.randn(D_BATCH, 3, RESOLUTION, RESOLUTION, generator=g) * 0.5).to(torch.float16)
    with torch.no_grad():
        img = model.test(z, getAvG=True)
        img_raw = model.test(z, getAvG=False)
        scores = model.netD(images.float())
    write_fixture(out / "pggan_ganzoo.safetensors",
                  dict(z=z, img=img, img_raw=img_raw, images=images, d_scores=scores),
                  dict(commit=official_commit(official), script=SCRIPT,
                       class_name="models.progressive_gan.ProgressiveGAN"),
                  f"{path.name} {path.stat().st_size / 1024:.0f} KiB, img std {img.std():.3g}, "
                  f"scores {scores.flatten().tolist()}")


def ganzoo_dcgan(official: Path, out: Path) -> None:
    from models.DCGAN import DCGAN

    torch.manual_seed(0)
    model = DCGAN(useGPU=False, dimLatentVector=Z_DIM, dimG=8, dimD=8, depth=2, lossMode="DCGAN")
    g = torch.Generator().manual_seed(3)
    for net in (model.netG, model.avgG, model.netD):
        randomise(net, g)
    path = out / "dcgan_ganzoo_tiny.pth"
    model.save(str(path))
    z = torch.randn(G_BATCH, Z_DIM, generator=g)
    with torch.no_grad():
        img = model.test(z, getAvG=True)  # the repo's sampling: its batch norms in training mode
    write_fixture(out / "dcgan_ganzoo.safetensors", dict(z=z, img=img),
                  dict(commit=official_commit(official), script=SCRIPT, class_name="models.DCGAN.DCGAN"),
                  f"{path.name} {path.stat().st_size / 1024:.0f} KiB, img std {img.std():.3g}")


def genforce(checkout: Path, out: Path) -> None:
    sys.path.insert(0, str(checkout.resolve()))
    from models.pggan_discriminator import PGGANDiscriminator
    from models.pggan_generator import PGGANGenerator

    torch.manual_seed(0)
    kwargs = dict(fmaps_base=FMAPS_BASE, fmaps_max=FMAPS_MAX)
    G, Gs = (PGGANGenerator(RESOLUTION, z_space_dim=Z_DIM, **kwargs) for _ in range(2))
    D = PGGANDiscriminator(RESOLUTION, **kwargs)
    g = torch.Generator().manual_seed(2)
    for net in (G, Gs, D):
        randomise(net, g)
        net.eval()
    path = out / "pggan_genforce_tiny.pth"
    torch.save({"generator": G.state_dict(), "discriminator": D.state_dict(), "generator_smooth": Gs.state_dict()},
               path)
    z = torch.randn(G_BATCH, Z_DIM, generator=g)
    images = (torch.randn(D_BATCH, 3, RESOLUTION, RESOLUTION, generator=g) * 0.5).to(torch.float16)
    with torch.no_grad():
        img = Gs(z)["image"]
        scores = D(images.float())
    write_fixture(out / "pggan_genforce.safetensors", dict(z=z, img=img, images=images, d_scores=scores),
                  dict(commit=official_commit(checkout), script=SCRIPT,
                       class_name="models.pggan_generator.PGGANGenerator"),
                  f"{path.name} {path.stat().st_size / 1024:.0f} KiB, img std {img.std():.3g}, "
                  f"scores {scores.flatten().tolist()}")


def main() -> None:
    sys.argv, genforce_checkout = _pop_genforce(sys.argv)
    args = official_arguments(__doc__.splitlines()[0], "facebookresearch/pytorch_GAN_zoo",
                              ("models/progressive_gan.py",), "pggan_*")
    ganzoo(args.official, args.out)
    ganzoo_dcgan(args.official, args.out)
    # both checkouts have a top-level `models` package: the first one's modules go before importing the second's
    sys.path.pop(0)
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]
    genforce(genforce_checkout, args.out)


def _pop_genforce(argv):
    if "--genforce" not in argv:
        sys.exit("error: --genforce CHECKOUT (of genforce/genforce) is required")
    i = argv.index("--genforce")
    return argv[:i] + argv[i + 2:], Path(argv[i + 1])


if __name__ == "__main__":
    main()
