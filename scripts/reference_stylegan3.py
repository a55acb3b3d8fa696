#!/usr/bin/env python
"""Make the StyleGAN3 equivalence fixtures from NVlabs' official stylegan3 code.

    /work/ref/venv/bin/python scripts/reference_stylegan3.py --official /path/to/NVlabs/stylegan3 \
        --out tests/fixtures/official/

Runs under a Python that can import the official checkout (its torch_utils falls back to the
plain-PyTorch reference ops on the CPU); needs torch, numpy and scipy, not safetensors nor fastmine.
For each configuration (T: 3x3 convolutions; R: 1x1 convolutions and radial filters, with labels)
it builds the official training.networks_stylegan3.Generator at 32 px from a fixed seed, rounds
every learned tensor to float16 values, replaces the initial values that would hide a mistake
(zero biases, w_avg 0, magnitude_ema 1, the Fourier input's zero affine weights, the identity
input transform) by random ones, and writes stylegan3_<config>.safetensors with:
- the state dict under the official names: learned tensors and the random buffers as float16, the
  designed FIR filters as float32 (exactly as the official code designs them);
- z, c, ws_psi1, ws_psi07, ws_psi07_cutoff (psi 0.7 on the first CUTOFF ws only), img_psi1,
  img_psi07 as float32, computed by the official code in float32;
- metadata: class_name, init_kwargs (JSON), commit of the official checkout, script, cutoff.
It also writes stylegan3_layouts.safetensors: the layout of four full-size configurations of the
published pickles (T and R at 1024, T at 256; see build_layouts), built but not run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_stylegan3.py"
CLASS_NAME = "training.networks_stylegan3.Generator"
CUTOFF = 3
BATCH = 2

# Small but complete: default margin (so some layers crop), a channel_base that makes the channel
# counts change across layers (T: 32, 32, 23, 13, 8, 8, 3; R: 32, 32, 32, 27, 16, 16, 3), and for T
# a conv_clamp that clips a share of the activations.
CONFIGS = {
    "t": dict(
        z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=2), channel_base=256, channel_max=32, num_layers=6,
        magnitude_ema_beta=0.999, conv_clamp=1.0,
    ),
    "r": dict(
        z_dim=32, c_dim=4, w_dim=32, img_resolution=32, img_channels=3,
        mapping_kwargs=dict(num_layers=3), channel_base=512, channel_max=32, num_layers=6,
        conv_kernel=1, use_radial_filters=True, conv_clamp=None,
    ),
}
SEEDS = {"t": 3, "r": 4}
# Full-size configurations of the published pickles, for the layout only (names, shapes, filters,
# resampling and padding of every layer): built, not run.
LAYOUTS = {
    "t1024": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), channel_base=32768, channel_max=512),
    "r1024": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3,
                  mapping_kwargs=dict(num_layers=2), channel_base=65536, channel_max=1024, conv_kernel=1,
                  use_radial_filters=True),
    "t256": dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=256, img_channels=3,
                 mapping_kwargs=dict(num_layers=2), channel_base=16384, channel_max=512),
}
LAYER_ATTRIBUTES = ("in_size", "out_size", "up_factor", "down_factor", "up_taps", "down_taps", "padding", "use_fp16",
                    "is_critically_sampled", "down_radial")


def rotation_translation(angle_deg: float, tx: float, ty: float, scale: float) -> torch.Tensor:
    a = math.radians(angle_deg)
    m = torch.eye(3)
    cos, sin = math.cos(a) * scale, math.sin(a) * scale
    m[0, 0], m[0, 1], m[1, 0], m[1, 1] = cos, -sin, sin, cos
    m[0, 2], m[1, 2] = tx, ty
    return m


@torch.no_grad()
def make_nontrivial(G: torch.nn.Module, g: torch.Generator) -> None:
    """Round learned tensors to float16 values and randomise the initial values a test could miss."""
    for name, p in G.named_parameters():
        if name.endswith(".bias") and not p.abs().gt(0).any():
            # mapping layers scale their stored bias by lr_multiplier (0.01): aim at an effective 0.2
            gain = G.get_submodule(name.rsplit(".", 1)[0]).bias_gain if name.startswith("mapping.") else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 / gain))
        elif name.endswith("affine.bias"):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    inp = G.synthesis.input
    # weight_init=0 would make the Fourier features' rotation and translation ignore w
    inp.affine.weight.copy_(torch.randn(inp.affine.weight.shape, generator=g) * 0.5)
    # a scaled transform pushes some frequencies past the bandwidth, so their amplitudes are damped
    inp.transform.copy_(rotation_translation(17.0, 0.1, -0.05, 1.4))
    for name, b in G.named_buffers():
        if name.endswith("magnitude_ema"):
            b.copy_(torch.rand([], generator=g) * 2 + 0.3)
    G.mapping.w_avg.copy_(torch.randn(G.mapping.w_avg.shape, generator=g))
    for name, t in list(G.named_parameters()) + list(G.named_buffers()):
        if not name.endswith("_filter"):
            t.copy_(t.to(torch.float16).to(torch.float32))


def build_fixture(N, key: str, commit: str, out: Path) -> None:
    kwargs = CONFIGS[key]
    torch.manual_seed(SEEDS[key])
    G = N.Generator(**kwargs).eval()
    g = torch.Generator().manual_seed(100 + SEEDS[key])
    make_nontrivial(G, g)

    z = torch.randn([BATCH, G.z_dim], generator=g)
    c = torch.randn([BATCH, G.c_dim], generator=g)
    with torch.no_grad():
        ws_psi1 = G.mapping(z, c, truncation_psi=1)
        ws_psi07 = G.mapping(z, c, truncation_psi=0.7)
        ws_psi07_cutoff = G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=CUTOFF)
        img_psi1 = G.synthesis(ws_psi1, noise_mode="const")
        img_psi07 = G(z, c, truncation_psi=0.7, noise_mode="const")

    tensors = {}
    for name, t in G.state_dict().items():
        tensors[name] = t.clone() if name.endswith("_filter") else t.to(torch.float16)
    tensors.update(z=z, c=c, ws_psi1=ws_psi1, ws_psi07=ws_psi07, ws_psi07_cutoff=ws_psi07_cutoff,
                   img_psi1=img_psi1, img_psi07=img_psi07)
    metadata = {
        "class_name": CLASS_NAME,
        "init_kwargs": json.dumps(kwargs, sort_keys=True),
        "commit": commit,
        "script": SCRIPT,
        "cutoff": str(CUTOFF),
    }
    path = out / f"stylegan3_{key}.safetensors"
    clamped = ""
    if kwargs.get("conv_clamp") is not None:
        clamped = f", |img| max {img_psi1.abs().max():.3g}"
    write_fixture(path, tensors, metadata, f"{sum(p.numel() for p in G.parameters())} parameters, "
                  f"num_ws {G.num_ws}, img std {img_psi1.std():.3g}{clamped}")


def build_layouts(N, commit: str, out: Path) -> None:
    """stylegan3_layouts.safetensors: per full-size config, its filters as float32 tensors under
    '<config>/<name>', and in the metadata its init_kwargs, state-dict names and shapes, and layer
    attributes (LAYER_ATTRIBUTES, as JSON)."""
    tensors, layouts = {}, {}
    for key, kwargs in LAYOUTS.items():
        G = N.Generator(**kwargs)
        state = G.state_dict()
        tensors.update({f"{key}/{name}": t.clone() for name, t in state.items() if name.endswith("_filter")})
        layers = {}
        for name in G.synthesis.layer_names:
            layer = getattr(G.synthesis, name)
            layers[name] = {a: np.asarray(getattr(layer, a)).tolist() for a in LAYER_ATTRIBUTES}
        layouts[key] = {"init_kwargs": kwargs, "shapes": {name: list(t.shape) for name, t in state.items()},
                        "layers": layers}
    metadata = {"class_name": CLASS_NAME, "layouts": json.dumps(layouts, sort_keys=True), "commit": commit,
                "script": SCRIPT}
    path = out / "stylegan3_layouts.safetensors"
    write_fixture(path, tensors, metadata, f"{len(tensors)} filters of {len(LAYOUTS)} configurations")


def main() -> None:
    args = official_arguments(__doc__.splitlines()[0], "NVlabs/stylegan3", ("training/networks_stylegan3.py",),
                              "stylegan3_*.safetensors", CONFIGS)
    from training import networks_stylegan3  # the official code, importable only from --official

    commit = official_commit(args.official)
    for key in args.configs.split(","):
        build_fixture(networks_stylegan3, key, commit, args.out)
    build_layouts(networks_stylegan3, commit, args.out)


if __name__ == "__main__":
    main()
