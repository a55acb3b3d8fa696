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
z[0] untruncated (img_psi1), z[1] with mean_style and style_weight 0.7 (img_psi07), float32.
"""

from __future__ import annotations

import json

import torch
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_stylegan1_rosinality.py"
CODE_DIM, N_MLP, STEP, PSI = 16, 4, 5, 0.7
WIDTHS = [16, 16, 16, 8, 8, 4, 2]  # blocks at 4 ... 256 px; the last one untrained


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
    tensors = {name: t.to(torch.float16) for name, t in G.state_dict().items()}
    tensors.update({f"noise{b}": n.to(torch.float16) for b, n in enumerate(noise)})
    tensors.update(z=z, mean_style=mean_style.to(torch.float16), img_psi1=img_psi1, img_psi07=img_psi07)
    metadata = dict(commit=official_commit(args.official), script=SCRIPT, class_name="model.StyledGenerator",
                    init_kwargs=json.dumps(dict(code_dim=CODE_DIM, n_mlp=N_MLP)), widths=json.dumps(WIDTHS),
                    step=str(STEP), psi=str(PSI))
    write_fixture(args.out / "stylegan1_rosinality.safetensors", tensors, metadata,
                  f"img std {img_psi1.std():.3g} (psi 0.7: {img_psi07.std():.3g})")


if __name__ == "__main__":
    main()
