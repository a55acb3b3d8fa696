"""Every file fastmine reads or writes: model files of each kind, checkpoints, plain weights.

A fastmine model file is one safetensors file: tensors prefixed by part (``generator.``,
``critic.``, ``miner.``, or ``part{i}.`` for several generators) plus a JSON header
(``__metadata__["fastmine"]``) that says how to rebuild each part: a project ``arch`` dict,
or a ``"package.module:function"`` factory.

**Nothing executes from a data file.** A factory named by a file runs only when it is one
of fastmine's own, one the user registered in code (:func:`register_factory`, or named
themselves in ``load_generator("package.module:function")`` in this process), or the
caller passed ``trust_code=True`` (``source.trust_code=true``) for that file. Otherwise the
load stops before importing anything, with a message saying what would have run.

Pretrained checkpoints are read as data (:mod:`fastmine.checkpoints`): torch checkpoints with
``weights_only`` plus a short allow-list of harmless types, NVIDIA network pickles through a
restricted unpickler that never runs the module source they carry. StyleGAN2/3 networks found
in them (an NVIDIA pickle, a rosinality checkpoint) are rebuilt from fastmine's own code
(:mod:`fastmine.zoo`). Only ``allow_pickle=True`` unpickles arbitrary objects (a whole pickled
``nn.Module``): that runs code from the file.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import re
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from . import checkpoints, zoo
from .fusion import FusedSampler
from .latent import LatentSpec
from .miner import Miner
from .multi import MultiSampler
from .nets import build_critic, build_generator
from .samplers import GeneratorAdapter, Sampler
from .zoo import StyleGANSource, family_of, rosinality, stylegan2

FORMAT_VERSION = 1
FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # package.module:function

# factories a file may name without trust_code: fastmine's own, and those the user
# registered in code (register_factory) or named in a call of this process
_TRUSTED_FACTORIES = {"fastmine.conditional:conditional_dcgan", "fastmine.conditional:biggan"}


class UntrustedCodeError(ValueError):
    pass


def register_factory(spec: str) -> str:
    """Trust ``"package.module:function"`` when a model file names it (for this process)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    _TRUSTED_FACTORIES.add(spec)
    return spec


def import_object(spec: str):
    """``"package.module:attribute"`` -> the attribute (imports the module: runs its code)."""
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


def build_module(build: dict, kind: str, source=None, trust_code: bool = False) -> nn.Module:
    """The ``kind`` module (generator / critic) that ``build`` describes.

    ``source``: the file ``build`` came from (None: the caller's own code named it, which is
    an explicit choice). A factory named by a file must be trusted (module docstring)."""
    if "arch" in build:
        return (build_generator if kind == "generator" else build_critic)(build["arch"])
    if "factory" in build:
        spec = build["factory"]
        if source is not None and not trust_code and spec not in _TRUSTED_FACTORIES:
            raise UntrustedCodeError(
                f"{str(source)!r} asks to build its {kind} by calling {spec}(**{build.get('kwargs', {})!r}), "
                "code fastmine does not know; nothing was run. If you trust this file, load it with "
                f"trust_code=True (source.trust_code=true), or register the factory in your code with "
                f"fastmine.register_factory({spec!r})")
        module = import_object(spec)(**build.get("kwargs", {}))
        if not isinstance(module, nn.Module):
            raise TypeError(f"factory {spec!r} returned {type(module).__name__}, not an nn.Module")
        return module
    raise ValueError(f"cannot rebuild the {kind}: its metadata has neither 'arch' nor 'factory'")


