"""The Python entry points: each method from objects (generators, tensors, modules) or from a
config, all through the one builder path of :mod:`fastmine.runs`.

    import fastmine as fm
    G = fm.load_generator("runs/source/model.safetensors")
    target = fm.load_digits(labels=[9], limit=100, size=16)
    result = fm.mine(G, target, steps=300)
    images = result.sampler.sample(64, seed=0)

Settings are keyword arguments: any key of a config section by its own name (``steps=``,
``gp_weight=``, ``seed_dist=``, ``rule=``; a name several sections have goes to the first of
train, loss, miner that has it, and is an error otherwise), a whole section as
``<section>_cfg=`` (a dict or the section's dataclass: ``train_cfg=``, ``loss_cfg=``,
``miner_cfg=``, ``dist_cfg=`` ...), or a base ``config=`` (a :class:`RunConfig` or nested
dict). An unknown or misplaced setting is a :class:`~fastmine.config.ConfigError` naming the
valid ones.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .config import ConfigError, InvertConfig, RunConfig, from_dict, merge, to_dict
from .data import load_image_folder
from .files import has_critic, load_any, load_sampler
from .inversion import Inversion
from .inversion import invert as run_inversion
from .latent import draw
from .methods import get_method
from .runs import Inputs, Result, Run, resolve_device
from .runs import prepare as prepare_run

ENTRY_POINTS = {"single": "fastmine.train(generator, target, method=...)",
                "multi": "fastmine.mine_multi(generators, target)",
                "fuse": "fastmine.fuse(generators)",
                "conditional": "fastmine.pretrain_conditional(images, labels)"}

_TOP = ("name", "out_dir", "method", "seed", "device")
# a bare setting name that several sections have goes to the first of these that has it
# (steps=, lr=, batch_size= are the training's; invert.steps is reached through invert_cfg=)
PRIMARY = ("train", "loss", "miner")
_SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in _TOP)


def _owners() -> dict:
    """setting name -> the sections that have it."""
    owners: dict = {}
    for section in _SECTIONS:
        for f in dataclasses.fields(getattr(RunConfig(), section)):
            owners.setdefault(f.name, []).append(section)
    return owners


def make_config(method: str, settings: dict, config=None, run_dir=None, target=None) -> RunConfig:
    """A :class:`RunConfig` for ``method`` from keyword ``settings`` (module docstring). With a
    ``target`` given in code the config records it: an image folder by its path, a tensor or a
    function as ``data.dataset=given`` (so that evaluating the run later asks for it)."""
    base = to_dict(config) if isinstance(config, RunConfig) else dict(config or {})
    data = merge(base, {"method": method})
    if run_dir is not None:
        run_dir = Path(run_dir)
        data.update(out_dir=str(run_dir.parent), name=run_dir.name)
    owners = _owners()
    for key, value in settings.items():
        if key in _TOP:
            data[key] = value
        elif key.endswith("_cfg") and key[:-4] in _SECTIONS:
            section = key[:-4]
            value = to_dict(value) if dataclasses.is_dataclass(value) else dict(value or {})
            data[section] = merge(data.get(section, {}), value)
        elif len(owners.get(key, ())) == 1 or any(s in owners.get(key, ()) for s in PRIMARY):
            section = next((s for s in PRIMARY if s in owners[key]), owners[key][0])
            data[section] = merge(data.get(section, {}), {key: value})
        elif key in owners:
            raise ConfigError(f"setting {key!r} is ambiguous: it is a key of {' and '.join(owners[key])}; pass it "
                              f"in its section, e.g. {owners[key][0]}_cfg={{{key!r}: ...}}")
        else:
            unique = sorted(k for k, v in owners.items() if len(v) == 1 and k not in _TOP)
            raise ConfigError(f"unknown setting {key!r}; valid: {', '.join(_TOP)}, any key of a config section "
                              f"by its name ({', '.join(unique)}), "
                              f"or a whole section as {', '.join(s + '_cfg' for s in _SECTIONS)}")
    if target is not None and not data.get("data"):  # data settings given beside it describe the target
        given = {"dataset": "folder", "path": str(target)} if isinstance(target, (str, Path)) else {"dataset": "given"}
        data["data"] = merge(data.get("data", {}), given)
    return from_dict(RunConfig, data)


def prepare(generator, target, *, method="minegan_noft", critic=None, miner=None, run_dir=None, resume=False,
            restart=False, callbacks=(), accelerator=None, config=None, **settings) -> Run:
    """Build (not train) a single-generator method on ``target`` from ``generator``.

    generator: a :class:`GeneratorAdapter`, a path or factory for :func:`load_generator`, a
        :class:`Sampler` (e.g. a loaded mined file, to finetune it), or None with method
        "scratch" (a fresh project generator sized for the data).
    target: a tensor [N, ...], an image folder, or a function ``f(n)`` / ``f(n, generator)``
        drawing n samples of an unbounded target.
    run_dir: the run folder (None: nothing written); an existing run there is continued with
        ``resume=True`` or replaced with ``restart=True`` (else :class:`RunFolderExists`).
    miner: None (a fastmine :class:`Miner` from the ``miner`` settings) or your own module
        mapping seeds [N, seed_dim] to the latent(s) (give ``seed_dim=d``).
    critic: an ``nn.Module``, a file holding one, or None (the critic stored with the
        generator file when there is one, else a fresh project critic).
    """
    kind = get_method(method).kind
    if kind != "single":
        raise ValueError(f"method {method!r} is not a single-generator method: call {ENTRY_POINTS[kind]}")
    cfg = make_config(method, settings, config, run_dir, target)
    inputs = Inputs(target=target, generators=None if generator is None else [generator], critic=critic,
                    miners=None if miner is None else [miner])
    return prepare_run(cfg, inputs, resume=resume, restart=restart, callbacks=callbacks, write=run_dir is not None,
                       accelerator=accelerator)


def train(generator, target, **kwargs) -> Result:
    """Train any single-generator method (arguments: :func:`prepare`)."""
    return prepare(generator, target, **kwargs).fit()


def mine(generator, target, **kwargs) -> Result:
    """MineGAN w/o FT (eq. 3-4): learn a miner in front of the frozen generator."""
    kwargs.setdefault("method", "minegan_noft")
    return train(generator, target, **kwargs)


def reprogram(generator, target, **kwargs) -> Result:
    """GAN reprogramming (Lee et al.): a uniform-seed code generator, λ=1, n_critic=10."""
    return train(generator, target, method="reprogram", **kwargs)


def finetune(mined, target, trust_code=False, **kwargs) -> Result:
    """MineGAN's second stage: train miner, generator and critic from a mined file or Sampler."""
    if isinstance(mined, (str, Path)):
        if kwargs.get("critic") is None and has_critic(mined):
            kwargs["critic"] = str(mined)
        mined = load_sampler(mined, trust_code=trust_code)
    return train(mined, target, method="finetune", trust_code=trust_code, **kwargs)


