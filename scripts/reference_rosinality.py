#!/usr/bin/env python
"""Make the rosinality stylegan2-pytorch equivalence fixtures from rosinality's own code.

    /work/ref/venv/bin/python scripts/reference_rosinality.py --official /path/to/rosinality/stylegan2-pytorch \
        --out tests/fixtures/official/

Runs under a Python that can import the checkout's model.py (its CUDA extensions are not built:
`torch.utils.cpp_extension.load` is stubbed out and the ops take their plain-PyTorch CPU paths);
needs torch and numpy, not safetensors nor fastmine.

rosinality's channel table fixes 512 channels at 4-32 px whatever channel_multiplier is, too wide
for a small fixture. So the networks are rosinality's Generator(size=32, style_dim=32, n_mlp=2) and
Discriminator(size=32) whose width-dependent parts are then rebuilt with rosinality's own building
blocks (ConstantInput, StyledConv, ToRGB; ConvLayer, ResBlock, EqualLinear) at WIDTHS channels per
resolution: 16 channels up to 16 px, 8 at 32 px, halving with the resolution as a real checkpoint's
widths do above 32 px. The forward passes are rosinality's, unchanged.

Every tensor is rounded to float16 values; zero-initialised values that would hide a mistake
(biases, noise weights) are made random, and the modulation biases (1 at init) are perturbed.

Writes:
- rosinality_generator.safetensors: the g_ema state dict under rosinality's names (float16); z,
  latent_avg (the truncation latent), ws_psi1 / ws_psi07 (the per-layer latents), img_psi1 /
  img_psi07 (randomize_noise=False, i.e. the noise buffers) as float32.
- rosinality_discriminator.safetensors: the d state dict (float16); images (float16 values, the
  inputs), d_logits (all 8 images, minibatch-std groups of 4) and d_logits_2 (the first two
  images: one group of 2) as float32.
- metadata: rosinality constructor args, the rebuilt widths, the checkout's commit, this script,
  and the tensor shapes (no values) of full-size rosinality networks, for testing the inference
  of hyperparameters from shapes.
"""

from __future__ import annotations

import json

import torch
import torch.utils.cpp_extension
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_rosinality.py"
SIZE, STYLE_DIM, N_MLP, CHANNEL_MULTIPLIER, LR_MLP = 32, 32, 2, 2, 0.01
BLUR_KERNEL = [1, 3, 3, 1]
WIDTHS = {4: 16, 8: 16, 16: 16, 32: 8}
G_BATCH, D_BATCH = 2, 8
PSI = 0.7
# Full-size configurations whose shapes go into the metadata: config-f (FFHQ 256 as trained by
# rosinality's train.py) and a channel_multiplier=1 one with a shorter mapping.
SHAPE_CONFIGS = {
    "size256_cm2": dict(size=256, style_dim=512, n_mlp=8, channel_multiplier=2),
    "size128_cm1": dict(size=128, style_dim=256, n_mlp=4, channel_multiplier=1),
}

def import_rosinality():
    """rosinality's model module; its op package compiles CUDA extensions at import unless stubbed."""
    torch.utils.cpp_extension.load = lambda *args, **kwargs: None
    import model  # rosinality's model.py, importable only once --official is on the path

    return model


def narrow_generator(M, G) -> None:
    """Rebuild G's width-dependent modules at WIDTHS with rosinality's classes (see the docstring)."""
    w4 = WIDTHS[4]
    G.channels = {**G.channels, **WIDTHS}
    G.input = M.ConstantInput(w4)
    G.conv1 = M.StyledConv(w4, w4, 3, STYLE_DIM, blur_kernel=BLUR_KERNEL)
    G.to_rgb1 = M.ToRGB(w4, STYLE_DIM, upsample=False)
    G.convs, G.to_rgbs = torch.nn.ModuleList(), torch.nn.ModuleList()
    in_channel = w4
    for res in sorted(WIDTHS)[1:]:
        out_channel = WIDTHS[res]
        G.convs.append(M.StyledConv(in_channel, out_channel, 3, STYLE_DIM, upsample=True, blur_kernel=BLUR_KERNEL))
        G.convs.append(M.StyledConv(out_channel, out_channel, 3, STYLE_DIM, blur_kernel=BLUR_KERNEL))
        G.to_rgbs.append(M.ToRGB(out_channel, STYLE_DIM))
        in_channel = out_channel