# --------------------------------------------------------------------------- reading
def read_file(path, allow_pickle=False):
    """(tensors, fastmine metadata or None) of a safetensors file, a torch checkpoint read as data
    (:func:`fastmine.checkpoints.read_state_dict`), or, with ``allow_pickle``, any pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise ValueError(f"checkpoint {str(path)!r} is not a readable safetensors file ({e}); "
                             "it may be truncated or corrupt: re-export or pick an earlier checkpoint") from e
        info = json.loads(meta["fastmine"]) if "fastmine" in meta else None
        return tensors, info
    if not allow_pickle:
        return checkpoints.read_state_dict(path)[0], None
    obj = torch.load(path, map_location="cpu", weights_only=False)  # the caller opted in: this runs the file's code
    if isinstance(obj, nn.Module):
        warnings.warn(f"loaded a pickled module from {path}: this ran code from the file")
        return obj, None
    if isinstance(obj, dict) and all(torch.is_tensor(v) for v in obj.values()):
        return obj, None
    return checkpoints.state_dict_in(obj, path)[0], None


class LazyTensors:
    """The tensors of a safetensors file under ``prefix.``, read on demand, whole or a range of
    rows, straight from the file into a new tensor (plain reads at the offsets its header gives,
    no memory map): each rank of a sharded run reads just what it owns, and a process holds no
    more of the file than the tensor it is reading. A context manager."""

    def __init__(self, path, prefix: str = ""):
        self.path, self.prefix = Path(path), f"{prefix}." if prefix else ""
        self._file = open(self.path, "rb")
        try:
            size = self.path.stat().st_size
            n = struct.unpack("<Q", self._file.read(8))[0]
            if n > size - 8:
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            header = json.loads(self._file.read(n))
            self._start = 8 + n
            self._entries = {k: v for k, v in header.items() if k != "__metadata__"}
            for k, v in self._entries.items():
                if v["data_offsets"][1] > size - self._start:
                    raise ValueError(f"tensor {k!r} ends past the end of the file")
        except Exception as e:
            self._file.close()
            raise ValueError(f"checkpoint {str(self.path)!r} is not a readable safetensors file ({e}); "
                             "it may be truncated or corrupt: re-export or pick an earlier checkpoint") from e
        k = len(self.prefix)
        self.names = [name[k:] for name in self._entries if name.startswith(self.prefix)]

    def _entry(self, name):
        entry = self._entries[self.prefix + name]
        return _DTYPES_BY_NAME[entry["dtype"]], tuple(entry["shape"]), entry["data_offsets"][0]

    def shape(self, name) -> tuple:
        return self._entry(name)[1]

    def get(self, name) -> torch.Tensor:
        shape = self.shape(name)
        return self.rows(name, 0, shape[0]) if shape else self.rows(name, 0, 1).reshape(())

    def rows(self, name, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` (a 0-d tensor has one row)."""
        dtype, shape, offset = self._entry(name)
        inner = shape[1:] if shape else ()
        out = torch.empty((stop - start, *inner), dtype=dtype)
        row = out[0].numel() * dtype.itemsize if len(out) else 0
        self._file.seek(self._start + offset + start * row)
        got = self._file.readinto(memoryview(out.reshape(-1).view(torch.uint8).numpy()))
        if got != out.numel() * dtype.itemsize:
            raise ValueError(f"checkpoint {str(self.path)!r} ends inside tensor {self.prefix + name!r}: it is "
                             "truncated; re-export it")
        return out

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_info(path) -> dict | None:
    """The fastmine metadata of a safetensors file, read from its header only (no tensors)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None  # unreadable: the loader that needs the tensors reports it properly
    return json.loads(meta["fastmine"]) if "fastmine" in meta else None


@dataclass
class Weights:
    """A network's tensors read from a checkpoint, and what builds it when the file says:
    a :mod:`fastmine.zoo` family and its official constructor keywords."""
    state: dict
    where: str
    family: str | None = None
    kwargs: dict | None = None


NETWORK_PICKLE_DEFAULTS = {"generator": ("G_ema", "Generator"), "critic": ("D", "Discriminator")}


def read_weights(path, role="generator", key=None) -> Weights:
    """The ``role`` network (generator / critic) of a checkpoint that is not a fastmine file:
    an NVIDIA network pickle (``G_ema`` by default, ``key="G"`` for the raw one; ``D``), a
    rosinality checkpoint (``g_ema`` / ``g``; ``d``) or any torch checkpoint / safetensors file
    (:func:`fastmine.checkpoints.read_state_dict`). Nothing from the file is executed."""
    path = Path(path)
    if checkpoints.is_network_pickle(path):
        return _network_pickle_weights(path, role, key)
    if path.suffix == ".safetensors":
        return Weights(*checkpoints.read_state_dict(path, key, role))
    obj = checkpoints.load_checkpoint(path)
    for reader in zoo.READERS.values():
        if reader.sniff(obj, path):
            family, kwargs, state, where = reader.read(obj, path, role, key)
            return Weights(state, where, family, kwargs)
    if _is_rosinality(obj):
        nets = rosinality.convert_checkpoint(obj, generator=key or "g_ema")
        name = "G" if role == "generator" else "D"
        if name not in nets:
            raise ValueError(f"{str(path)!r} is a rosinality checkpoint without a discriminator ('d'); pass another "
                             "critic (source.critic=...) or none to start from a fresh one")
        kwargs, state = nets[name]
        return Weights(state, f"{key or 'g_ema'}" if role == "generator" else "d", "stylegan2", kwargs)
    return Weights(*checkpoints.state_dict_in(obj, path, key, role))


def _is_rosinality(obj) -> bool:
    nets = [obj.get(k) for k in ("g_ema", "g")] if isinstance(obj, dict) else []
    return any(isinstance(n, dict) and "input.input" in n and "conv1.conv.weight" in n for n in nets)


def _network_pickle_weights(path: Path, role: str, key) -> Weights:
    name, expected = NETWORK_PICKLE_DEFAULTS[role]
    name = key or name
    objects = checkpoints.read_network_pickle(path)
    record = objects.get(name)
    if not isinstance(record, checkpoints.PersistentRecord):
        nets = ", ".join(f"{k} ({v.class_name})" for k, v in objects.items()
                         if isinstance(v, checkpoints.PersistentRecord)) or "none"
        raise ValueError(f"{str(path)!r} has no network {name!r}; its networks: {nets}; pass key= naming one "
                         "(source.key=...)")
    if record.class_name != expected:
        raise ValueError(f"{str(path)!r}: {name!r} is a {record.class_name}, not a {expected}; pass key= naming the "
                         f"{role} (source.key=...)")
    kwargs, state = checkpoints.record_kwargs(record), checkpoints.record_state_dict(record)
    if record.module_name == "training.networks_stylegan2":  # stylegan3's copy: its own defaults, left out of kwargs
        kwargs = stylegan2.stylegan3_repo_kwargs(kwargs, "G" if role == "generator" else "D")
    family = family_of(state) if role == "generator" else "stylegan2"
    return Weights(state, name, family, kwargs)


def has_critic(source) -> bool:
    """Whether a file holds a critic to start from: a fastmine file's, an NVIDIA pickle's ``D``,
    a rosinality checkpoint's ``d``."""
    path = Path(source)
    info = read_info(path)
    if info is not None or not path.is_file() or path.suffix == ".safetensors":
        return bool(info and "critic" in info)
    try:
        read_weights(path, "critic")
    except ValueError:
        return False
    return True


