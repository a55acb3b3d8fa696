#!/usr/bin/env python
"""Make the StyleGAN2-ADA equivalence fixtures from NVlabs' official stylegan2-ada-pytorch code.

    /work/ref/venv/bin/python scripts/reference_stylegan2_ada.py \
        --official /path/to/NVlabs/stylegan2-ada-pytorch --out tests/fixtures/official/

Runs under a Python that can import the official checkout (on the CPU its ops fall back to their
plain-PyTorch reference paths); needs torch and numpy, not safetensors nor fastmine. For each
configuration it builds the official training.networks Generator or Discriminator at 32 px from a
fixed seed, replaces the initial values that would hide a mistake (zero biases, noise_strength 0,
w_avg 0, affine biases all 1) by random ones, rounds every tensor of the state dict to float16
values, and writes stylegan2_ada_<config>.safetensors holding:
- the state dict under the official names, as float16 (lossless after the rounding);
- generators: z, c, ws_psi1, ws_psi07, ws_psi07_cutoff (psi 0.7 on the first CUTOFF ws only),
  img_psi1, img_psi07, img_psi07_cutoff (noise_mode const), all float32 from the official code;
- discriminators: img (float16-valued inputs, stored as float16), c, logits (float32);
- metadata: class_name, init_kwargs (JSON), call (JSON: the keywords of the official calls),
  commit of the official checkout, script.
Layers marked float16 (num_fp16_res) are run with force_fp32=True: the reference is float32.
"""

import json
from pathlib import Path

import torch
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_stylegan2_ada.py"
CUTOFF = 3
BATCH_G = 2
BATCH_D = 4  # two minibatch-std groups of 2

# Channel counts change across blocks (generators 16, 16, 16, 8 at 4..32 px; discriminators 4, 8, 16, 16 at
# 32..4 px); conv_clamp, where set, small enough to clip a share of the activations.
CONFIGS = {
    "skip": dict(
        kind="G",
        seed=11,
        kwargs=dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                    mapping_kwargs=dict(num_layers=2),
                    synthesis_kwargs=dict(channel_base=256, channel_max=16, architecture="skip", num_fp16_res=2)),
    ),
    "resnet_cond": dict(
        kind="G",
        seed=12,
        kwargs=dict(z_dim=32, c_dim=3, w_dim=32, img_resolution=32, img_channels=3,
                    mapping_kwargs=dict(num_layers=3, embed_features=16, layer_features=24),
                    synthesis_kwargs=dict(channel_base=256, channel_max=16, architecture="resnet", conv_clamp=2.0)),
    ),
    "d_resnet": dict(
        kind="D",
        seed=13,
        kwargs=dict(c_dim=0, img_resolution=32, img_channels=3, architecture="resnet", channel_base=128,
                    channel_max=16, num_fp16_res=1, conv_clamp=0.5, epilogue_kwargs=dict(mbstd_group_size=2)),
    ),
    "d_skip_cond": dict(
        kind="D",
        seed=14,
        kwargs=dict(c_dim=3, img_resolution=32, img_channels=3, architecture="skip", channel_base=128,
                    channel_max=16, conv_clamp=0.5, cmap_dim=8, mapping_kwargs=dict(num_layers=2),
                    block_kwargs=dict(freeze_layers=2),
                    epilogue_kwargs=dict(mbstd_group_size=2, mbstd_num_channels=2)),
    ),
}


@torch.no_grad()
def make_nontrivial(net: torch.nn.Module, g: torch.Generator) -> None:
    """Random values where the initial ones would let a wrong implementation pass, then every tensor
    rounded to float16 values."""
    modules = dict(net.named_modules())
    for name, p in net.named_parameters():
        owner = modules[name.rsplit(".", 1)[0]]
        if name.endswith("affine.bias"):
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
        elif name.endswith("bias"):
            # Dense layers scale their stored bias by lr_multiplier: aim at an effective bias of ~0.2.
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 / getattr(owner, "bias_gain", 1)))
        elif name.endswith("noise_strength"):
            p.copy_(torch.randn([], generator=g) * 0.5)
    for name, b in net.named_buffers():
        if name.endswith("w_avg"):
            b.copy_(torch.randn(b.shape, generator=g))
        elif name.endswith(".bias"):  # Freeze-D keeps frozen layers' tensors as buffers
            b.copy_(torch.randn(b.shape, generator=g) * 0.2)
    for t in list(net.parameters()) + list(net.buffers()):
        t.copy_(t.to(torch.float16).to(torch.float32))


