#!/usr/bin/env python
"""Make the StudioGAN equivalence fixture from POSTECH-CVLab/PyTorch-StudioGAN's own code.

    python scripts/reference_studiogan.py --official /path/to/PyTorch-StudioGAN --out tests/fixtures/official/

For each configuration of CONFIGS (small widths; DCGAN's are fixed by its code) the script writes
the YAML, lets StudioGAN's ``src/config.py`` read it (``Configurations``: its defaults, the YAML over
them, ``define_modules``), builds the generator and discriminator of ``src/models/BACKBONE.py`` with
the arguments its ``models/model.py`` passes, and fills every tensor with FIXED values (a function
of the tensor's name and shape, see :func:`fixed_tensor`, repeated in tests/test_zoo_studiogan.py)
so that the fixture needs no weights. Then, in eval mode (batch norm on its running statistics,
spectral norm on the stored singular vectors, as StudioGAN evaluates), it records the generator's
images for fixed z and labels and the discriminator's ``adv_output`` on those images.

Only StudioGAN's network code runs: the modules its config.py imports for training (losses,
augmentations, misc's dataset helpers) are replaced by empty stand-ins, since they need packages
(torchvision, kornia, scipy) the networks do not.

Writes studiogan.safetensors: per configuration NAME, NAME.z, NAME.labels, NAME.images and
NAME.scores (float32 / int64); metadata: per configuration the YAML text and the tensor names,
shapes and dtypes of both networks' state dicts, the checkout's commit and this script.
"""

from __future__ import annotations

import json
import sys
import types
import zlib
from pathlib import Path

import torch
import yaml
from reference_io import official_arguments, official_commit, write_fixture

SCRIPT = "scripts/reference_studiogan.py"
BATCH = 3
POWER_ITERATIONS = 50
CALIBRATION = 64  # latents behind the batch-norm statistics
CONFIGS = {
    "sngan": {"DATA": {"name": "CIFAR10", "img_size": 32, "num_classes": 4},
              "MODEL": {"backbone": "resnet", "g_cond_mtd": "cBN", "d_cond_mtd": "PD", "apply_d_sn": True,
                        "z_dim": 16, "g_conv_dim": 8, "d_conv_dim": 8}},
    "biggan": {"DATA": {"name": "CIFAR10", "img_size": 32, "num_classes": 4},
               "MODEL": {"backbone": "big_resnet", "g_cond_mtd": "cBN", "d_cond_mtd": "PD", "apply_g_sn": True,
                         "apply_d_sn": True, "apply_attn": True, "attn_g_loc": [2], "attn_d_loc": [1], "z_dim": 16,
                         "g_shared_dim": 8, "g_conv_dim": 8, "d_conv_dim": 8, "apply_g_ema": True,
                         "g_ema_decay": 0.9999, "g_ema_start": 1000}},
    "reacgan64": {"DATA": {"name": "Tiny_ImageNet", "img_size": 64, "num_classes": 3},
                  "MODEL": {"backbone": "big_resnet", "g_cond_mtd": "cBN", "d_cond_mtd": "D2DCE",
                            "aux_cls_type": "TAC", "normalize_d_embed": True, "d_embed_dim": 16, "apply_g_sn": True,
                            "apply_d_sn": True, "apply_attn": True, "attn_g_loc": [3], "attn_d_loc": [2],
                            "g_act_fn": "Leaky_ReLU", "d_act_fn": "ELU", "z_dim": 20, "g_shared_dim": 8,
                            "g_conv_dim": 4, "d_conv_dim": 4}},
    "dcgan": {"DATA": {"name": "CIFAR10", "img_size": 32, "num_classes": 10},
              "MODEL": {"backbone": "deep_conv", "g_conv_dim": "N/A", "d_conv_dim": "N/A", "z_dim": 16}},
    "uncond": {"DATA": {"name": "CIFAR10", "img_size": 32, "num_classes": 10},
               "MODEL": {"backbone": "resnet", "z_dim": 16, "g_conv_dim": 8, "d_conv_dim": 8}},
}