def part(tensors, prefix):
    """The tensors under ``prefix.``, with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_state_lazily(module: nn.Module, path, prefix: str):
    """Fill ``module``'s weights from the ``prefix.`` tensors of a safetensors file, one tensor at a
    time (:class:`LazyTensors`): loading holds the module plus one tensor, not a second model."""
    with LazyTensors(path, prefix) as reader:
        state = module.state_dict()  # tensors sharing the module's storage
        missing, unexpected = sorted(set(state) - set(reader.names)), sorted(set(reader.names) - set(state))
        wrong = [f"{k}: {reader.shape(k)} in the file, {tuple(state[k].shape)} here" for k in state
                 if k in reader.names and reader.shape(k) != tuple(state[k].shape)]
        if missing or unexpected or wrong:
            raise ValueError(f"the {prefix} weights in {str(path)!r} do not fit the architecture: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]}, shapes {wrong[:3]}")
        with torch.no_grad():
            for k, v in state.items():
                v.copy_(reader.get(k))


def load_state(module, state, what, path):
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"the {what} weights in {str(path)!r} do not fit the architecture: {e}") from e


def load_generator(source, latent_spec=None, arch=None, call=None, allow_pickle=False, trust_code=False, frozen=True,
                   key=None, latent=None, truncation_psi=None, truncation_cutoff=None, noise_mode=None, noise=None,
                   **factory_kwargs) -> GeneratorAdapter:
    """A frozen :class:`GeneratorAdapter` from any of:

    - a fastmine file (``pretrain``'s ``model.safetensors``, a mined file, ``fastmine convert``'s
      output): self-describing;
    - an NVIDIA StyleGAN2-ADA / StyleGAN3 network pickle (``G_ema``; ``key="G"`` for the raw
      generator) or a rosinality stylegan2-pytorch checkpoint (``g_ema``; ``key="g"``): rebuilt
      as :class:`fastmine.zoo.StyleGANSource` from fastmine's own code, nothing from the file runs;
    - ``"package.module:function"``: a factory returning an ``nn.Module`` (``latent_spec``
      needed unless the module has a ``latent_spec`` attribute); naming it here runs it;
    - a torch checkpoint / safetensors file plus ``arch`` (an ``nn.Module`` instance, a
      ``"package.module:function"`` factory, or a project arch dict): the generator's state dict
      is found under the well-known keys (``key=`` to choose, :mod:`fastmine.checkpoints`).

    StyleGAN sources: ``latent`` ``"z"`` (default) | ``"w"`` | ``"w+"``, ``truncation_psi``,
    ``truncation_cutoff``, ``noise_mode``, ``noise`` (:mod:`fastmine.zoo`); None keeps a file's stored choice.
    """
    options = {k: v for k, v in dict(latent=latent, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                     noise_mode=noise_mode, noise=noise).items() if v is not None}
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        raise ValueError(f"{str(source)!r} is a folder: a pytorch-pretrained-biggan folder (config.json + "
                         "pytorch_model.bin) loads with fastmine.conditional.load_biggan(folder) or as "
                         "source.generator=FOLDER; otherwise name the checkpoint file in it")
    if isinstance(source, nn.Module):
        module, build = source, None
    elif isinstance(source, str) and FACTORY_SPEC.match(source) and not Path(source).exists():
        build = {"factory": register_factory(source), "kwargs": factory_kwargs}
        module = build_module(build, "generator")
    elif "generator" in (info := read_info(source) or {}):  # a fastmine file: read tensor by tensor into the module
        build, stored_spec = stored_generator(info, options)
        module = build_module(build, "generator", source, trust_code)
        load_state_lazily(module, source, "generator")
        latent_spec = latent_spec or stored_spec
    elif info or (allow_pickle and Path(source).suffix != ".safetensors"):
        tensors, info = read_file(source, allow_pickle=allow_pickle)
        if isinstance(tensors, nn.Module):
            module, build = tensors, None
        else:
            module, build = _module_for(arch, factory_kwargs, part(tensors, "generator") or tensors, source)
    else:
        weights = read_weights(source, "generator", key)
        if weights.family is not None:
            module = zoo.build_source({"family": weights.family, "kwargs": weights.kwargs, **options})
            load_state(module.net, weights.state, f"generator ({weights.where})", source)
            if isinstance(module, StyleGANSource):  # its standardised w
                module.calibrate()
            build = {"arch": module.arch()}
        else:
            module, build = _module_for(arch, factory_kwargs, weights.state, source, weights.where)
    if options and not isinstance(module, StyleGANSource):
        raise ValueError(f"{', '.join(options)} choose how a StyleGAN2/3 source is mined; {str(source)!r} builds a "
                         f"{type(module).__name__}: leave source.latent, truncation and noise settings unset for it")
    return GeneratorAdapter(module, latent_spec_of(module, latent_spec), call=call, build=build, frozen=frozen)


def latent_spec_of(module: nn.Module, given=None):
    """The latent spec given, else the one the module declares (``latent_spec`` / ``latent_dim``)."""
    spec = given or getattr(module, "latent_spec", None)
    if spec is None and hasattr(module, "latent_dim"):
        spec = LatentSpec.single(module.latent_dim)
    if spec is None:
        raise ValueError("declare the generator's latent spec: "
                         "load_generator(..., latent_spec={'z': ((128,), 'normal')}) "
                         "or source.latent_spec={z: {shape: [128], prior: normal}}")
    return spec


def stored_generator(info: dict, options: dict) -> tuple:
    """(build, latent spec or None) of the generator a fastmine file describes; StyleGAN
    ``options`` (latent space, truncation, noise) override the stored ones, and then its
    latent spec follows from the module, not the file."""
    g = info["generator"]
    if options and "family" in g["build"].get("arch", {}):  # a StyleGAN source mined in another space
        return {"arch": {**g["build"]["arch"], **options}}, None
    return g["build"], g["latent_spec"]


def _module_for(arch, factory_kwargs, state, source, where=None):
    """(module, build) for a plain state dict and the ``arch`` the caller named."""
    if arch is None:
        if _official_stylegan(state):
            raise ValueError(f"{str(source)!r} holds a StyleGAN generator's tensors without its constructor "
                             "arguments; load the network pickle or rosinality checkpoint they came from (or its "
                             "`fastmine convert` output)")
        found = f" (found under {where})" if where and not where.startswith("(") else ""
        raise ValueError(f"{str(source)!r} is a plain state dict{found}: pass arch= (a module, a "
                         "'package.module:function' factory or an arch dict) to build the generator")
    if isinstance(arch, nn.Module):
        module, build = arch, None
    elif isinstance(arch, str):
        build = {"factory": register_factory(arch), "kwargs": factory_kwargs}
        module = build_module(build, "generator")
    else:
        build = {"arch": dict(arch)}
        module = build_module(build, "generator")
    load_state(module, state, "generator" if where is None or where.startswith("(") else f"generator ({where})",
               source)
    return module, build


def _official_stylegan(state) -> bool:
    try:
        family_of(state)
    except ValueError:
        return False
    return True


def load_critic(source, arch=None, allow_pickle=False, trust_code=False, key=None):
    """The critic stored in a fastmine file, an NVIDIA pickle's ``D`` or a rosinality
    checkpoint's ``d`` (as :class:`fastmine.zoo.StyleGANCritic`), or a state dict plus ``arch``."""
    if read_info(source) is not None or (allow_pickle and Path(source).suffix != ".safetensors"):
        tensors, info = read_file(source, allow_pickle=allow_pickle)
        if isinstance(tensors, nn.Module):
            return tensors
        if info is not None and "critic" in info:
            critic = build_module(info["critic"]["build"], "critic", source, trust_code)
            load_state(critic, part(tensors, "critic"), "critic", source)
            return critic
        state, where = part(tensors, "critic") or tensors, None
    else:
        weights = read_weights(source, "critic", key)
        if weights.family is not None:
            critic = zoo.build_critic({"family": weights.family, "kwargs": weights.kwargs})
            load_state(critic.net, weights.state, f"critic ({weights.where})", source)
            return critic
        state, where = weights.state, weights.where
    if arch is None:
        raise ValueError(f"{str(source)!r} holds no fastmine critic; pass arch= to build one from its state dict")
    critic = arch if isinstance(arch, nn.Module) else build_module(
        {"factory": register_factory(arch)} if isinstance(arch, str) else {"arch": arch}, "critic")
    load_state(critic, state, "critic" if where is None else f"critic ({where})", source)
    return critic


