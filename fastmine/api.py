"""The Python entry points: build a run from parts (or from a config) and train it.

    import fastmine as fm
    G = fm.load_generator("runs/source/model.safetensors")
    target = fm.load_digits(labels=[9], limit=100, size=16)
    result = fm.mine(G, target, steps=300, critic="runs/source/model.safetensors")
    images = result.sampler.sample(64, seed=0)
    fm.save_sampler("mined.safetensors", result.sampler)
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .config import MinerConfig, ModelConfig, RunConfig, TrainConfig, dump_config, from_dict
from .data import load_data
from .methods import fill_defaults, get_method
from .miner import Miner
from .models import (GeneratorAdapter, Sampler, has_critic, import_object, load_critic, load_generator,
                     load_sampler, read_info, save_sampler)
from .nets import build_critic, build_generator, reinitialize
from .trainer import ParamGroup, Trainer


@dataclass
class Result:
    sampler: Sampler
    critic: nn.Module
    metrics: dict
    run_dir: Path | None = None

    @property
    def model_path(self):
        return self.run_dir / "model.safetensors" if self.run_dir else None


def resolve_device(device):
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def critic_arch_for(data: torch.Tensor, model: ModelConfig) -> dict:
    if data.ndim == 4:
        if data.shape[-1] != data.shape[-2]:
            raise ValueError(f"the built-in critic needs square images, got {tuple(data.shape[1:])}")
        return {"type": "dcgan", "image_size": int(data.shape[-1]), "channels": int(data.shape[1]), "width": model.width}
    if data.ndim == 2:
        return {"type": "mlp", "in_dim": int(data.shape[1]), "width": model.width, "depth": model.depth}
    raise ValueError(f"data must be images [N, C, H, W] or vectors [N, d], got shape {tuple(data.shape)}")


def generator_arch_for(data: torch.Tensor, model: ModelConfig) -> dict:
    if data.ndim == 4:
        return {"type": "dcgan", "latent_dim": model.latent_dim, "image_size": int(data.shape[-1]),
                "channels": model.channels or int(data.shape[1]), "width": model.width, "norm": model.norm}
    return {"type": "mlp", "latent_dim": model.latent_dim, "out_dim": model.out_dim or int(data.shape[1]),
            "width": model.width, "depth": model.depth}


def new_generator(data, model: ModelConfig | None = None) -> GeneratorAdapter:
    """A fresh project generator sized for ``data`` (trainable)."""
    model = model or ModelConfig()
    arch = generator_arch_for(data, model)
    return GeneratorAdapter(build_generator(arch), {"z": ((model.latent_dim,), "normal")}, build={"arch": arch}, frozen=False)


def _check_output_matches(sampler: Sampler, data: torch.Tensor, device):
    with torch.no_grad():
        was = sampler.training
        sampler.eval()
        out = sampler(sampler.draw_seeds(2, torch.Generator(device).manual_seed(0), device))
        sampler.train(was)
    if tuple(out.shape[1:]) != tuple(data.shape[1:]):
        hint = f"; set data.size={out.shape[-1]}" if out.ndim == 4 and data.ndim == 4 else ""
        raise ValueError(f"the generator makes samples of shape {tuple(out.shape[1:])} but the target data has "
                         f"shape {tuple(data.shape[1:])}{hint}")


def resolve_run_config(method, seed, miner_cfg=None, model_cfg=None, train_cfg=None, train_kwargs=None) -> RunConfig:
    """The settings of a Python-API run: sections given as dataclasses or dicts (copied, never
    changed), ``train_kwargs`` over ``train_cfg``, ``None`` fields from the method's defaults."""
    miner_cfg = from_dict(MinerConfig, miner_cfg) if isinstance(miner_cfg, dict) else copy.deepcopy(miner_cfg or MinerConfig())
    tcfg = from_dict(TrainConfig, train_cfg) if isinstance(train_cfg, dict) else copy.deepcopy(train_cfg or TrainConfig())
    tcfg = dataclasses.replace(tcfg, **(train_kwargs or {}))
    rc = RunConfig(method=method, seed=seed, train=tcfg, miner=miner_cfg, model=model_cfg or ModelConfig())
    return fill_defaults(rc)


