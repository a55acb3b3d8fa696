#!/usr/bin/env python
"""Make the StyleGAN (v1) equivalence fixtures from genforce's code.

    python scripts/reference_stylegan1.py --official /path/to/genforce --out tests/fixtures/official/

Runs genforce/genforce's StyleGANGenerator and StyleGANDiscriminator (plain PyTorch, on the CPU);
needs torch and numpy, not safetensors nor fastmine.

A 128 px network, so that the upsampling layers from 128 px take the fused (transposed-convolution)
path that the released 256 / 1024 px models use from 128 px (``fused_scale="auto"``), with small
widths (fmaps_base 256, fmaps_max 16: 16 channels up to 16 px, then 8, 4, 2), z and w of 16
dimensions and a 4-layer mapping. Every parameter and buffer is random (the zero-initialised biases
and noise strengths would hide a mistake) and rounded to float16 values; the w_avg buffer is the
mean mapping output of 256 latents.

Writes stylegan1_genforce.safetensors: the generator's state dict under genforce's names (float16),
its constructor kwargs (metadata), z (two latents), and the images genforce's code makes with
randomize_noise=False (the stored noise): z[0] at trunc_psi 1 (img_psi1) and z[1] at NVIDIA's sampling
setting, trunc_psi 0.7 on the first 8 of its 12 layers (img_psi07_cutoff8), as float32; and the
discriminator of the same widths (its fused downsampling at 128 px included) under "D." + genforce's
names, with its scores (d_scores) for the 4 images built from those two, half-scaled and flipped
(``critic_images``: the test rebuilds them, so no more images are stored), one minibatch-std group of 4.
"""

from __future__ import annotations

import json

import torch
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_stylegan1.py"
KWARGS = dict(resolution=128, z_space_dim=16, w_space_dim=16, mapping_layers=4, mapping_fmaps=16, fmaps_base=256,
              fmaps_max=16)
BATCH, PSI, CUTOFF = 2, 0.7, 8


@torch.no_grad()
def randomise(net: torch.nn.Module, g: torch.Generator) -> None:
    for name, p in net.named_parameters():
        if name.startswith("mapping."):  # run-time lr multiplier 0.01: raw values 100x the effective ones
            scale = 20.0 if name.endswith("bias") else 100.0
        elif name.endswith("apply_noise.weight") or name.endswith("bias"):
            scale = 0.3
        else:
            scale = 1.0
        p.copy_(torch.randn(p.shape, generator=g) * scale)
    for name, b in net.named_buffers():
        if name.endswith("apply_noise.noise"):
            b.copy_(torch.randn(b.shape, generator=g))
    for t in list(net.parameters()) + list(net.buffers()):
        t.copy_(t.to(torch.float16).to(torch.float32))


def critic_images(img_psi1: torch.Tensor, img_psi07: torch.Tensor) -> torch.Tensor:
    """The discriminator's 4 inputs, from the two stored images."""
    x = torch.cat([img_psi1, img_psi07]) * 0.5
    return torch.cat([x, x.flip(3)])


def main() -> None:
    args = official_arguments(__doc__.splitlines()[0], "genforce/genforce", ("models/stylegan_generator.py",),
                              "stylegan1_genforce.safetensors")
    from models.stylegan_discriminator import StyleGANDiscriminator
    from models.stylegan_generator import StyleGANGenerator

    torch.manual_seed(0)
    G = StyleGANGenerator(**KWARGS).eval()
    g = torch.Generator().manual_seed(3)
    randomise(G, g)
    with torch.no_grad():
        w_avg = G.mapping(torch.randn(256, KWARGS["z_space_dim"], generator=g))["w"].mean(0)
        G.truncation.w_avg.copy_(w_avg.to(torch.float16).to(torch.float32))
        z = torch.randn(BATCH, KWARGS["z_space_dim"], generator=g)
        # one image each (128 px images are what makes the file large): z[0] untruncated, z[1] truncated
        img_psi1 = G(z[:1], randomize_noise=False)["image"]
        img_psi07 = G(z[1:], trunc_psi=PSI, trunc_layers=CUTOFF, randomize_noise=False)["image"]
    D = StyleGANDiscriminator(KWARGS["resolution"], fmaps_base=KWARGS["fmaps_base"], fmaps_max=KWARGS["fmaps_max"])
    randomise(D.eval(), g)
    with torch.no_grad():
        d_scores = D(critic_images(img_psi1, img_psi07))
    tensors = {name: t.to(torch.float16) for name, t in G.state_dict().items()}
    tensors.update({f"D.{name}": t.to(torch.float16) for name, t in D.state_dict().items()})
    tensors.update(z=z, img_psi1=img_psi1, img_psi07_cutoff8=img_psi07, d_scores=d_scores)
    metadata = dict(commit=official_commit(args.official), script=SCRIPT,
                    class_name="models.stylegan_generator.StyleGANGenerator", init_kwargs=json.dumps(KWARGS),
                    psi=str(PSI), cutoff=str(CUTOFF))
    write_fixture(args.out / "stylegan1_genforce.safetensors", tensors, metadata,
                  f"{sum(p.numel() for p in G.parameters())} parameters, img std {img_psi1.std():.3g} "
                  f"(psi 0.7: {img_psi07.std():.3g}), D scores {d_scores.flatten().tolist()}")


if __name__ == "__main__":
    main()