def critic_build_of(path, critic: nn.Module | None = None) -> dict | None:
    """How a critic loaded from ``path`` is rebuilt: the fastmine file's stored build, the arch
    of a StyleGAN critic, else None (a user module: its weights are stored, not its code)."""
    info = read_info(path)
    if info and "critic" in info:
        return info["critic"]["build"]
    return {"arch": critic.arch()} if isinstance(critic, (zoo.StyleGANCritic, zoo.ZooCritic)) else None


def _generator_part(g: dict, tensors, prefix, path, generator, trust_code, what="generator") -> GeneratorAdapter:
    if generator is None:
        if g["build"] is None:
            raise ValueError(f"{str(path)!r}: the {what} is a user module stored as weights only: "
                             "pass generator=<module>")
        generator = build_module(g["build"], "generator", path, trust_code)
    load_state(generator, part(tensors, prefix), what, path)
    return GeneratorAdapter(generator, g["latent_spec"], build=g["build"], frozen=True)


def _miner_part(m: dict, tensors, prefix, path, miner, what="miner"):
    if miner is None:
        if "config" not in m:
            raise ValueError(f"{str(path)!r}: the {what} is a custom module stored as weights only: "
                             "pass miner=<module>")
        miner = Miner(**m["config"])
    load_state(miner, part(tensors, prefix), what, path)
    return miner