@dataclass
class Run:
    """A run built and ready to train: its :class:`Trainer` and what to write after it.

    ``prepare(...)`` builds one without training (``fastmine bench`` times its steps);
    ``fit()`` trains it and writes the model file, which is what ``train(...)`` does."""

    trainer: Trainer
    finish: Callable[[Trainer], None]  # writes the model file(s) once trained
    resume: bool = False

    def fit(self) -> Result:
        metrics = self.trainer.fit(resume=self.resume)
        self.trainer.sampler.eval()
        self.finish(self.trainer)
        return Result(self.trainer.sampler, self.trainer.critic, metrics, self.trainer.run_dir)


def train(generator, target, **kwargs) -> Result:
    """Train any method on ``target`` from ``generator`` (arguments: :func:`prepare`)."""
    return prepare(generator, target, **kwargs).fit()


def prepare(generator, target, *, method="minegan_noft", miner=None, critic=None, run_dir=None, seed=0,
            device=None, miner_cfg: MinerConfig | dict | None = None, model_cfg: ModelConfig | None = None,
            train_cfg: TrainConfig | dict | None = None, resume=False, callbacks=(), accelerator=None,
            run_config: RunConfig | None = None, allow_pickle=False, dist_cfg=None, **train_kwargs) -> Run:
    """Build (not train) any method on ``target`` (a tensor [N, ...] or a folder path) from ``generator``.

    generator: a :class:`GeneratorAdapter`, a path or factory for :func:`load_generator`, a
        :class:`Sampler` (e.g. a loaded mined file, to finetune it), or None with method
        "scratch" (a fresh project generator sized for the data).
    miner: None (a fastmine :class:`Miner` from ``miner_cfg``) or your own ``nn.Module``
        mapping seeds [N, seed_dim] to the latent(s) (give ``miner_cfg={"seed_dim": d}``).
    critic: an ``nn.Module``, a file holding one, or None (the critic stored with the
        generator when there is one, else a fresh project critic).
    train_kwargs: any :class:`TrainConfig` field (steps=, lr=, gp_weight=, ...).
    accelerator, dist_cfg: placement across processes (:mod:`fastmine.distributed`); a
        :class:`DistConfig` (or dict) with ``shard="fsdp2"|"zero3"`` shards the frozen generator.
    """
    m = get_method(method)
    device = resolve_device(device)
    rc = resolve_run_config(method, seed, miner_cfg, model_cfg, train_cfg, train_kwargs)
    tcfg, miner_cfg, model_cfg = rc.train, rc.miner, rc.model
    if isinstance(target, (str, Path)):
        from .data import load_image_folder

        target = load_image_folder(target, size=rc.data.size)
    target = torch.as_tensor(target).float()
    if len(target) == 0:
        raise ValueError("the target data is empty")

    torch.manual_seed(seed)
    source_critic = None
    # ---- the generator (and, from a stored file, its miner and critic)
    if isinstance(generator, Sampler):
        sampler = generator
        adapter = sampler.generator
        if miner is not None:
            raise ValueError("pass either a Sampler (with its miner) or a miner, not both")
    else:
        if generator is None:
            if not m.fresh_generator:
                raise ValueError(f"method {method!r} needs a pretrained generator (source.generator)")
            adapter = new_generator(target, model_cfg)
        elif isinstance(generator, GeneratorAdapter):
            adapter = generator
        else:
            if isinstance(generator, (str, Path)) and Path(generator).is_file():
                source_critic = generator
            adapter = load_generator(str(generator) if isinstance(generator, Path) else generator, allow_pickle=allow_pickle)
        adapter = adapter.to(device)
        if m.fresh_generator:
            reinitialize(adapter.module, seed)
        sampler = None
    adapter.freeze(m.generator_trains != "always")
    if sampler is None:
        if m.uses_miner:
            if miner is None and miner_cfg.module:
                miner = import_object(miner_cfg.module)()
            if miner is None:
                miner = Miner(adapter.latent_spec, seed_dim=miner_cfg.seed_dim, seed_dist=miner_cfg.seed_dist,
                              hidden=miner_cfg.hidden, layers=miner_cfg.layers, init=miner_cfg.init)
            sampler = Sampler(adapter, miner, seed_dim=miner_cfg.seed_dim, seed_dist=miner_cfg.seed_dist)
        else:
            sampler = Sampler(adapter)
    elif m.uses_miner and sampler.miner is None:
        raise ValueError(f"method {method!r} needs a miner but the given sampler has none")
    sampler = sampler.to(device)
    from . import distributed
    from .config import DistConfig

    dist_cfg = from_dict(DistConfig, dist_cfg) if isinstance(dist_cfg, dict) else (dist_cfg or DistConfig())
    shard = distributed.resolve_shard(dist_cfg.shard, accelerator)
    if shard != "none":  # placement only: the frozen generator's weights are split over the ranks
        distributed.shard_generator(adapter, shard, device, ds_config=distributed.read_ds_config(dist_cfg))
    _check_output_matches(sampler, target, device)

    # ---- the critic
    if critic is None and source_critic and has_critic(source_critic) and not m.fresh_critic:
        critic = source_critic
    critic_module, critic_build = resolve_critic(critic if not m.fresh_critic or isinstance(critic, nn.Module) else None,
                                                 target, model_cfg, allow_pickle=allow_pickle)
    if m.fresh_critic:
        reinitialize(critic_module, seed + 1)
    critic_module = critic_module.to(device)
    critic_params = list(critic_module.parameters())
    if m.freeze_critic_blocks:
        blocks = getattr(critic_module, "blocks", None)
        if blocks is None:
            raise ValueError("FreezeD needs a critic with a `.blocks` sequence (its layers, input first)")
        k = tcfg.freeze_critic_blocks if tcfg.freeze_critic_blocks is not None else len(blocks) // 2
        if not 0 < k < len(blocks):
            raise ValueError(f"train.freeze_critic_blocks must be in 1..{len(blocks) - 1}, got {k}")
        frozen = {id(p) for b in list(blocks)[:k] for p in b.parameters()}
        critic_params = [p for p in critic_params if id(p) not in frozen]
    s3_masks = None
    if m.sparse_critic:  # S³ (§3.4.2): masks chosen once on the target data, kept in both stages
        from .sparse import apply_s3

        s3_masks = apply_s3(critic_module, target, p=tcfg.s3_p, theta_f=tcfg.s3_theta_f,
                            max_samples=tcfg.s3_samples, seed=seed)

    # ---- which parameters train when
    groups = []
    if m.uses_miner:
        groups.append(ParamGroup("miner", sampler.miner, 0))
    if m.generator_trains == "always":
        groups.append(ParamGroup("generator", adapter, 0))
    elif m.generator_trains == "after_mining":
        groups.append(ParamGroup("generator", adapter, tcfg.mine_steps))

    if run_config is not None:
        run_config.train, run_config.miner = tcfg, miner_cfg
    run_dir = open_run_dir(run_dir, resume, run_config or rc)
    if run_dir is not None and s3_masks is not None and distributed.rank() == 0:
        s3_masks.save(run_dir / "s3_masks.json")  # per-layer trainable fractions (Fig. 11b)
    trainer = Trainer(sampler, critic_module, target, tcfg, groups, critic_params=critic_params, run_dir=run_dir,
                      seed=seed, device=device, accelerator=accelerator, callbacks=callbacks)

    def finish(trainer):
        # one ordinary file, loadable without any distributed set-up (a sharded generator is
        # gathered whole: a collective on every rank)
        export = distributed.exportable_sampler(sampler) if run_dir is not None else sampler
        if run_dir is not None and trainer.is_main:
            save_sampler(run_dir / "model.safetensors", export, critic=critic_module, critic_build=critic_build,
                         extra={"method": method, "steps": tcfg.steps})
        distributed.barrier()

    return Run(trainer, finish, resume)