def seeded_network(cls, spec: dict):
    """cls(**spec["kwargs"]) made under torch seed spec["seed"] and made non-trivial from a generator
    seeded 1000 + spec["seed"], which is returned with it: the inputs are drawn from it next."""
    torch.manual_seed(spec["seed"])
    net = cls(**spec["kwargs"]).eval()
    g = torch.Generator().manual_seed(1000 + spec["seed"])
    make_nontrivial(net, g)
    return net, g


def clamp_effect(net: torch.nn.Module, run) -> float:
    """Max change of the output when conv_clamp is switched off: shows that clamping is exercised."""
    clamped = [m for m in net.modules() if getattr(m, "conv_clamp", None) is not None]
    if not clamped:
        return 0.0
    ref = run()
    saved = [m.conv_clamp for m in clamped]
    for m in clamped:
        m.conv_clamp = None
    free = run()
    for m, v in zip(clamped, saved):
        m.conv_clamp = v
    return float((ref - free).abs().max())


@torch.no_grad()
def build_generator(networks, key: str, spec: dict):
    """The official generator's weights and outputs for one configuration."""
    G, g = seeded_network(networks.Generator, spec)
    z = torch.randn([BATCH_G, G.z_dim], generator=g)
    c = torch.randn([BATCH_G, G.c_dim], generator=g)
    call = dict(noise_mode="const", force_fp32=True)
    out = dict(z=z, c=c)
    for suffix, psi, cutoff in (("psi1", 1, None), ("psi07", 0.7, None), ("psi07_cutoff", 0.7, CUTOFF)):
        ws = G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
        out[f"ws_{suffix}"] = ws
        out[f"img_{suffix}"] = G.synthesis(ws, **call)
    effect = clamp_effect(G, lambda: G.synthesis(out["ws_psi1"], **call))
    summary = (f"num_ws {G.num_ws}, img std {out['img_psi1'].std():.3g}, |img| max {out['img_psi1'].abs().max():.3g}, "
               f"clamp changes img by {effect:.3g}")
    return G, out, dict(call, truncation_cutoff=CUTOFF), summary


@torch.no_grad()
def build_discriminator(networks, key: str, spec: dict):
    """The official discriminator's weights and logits for one configuration."""
    D, g = seeded_network(networks.Discriminator, spec)
    res = D.img_resolution
    # Smooth images plus noise, so the downsampling filters see structure at every scale.
    ramp = torch.linspace(-1, 1, res)
    smooth = torch.stack([ramp[None, :] * ramp[:, None], ramp[None, :].expand(res, res),
                          ramp[:, None].expand(res, res)])
    img = (smooth[:D.img_channels] * torch.randn([BATCH_D, D.img_channels, 1, 1], generator=g)
           + 0.5 * torch.randn([BATCH_D, D.img_channels, res, res], generator=g)).to(torch.float16)
    c = torch.randn([BATCH_D, D.c_dim], generator=g)
    call = dict(force_fp32=True)
    logits = D(img.to(torch.float32), c, **call)
    effect = clamp_effect(D, lambda: D(img.to(torch.float32), c, **call))
    summary = f"logits {[round(v, 3) for v in logits.flatten().tolist()]}, clamp changes logits by {effect:.3g}"
    return D, dict(img=img, c=c, logits=logits), call, summary


def build_fixture(networks, key: str, commit: str, out_dir: Path) -> None:
    spec = CONFIGS[key]
    build = build_generator if spec["kind"] == "G" else build_discriminator
    net, outputs, call, summary = build(networks, key, spec)
    tensors = {name: t.to(torch.float16) for name, t in net.state_dict().items()}
    tensors.update(outputs)
    metadata = {
        "class_name": "training.networks.Generator" if spec["kind"] == "G" else "training.networks.Discriminator",
        "init_kwargs": json.dumps(spec["kwargs"], sort_keys=True),
        "call": json.dumps(call, sort_keys=True),
        "commit": commit,
        "script": SCRIPT,
    }
    path = out_dir / f"stylegan2_ada_{key}.safetensors"
    params = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
    write_fixture(path, tensors, metadata, f"{params} values in the state dict, {summary}")


def main() -> None:
    args = official_arguments(__doc__.splitlines()[0], "NVlabs/stylegan2-ada-pytorch", ("training/networks.py",),
                              "stylegan2_ada_*.safetensors", CONFIGS)
    from training import networks  # the official code: importable only once --official is on the path

    commit = official_commit(args.official)
    for key in args.configs.split(","):
        build_fixture(networks, key, commit, args.out)


if __name__ == "__main__":
    main()