def load_sampler(path, generator: nn.Module | None = None, miner: nn.Module | None = None, device="cpu",
                 trust_code=False) -> Sampler:
    """Load what :func:`save_sampler` wrote. Pass ``generator`` / ``miner`` modules only for
    parts that were the user's own modules (the file holds their weights, not their code)."""
    tensors, info = read_file(path)
    if info is None or info.get("kind") != "sampler":
        raise ValueError(f"{str(path)!r} is not a fastmine sampler file (no fastmine metadata)")
    adapter = _generator_part(info["generator"], tensors, "generator", path, generator, trust_code)
    m = info.get("miner")
    if m is not None:
        sampler = Sampler(adapter, _miner_part(m, tensors, "miner", path, miner), seed_dim=m["seed_dim"],
                          seed_dist=m["seed_dist"])
    else:
        sampler = Sampler(adapter)
    return sampler.to(device).eval()


def load_multi_sampler(path, device="cpu", trust_code=False) -> MultiSampler:
    tensors, info = read_file(path)
    if info is None or info.get("kind") != "multi_sampler":
        raise ValueError(f"{str(path)!r} is not a fastmine multi-generator file")
    samplers = []
    for i, p in enumerate(info["parts"]):
        adapter = _generator_part(p["generator"], tensors, f"part{i}.generator", path, None, trust_code,
                                  f"generator {i}")
        m = p["miner"]
        miner = _miner_part(m, tensors, f"part{i}.miner", path, None, f"miner {i}")
        samplers.append(Sampler(adapter, miner, seed_dim=m["seed_dim"], seed_dist=m["seed_dist"]))
    window = tensors["selector_window"]
    ms = MultiSampler(samplers, rule=info.get("rule", "permute"), window=window.shape[0])
    ms.selector_window.copy_(window)
    ms.selector_pos.copy_(tensors["selector_pos"])
    return ms.to(device).eval()