def resolve_critic(critic, target, model_cfg: ModelConfig, allow_pickle=False):
    """(critic module, how to rebuild it or None): a module as given, the critic stored in a
    file, or a fresh project critic sized for ``target`` when ``critic`` is None."""
    if isinstance(critic, nn.Module):
        return critic, None
    if critic is not None:
        info = read_info(critic)
        build = info["critic"]["build"] if info and "critic" in info else None
        return load_critic(critic, allow_pickle=allow_pickle), build
    build = {"arch": critic_arch_for(target, model_cfg)}
    return build_critic(build["arch"]), build


def open_run_dir(run_dir, resume: bool, config) -> Path | None:
    """Check the run folder on every rank, then let rank 0 alone create it and write the
    resolved config. Refuses to touch an existing run unless resuming it."""
    from . import distributed

    if run_dir is None:
        return None
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints" / "latest.json"
    if resume:
        if not ckpt.is_file():
            raise FileNotFoundError(f"--resume: {str(run_dir)!r} has no checkpoint (checkpoints/latest.json)")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run folder {str(run_dir)!r} already exists; pass --resume to continue it, "
                              "or choose another name (name=...) — nothing was overwritten")
    distributed.barrier()  # no rank may see the folder rank 0 is about to create
    if distributed.rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            dump_config(config, run_dir / "config.yaml")
    return run_dir