def fixed_tensor(name: str, shape, dtype) -> torch.Tensor:
    """Deterministic, RNG-free values for tensor `name`: sines of a name-dependent frequency and phase,
    scaled by 1/sqrt(fan-in) (biases by 0.1); running variances in [0.5, 1], unit singular vectors, a
    zero step counter."""
    if dtype == torch.int64:
        return torch.zeros(shape, dtype=dtype)
    seed = zlib.crc32(name.encode())
    n = 1
    for d in shape:
        n *= d
    values = torch.sin(torch.arange(n, dtype=torch.float64) * (0.7 + (seed % 1000) / 997) + seed % 97)
    values = values.reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        values = 0.75 + 0.25 * values
    elif leaf == "running_mean" or leaf == "bias":
        values = 0.1 * values
    elif leaf in ("weight_u", "weight_v"):
        values = values / values.norm()
    elif leaf == "sigma":
        values = 0.5 + 0 * values + 0.25 * values
    elif len(shape) > 1:
        fan_in = n // shape[0]
        values = values * 2 / fan_in ** 0.5  # sines have variance 1/2: He's gain for ReLU
    elif leaf == "weight":  # batch-norm scales
        values = 1 + 0.2 * values
    return values.to(dtype)


def stub_training_modules():
    """Empty stand-ins for what src/config.py imports for training only (see the docstring)."""
    misc = types.ModuleType("utils.misc")

    class make_empty_object:
        pass

    class dummy_context_mgr:
        def __enter__(self):
            return None

        def __exit__(self, *exc):
            return False

    misc.make_empty_object, misc.dummy_context_mgr, misc.identity = make_empty_object, dummy_context_mgr, lambda x: x
    sys.modules["utils.misc"] = misc
    for name in ("losses", "diffaug", "cr", "simclr_aug", "ada_aug"):
        sys.modules[f"utils.{name}"] = types.ModuleType(f"utils.{name}")


def build(cfgs):
    M, D, MODEL, MODULES = cfgs.MODEL, cfgs.DATA, cfgs.MODEL, cfgs.MODULES
    module = __import__(f"models.{M.backbone}", fromlist=["something"])
    G = module.Generator(z_dim=M.z_dim, g_shared_dim=M.g_shared_dim, img_size=D.img_size, g_conv_dim=M.g_conv_dim,
                         apply_attn=M.apply_attn, attn_g_loc=M.attn_g_loc, g_cond_mtd=M.g_cond_mtd,
                         num_classes=D.num_classes, g_init=M.g_init, g_depth=M.g_depth, mixed_precision=False,
                         MODULES=MODULES, MODEL=MODEL)
    Dis = module.Discriminator(img_size=D.img_size, d_conv_dim=M.d_conv_dim, apply_d_sn=M.apply_d_sn,
                               apply_attn=M.apply_attn, attn_d_loc=M.attn_d_loc, d_cond_mtd=M.d_cond_mtd,
                               aux_cls_type=M.aux_cls_type, d_embed_dim=M.d_embed_dim,
                               normalize_d_embed=M.normalize_d_embed, num_classes=D.num_classes, d_init=M.d_init,
                               d_depth=M.d_depth, mixed_precision=False, MODULES=MODULES, MODEL=MODEL)
    return G, Dis