def load_fused_sampler(path, device="cpu", trust_code=False) -> FusedSampler:
    """A fused generator file as a sampler drawing from its mixture of regions."""
    info = read_info(path)
    if not info or "fusion" not in info:
        raise ValueError(f"{str(path)!r} is not a fused generator (no fusion metadata)")
    base = load_sampler(path, device=device, trust_code=trust_code)
    f = info["fusion"]
    return FusedSampler(base.generator, torch.tensor(f["means"]), f["sigma"]).to(device).eval()


def load_any(path, device="cpu", trust_code=False):
    """Whatever a fastmine run wrote: a single, multi-generator or fused sampler."""
    info = read_info(path)
    kind = (info or {}).get("kind")
    if kind == "multi_sampler":
        return load_multi_sampler(path, device, trust_code)
    if info and "fusion" in info and "miner" not in info:
        return load_fused_sampler(path, device, trust_code)
    return load_sampler(path, device=device, trust_code=trust_code)


# --------------------------------------------------------------------------- writing
TMP_MARK = ".tmp-"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def _publish(tmp: Path, path: Path):
    """Rename ``tmp`` over ``path`` with the permissions the umask gives a new file (writers
    such as safetensors create 0600 files; a model file is meant to be shared like the rest)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


# safetensors' dtype names, in the order of its dtype enum: a file lists its tensors by dtype,
# this order descending, then by name (what safetensors.torch.save_file writes)
SAFETENSORS_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e5m2: "F8_E5M2",
                      torch.float8_e4m3fn: "F8_E4M3", torch.int16: "I16", torch.uint16: "U16",
                      torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32",
                      torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.uint64: "U64"}
_DTYPE_RANK = {d: i for i, d in enumerate(SAFETENSORS_DTYPES)}
_DTYPES_BY_NAME = {v: k for k, v in SAFETENSORS_DTYPES.items()}


@dataclass
class Deferred:
    """A tensor to be written whose values are fetched only when its turn comes: a sharded
    generator's weight gathered one tensor at a time. ``fetch()`` returns the tensor, or a
    context manager yielding it, or its consecutive parts in order (flat, their bytes making the
    tensor's), for as long as they are being written. It may be a collective: every rank calls
    it, in the same (file) order."""
    dtype: torch.dtype
    shape: tuple
    fetch: object

    def open(self):
        got = self.fetch()
        return got if hasattr(got, "__enter__") else contextlib.nullcontext(got)


def _layout(v):
    return (v.dtype, tuple(v.shape))


def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None, write: bool = True):
    """Write a safetensors file tensor by tensor (a temporary name, then a rename: a kill leaves
    the old file). The bytes are those of ``safetensors.torch.save_file`` (test), but no more
    than one tensor is held at a time: a :class:`Deferred` value is fetched when it is written.
    ``write=False``: take part in the fetches (collectives) without writing (ranks other than 0)."""
    path = Path(path)
    layout = {k: _layout(v) for k, v in tensors.items()}
    order = sorted(layout, key=lambda k: (-_DTYPE_RANK[layout[k][0]], k))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    for k in order:
        dtype, shape = layout[k]
        n = dtype.itemsize
        for d in shape:
            n *= d
        header[k] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned
    f = tmp = None
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(path)
        f = open(tmp, "wb")
    try:
        if f is not None:
            f.write(struct.pack("<Q", len(head)) + head)
        for k in order:
            v = tensors[k]
            with v.open() if isinstance(v, Deferred) else contextlib.nullcontext(v) as t:
                for part in [t] if torch.is_tensor(t) else t:  # a tensor, or its consecutive parts
                    if f is not None:
                        f.write(memoryview(part.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    except BaseException:
        if f is not None:
            f.close()
            tmp.unlink(missing_ok=True)
        raise
    if f is not None:
        f.close()
        _publish(tmp, path)


def atomic_torch_save(obj, path):
    tmp = _tmp_name(Path(path))
    torch.save(obj, tmp)
    _publish(tmp, Path(path))


def atomic_write_text(path, text):
    tmp = _tmp_name(Path(path))
    tmp.write_text(text)
    _publish(tmp, Path(path))


def remove_stale_temps(folder) -> list:
    """Delete the temporary files of writes that were killed before their rename (call only
    while holding the folder's :class:`RunLock`: then no live writer owns one)."""
    removed = []
    for p in Path(folder).rglob(f".*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def clear_folder(folder, keep=(".lock",)):
    """Delete everything in ``folder`` but ``keep`` (a run restarted from scratch)."""
    for p in Path(folder).iterdir():
        if p.name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


class RunFolderBusy(RuntimeError):
    pass


class RunLock:
    """One writer per run folder: an advisory lock on ``FOLDER/.lock`` (holding the writer's
    pid) for the life of the run. The kernel drops it when the process dies, however it dies."""

    def __init__(self, folder):
        self.path = Path(folder) / ".lock"
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self.fd, 32).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise RunFolderBusy(f"run folder {str(Path(folder))!r} is in use by process {holder} (it holds "
                                f"{self.path.name}); wait for it to finish or stop it first") from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _sampler_entry(s: Sampler) -> dict:
    g = s.generator
    return {"generator": {"build": g.build, "latent_spec": g.latent_spec.to_dict()}}


def _miner_entry(s: Sampler) -> dict:
    entry = {"seed_dim": s.seed_dim, "seed_dist": s.seed_dist}
    if isinstance(s.miner, Miner):
        entry["config"] = s.miner.config()
    return entry


def _prefixed(prefix, module):
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def save_sampler(path, sampler: Sampler, critic: nn.Module | None = None, critic_build: dict | None = None, extra=None,
                 write: bool = True):
    """Any single-generator result as one file: generator, miner (if any) and, optionally, the
    critic (so that a pretrained source or a mined result can be mined or finetuned further).
    ``write=False``: only fetch what other ranks write (:func:`atomic_save_safetensors`)."""
    info = {"format": FORMAT_VERSION, "kind": "sampler", **(extra or {}), **_sampler_entry(sampler)}
    tensors = _prefixed("generator", sampler.generator.module)
    if sampler.miner is not None:
        tensors.update(_prefixed("miner", sampler.miner))
        info["miner"] = _miner_entry(sampler)
    _add_critic(tensors, info, critic, critic_build)
    atomic_save_safetensors(tensors, path, {"fastmine": info}, write=write)


def save_multi_sampler(path, sampler: MultiSampler, critic=None, critic_build=None, extra=None, write=True):
    """One safetensors file: part{i}.generator.*, part{i}.miner.*, the selector window, JSON metadata."""
    parts, tensors = [], {}
    for i, s in enumerate(sampler.samplers):
        parts.append({**_sampler_entry(s), "miner": _miner_entry(s)})
        tensors.update(_prefixed(f"part{i}.generator", s.generator.module))
        tensors.update(_prefixed(f"part{i}.miner", s.miner))
    tensors["selector_window"] = sampler.selector_window
    tensors["selector_pos"] = sampler.selector_pos
    info = {"format": FORMAT_VERSION, "kind": "multi_sampler", **(extra or {}), "rule": sampler.rule, "parts": parts,
            "selector_probs": [float(p) for p in sampler.selector_probs.tolist()]}
    _add_critic(tensors, info, critic, critic_build)
    atomic_save_safetensors(tensors, path, {"fastmine": info}, write=write)


def save_any(path, sampler, critic=None, critic_build=None, extra=None, write=True):
    """The model file of any sampler a run trains (the fused one is a plain generator plus its regions)."""
    if isinstance(sampler, MultiSampler):
        return save_multi_sampler(path, sampler, critic, critic_build, extra, write)
    return save_sampler(path, sampler, critic, critic_build, extra, write)


def save_latents(path, inversion):
    """Inverted latents (one tensor per latent name) with their errors, as one safetensors file."""
    tensors = {f"latent.{k}": v for k, v in inversion.latents.items()}
    tensors.update(pixel_error=inversion.pixel_error, baseline_error=inversion.baseline_error)
    if inversion.feature_error is not None:
        tensors["feature_error"] = inversion.feature_error
    atomic_save_safetensors(tensors, path, {"fastmine": {"format": FORMAT_VERSION, "kind": "inverted_latents"}})


def load_latents(path) -> dict:
    """The latents :func:`save_latents` wrote: name -> [N, ...]."""
    tensors, _ = read_file(path)
    return part(tensors, "latent")


def _add_critic(tensors, info, critic, critic_build):
    if critic is not None and critic_build is not None:
        tensors.update(_prefixed("critic", critic))
        info["critic"] = {"build": critic_build}


def convert(source, out, *, key=None, critic=True, overwrite=False, **load) -> dict:
    """Write ``source`` (anything :func:`load_generator` reads) as a self-describing fastmine
    file: the generator with how to rebuild it from fastmine's own code and, when the source
    holds one and ``critic`` is true, its critic. ``load``: :func:`load_generator`'s options
    (``latent``, ``truncation_psi``, ``arch``, ``latent_spec`` ...). Returns what was written."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"the converted file is a safetensors file: name it *.safetensors, got {str(out)!r}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} already exists; choose another name or pass --overwrite — nothing "
                              "was changed")
    generator = load_generator(source, key=key, **load)
    if generator.build is None:
        raise ValueError(f"{str(source)!r} loads as a module fastmine cannot rebuild from a description (a pickled "
                         "module or one you passed): convert needs arch= or a format fastmine builds itself")
    critic_module = critic_build = None
    if critic and Path(source).is_file() and has_critic(source):
        critic_module = load_critic(source, allow_pickle=load.get("allow_pickle", False),
                                    trust_code=load.get("trust_code", False))
        critic_build = critic_build_of(source, critic_module)
    save_sampler(out, Sampler(generator), critic_module, critic_build, extra={"converted_from": Path(source).name})
    return {"path": out, "generator": generator.build, "latent_spec": generator.latent_spec.to_dict(),
            "parameters": sum(p.numel() for p in generator.parameters()),
            "critic": None if critic_module is None else sum(p.numel() for p in critic_module.parameters())}
