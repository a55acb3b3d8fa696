#!/usr/bin/env python
"""Make the rosinality style-based-gan-pytorch (StyleGAN v1) equivalence fixture from rosinality's code.

    python scripts/reference_stylegan1_rosinality.py --official /path/to/style-based-gan-pytorch \
        --out tests/fixtures/official/

Runs rosinality's StyledGenerator (plain PyTorch, on the CPU); needs torch and numpy, not safetensors
nor fastmine.

rosinality's channel table is fixed (512 channels up to 64 px), too wide for a small fixture, so the
StyledGenerator(code_dim=16, n_mlp=4)'s progression and to_rgb are rebuilt with rosinality's own
StyledConvBlock and EqualConv2d at WIDTHS: six trained blocks, 4 to 128 px (the fused upsampling
rosinality uses from 128 px included), plus a seventh at 256 px left as initialised, as the blocks
above the trained resolution of a real checkpoint are (rosinality builds all nine and grows one at a
time). Every trained parameter is random and rounded to float16 values (the noise strengths and
biases, zero at init, would hide a mistake).

Writes stylegan1_rosinality.safetensors: the g_running state dict under rosinality's names (float16),
z (two latents), the per-block noise maps (float16 values), mean_style (the truncation latent, the
mean style of 256 latents, float16 values) and rosinality's images at step 5 (128 px) with that noise:
z[0] untruncated (img_psi1), z[1] with mean_style and style_weight 0.7 (img_psi07), float32; and a
Discriminator (from_rgb_activate, as train.py builds it) whose nine blocks are rebuilt with rosinality's
ConvBlock at D_WIDTHS, the three above 128 px left as initialised, under "D." + its names, with its
scores at step 5 (d_scores) for 4 images made from the two above (half-scaled and flipped).
"""

from __future__ import annotations

import json

import torch
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_stylegan1_rosinality.py"
CODE_DIM, N_MLP, STEP, PSI = 16, 4, 5, 0.7
WIDTHS = [16, 16, 16, 8, 8, 4, 2]  # blocks at 4 ... 256 px; the last one untrained
# Discriminator blocks (in, out) by rosinality's index: 0-2 take 1024-256 px (untrained here), 3 takes 128 px
D_WIDTHS = [(2, 2), (2, 2), (2, 4), (4, 8), (8, 8), (8, 16), (16, 16), (16, 16), (16, 16)]


@torch.no_grad()
def randomise(G, g: torch.Generator) -> None:
    for name, p in G.named_parameters():
        if f"progression.{len(WIDTHS) - 1}." in name or f"to_rgb.{len(WIDTHS) - 1}." in name:
            continue  # the untrained block keeps rosinality's init
        scale = 0.3 if ("noise" in name or name.endswith("bias")) else 1.0
        p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if name.endswith("style.linear.bias") else 0.0))
        p.copy_(p.to(torch.float16).to(torch.float32))


def main() -> None:
    args = official_arguments(__doc__.splitlines()[0], "rosinality/style-based-gan-pytorch", ("model.py",),
                              "stylegan1_rosinality.safetensors")
    import model as M  # rosinality's model.py

    torch.manual_seed(0)
    G = M.StyledGenerator(code_dim=CODE_DIM, n_mlp=N_MLP)
    G.generator.progression = torch.nn.ModuleList(
        [M.StyledConvBlock(WIDTHS[0], WIDTHS[0], 3, 1, style_dim=CODE_DIM, initial=True)]
        + [M.StyledConvBlock(WIDTHS[b - 1], WIDTHS[b], 3, 1, style_dim=CODE_DIM, upsample=True, fused=4 * 2 ** b >= 128)
           for b in range(1, len(WIDTHS))])
    G.generator.to_rgb = torch.nn.ModuleList([M.EqualConv2d(w, 3, 1) for w in WIDTHS])
    G.eval()
    g = torch.Generator().manual_seed(5)
    randomise(G, g)
    with torch.no_grad():
        mean_style = G.mean_style(torch.randn(256, CODE_DIM, generator=g)).to(torch.float16).to(torch.float32)
        z = torch.randn(2, CODE_DIM, generator=g)
        noise = [torch.randn(1, 1, 4 * 2 ** b, 4 * 2 ** b, generator=g).to(torch.float16).to(torch.float32)
                 for b in range(STEP + 1)]
        img_psi1 = G(z[:1], noise=noise, step=STEP)
        img_psi07 = G(z[1:], noise=noise, step=STEP, mean_style=mean_style, style_weight=PSI)
    D = M.Discriminator(from_rgb_activate=True)
    D.progression = torch.nn.ModuleList(
        [M.ConvBlock(a, b, 3, 1, downsample=True, fused=i < 4) for i, (a, b) in enumerate(D_WIDTHS[:-1])]
        + [M.ConvBlock(D_WIDTHS[-1][0] + 1, D_WIDTHS[-1][1], 3, 1, 4, 0)])
    D.from_rgb = torch.nn.ModuleList([torch.nn.Sequential(M.EqualConv2d(3, a, 1), torch.nn.LeakyReLU(0.2))
                                      for a, _ in D_WIDTHS])
    D.linear = M.EqualLinear(D_WIDTHS[-1][1], 1)
    D.eval()
    with torch.no_grad():
        for name, p in D.named_parameters():
            index = int(name.split(".")[1]) if name.split(".")[0] in ("progression", "from_rgb") else 99
            if index >= len(D_WIDTHS) - STEP - 1:  # the blocks that run at 128 px; the others keep their init
                p.copy_((torch.randn(p.shape, generator=g) * (0.3 if name.endswith("bias") else 1.0))
                        .to(torch.float16).to(torch.float32))
        x = torch.cat([img_psi1, img_psi07]) * 0.5
        d_scores = D(torch.cat([x, x.flip(3)]), step=STEP)
    tensors = {name: t.to(torch.float16) for name, t in G.state_dict().items()}
    tensors.update({f"D.{name}": t.to(torch.float16) for name, t in D.state_dict().items()})
    tensors["d_scores"] = d_scores
    tensors.update({f"noise{b}": n.to(torch.float16) for b, n in enumerate(noise)})
    tensors.update(z=z, mean_style=mean_style.to(torch.float16), img_psi1=img_psi1, img_psi07=img_psi07)
    metadata = dict(commit=official_commit(args.official), script=SCRIPT, class_name="model.StyledGenerator",
                    init_kwargs=json.dumps(dict(code_dim=CODE_DIM, n_mlp=N_MLP)), widths=json.dumps(WIDTHS),
                    step=str(STEP), psi=str(PSI))
    write_fixture(args.out / "stylegan1_rosinality.safetensors", tensors, metadata,
                  f"img std {img_psi1.std():.3g} (psi 0.7: {img_psi07.std():.3g}), "
                  f"D scores {d_scores.flatten().tolist()}")


if __name__ == "__main__":
    main()