def mine(generator, target, **kwargs) -> Result:
    """MineGAN w/o FT (eq. 3-4): learn a miner in front of the frozen generator."""
    kwargs.setdefault("method", "minegan_noft")
    return train(generator, target, **kwargs)


def reprogram(generator, target, **kwargs) -> Result:
    """GAN reprogramming (Lee et al.): a uniform-seed code generator, λ=1, n_critic=10."""
    return train(generator, target, method="reprogram", **kwargs)


def finetune(mined, target, **kwargs) -> Result:
    """MineGAN's second stage: train miner, generator and critic from a mined file or Sampler."""
    sampler = load_sampler(mined) if isinstance(mined, (str, Path)) else mined
    if isinstance(mined, (str, Path)) and kwargs.get("critic") is None and has_critic(mined):
        kwargs["critic"] = str(mined)
    return train(sampler, target, method="finetune", **kwargs)


def run_config(cfg: RunConfig, resume=False, callbacks=()) -> Result:
    """Run what a :class:`RunConfig` describes (what every CLI training command does)."""
    fill_defaults(cfg)
    if get_method(cfg.method).kind == "fuse":
        from . import distributed
        from .fusion import run_fuse_config

        if distributed.launched_world_size() > 1:
            # fusion's pseudo-real data is not split across ranks yet: every process would train alone
            raise ValueError(f"method {cfg.method!r} runs in one process for now; launch it without torchrun")
        return run_fuse_config(cfg, resume=resume, callbacks=callbacks)
    return prepare_config(cfg, resume=resume, callbacks=callbacks).fit()


def prepare_config(cfg: RunConfig, resume=False, callbacks=(), write=True) -> Run:
    """Build (not train) the mining or baseline run a :class:`RunConfig` describes; with
    ``write=False`` no run folder is opened (nothing is written: ``fastmine bench``)."""
    fill_defaults(cfg)
    from . import distributed

    kind = get_method(cfg.method).kind
    if kind == "fuse":
        raise ValueError("fusion trains its generator in two stages; run it with run_config / `fastmine fuse`")
    if kind == "multi":
        from .multi import prepare_multi_config

        return prepare_multi_config(cfg, resume=resume, callbacks=callbacks,
                                    accelerator=distributed.setup(cfg.dist, cfg.device), write=write)
    data = load_data(cfg.data)
    src = cfg.source
    generator = None
    method = get_method(cfg.method)
    if src.generator:
        if cfg.method == "finetune":
            generator = load_sampler(src.generator)
        else:
            generator = load_generator(src.generator, latent_spec=src.latent_spec, arch=src.arch,
                                       allow_pickle=src.allow_pickle)
    elif not method.fresh_generator:
        raise ValueError(f"method {cfg.method!r} needs source.generator (a pretrained model file, e.g. from `fastmine pretrain`)")
    critic = src.critic
    if critic is None and src.generator and has_critic(src.generator):
        critic = src.generator
    from . import distributed

    # launched by torchrun / accelerate launch: one process group, this rank's device
    accelerator = distributed.setup(cfg.dist, cfg.device)
    device = str(accelerator.device) if accelerator is not None and cfg.device == "auto" else cfg.device
    return prepare(generator, data, method=cfg.method, critic=critic, run_dir=cfg.run_dir if write else None, seed=cfg.seed,
                 device=device, miner_cfg=cfg.miner, model_cfg=cfg.model, train_cfg=cfg.train,
                 resume=resume, callbacks=callbacks, run_config=cfg, allow_pickle=src.allow_pickle,
                 accelerator=accelerator, dist_cfg=cfg.dist)
