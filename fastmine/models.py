"""Generator adapters, samplers, and loading/saving them safely as single files.

A fastmine file is one safetensors file: tensors prefixed by part (``generator.``,
``critic.``, ``miner.``) plus a JSON header (``__metadata__["fastmine"]``) that says how to
rebuild each part without running pickled code: a project ``arch`` dict or a
``"package.module:function"`` factory.
"""
from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .latent import LatentSpec
from .miner import Miner
from .nets import build_critic, build_generator

FORMAT_VERSION = 1


class GeneratorAdapter(nn.Module):
    """Wraps any generator ``nn.Module`` and declares its latent inputs.

    ``call(module, latents)`` maps the dict of latents to the module's call; the default
    passes the only latent positionally, or all of them by keyword. Output: images NCHW
    in [-1, 1] or vectors [N, d]. A frozen adapter keeps its module in eval mode with
    ``requires_grad=False`` yet lets gradients flow through it to its inputs.
    """

    def __init__(self, module: nn.Module, latent_spec, call=None, build: dict | None = None, frozen=True):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"generator must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.latent_spec = LatentSpec(latent_spec)
        self.call = call
        self.build = build  # how to rebuild the module when exporting; None = user passes it at load
        self.frozen = False
        self.freeze(frozen)

    def freeze(self, frozen: bool = True):
        self.frozen = frozen
        self.module.requires_grad_(not frozen)
        self.module.train(not frozen and self.training)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:  # a frozen generator's batch-norm statistics must not move
            self.module.eval()
        return self

    def forward(self, latents):
        if torch.is_tensor(latents):
            if len(self.latent_spec) != 1:
                raise ValueError(f"generator takes latents {list(self.latent_spec)}; pass a dict")
            latents = {next(iter(self.latent_spec)): latents}
        missing = set(self.latent_spec) - set(latents)
        if missing:
            raise ValueError(f"missing latents {sorted(missing)}; the generator takes {list(self.latent_spec)}")
        for name, latent in self.latent_spec.items():
            got = tuple(latents[name].shape[1:])
            if got != latent.shape:
                raise ValueError(
                    f"latent {name!r} has shape {got} per sample but the generator expects {latent.shape}: "
                    "the miner's output size must match the generator's latent size"
                )
        if self.call is not None:
            return self.call(self.module, latents)
        if len(self.latent_spec) == 1:
            return self.module(next(iter(latents.values())))
        return self.module(**latents)


class Sampler(nn.Module):
    """S(u) of DESIGN.md §1: ``generator(miner(u))``, or ``generator(z)`` with z from its prior.

    ``miner`` may be a fastmine :class:`Miner` or any module mapping seeds [N, seed_dim] to a
    latent tensor (single-latent generators) or a dict of latents.
    """

    def __init__(self, generator: GeneratorAdapter, miner: nn.Module | None = None, seed_dim=None, seed_dist=None):
        super().__init__()
        self.generator = generator
        self.miner = miner
        if miner is not None:
            self.seed_dim = int(seed_dim or getattr(miner, "seed_dim", 0) or 0)
            self.seed_dist = seed_dist or getattr(miner, "seed_dist", "normal")
            if not self.seed_dim:
                raise ValueError("a custom miner needs seed_dim (its input size)")

    def draw_seeds(self, n: int, generator: torch.Generator | None = None, device=None):
        if self.miner is None:
            return self.generator.latent_spec.sample(n, generator, device)
        from .latent import draw

        return draw(self.seed_dist, (n, self.seed_dim), generator, device)

    def latents(self, seeds):
        if self.miner is None:
            return seeds
        out = self.miner(seeds)
        if torch.is_tensor(out):
            names = list(self.generator.latent_spec)
            if len(names) != 1:
                raise ValueError(f"the miner returned one tensor but the generator takes {names}")
            out = {names[0]: out}
        return out

    def forward(self, seeds):
        return self.generator(self.latents(seeds))

    def sample(self, n: int, seed: int = 0, device=None, batch_size: int = 1024) -> torch.Tensor:
        """n samples from a fixed seed, in eval mode (the same seed gives the same samples)."""
        return seeded_sample(self, n, seed, device or _device_of(self), batch_size)


