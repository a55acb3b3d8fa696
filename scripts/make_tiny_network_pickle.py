"""Make a tiny network pickle with NVIDIA's own persistence code, as a test fixture for
``fastmine.checkpoints``: the layout of a real ``network-snapshot-*.pkl``.

Run it with an environment that can import the official code (torch, numpy, scipy), giving
a checkout of stylegan2-ada-pytorch (``--kind stylegan2-ada``) or of stylegan3 (``--kind
stylegan3``: a StyleGAN3-T generator; ``--kind stylegan3-sg2``: that repo's StyleGAN2). The
committed fixtures were made with::

    /work/ref/venv/bin/python scripts/make_tiny_network_pickle.py --kind stylegan2-ada --augment \
        --official /work/ref/NVlabs+stylegan2-ada-pytorch --out tests/fixtures/official/stylegan2_ada_tiny.pkl
    /work/ref/venv/bin/python scripts/make_tiny_network_pickle.py --kind stylegan3 --augment \
        --official /work/ref/NVlabs+stylegan3 --out tests/fixtures/official/stylegan3_t_tiny.pkl

Writes OUT (``pickle.dump`` of the dict the official training loop snapshots: G, D, G_ema,
augment_pipe, training_set_kwargs) and OUT with suffix ``.safetensors``: every network's
``state_dict()`` under ``<name>.`` (float16 where that is exact), plus metadata (JSON):
``init_kwargs`` and ``init_args`` (name -> the constructor arguments), ``state_dict_keys``
(name -> the keys in the official order), ``official_commit``, ``official_kind`` and
``script``. Every floating-point parameter and buffer of G, G_ema and D is first set to seeded
random values rounded to float16, so a test comparing tensors cannot pass by matching zeros
or ones, and G and G_ema differ.

The networks are pickled by the official persistence code, so the file has the official
layout, except for the module source each network carries: unless ``--keep-source`` is
given, that text is replaced by a stub naming the module and its persistent classes,
because the official license does not allow copying the source into this repository
(fastmine never executes it either way).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import pickle
import sys
from pathlib import Path

import torch
from reference_io import official_commit, write_safetensors

# name -> (G module, G class, D module, G kwargs): channel counts of 8 and one mapping layer
# keep the pickle under ~100 KB; the kwargs are built as EasyDicts below, as train.py does
KINDS = {
    "stylegan2-ada": ("training.networks", "Generator", "training.networks", dict(
        z_dim=8, w_dim=8, mapping_kwargs=dict(num_layers=1),
        synthesis_kwargs=dict(channel_base=64, channel_max=8, num_fp16_res=1, conv_clamp=256))),
    "stylegan3": ("training.networks_stylegan3", "Generator", "training.networks_stylegan2", dict(
        z_dim=8, w_dim=8, mapping_kwargs=dict(num_layers=1), channel_base=64, channel_max=8, num_layers=2,
        num_critical=1, magnitude_ema_beta=0.999)),
    "stylegan3-sg2": ("training.networks_stylegan2", "Generator", "training.networks_stylegan2", dict(
        z_dim=8, w_dim=8, mapping_kwargs=dict(num_layers=1), channel_base=64, channel_max=8,
        fused_modconv_default="inference_only", num_fp16_res=1, conv_clamp=256)),
}
COMMON = dict(c_dim=0, img_resolution=8, img_channels=1)
D_KWARGS = dict(channel_base=64, channel_max=8, block_kwargs={}, mapping_kwargs={}, epilogue_kwargs=dict(
    mbstd_group_size=2))


def easy(value, EasyDict):
    """Nested dicts as the official EasyDict (what a real pickle's init kwargs hold)."""
    if isinstance(value, dict):
        return EasyDict({k: easy(v, EasyDict) for k, v in value.items()})
    return value


def randomize(module: torch.nn.Module, generator: torch.Generator):
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=generator).half().to(t.dtype))