def fill(net, prefix: str) -> dict:
    """Give every parameter and buffer of `net` its fixed values, then each spectral norm singular
    vectors (u, v) converged on its weight (a trained network's are: random ones would make sigma tiny).
    Returns the state dict's layout for the metadata."""
    state = net.state_dict()
    with torch.no_grad():
        for name, t in state.items():
            t.copy_(fixed_tensor(name, tuple(t.shape), t.dtype))
        for name, t in state.items():
            if name.endswith(".weight_orig"):
                base = name[: -len("weight_orig")]
                w = t.transpose(0, 1).flatten(1) if isinstance(net.get_submodule(base[:-1]),
                                                               torch.nn.ConvTranspose2d) else t.flatten(1)
                u = state[base + "weight_u"]
                for _ in range(POWER_ITERATIONS):
                    v = torch.nn.functional.normalize(w.t() @ u, dim=0, eps=1e-6)
                    u = torch.nn.functional.normalize(w @ v, dim=0, eps=1e-6)
                state[base + "weight_u"].copy_(u)
                state[base + "weight_v"].copy_(v)
    return {name: [list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in state.items()}


def standing_statistics(net, *inputs):
    """Batch-norm running statistics measured on `inputs` (StudioGAN's "standing statistics"), so that
    eval mode normalises the activations it sees; the spectral norm vectors are kept as they are."""
    vectors = {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("weight_u", "weight_v"))}
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the calibration batch
    net.train()
    with torch.no_grad():
        net(*inputs)
        for k, v in net.state_dict().items():
            if k in vectors:
                v.copy_(vectors[k])
    net.eval()


def buffers(net, prefix: str) -> dict:
    """The fixture's copy of `net`'s buffers (running statistics, singular vectors): the test takes the
    parameters from fixed_tensor and these from the fixture."""
    params = {n for n, _ in net.named_parameters()}
    return {f"{prefix}.{k}": v.clone() for k, v in net.state_dict().items()
            if k not in params and v.dtype != torch.int64}


def main():
    args = official_arguments(__doc__.splitlines()[1], "POSTECH-CVLab/PyTorch-StudioGAN",
                              ("src/models/big_resnet.py", "src/config.py"), "studiogan.safetensors", CONFIGS)
    sys.path.insert(0, str((args.official / "src").resolve()))
    stub_training_modules()
    import config as studiogan_config  # StudioGAN's src/config.py

    tensors, layouts, yamls = {}, {}, {}
    for name in args.configs.split(","):
        text = yaml.safe_dump(CONFIGS[name], sort_keys=False)
        path = args.out / f".{name}.yaml"
        path.write_text(text)
        try:
            cfgs = studiogan_config.Configurations(str(path))
        finally:
            path.unlink()
        G, Dis = build(cfgs)
        layouts[name] = {"G": fill(G, f"{name}.G"), "D": fill(Dis, f"{name}.D")}
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(CALIBRATION, cfgs.MODEL.z_dim, generator=gen)
        labels = torch.arange(CALIBRATION) % cfgs.DATA.num_classes
        standing_statistics(G, z, labels)
        with torch.no_grad():
            standing_statistics(Dis, G(z, labels, eval=True), labels)
        tensors.update(buffers(G, f"{name}.G") | buffers(Dis, f"{name}.D"))
        z = torch.randn(BATCH, cfgs.MODEL.z_dim, generator=gen)
        labels = torch.arange(BATCH) % cfgs.DATA.num_classes
        with torch.no_grad():
            images = G(z, labels, eval=True)
            scores = Dis(images, labels, eval=True)["adv_output"]
        tensors.update({f"{name}.z": z, f"{name}.labels": labels, f"{name}.images": images.float(),
                        f"{name}.scores": scores.float()})
        yamls[name] = text
        print(f"{name}: images {tuple(images.shape)} in [{images.min():.3f}, {images.max():.3f}] std "
              f"{images.std():.3f} (across the batch {images.std(0).mean():.3f}), scores "
              f"{[round(s, 4) for s in scores.tolist()]}")
    metadata = {"configs": json.dumps(yamls), "layouts": json.dumps(layouts),
                "official_commit": official_commit(args.official), "script": SCRIPT}
    write_fixture(Path(args.out) / "studiogan.safetensors", tensors, metadata, f"configs {args.configs}")


if __name__ == "__main__":
    main()