def mine_multi(generators, target, *, critic=None, miner=None, run_dir=None, resume=False, restart=False,
               callbacks=(), accelerator=None, config=None, **settings) -> Result:
    """MineGAN(multi) (eq. 5-10): one miner per frozen generator (``miner``: your own modules,
    one per generator), critic-max selection of supersamples, the selector π
    (``result.selector_probs``). Settings as for :func:`prepare`, plus ``rule``, ``window``."""
    cfg = make_config("minegan_multi", settings, config, run_dir, target)
    inputs = Inputs(target=target, generators=list(generators), critic=critic, miners=miner)
    return prepare_run(cfg, inputs, resume=resume, restart=restart, callbacks=callbacks, write=run_dir is not None,
                       accelerator=accelerator).fit()


def fuse(generators, *, critic=None, run_dir=None, resume=False, restart=False, callbacks=(), config=None,
         **settings) -> Result:
    """Fusion (§4.2): ``generators`` into one generator conditioned through its prior; the
    result's sampler draws from its mixture of regions and mines like any generator.
    Settings as for :func:`prepare`, plus ``spacing``, ``sigma``, ``label_critic``, ``init_from``."""
    cfg = make_config("fuse", settings, config, run_dir)
    inputs = Inputs(generators=list(generators), critic=critic)
    return prepare_run(cfg, inputs, resume=resume, restart=restart, callbacks=callbacks,
                       write=run_dir is not None).fit()


def pretrain_conditional(images, labels, *, run_dir=None, restart=False, callbacks=(), config=None,
                         **settings) -> Result:
    """A class-conditional source GAN (§4.1) on (images, labels), e.g. from
    ``fm.load_digits(size=8, return_labels=True)``; ``result.sampler.generator`` is ready for
    conditional mining (``fm.mine``), its file loads with :func:`load_generator`. Settings as
    for :func:`prepare`, plus ``latent_dim``, ``embed_dim``, ``width``, ``num_classes``."""
    cfg = make_config("pretrain_conditional", settings, config, run_dir, images)
    inputs = Inputs(target=images, labels=labels)
    return prepare_run(cfg, inputs, restart=restart, callbacks=callbacks, write=run_dir is not None).fit()


def invert(generator, images, *, features="auto", seed=0, device=None, progress=True, config=None,
           **settings) -> Inversion:
    """GAN inversion (:mod:`fastmine.inversion`): latents of ``generator`` (an adapter, a model
    file, a sampler) reconstructing ``images`` (a tensor [N, ...] in [-1, 1] or an image folder).
    Settings are keys of the ``invert`` section (``init="prior"|"encoder"``, ``steps=``, ``lr=``,
    ``feature_weight=`` ...) or ``config=`` an :class:`InvertConfig`."""
    cfg = from_dict(InvertConfig, merge(to_dict(config) if config is not None else {}, settings), "invert")
    if isinstance(generator, (str, Path)):
        generator = load_any(generator)
    if isinstance(images, (str, Path)):
        images = load_image_folder(images, size=generator_output_size(generator))
    return run_inversion(generator, images, cfg, features=features, seed=seed, device=resolve_device(device),
                         progress=progress)


def generator_output_size(generator) -> int:
    """The image side a generator (or the adapter inside a sampler) makes."""
    adapter = getattr(generator, "generator", generator)
    gen = torch.Generator().manual_seed(0)
    latents = {n: draw(lat.prior if lat.prior != "none" else "normal", (1, *lat.shape), gen)
               for n, lat in adapter.latent_spec.items()}
    with torch.no_grad():
        return int(adapter(latents).shape[-1])


def run(cfg: RunConfig, resume=False, restart=False, callbacks=()) -> Result:
    """Run what a :class:`RunConfig` describes, any method (what every CLI training command does)."""
    return prepare_run(cfg, resume=resume, restart=restart, callbacks=callbacks).fit()