@torch.no_grad()
def seeded_sample(sampler: nn.Module, n: int, seed: int, device, batch_size: int = 1024) -> torch.Tensor:
    """``sampler(sampler.draw_seeds(...))`` in eval mode from a fixed seed, in batches."""
    gen = torch.Generator(device).manual_seed(seed)
    was_training = sampler.training
    sampler.eval()
    try:
        chunks = [sampler(sampler.draw_seeds(min(batch_size, n - i), gen, device)) for i in range(0, n, batch_size)]
    finally:
        sampler.train(was_training)
    return torch.cat(chunks)


def _device_of(module):
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- loading
def import_object(spec: str):
    """``"package.module:attribute"`` -> the attribute."""
    if ":" not in spec:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    try:
        obj = importlib.import_module(mod_name)
    except ImportError as e:
        raise ImportError(f"cannot import {mod_name!r} for factory {spec!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"{mod_name!r} has no attribute {attr!r} (factory {spec!r})")
        obj = getattr(obj, part)
    return obj


def build_module(build: dict, kind: str) -> nn.Module:
    if "arch" in build:
        return (build_generator if kind == "generator" else build_critic)(build["arch"])
    if "factory" in build:
        module = import_object(build["factory"])(**build.get("kwargs", {}))
        if not isinstance(module, nn.Module):
            raise TypeError(f"factory {build['factory']!r} returned {type(module).__name__}, not an nn.Module")
        return module
    raise ValueError(f"cannot rebuild the {kind}: its metadata has neither 'arch' nor 'factory'")


def read_file(path, allow_pickle=False):
    """(tensors, fastmine metadata or None) of a safetensors, weights-only .pt, or (opt-in) pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file ({e}); "
                             "it may be truncated or corrupt: re-export or pick an earlier checkpoint") from e
        info = json.loads(meta["fastmine"]) if "fastmine" in meta else None
        return tensors, info
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:
        hint = "" if allow_pickle else (" If it holds a pickled module and you trust its source, "
                                        "pass allow_pickle=True (source.allow_pickle=true): unpickling runs arbitrary code.")
        raise ValueError(f"cannot load {str(path)!r} as weights only: {e}.{hint}") from e
    if isinstance(obj, nn.Module):
        if not allow_pickle:  # pragma: no cover - torch refuses modules under weights_only
            raise ValueError("pickled modules need allow_pickle=True")
        warnings.warn(f"loaded a pickled module from {path}: this ran code from the file")
        return obj, None
    if isinstance(obj, dict) and all(torch.is_tensor(v) for v in obj.values()):
        return obj, None
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"], None
    raise ValueError(f"{str(path)!r} holds {type(obj).__name__}, not a state dict of tensors")


def _part(tensors, prefix):
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def _load_state(module, state, what, path):
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the {what} weights in {str(path)!r} do not fit the architecture: {e}") from e


def load_generator(source, latent_spec=None, arch=None, call=None, allow_pickle=False, frozen=True, **factory_kwargs):
    """A frozen :class:`GeneratorAdapter` from any of:

    - a fastmine file (``pretrain``'s ``model.safetensors``, a mined file): self-describing;
    - ``"package.module:function"``: a factory returning an ``nn.Module`` (``latent_spec``
      needed unless the module has a ``latent_spec`` attribute);
    - a safetensors / ``.pt`` state dict plus ``arch``: an ``nn.Module`` instance, a
      ``"package.module:function"`` factory, or a project arch dict.
    """
    if isinstance(source, nn.Module):
        module, build = source, None
    elif isinstance(source, str) and ":" in source and not Path(source).exists():
        module, build = build_module({"factory": source, "kwargs": factory_kwargs}, "generator"), {
            "factory": source, "kwargs": factory_kwargs}
    else:
        tensors, info = read_file(source, allow_pickle=allow_pickle)
        if isinstance(tensors, nn.Module):
            module, build = tensors, None
        elif info is not None and "generator" in info:
            g = info["generator"]
            module, build = build_module(g["build"], "generator"), g["build"]
            _load_state(module, _part(tensors, "generator"), "generator", source)
            latent_spec = latent_spec or g["latent_spec"]
        else:
            if arch is None:
                raise ValueError(f"{str(source)!r} is a plain state dict: pass arch= (a module, a "
                                 "'package.module:function' factory or an arch dict) to build the generator")
            if isinstance(arch, nn.Module):
                module, build = arch, None
            elif isinstance(arch, str):
                build = {"factory": arch, "kwargs": factory_kwargs}
                module = build_module(build, "generator")
            else:
                build = {"arch": dict(arch)}
                module = build_module(build, "generator")
            state = _part(tensors, "generator") or tensors
            _load_state(module, state, "generator", source)
    latent_spec = latent_spec or getattr(module, "latent_spec", None)
    if latent_spec is None and hasattr(module, "latent_dim"):
        latent_spec = LatentSpec.single(module.latent_dim)
    if latent_spec is None:
        raise ValueError("declare the generator's latent spec, e.g. latent_spec={'z': ((128,), 'normal')}")
    return GeneratorAdapter(module, latent_spec, call=call, build=build, frozen=frozen)


def load_critic(source, arch=None, allow_pickle=False):
    """The critic stored in a fastmine file, or a state dict plus ``arch``."""
    tensors, info = read_file(source, allow_pickle=allow_pickle)
    if isinstance(tensors, nn.Module):
        return tensors
    if info is not None and "critic" in info:
        critic = build_module(info["critic"]["build"], "critic")
        _load_state(critic, _part(tensors, "critic"), "critic", source)
        return critic
    if arch is None:
        raise ValueError(f"{str(source)!r} holds no fastmine critic; pass arch= to build one from its state dict")
    critic = arch if isinstance(arch, nn.Module) else build_module(
        {"factory": arch} if isinstance(arch, str) else {"arch": arch}, "critic")
    _load_state(critic, _part(tensors, "critic") or tensors, "critic", source)
    return critic


def read_info(path) -> dict | None:
    """The fastmine metadata of a safetensors file, read from its header only (no tensors)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None  # unreadable: the loader that needs the tensors reports it properly
    return json.loads(meta["fastmine"]) if "fastmine" in meta else None


def has_critic(source) -> bool:
    info = read_info(source)
    return bool(info and "critic" in info)


# --------------------------------------------------------------------------- saving
def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None):
    """Write to a temporary name in the same folder, then rename: a kill leaves the old file."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, path)


def save_sampler(path, sampler: Sampler, critic: nn.Module | None = None, critic_build: dict | None = None, extra=None):
    """Any trained result as one file: generator, miner (if any) and, optionally, the critic
    (so that a pretrained source or a mined result can be mined or finetuned further)."""
    g = sampler.generator  # a user module without a factory is stored as weights: pass it to load_sampler
    info = {"format": FORMAT_VERSION, "kind": "sampler", **(extra or {}),
            "generator": {"build": g.build, "latent_spec": g.latent_spec.to_dict()}}
    tensors = {f"generator.{k}": v for k, v in g.module.state_dict().items()}
    if sampler.miner is not None:
        tensors.update({f"miner.{k}": v for k, v in sampler.miner.state_dict().items()})
        miner_info = {"seed_dim": sampler.seed_dim, "seed_dist": sampler.seed_dist}
        if isinstance(sampler.miner, Miner):
            miner_info["config"] = sampler.miner.config()
        info["miner"] = miner_info
    if critic is not None and critic_build is not None:
        tensors.update({f"critic.{k}": v for k, v in critic.state_dict().items()})
        info["critic"] = {"build": critic_build}
    atomic_save_safetensors(tensors, path, {"fastmine": info})


def load_sampler(path, generator: nn.Module | None = None, miner: nn.Module | None = None, device="cpu") -> Sampler:
    """Load what :func:`save_sampler` wrote. Pass ``generator`` / ``miner`` modules only for
    parts that were the user's own modules (the file holds their weights, not their code)."""
    tensors, info = read_file(path)
    if info is None or info.get("kind") != "sampler":
        raise ValueError(f"{str(path)!r} is not a fastmine sampler file (no fastmine metadata)")
    g = info["generator"]
    if generator is None:
        if g["build"] is None:
            raise ValueError(f"{str(path)!r} holds a user generator's weights: pass generator=<module>")
        generator = build_module(g["build"], "generator")
    _load_state(generator, _part(tensors, "generator"), "generator", path)
    adapter = GeneratorAdapter(generator, g["latent_spec"], build=g["build"], frozen=True)
    m = info.get("miner")
    if m is not None:
        if miner is None:
            if "config" not in m:
                raise ValueError(f"{str(path)!r} holds a custom miner's weights: pass miner=<module>")
            miner = Miner(**m["config"])
        _load_state(miner, _part(tensors, "miner"), "miner", path)
        sampler = Sampler(adapter, miner, seed_dim=m["seed_dim"], seed_dist=m["seed_dist"])
    else:
        sampler = Sampler(adapter)
    return sampler.to(device).eval()