def half_where_exact(tensors: dict) -> dict:
    """float32 tensors that float16 holds exactly as float16: half the fixture's size, no loss."""
    return {name: t.half() if t.dtype == torch.float32 and torch.equal(t.half().float(), t) else t
            for name, t in tensors.items()}


def omit_sources(persistence, origin: str):
    """Give every persistent class a stub in place of its module's source (see the docstring)."""
    by_module: dict[str, list] = {}
    for cls in persistence._decorators:
        by_module.setdefault(cls.__mro__[1].__module__, []).append(cls)  # __mro__[1]: the decorated class
    for module, classes in by_module.items():
        stub = (f'"""The source of {module} ({origin}) is left out of this test fixture: its license does not '
                'allow copying it into fastmine."""\n'
                + "".join(f"class {name}: pass\n" for name in sorted(c._orig_class_name for c in classes)))
        for cls in classes:
            cls._orig_module_src = stub


def plain(value):
    """Init kwargs as JSON values (EasyDict -> dict, tuples -> lists, numpy -> Python)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", required=True, help="checkout of the official repository")
    parser.add_argument("--kind", choices=sorted(KINDS), default="stylegan2-ada")
    parser.add_argument("--out", required=True, help="pickle to write (the .safetensors goes beside it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-source", action="store_true",
                        help="keep the official module source in the pickle (for local checks; never commit it)")
    parser.add_argument("--augment", action="store_true",
                        help="include an AugmentPipe as training does with --aug=ada (adds ~30 KB of source)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(args.official).resolve()))
    import dnnlib  # the official checkout is importable only once it is on sys.path

    g_module, g_class, d_module, g_kwargs = KINDS[args.kind]
    torch.manual_seed(args.seed)
    Generator = getattr(importlib.import_module(g_module), g_class)
    Discriminator = importlib.import_module(d_module).Discriminator

    G = Generator(**easy(g_kwargs, dnnlib.EasyDict), **COMMON).eval().requires_grad_(False)
    D = Discriminator(**easy(D_KWARGS, dnnlib.EasyDict), **COMMON).eval().requires_grad_(False)
    augment_pipe = None
    if args.augment:
        AugmentPipe = importlib.import_module("training.augment").AugmentPipe
        augment_pipe = AugmentPipe(xflip=1, rotate90=1, brightness=1, imgfilter=1).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(args.seed)
    randomize(G, gen)
    G_ema = copy.deepcopy(G)
    randomize(G_ema, gen)
    randomize(D, gen)
    data = dict(G=G, D=D, G_ema=G_ema, augment_pipe=augment_pipe,
                training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="tiny.zip",
                                         use_labels=False, max_size=10, xflip=False, resolution=8))

    commit = official_commit(args.official)
    if not args.keep_source:
        omit_sources(importlib.import_module("torch_utils.persistence"),
                     f"{Path(args.official).resolve().name} at {commit}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        pickle.dump(data, f)

    nets = {k: v for k, v in data.items() if isinstance(v, torch.nn.Module)}
    tensors = {f"{name}.{k}": v for name, net in nets.items() for k, v in net.state_dict().items()}
    metadata = {
        "init_kwargs": json.dumps({name: plain(dict(net.init_kwargs)) for name, net in nets.items()}),
        "init_args": json.dumps({name: plain(list(net.init_args)) for name, net in nets.items()}),
        "state_dict_keys": json.dumps({name: list(net.state_dict()) for name, net in nets.items()}),
        "official_commit": commit,
        "official_kind": args.kind,
        "script": f"scripts/make_tiny_network_pickle.py --kind {args.kind} --seed {args.seed}"
                  + " --augment" * args.augment + " --keep-source" * args.keep_source,
    }
    write_safetensors(out.with_suffix(".safetensors"), half_where_exact(tensors), metadata)
    print(f"wrote {out} ({out.stat().st_size} bytes) and {out.with_suffix('.safetensors')} "
          f"({out.with_suffix('.safetensors').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
