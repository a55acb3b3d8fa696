"""What `fastmine bench` times and how both sides are built.

A configuration is a ``spec`` dict: a built-in one (``{"label", "name"}``, optionally
``image_size`` / ``width`` to shrink it) or the user's config (``{"label", "config",
"overrides"}``). Either way fastmine's side is a :class:`fastmine.runs.Run` built by
``runs.prepare(cfg, Inputs(...), write=False)`` (no run folder); the eager reference
(``reference.py``) is built from deep copies of a fresh fastmine trainer's parts.

The reference mirrors mining: miners in front of frozen generators, one or several (kinds
single and multi). Fusion and conditional pretraining train a generator; their
configurations are timed without a reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fastmine import distributed
from fastmine.apps.presets import COMMAND_DEFAULTS
from fastmine.config import RunConfig, fill_defaults, from_dict, load_config, merge, parse_overrides, validate
from fastmine.methods import Method, get_method
from fastmine.multi import MultiSampler
from fastmine.runs import Inputs, Run, new_generator, prepare
from fastmine.samplers import GeneratorAdapter
from fastmine.trainer import Trainer
from fastmine.zoo import StyleGANCritic, StyleGANSource
from fastmine_benchmarks.reference import HostDraws, ReferenceMining

LATENT = 128
# on the CPU the DCGAN-64 shrinks to 32 px and width 16 so that a run takes minutes
SIZES = {"cpu": {"image_size": 32, "width": 16}, "cuda": {"image_size": 64, "width": 64}}
TARGET_IMAGES = 1024
CLASSES = 10  # conditional pretraining: random labels of this many classes


# StyleGAN2 as FFHQ-256's official config (channel_base 16384, channel_max 512, 8 mapping layers,
# 512-d z and w), mined in w+ with the StyleGAN2 discriminator as the critic; 1024 px on the GPU with
# --image-size 1024 (channel_base 32768 there, as the official 1024 px networks); on the CPU 32 px
# at channel_max 64 and a 2-layer mapping so that a block takes seconds
STYLEGAN_SIZES = {"cpu": {"image_size": 32, "width": 64}, "cuda": {"image_size": 256, "width": 512}}


@dataclass(frozen=True)
class BuiltIn:
    """A built-in configuration: DCGAN generator(s) and critic, 128-d latent, the method's
    own settings (MineGAN's: n_critic 5, λ 10), random target images; or a StyleGAN2 source
    (``family="stylegan2"``, see STYLEGAN_SIZES)."""
    method: str
    generators: int     # frozen source generators (fusion: the sources it fuses)
    batch: int          # batch size; several generators: K supersamples
    processes: int = 1  # fastmine's processes: >1 splits the frozen generator by FSDP2 (torchrun on 127.0.0.1)
    family: str = "dcgan"


CONFIGS = {
    "single-b64": BuiltIn("minegan_noft", 1, 64),
    "single-b256": BuiltIn("minegan_noft", 1, 256),
    "multi-n4": BuiltIn("minegan_multi", 4, 64),
    "multi-n8": BuiltIn("minegan_multi", 8, 64),
    # each process draws half of the same global batch (dist.streams=2), against the one-process reference
    "sharded-b64": BuiltIn("minegan_noft", 1, 64, processes=2),
    "fuse-n2": BuiltIn("fuse", 2, 64),
    "conditional-b64": BuiltIn("pretrain_conditional", 0, 64),
    "stylegan2-wplus-b16": BuiltIn("minegan_noft", 1, 16, family="stylegan2"),
}
# what a --variant may change in a built-in configuration: its data, sources and networks are its own
VARIANT_SECTIONS = ("train", "loss", "augment", "regularize", "perf", "log", "multi", "miner", "s3", "fusion", "dist")
REFERENCE_KINDS = ("single", "multi")


def is_builtin(spec) -> bool:
    return spec.get("config") is None and not spec.get("overrides")


def processes(spec) -> int:
    return CONFIGS[spec["name"]].processes if is_builtin(spec) else 1


def method_of(spec) -> Method:
    if is_builtin(spec):
        return get_method(CONFIGS[spec["name"]].method)
    return get_method(load_user_config(spec.get("config"), spec.get("overrides", [])).method)


def has_reference(spec) -> bool:
    """Whether the eager reference runs this configuration's steps (else it is timed alone)."""
    return method_of(spec).kind in REFERENCE_KINDS


# --------------------------------------------------------------------------- configs
def size_of(spec, device) -> dict:
    stylegan = is_builtin(spec) and CONFIGS[spec["name"]].family == "stylegan2"
    size = (STYLEGAN_SIZES if stylegan else SIZES)["cuda" if str(device).startswith("cuda") else "cpu"]
    return {k: spec.get(k) or v for k, v in size.items()}


def builtin_config(spec, device, variant=()) -> RunConfig:
    """The RunConfig of a built-in configuration, ``variant`` overrides applied."""
    b, size = CONFIGS[spec["name"]], size_of(spec, device)
    changes = parse_overrides(variant)
    outside = sorted(set(changes) - set(VARIANT_SECTIONS))
    if outside:
        raise ValueError(f"variants of the built-in configurations set keys of {', '.join(VARIANT_SECTIONS)}; "
                         f"got {', '.join(outside)}")
    base = {"method": b.method, "device": device, "seed": 0,
            "model": {"latent_dim": LATENT, "width": size["width"]},
            "train": {"batch_size": b.batch, "steps": 10**6}, "log": {"progress": False},
            "miner": {"init": "normal"}}  # what is timed is an update; the inversion start is set-up
    if b.processes > 1:
        world = distributed.launched_world_size()
        if world not in (1, b.processes):
            raise ValueError(f"{spec['name']} runs on {b.processes} processes, not {world}")
        base["train"]["batch_size"] = b.batch // world
        base["dist"] = {"streams": b.processes, "shard": "fsdp2" if world > 1 else "none"}
        if world > 1:
            base["device"] = "auto"  # each rank on the accelerator's device for it
    return from_dict(RunConfig, merge(base, changes))


def builtin_inputs(spec, cfg: RunConfig, device) -> Inputs:
    """Random frozen DCGAN generators and random target images (labels for conditional pretraining)."""
    b, side = CONFIGS[spec["name"]], size_of(spec, device)["image_size"]
    target = torch.rand(TARGET_IMAGES, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1
    if b.family == "stylegan2":
        return stylegan_inputs(size_of(spec, device), target, device)
    gens = []
    for i in range(b.generators):
        torch.manual_seed(100 + i)
        gens.append(new_generator(target, cfg.model))
    if b.method == "pretrain_conditional":
        labels = torch.randint(CLASSES, (TARGET_IMAGES,), generator=torch.Generator().manual_seed(2))
        return Inputs(target=target, labels=labels)
    if b.method == "fuse":
        return Inputs(generators=gens)
    return Inputs(target=target, generators=gens)


def stylegan_inputs(size: dict, target, device) -> Inputs:
    """A random StyleGAN2 (official architecture at ``size``) in w+ and its discriminator."""
    side, width = size["image_size"], size["width"]
    base = 32768 if side >= 1024 else 16384
    big = str(device).startswith("cuda")
    torch.manual_seed(100)
    source = StyleGANSource("stylegan2", {
        "z_dim": width, "c_dim": 0, "w_dim": width, "img_resolution": side, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 8 if big else 2},
        "synthesis_kwargs": {"channel_base": base, "channel_max": width}}, latent="w+").calibrate(n=1000)
    critic = StyleGANCritic("stylegan2", {"c_dim": 0, "img_resolution": side, "img_channels": 3,
                                          "channel_base": base, "channel_max": width})
    adapter = GeneratorAdapter(source, source.latent_spec, build={"arch": source.arch()})
    return Inputs(target=target, generators=[adapter], critic=critic)


def load_user_config(config, overrides) -> RunConfig:
    """The user's config with the defaults of the command that runs its method (as `fastmine
    <command>` would), validated before any process starts."""
    cfg = load_config(config, list(overrides), defaults=COMMAND_DEFAULTS["mine"])
    method = get_method(cfg.method)
    command = next((c for c in method.commands if c in COMMAND_DEFAULTS), "mine")
    if command != "mine":
        cfg = load_config(config, list(overrides), defaults=COMMAND_DEFAULTS[command])
    if method.kind in REFERENCE_KINDS and method.generator_trains == "always":
        raise ValueError(f"`fastmine bench` times single-generator steps against the eager reference, which mines "
                         f"(miners in front of frozen generators); method {cfg.method!r} trains the generator. Use "
                         "minegan_noft, reprogram, minegan_multi (or minegan / minegan_pp, timed in their mining "
                         "phase), or fuse / pretrain_conditional (timed without the reference)")
    return cfg


def user_config(spec, device, variant=()) -> RunConfig:
    cfg = load_user_config(spec.get("config"), list(spec.get("overrides", [])) + list(variant))
    if device:
        cfg.device = device
    cfg.log.progress = False
    cfg.train.steps = max(cfg.train.steps, 10**6)
    cfg.train.mine_steps = 10**6  # minegan / minegan_pp: the mining phase throughout
    cfg.miner.init = "normal"  # what is timed is an update; the inversion start is set-up
    return cfg


def check_spec(spec, device, variants=((),)):
    """Every config ``spec`` × ``variants`` describes, validated before any process starts."""
    for variant in variants:
        cfg = builtin_config(spec, device, variant) if is_builtin(spec) else user_config(spec, device, variant)
        validate(fill_defaults(cfg, get_method(cfg.method)))


# --------------------------------------------------------------------------- the two sides
def build_run(spec, device, variant=()) -> Run:
    """fastmine's side of ``spec`` (not trained), ``variant`` overrides applied."""
    if is_builtin(spec):
        cfg = builtin_config(spec, device, variant)
        inputs = builtin_inputs(spec, cfg, device)
    else:
        cfg, inputs = user_config(spec, device, variant), Inputs()
    if cfg.perf.threads is None:  # the bench set the threads it measures with (--threads) before building
        cfg.perf.threads = torch.get_num_threads()
    run = prepare(cfg, inputs, write=False)
    if run.trainer.world > 1 and processes(spec) == 1:
        raise ValueError("`fastmine bench` runs your config in one process (the sharded-b64 configuration and "
                         "benchmarks/bench_sharded.py measure sharded generators)")
    return run


def build_fastmine(spec, device, variant=()) -> Trainer:
    return build_run(spec, device, variant).trainer


def build_reference(trainer: Trainer, draws=None) -> ReferenceMining:
    """The eager reference over deep copies of a (fresh) fastmine trainer's parts."""
    cfg, s = trainer.cfg, trainer.sampler
    multi = isinstance(s, MultiSampler)
    if not multi and getattr(s, "miner", None) is None:
        raise ValueError(f"the eager reference mines (miners in front of frozen generators); method {cfg.method!r} "
                         "has no miner")
    samplers = list(s.samplers) if multi else [s]
    t, loss = cfg.train, cfg.loss
    if draws is None:
        draws = HostDraws(trainer.data.data, t.batch_size, s.seed_dim, s.seed_dist, trainer.device)
    return ReferenceMining(samplers, trainer.critic, lambda x: x.miner.parameters(), draws,
                           batch_size=t.batch_size, n_critic=t.n_critic, gp_weight=loss.gp_weight,
                           gp_center=loss.gp_center, lr=t.lr, critic_lr=t.critic_lr, betas=t.betas,
                           rule=s.rule if multi else "permute")
