"""One way to build a run: a :class:`RunConfig` (+ whatever the caller hands over as objects)
becomes a :class:`Run` — a :class:`~fastmine.trainer.Trainer` ready to fit and what to write
once it has — by the builder of the method's ``kind``.

Every builder has the same shape, ``build(cfg, method, inputs, ctx) -> Run``, and shares the
steps here: device and process group (:class:`Context`), the target, the critic, the run
folder and the model file. ``fastmine bench`` builds runs without a folder (``write=False``)
to time their steps.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import distributed, hub, runfolder, sharded
from .conditional import FACTORY_DCGAN, LabelledSampler, conditional_dcgan, load_biggan
from .config import (
    ConfigError,
    RunConfig,
    check_trust_on_resume,
    config_text,
    fill_defaults,
    load_config,
    reconcile_resume,
    validate,
)
from .data import describe, load_data, load_digits, load_image_folder, make_target, subset_indices
from .files import (
    atomic_write_text,
    build_module,
    call_factory,
    critic_build_of,
    has_critic,
    load_critic,
    load_generator,
    load_sampler,
    save_any,
    save_latents,
)
from .fusion import FusedSampler, PseudoRealData, attach_labels, region_means, single_latent
from .inversion import Inversion, fit_miner, invert
from .losses import apply_spectral_norm, folded_state_dict
from .methods import Method, get_method
from .miner import Miner
from .multi import MultiSampler, selector_log
from .nets import build_critic, build_generator, reinitialize
from .runfolder import RunLock
from .samplers import GeneratorAdapter, Sampler
from .sparse import apply_s3
from .threads import apply_threads
from .trainer import ParamGroup, Trainer


@dataclass
class Result:
    """What a fitted run returns: the trained sampler and critic, the last logged metrics."""
    sampler: nn.Module
    critic: nn.Module
    metrics: dict
    run_dir: Path | None = None

    @property
    def model_path(self):
        return self.run_dir / "model.safetensors" if self.run_dir else None

    @property
    def selector_probs(self) -> list | None:
        """π of a multi-generator run (None for a single generator)."""
        probs = getattr(self.sampler, "selector_probs", None)
        return None if probs is None else [float(p) for p in probs.tolist()]


@dataclass
class Run:
    """A run built and ready to train: its :class:`Trainer` and what to write after it."""

    trainer: Trainer
    finish: Callable[[Trainer], None]  # writes the model file(s) once trained
    resume: bool = False
    result_sampler: nn.Module | None = None  # what the Result holds, when not the trained sampler itself
    lock: RunLock | None = None  # the run folder's, held from prepare to the end of fit

    def fit(self) -> Result:
        try:
            metrics = self.trainer.fit(resume=self.resume)
            self.trainer.sampler.eval()
            self.finish(self.trainer)
        finally:
            if self.lock is not None:
                self.lock.release()
        sampler = self.result_sampler if self.result_sampler is not None else self.trainer.sampler
        return Result(sampler, self.trainer.critic, metrics, self.trainer.run_dir)


@dataclass
class Inputs:
    """Objects a Python caller hands over instead of the paths in ``cfg.source`` / ``cfg.data``.

    target: a tensor [N, ...], an image folder, or a function ``f(n)`` / ``f(n, generator)``
        drawing n samples of an unbounded target; None: ``cfg.data``.
    generators: adapters, samplers, files or factories (one for single-generator kinds);
        None: ``cfg.source.generator`` / ``cfg.source.generators``.
    critic: a module or a file holding one; None: ``cfg.source.critic``, else the critic
        stored with the (first) generator file, else a fresh project critic.
    miners: your own miner modules (one per generator); None: fastmine miners from ``cfg.miner``.
    labels: class labels of the target (conditional pretraining).
    """
    target: Any = None
    generators: list | None = None
    critic: Any = None
    miners: list | None = None
    labels: Any = None


@dataclass
class Context:
    device: str
    accelerator: Any = None
    run_dir: Path | None = None
    resume: bool = False
    callbacks: list = field(default_factory=list)
    restart: bool = False
    changed: dict = field(default_factory=dict)  # settings a resumed run changed ({key: [old, new]})
    lock: RunLock | None = None


def prepare(cfg: RunConfig, inputs: Inputs | None = None, *, resume=False, restart=False, callbacks=(), write=True,
            accelerator=None) -> Run:
    """Build (not train) the run ``cfg`` describes. ``write=False`` opens no run folder.

    resume: continue the run in ``cfg.run_dir`` from its newest intact checkpoint (from step 0
        when it has none yet), with its own ``config.yaml`` as the base: settings ``cfg`` leaves
        unset keep the run's values; only those in ``config.RESUMABLE`` may change.
    restart: replace what fastmine wrote in ``cfg.run_dir`` with a fresh run.

    Every check (the folder, the settings, what a resume may change, the settings that run
    code, the global batch) comes before the first write: a refused call changes nothing."""
    changed = {}
    if write:
        runfolder.check(cfg.run_dir, resume, restart)
    elif resume and restart:
        raise ConfigError("choose resume=True (continue the run) or restart=True (replace it), not both")
    stored = cfg.run_dir / "config.yaml"
    if resume and write and stored.is_file():
        stored_cfg = load_config(stored)
        check_trust_on_resume(stored_cfg, cfg)
        cfg, changed = reconcile_resume(stored_cfg, cfg)
    method = get_method(cfg.method)
    inputs = inputs or Inputs()
    if cfg.miner.init is None and (cfg.miner.module or inputs.miners and all(m is not None for m in inputs.miners)):
        cfg.miner.init = "given"  # a miner the user passed keeps its weights unless miner.init says otherwise
    validate(fill_defaults(cfg, method))
    threads = apply_threads(cfg.perf.threads)  # every entry point (CLI, Python, demo) builds its runs here
    if distributed.rank() == 0:
        print(threads)
    if accelerator is None:  # launched by torchrun / accelerate launch: one process group, this rank's device
        accelerator = distributed.setup(cfg.dist, cfg.device)
    if resume and write:
        world = accelerator.num_processes if accelerator is not None else 1
        problem = runfolder.global_batch_problem(runfolder.stored_global_batch(cfg.run_dir),
                                                 cfg.train.batch_size, world)
        if problem:
            raise ConfigError(problem)
    device = str(accelerator.device) if accelerator is not None and cfg.device == "auto" else resolve_device(cfg.device)
    ctx = Context(device, accelerator, cfg.run_dir if write else None, resume, list(callbacks), restart, changed)
    torch.manual_seed(cfg.seed)
    run = BUILDERS[method.kind](cfg, method, inputs, ctx)
    run.lock = ctx.lock
    return run


def resolve_device(device):
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but this torch ({torch.__version__}) sees no CUDA device; "
                          "use device=cpu or device=auto")
    return device


# --------------------------------------------------------------------------- shared steps
def load_config_data(cfg: RunConfig) -> torch.Tensor:
    """``cfg.data`` loaded, with the one line saying what was loaded (once, on rank 0)."""
    report = {}
    data = load_data(cfg.data, report)
    if distributed.rank() == 0:
        print(describe(cfg.data, data, report))
    return data


def resolve_target(cfg: RunConfig, target):
    """(data for the trainer, a tensor of real samples to size and score with)."""
    if target is None:
        target = load_config_data(cfg)
    elif isinstance(target, (str, Path)):
        d = cfg.data
        target = load_image_folder(target, size=d.size, channels=d.channels, limit=d.limit, seed=d.seed, fit=d.fit,
                                   alpha=d.alpha)
    return make_target(target, cfg.s3.samples)


def critic_arch_for(example: torch.Tensor, model) -> dict:
    if example.ndim == 4:
        if example.shape[-1] != example.shape[-2]:
            raise ValueError(f"the built-in critic needs square images, got {tuple(example.shape[1:])}")
        return {"type": "dcgan", "image_size": int(example.shape[-1]), "channels": int(example.shape[1]),
                "width": model.width}
    if example.ndim == 2:
        return {"type": "mlp", "in_dim": int(example.shape[1]), "width": model.width, "depth": model.depth}
    raise ValueError(f"data must be images [N, C, H, W] or vectors [N, d], got shape {tuple(example.shape)}")


def generator_arch_for(example: torch.Tensor, model) -> dict:
    if example.ndim == 4:
        return {"type": "dcgan", "latent_dim": model.latent_dim, "image_size": int(example.shape[-1]),
                "channels": model.channels or int(example.shape[1]), "width": model.width, "norm": model.norm}
    return {"type": "mlp", "latent_dim": model.latent_dim, "out_dim": model.out_dim or int(example.shape[1]),
            "width": model.width, "depth": model.depth}


def new_generator(data, model=None) -> GeneratorAdapter:
    """A fresh project generator sized for ``data`` (trainable)."""
    model = model or RunConfig().model
    arch = generator_arch_for(torch.as_tensor(data), model)
    return GeneratorAdapter(build_generator(arch), {"z": ((model.latent_dim,), "normal")}, build={"arch": arch},
                            frozen=False)


def resolve_critic(critic, example, cfg: RunConfig):
    """(critic module, how to rebuild it or None): a module as given, the critic stored in a
    file, or a fresh project critic sized for ``example`` when ``critic`` is None."""
    module, build = _critic_and_build(critic, example, cfg)
    if cfg.loss.spectral_norm:  # the file stores the normalised weights without it (model_writer)
        apply_spectral_norm(module)
    return module, build


def _critic_and_build(critic, example, cfg: RunConfig):
    if isinstance(critic, nn.Module):
        return critic, None
    src = cfg.source
    if critic is not None:
        module = load_critic(critic, allow_pickle=src.allow_pickle, trust_code=src.trust_code)
        return module, critic_build_of(critic, module)
    build = {"arch": critic_arch_for(example, cfg.model)}
    return build_critic(build["arch"]), build


def describe_critic(critic, method: Method) -> str:
    """Where the run's critic comes from, said once: passing a generator module starts from a fresh
    critic, passing its model file from the critic stored in it."""
    if method.fresh_critic:
        return "a freshly initialised project critic (the method trains from scratch)"
    if isinstance(critic, nn.Module):
        return f"the given {type(critic).__name__}"
    if critic is not None:
        return f"the critic stored in {critic}"
    return ("a fresh project critic (no pretrained one given: pass critic= or source.critic, or a model file that "
            "stores one, to start from it as the paper does)")


def _is_biggan(spec) -> bool:
    return (hub.entry(spec) or {}).get("family") == "biggan"


def local_source(spec):
    """A source given as a URL or a catalogue name as its local file, fetched once (:mod:`fastmine.hub`);
    a catalogued BigGAN stays a name (:func:`load_source` reads its weights with their config)."""
    return spec if _is_biggan(spec) else hub.resolve(spec)


def load_source(spec, cfg: RunConfig) -> GeneratorAdapter:
    src = cfg.source
    if _is_biggan(spec) or Path(spec).is_dir():  # a pytorch-pretrained-biggan folder: config.json + weights
        return load_biggan(spec)
    return load_generator(str(spec), latent_spec=src.latent_spec, arch=src.arch, allow_pickle=src.allow_pickle,
                          trust_code=src.trust_code, key=src.key, latent=src.latent,
                          truncation_psi=src.truncation_psi, truncation_cutoff=src.truncation_cutoff,
                          noise_mode=src.noise_mode, noise=src.noise)


def make_miner(cfg: RunConfig, latent_spec, given=None) -> nn.Module:
    if given is None and cfg.miner.module:
        given = call_factory(cfg.miner.module, {})  # the user named this code in this invocation (miner.module)
    if given is not None:
        return given
    if cfg.miner.init == "given":
        raise ConfigError("miner.init=given keeps a miner you pass (miner=..., or miner.module), but none was "
                          "given; choose normal, residual or inversion")
    m = cfg.miner
    init = m.init
    if init == "inversion":  # the starting weights, before fit_miner moves them onto the inverted latents
        first = next(iter(latent_spec.values()))
        init = "residual" if (m.seed_dim or first.numel) == first.numel and first.prior != "none" else "normal"
    return Miner(latent_spec, seed_dim=m.seed_dim, seed_dist=m.seed_dist, hidden=m.hidden, layers=m.layers, init=init)


def start_from_inversion(cfg: RunConfig, sampler, example: torch.Tensor, device) -> Inversion:
    """miner.init=inversion: invert a random subset of the target (at most invert.max_images,
    chosen with the run's seed: a few hundred latents fix a mean and a covariance, and the whole
    of a large target would take hours), then fit the miner's latents' mean and covariance to
    the inverted ones (fastmine.inversion)."""
    chosen = torch.from_numpy(subset_indices(len(example), cfg.invert.max_images, cfg.seed))
    inv = invert(sampler.generator, example[chosen], cfg.invert, seed=cfg.seed, device=device,
                 progress=cfg.log.progress)
    if distributed.rank() == 0:
        of = (f"a random {len(chosen)} of the target's {len(example)} (invert.max_images)" if len(chosen) < len(example)
              else "the whole target")
        print(f"miner.init=inversion: {inv.summary()}, {of}")
    fit_miner(sampler.miner, sampler, inv.flat(sampler.generator.latent_spec), steps=cfg.invert.fit_steps,
              lr=cfg.invert.fit_lr, seed=cfg.seed)
    return inv


def check_output_matches(sampler, example: torch.Tensor, device):
    with torch.no_grad():
        was = sampler.training
        sampler.eval()
        try:
            out = sampler(sampler.draw_seeds(2, torch.Generator(device).manual_seed(0), device))
        except RuntimeError as e:  # e.g. "mat1 and mat2 shapes cannot be multiplied" deep in a user module
            raise ValueError(f"the sampler fails on two seeds ({' '.join(str(e).split())[:200]}): check that the "
                             "miner's input size (miner.seed_dim) and output sizes fit the generator's latent "
                             "spec") from e
        finally:
            sampler.train(was)
    if tuple(out.shape[1:]) != tuple(example.shape[1:]):
        hint = f"; set data.size={out.shape[-1]}" if out.ndim == 4 and example.ndim == 4 else ""
        raise ValueError(f"the generator makes samples of shape {tuple(out.shape[1:])} but the target data has "
                         f"shape {tuple(example.shape[1:])}{hint}")


def open_run_dir(ctx: Context, config) -> Path | None:
    """Let rank 0 alone take the run folder's lock (one writer per folder), create it or clear
    what fastmine wrote there, and write the resolved config (``prepare`` checked the folder:
    an existing run is touched only when resuming or replacing it)."""
    if ctx.run_dir is None:
        return None
    run_dir = Path(ctx.run_dir)
    runfolder.check(run_dir, ctx.resume, ctx.restart)  # again: the folder may have changed while the run was built
    distributed.barrier()  # no rank may see the folder rank 0 is about to create
    if distributed.rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        ctx.lock = RunLock(run_dir)
        if ctx.restart:
            runfolder.clear_run(run_dir)
        runfolder.remove_stale_temps(run_dir)  # of writes killed mid-way: with the lock held, no live writer owns one
        if ctx.changed:  # a resumed run going on with new steps / cadence: say so, keep the old values
            with open(run_dir / "config_history.jsonl", "a") as f:
                f.write(json.dumps({"resumed_with": ctx.changed}) + "\n")
        if not ctx.resume or ctx.changed or not (run_dir / "config.yaml").is_file():
            atomic_write_text(run_dir / "config.yaml", config_text(config))
    distributed.barrier()
    return run_dir


def model_writer(cfg: RunConfig, run_dir, sampler, critic=None, critic_build=None, extra=None, after=None):
    """``finish`` of a :class:`Run`: the trained sampler as one ordinary model file, loadable
    without any distributed set-up (a sharded generator reaches rank 0 part by part: every rank joins)."""
    def finish(trainer):
        if run_dir is not None:
            stored = critic
            if critic is not None and critic_build is not None and cfg.loss.spectral_norm:
                stored = build_module(critic_build, "critic")  # W/σ(W) as plain weights
                stored.load_state_dict(folded_state_dict(critic))
            # every rank takes part (a sharded generator is gathered one tensor at a time); rank 0 writes
            save_any(run_dir / "model.safetensors", distributed.exportable_sampler(sampler), critic=stored,
                     critic_build=critic_build, extra={"method": cfg.method, "steps": cfg.train.steps, **(extra or {})},
                     write=trainer.is_main)
            if trainer.is_main and after is not None:
                after(run_dir)
        distributed.barrier()
    return finish


def _trainer(cfg, ctx: Context, sampler, critic, data, groups, critic_params=None, callbacks=()) -> tuple:
    run_dir = open_run_dir(ctx, cfg)
    trainer = Trainer(sampler, critic, data, cfg, groups, critic_params=critic_params, run_dir=run_dir,
                      device=ctx.device, accelerator=ctx.accelerator, callbacks=[*callbacks, *ctx.callbacks])
    return trainer, run_dir


def _one(inputs: Inputs, what: str):
    gens = inputs.generators
    if gens is not None and len(gens) != 1:
        raise ValueError(f"{what} takes one generator, got {len(gens)}")
    return gens[0] if gens else None


# --------------------------------------------------------------------------- kinds
def build_single(cfg: RunConfig, method: Method, inputs: Inputs, ctx: Context) -> Run:
    """One generator: MineGAN (w/o FT), MineGAN++, reprogramming, finetuning, the baselines."""
    data, example = resolve_target(cfg, inputs.target)
    src, device = cfg.source, ctx.device
    generator = _one(inputs, f"method {cfg.method!r}")
    if generator is None and src.generator:
        # finetuning starts from a mined file: its generator and its miner
        finetune = cfg.method == "finetune"
        generator = load_sampler(src.generator, trust_code=src.trust_code) if finetune else local_source(src.generator)
    critic = inputs.critic if inputs.critic is not None else src.critic
    shard = distributed.resolve_shard(cfg.dist.shard, ctx.accelerator)
    source_file = generator if isinstance(generator, (str, Path)) and Path(generator).is_file() else None
    if critic is None and source_file is not None and has_critic(source_file) and not method.fresh_critic:
        critic = source_file  # the paper initialises the critic from the pretrained one

    if isinstance(generator, Sampler):
        sampler, adapter = generator, generator.generator
        if inputs.miners:
            raise ValueError("pass either a Sampler (with its miner) or a miner, not both")
        if method.uses_miner and sampler.miner is None:
            raise ValueError(f"method {cfg.method!r} needs a miner but the given sampler has none")
    else:
        if generator is None:
            if not method.fresh_generator:
                raise ValueError(f"method {cfg.method!r} needs a pretrained generator (source.generator: a model "
                                 "file, e.g. from `fastmine pretrain`)")
            adapter = new_generator(example, cfg.model)
        elif isinstance(generator, GeneratorAdapter):
            adapter = generator
        else:
            if shard != "none" and sharded.wants_sharded_load(generator):
                # built on the meta device and loaded shard by shard: never whole on a rank
                distributed.check_shardable(shard, method.generator_trains == "always")
                adapter = sharded.load_generator(generator, src, shard, device, distributed.read_ds_config(cfg.dist))
            else:
                adapter = load_source(generator, cfg)
            # the run's seed again after building a generator read from a file: the miner's initial
            # weights depend on the seed alone, not on how (or whether whole) the generator was built
            torch.manual_seed(cfg.seed)
        adapter = adapter.to(device)
        if method.fresh_generator:
            reinitialize(adapter.module, cfg.seed)
        if method.uses_miner:
            miner = make_miner(cfg, adapter.latent_spec, (inputs.miners or [None])[0])
            sampler = Sampler(adapter, miner, seed_dim=cfg.miner.seed_dim, seed_dist=cfg.miner.seed_dist)
        else:
            sampler = Sampler(adapter)
    adapter.freeze(method.generator_trains != "always")
    sampler = sampler.to(device)
    if shard != "none" and distributed.sharded_kind(adapter.module) == "none":
        # placement only: a generator given as a module is split over the ranks once built
        distributed.shard_generator(adapter, shard, device, ds_config=distributed.read_ds_config(cfg.dist))
    check_output_matches(sampler, example, device)
    inversion = None
    if method.uses_miner and cfg.miner.init == "inversion" and not isinstance(generator, Sampler):
        inversion = start_from_inversion(cfg, sampler, example, device)

    critic_module, critic_build = resolve_critic(
        critic if not method.fresh_critic or isinstance(critic, nn.Module) else None, example, cfg)
    if distributed.rank() == 0:
        print(f"critic: {describe_critic(critic, method)}")
    if method.fresh_critic:
        reinitialize(critic_module, cfg.seed + 1)
    critic_module = critic_module.to(device)
    critic_params = list(critic_module.parameters())
    if method.freeze_critic_blocks:
        blocks = getattr(critic_module, "blocks", None)
        if blocks is None:
            raise ValueError("FreezeD needs a critic with a `.blocks` sequence (its layers, input first)")
        k = cfg.train.freeze_critic_blocks if cfg.train.freeze_critic_blocks is not None else len(blocks) // 2
        if not 0 < k < len(blocks):
            raise ValueError(f"train.freeze_critic_blocks must be in 1..{len(blocks) - 1}, got {k}")
        frozen = {id(p) for b in list(blocks)[:k] for p in b.parameters()}
        critic_params = [p for p in critic_params if id(p) not in frozen]
    s3_masks = None
    if method.sparse_critic:  # S³ (§3.4.2): masks chosen once on the target data, kept in both stages
        s3_masks = apply_s3(critic_module, example, p=cfg.s3.p, theta_f=cfg.s3.theta_f,
                            max_samples=cfg.s3.samples, seed=cfg.seed)

    groups = []  # which parameters train from which step
    if method.uses_miner:
        groups.append(ParamGroup("miner", sampler.miner, 0))
    if method.generator_trains == "always":
        groups.append(ParamGroup("generator", adapter, 0))
    elif method.generator_trains == "after_mining":
        groups.append(ParamGroup("generator", adapter, cfg.train.mine_steps))
    trainer, run_dir = _trainer(cfg, ctx, sampler, critic_module, data, groups, critic_params)
    if run_dir is not None and s3_masks is not None and distributed.rank() == 0:
        s3_masks.save(run_dir / "s3_masks.json")  # per-layer trainable fractions (Fig. 11b)
    if run_dir is not None and inversion is not None and distributed.rank() == 0:
        save_latents(run_dir / "inverted_latents.safetensors", inversion)  # for the report's pictures
    return Run(trainer, model_writer(cfg, run_dir, sampler, critic_module, critic_build), ctx.resume)


def build_multi(cfg: RunConfig, method: Method, inputs: Inputs, ctx: Context) -> Run:
    """MineGAN(multi): one miner per frozen generator, supersamples, critic-max selection, π."""
    data, example = resolve_target(cfg, inputs.target)
    gens = list(inputs.generators if inputs.generators is not None else cfg.source.generators or [])
    if len(gens) < 2:
        raise ValueError("multi-generator mining needs two or more generators "
                         "(source.generators=[a.safetensors,b.safetensors], or fastmine.mine_multi([G1, G2], target))")
    if cfg.miner.init == "inversion":
        raise ValueError("miner.init=inversion inverts the target in one generator; several generators start "
                         "from miner.init=normal (their default) or residual")
    miners = list(inputs.miners) if inputs.miners is not None else [None] * len(gens)
    if len(miners) != len(gens):
        raise ValueError(f"give one miner per generator: {len(gens)} generators, {len(miners)} miners")
    critic, critic_source = inputs.critic if inputs.critic is not None else cfg.source.critic, None
    adapters = []  # every generator first, then the miners: the random draws of earlier releases' runs
    for g in gens:
        g = local_source(g)
        if critic_source is None and isinstance(g, (str, Path)) and Path(g).is_file() and has_critic(g):
            critic_source = str(g)  # the paper initialises the critic from one pretrained critic (§5.1.2)
        adapters.append((g if isinstance(g, GeneratorAdapter) else load_source(g, cfg)).to(ctx.device).freeze(True))
    samplers = [Sampler(a, make_miner(cfg, a.latent_spec, given), seed_dim=cfg.miner.seed_dim,
                        seed_dist=cfg.miner.seed_dist) for a, given in zip(adapters, miners)]
    sampler = MultiSampler(samplers, rule=cfg.multi.rule, window=cfg.multi.window, path=cfg.multi.path,
                           impl=cfg.perf.impl, seed=cfg.seed).to(ctx.device)
    for s in samplers:
        check_output_matches(s, example, ctx.device)
    critic_module, critic_build = resolve_critic(critic if critic is not None else critic_source, example, cfg)
    groups = [ParamGroup(f"miner{i}", s.miner, 0) for i, s in enumerate(samplers)]
    trainer, run_dir = _trainer(cfg, ctx, sampler, critic_module.to(ctx.device), data, groups,
                                callbacks=[selector_log])

    def write_selector(run_dir):
        names = [str(g) if not isinstance(g, nn.Module) else f"module{i}" for i, g in enumerate(gens)]
        (run_dir / "selector.json").write_text(json.dumps(
            {"selector_probs": [float(p) for p in sampler.selector_probs.tolist()], "rule": cfg.multi.rule,
             "window": cfg.multi.window, "window_unit": "minibatches (n_critic + 1 per generator update)",
             "generators": names}, indent=1))

    return Run(trainer, model_writer(cfg, run_dir, sampler, critic_module, critic_build, after=write_selector),
               ctx.resume)


def build_fuse(cfg: RunConfig, method: Method, inputs: Inputs, ctx: Context) -> Run:
    """Fusion (§4.2): N generators into one G_F conditioned through its prior, trained against
    the sources' samples as pseudo-real data (no target data). The model file holds G_F
    unlabelled, ready to be mined like any generator."""
    if distributed.launched_world_size() > 1:
        # fusion's pseudo-real data is not split across ranks yet: every process would train alone
        raise ValueError(f"method {cfg.method!r} runs in one process for now; launch it without torchrun")
    gens = list(inputs.generators if inputs.generators is not None else cfg.source.generators or [])
    if len(gens) < 2:
        raise ValueError("fusion needs two or more generators (source.generators=[a.safetensors,b.safetensors])")
    f, device = cfg.fusion, ctx.device
    sources = [(g if isinstance(g, GeneratorAdapter) else load_source(g, cfg)).to(device).freeze(True) for g in gens]
    if not 0 <= f.init_from < len(sources):
        raise ConfigError(f"fusion.init_from must be in 0..{len(sources) - 1}, got {f.init_from}")
    _, dim = single_latent(sources[f.init_from])
    shapes = set()
    for s in sources:
        with torch.no_grad():
            shapes.add(tuple(s(s.latent_spec.sample(2, torch.Generator().manual_seed(0), device)).shape[1:]))
    if len(shapes) != 1:
        raise ValueError(f"the generators make samples of different shapes {sorted(shapes)}; fusion needs one")
    fused = copy.deepcopy(sources[f.init_from]).freeze(False)  # G_F starts as one of the sources
    means = region_means(len(sources), dim, f.spacing)
    sampler = FusedSampler(fused, means, f.sigma, label_channels=f.label_critic).to(device)
    data = PseudoRealData(sources, pool=f.pool, seed=cfg.seed, label_channels=f.label_critic).to(device)
    critic = inputs.critic if inputs.critic is not None else cfg.source.critic
    critic_module, critic_build = resolve_critic(critic, data[torch.arange(2)], cfg)
    trainer, run_dir = _trainer(cfg, ctx, sampler, critic_module.to(device), data,
                                [ParamGroup("generator", fused, 0)])
    fusion_info = {"means": means.tolist(), "sigma": f.sigma, "label_critic": f.label_critic,
                   "sources": [str(g) if not isinstance(g, nn.Module) else f"module{i}" for i, g in enumerate(gens)]}
    # a labelled critic does not fit mining (its input has the label channels): not stored then
    write = model_writer(cfg, run_dir, sampler, None if f.label_critic else critic_module, critic_build,
                         extra={"fusion": fusion_info})

    def finish(trainer):
        sampler.label_channels = False  # the result samples G_F's mixture of regions, unlabelled
        write(trainer)

    return Run(trainer, finish, ctx.resume)


def build_conditional(cfg: RunConfig, method: Method, inputs: Inputs, ctx: Context) -> Run:
    """A class-conditional WGAN-GP source (§4.1) on labelled images: the generator G(z, E(l))
    concatenates z with a class embedding, the critic sees the label as one-hot planes. The
    model file holds the generator alone, ready for conditional mining (its miner learns z
    and the class embedding, M^z and M^c, scored by an unconditional critic)."""
    if inputs.target is None:
        if cfg.data.dataset != "digits":
            raise ValueError("conditional pretraining from a config reads the built-in digits with their labels "
                             "(data.dataset=digits); from Python pass images and labels")
        d = cfg.data
        images, labels = load_digits(labels=d.labels, limit=d.limit, size=d.size, seed=d.seed, return_labels=True)
    else:
        if inputs.labels is None:
            raise ValueError("conditional pretraining needs the class labels of the target images (labels=...)")
        images, labels = torch.as_tensor(inputs.target).float(), torch.as_tensor(inputs.labels).long()
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"the conditional DCGAN needs square images [N, C, H, W], got {tuple(images.shape)}")
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    m = cfg.model
    num_classes = m.num_classes or int(labels.max()) + 1
    if int(labels.max()) >= num_classes:
        raise ValueError(f"labels go up to {int(labels.max())} but model.num_classes is {num_classes}")
    kwargs = {"latent_dim": m.latent_dim, "num_classes": num_classes, "embed_dim": m.embed_dim,
              "image_size": int(images.shape[-1]), "channels": int(images.shape[1]), "width": m.width}
    module = conditional_dcgan(**kwargs)
    adapter = GeneratorAdapter(module, module.latent_spec, build={"factory": FACTORY_DCGAN, "kwargs": kwargs},
                               frozen=False).to(ctx.device)
    critic = build_critic({"type": "dcgan", "image_size": int(images.shape[-1]),
                           "channels": int(images.shape[1]) + num_classes, "width": m.width})
    real = attach_labels(images, labels, num_classes)
    trainer, run_dir = _trainer(cfg, ctx, LabelledSampler(adapter, num_classes), critic.to(ctx.device), real,
                                [ParamGroup("generator", adapter, 0)])
    plain = Sampler(adapter)  # the Result holds the generator alone, as the file does
    write = model_writer(cfg, run_dir, plain, extra={"num_classes": num_classes})

    def finish(trainer):
        adapter.freeze(True)
        write(trainer)

    return Run(trainer, finish, ctx.resume, result_sampler=plain)


BUILDERS = {"single": build_single, "multi": build_multi, "fuse": build_fuse, "conditional": build_conditional}