def narrow_discriminator(M, D) -> None:
    convs = [M.ConvLayer(3, WIDTHS[SIZE], 1)]
    for res in sorted(WIDTHS, reverse=True)[:-1]:
        convs.append(M.ResBlock(WIDTHS[res], WIDTHS[res // 2], BLUR_KERNEL))
    D.convs = torch.nn.Sequential(*convs)
    w4 = WIDTHS[4]
    D.final_conv = M.ConvLayer(w4 + 1, w4, 3)
    D.final_linear = torch.nn.Sequential(M.EqualLinear(w4 * 4 * 4, w4, activation="fused_lrelu"),
                                         M.EqualLinear(w4, 1))


@torch.no_grad()
def make_nontrivial(net: torch.nn.Module, g: torch.Generator) -> None:
    """Random values where the init would hide a mistake, then everything rounded to float16 values."""
    for name, p in net.named_parameters():
        if name.startswith("style.") and name.endswith(".bias"):
            # lr_mul 0.01 scales these at run time: raw values ~20 give effective biases ~0.2
            p.copy_(torch.randn(p.shape, generator=g) * 20)
        elif name.endswith("modulation.bias"):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        elif name.endswith("noise.weight"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        elif name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    for t in list(net.parameters()) + list(net.buffers()):
        t.copy_(t.to(torch.float16).to(torch.float32))


def build(M, cls, kwargs: dict, narrow, seeds: tuple[int, int]):
    """cls(**kwargs) made under torch seed seeds[0], narrowed to WIDTHS and made non-trivial from a
    generator seeded seeds[1], which is returned with it: the inputs are drawn from it next."""
    torch.manual_seed(seeds[0])
    net = cls(**kwargs)
    narrow(M, net)
    net.eval()
    g = torch.Generator().manual_seed(seeds[1])
    make_nontrivial(net, g)
    return net, g


def fp16_state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.to(torch.float16) for name, t in net.state_dict().items()}


def shapes(net: torch.nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in net.state_dict().items()}


def main() -> None:
    args = official_arguments(__doc__.splitlines()[0], "rosinality/stylegan2-pytorch", ("model.py", "op/"),
                              "rosinality_*.safetensors")
    M = import_rosinality()
    g_args = dict(size=SIZE, style_dim=STYLE_DIM, n_mlp=N_MLP, channel_multiplier=CHANNEL_MULTIPLIER,
                  blur_kernel=BLUR_KERNEL, lr_mlp=LR_MLP)
    d_args = dict(size=SIZE, channel_multiplier=CHANNEL_MULTIPLIER, blur_kernel=BLUR_KERNEL)
    common = {"commit": official_commit(args.official), "script": SCRIPT, "widths": json.dumps(WIDTHS)}

    G, g = build(M, M.Generator, g_args, narrow_generator, seeds=(1, 11))
    with torch.no_grad():
        # a realistic truncation latent: the mean w of a few mapped z, float16-exact
        latent_avg = G.style(torch.randn(64, STYLE_DIM, generator=g)).mean(0).to(torch.float16).to(torch.float32)
        z = torch.randn(G_BATCH, STYLE_DIM, generator=g)
        img_psi1, ws_psi1 = G([z], return_latents=True, randomize_noise=False)
        img_psi07, ws_psi07 = G([z], return_latents=True, randomize_noise=False, truncation=PSI,
                                truncation_latent=latent_avg.unsqueeze(0))
    tensors = fp16_state(G)
    tensors.update(z=z, latent_avg=latent_avg, ws_psi1=ws_psi1, ws_psi07=ws_psi07, img_psi1=img_psi1,
                   img_psi07=img_psi07)
    full_shapes = {key: shapes(M.Generator(**cfg)) for key, cfg in SHAPE_CONFIGS.items()}
    metadata = dict(common, class_name="model.Generator", init_kwargs=json.dumps(g_args), psi=str(PSI),
                    shape_configs=json.dumps(SHAPE_CONFIGS), full_shapes=json.dumps(full_shapes))
    path = args.out / "rosinality_generator.safetensors"
    write_fixture(path, tensors, metadata, f"{sum(p.numel() for p in G.parameters())} parameters, "
                  f"img std {img_psi1.std():.3g} (psi 0.7: {img_psi07.std():.3g})")

    D, g = build(M, M.Discriminator, d_args, narrow_discriminator, seeds=(2, 12))
    images = (torch.randn(D_BATCH, 3, SIZE, SIZE, generator=g) * 0.5).to(torch.float16)
    with torch.no_grad():
        d_logits = D(images.float())
        d_logits_2 = D(images[:2].float())
    tensors = fp16_state(D)
    tensors.update(images=images, d_logits=d_logits, d_logits_2=d_logits_2)
    full_shapes = {key: shapes(M.Discriminator(cfg["size"], channel_multiplier=cfg["channel_multiplier"]))
                   for key, cfg in SHAPE_CONFIGS.items()}
    metadata = dict(common, class_name="model.Discriminator", init_kwargs=json.dumps(d_args),
                    shape_configs=json.dumps(SHAPE_CONFIGS), full_shapes=json.dumps(full_shapes))
    path = args.out / "rosinality_discriminator.safetensors"
    write_fixture(path, tensors, metadata, f"{sum(p.numel() for p in D.parameters())} parameters, "
                  f"logits {d_logits.flatten().tolist()}")


if __name__ == "__main__":
    main()
