"""Reading the checkpoint files pretrained generators come in, without running code from them.

Two kinds of file:

- **Everyday torch checkpoints** (:func:`read_state_dict`): ``.safetensors``, and ``.pt`` /
  ``.pth`` / ``.bin`` / ``.ckpt`` / ``.pkl`` files written by ``torch.save``, read with
  ``torch.load(weights_only=True)`` plus a short allow-list of harmless data types real
  checkpoints hold (``argparse.Namespace``, numpy arrays and scalars). The generator's (or
  critic's) state dict is found by well-known keys; ``key=`` picks one explicitly.
- **NVIDIA network pickles** (:func:`read_network_pickle`): the ``network-snapshot-*.pkl``
  files of stylegan2-ada-pytorch and stylegan3, a ``pickle.dump``'ed dict whose networks
  carry the source code of their module. A restricted unpickler turns each network into a
  :class:`PersistentRecord` (class name, constructor arguments, state); the source is kept
  as text and never executed or compiled. Any other global the pickle names is refused.
"""
from __future__ import annotations

import argparse
import functools
import io
import math
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

# The EMA generator comes first: it is the one papers sample and report (FID) from, and
# what a repo's own generate script loads; the raw generator ("g", "G", ...) is noisier.
# A bare "ema" is last because many trainers store an EMA helper's own state under it.
GENERATOR_KEYS = ("g_ema", "G_ema", "netG_state_dict", "generator", "gen", "G", "g", "netG",
                  "generator_state_dict", "state_dict", "model", "ema")
CRITIC_KEYS = ("d", "D", "netD_state_dict", "discriminator", "critic", "netD", "discriminator_state_dict")
ROLE_KEYS = {"generator": GENERATOR_KEYS, "critic": CRITIC_KEYS}
SEARCH_DEPTH = 3  # "model" -> "state_dict" -> "generator" is as deep as real checkpoints go

# the first pickle a legacy (pre-zip) torch.save file holds: its magic number
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
# DataParallel / DistributedDataParallel wrap the model as ``module``; torch.compile as ``_orig_mod``
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# --------------------------------------------------------------------------- torch checkpoints
def _numpy_picklers():
    """The functions numpy pickles arrays and scalars with, taken from numpy itself: their
    module is numpy.core in numpy 1.x and numpy._core in 2.x, and files carry either name."""
    return np.zeros(1).__reduce__()[0], np.float64(0).__reduce__()[0]


_NP_RECONSTRUCT, _NP_SCALAR = _numpy_picklers()
_NP_DTYPE_CHARS = "?bhilqBHILQefdgFDG"  # bool, signed and unsigned ints, floats, complex (no object, no str)

# What torch 2.13's weights_only unpickler refuses but real checkpoints hold (torch already
# allows tensors, storages, dtypes, torch.Size, torch.device, OrderedDict, Counter, set,
# bytearray, complex). Each entry builds plain data and runs no code from the file:
# - argparse.Namespace: a bag of attributes (rosinality and many repos save their ``args``);
#   building one sets attributes, nothing else. facebookresearch/pytorch_GAN_zoo pickles its
#   config as its own empty class models.utils.config.BaseConfig, the same bag of attributes:
#   read as a Namespace.
# - numpy arrays (ndarray, _reconstruct): memory of a numeric dtype filled from bytes.
# - numpy scalars (scalar) and dtypes (dtype, and the dtype classes the unpickler must see to
#   restore a dtype's byte order): values such as a saved best_fid. No object or string
#   dtypes: an object array's elements would be arbitrary pickled objects.
# The numpy functions are listed under both their numpy 1.x (numpy.core) and 2.x
# (numpy._core) names, since files name whichever numpy wrote them.
TORCH_SAFE_GLOBALS = [
    argparse.Namespace,
    (argparse.Namespace, "models.utils.config.BaseConfig"),
    np.ndarray,
    np.dtype,
    *sorted({type(np.dtype(c)) for c in _NP_DTYPE_CHARS}, key=str),
    *[(fn, f"{core}.multiarray.{name}") for core in ("numpy.core", "numpy._core")
      for fn, name in ((_NP_RECONSTRUCT, "_reconstruct"), (_NP_SCALAR, "scalar"))],
]


def _one_line(e: Exception) -> str:
    text = str(e)
    # torch's weights_only failure wraps the reason in advice to load the file with weights_only=False,
    # which is wrong for a damaged file and unsafe for an untrusted one: keep the reason only
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [s.strip() for s in text.splitlines() if s.strip()]
    return lines[0] if lines else type(e).__name__


def _refused_name(e: Exception) -> str | None:
    """The global torch's weights_only unpickler refused, if that is why ``e`` was raised."""
    found = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", str(e))
    return found.group(1) if found else None


def _refused_global(path, name: str) -> ValueError:
    return ValueError(
        f"{str(path)} refers to {name}, which fastmine does not load: a checkpoint may hold only tensors and plain "
        "data (building anything else runs code from the file); save the weights alone with "
        "torch.save(model.state_dict(), path) or as .safetensors, or, if you trust the file, load it with "
        "allow_pickle=True (source.allow_pickle=true), which runs its code")


# names a pickle gives a global by: GLOBAL "module name", or STACK_GLOBAL after two strings
_STRINGS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING")


def _refuse_large_bytearrays(path: Path):
    """torch.load(weights_only=True) allows ``bytearray(n)``, which allocates n bytes from a number
    the file names: a checkpoint that calls it and names a number larger than itself is refused
    before torch reads it (a real checkpoint's bytearrays hold their bytes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if zipfile.is_zipfile(f):
            with zipfile.ZipFile(f) as z:
                streams = [io.BytesIO(z.read(n)) for n in z.namelist() if n.endswith("data.pkl")]
            skip = 0
        else:  # the legacy format: small pickles (magic number, protocol, system info), then the object
            f.seek(0)
            streams, skip = [io.BytesIO(f.read(min(size, 64 << 20)))], 3
    for stream in streams:
        strings, calls, largest = [], False, 0
        try:
            for _ in range(skip):
                for _op in pickletools.genops(stream):
                    pass
            for opcode, arg, _pos in pickletools.genops(stream):
                if opcode.name in _STRINGS:
                    strings = [*strings[-1:], arg]
                elif opcode.name == "GLOBAL" or opcode.name == "STACK_GLOBAL":
                    name = arg.split(" ")[-1] if opcode.name == "GLOBAL" else (strings or [""])[-1]
                    calls = calls or name == "bytearray"
                elif isinstance(arg, int) and not isinstance(arg, bool) and opcode.name != "PROTO":
                    largest = max(largest, arg)
        except Exception:  # not a pickle torch reads either: torch.load says so
            return
        if calls and largest > size:
            raise ValueError(f"{str(path)!r} asks for a bytearray of {largest} bytes, more than the file's size "
                             f"({size}) allows; it is not a checkpoint fastmine reads")


def _torch_load(path: Path):
    _refuse_large_bytearrays(path)
    try:
        with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS), warnings.catch_warnings():
            # the legacy format and storages of old files warn about TypedStorage: not the user's concern
            warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        refused = _refused_name(e)
        if refused:
            raise _refused_global(path, refused) from None
        raise ValueError(f"{str(path)} is not a readable torch checkpoint ({_one_line(e)}); it may be truncated or "
                         "corrupt: re-export it or pick an earlier checkpoint") from None


def load_checkpoint(path) -> object:
    """The object a checkpoint file holds (plain data and tensors only), with network-pickle
    records turned into state dicts."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(TORCH_LEGACY_MAGIC))
    if zipfile.is_zipfile(path) and _is_npz(path):
        raise ValueError(f"{str(path)} is a NumPy .npz archive (Chainer or TensorFlow weights, such as the Chainer "
                         "SNGAN models of pfnet-research that Mimicry compares with), not a PyTorch checkpoint: load "
                         "it in its own framework and save the tensors with torch.save or safetensors, or use the "
                         "model's PyTorch release")
    if zipfile.is_zipfile(path) or head.startswith(TORCH_LEGACY_MAGIC) or not head.startswith(b"\x80"):
        return _torch_load(path)
    # a plain pickle (pickle.dump): a network snapshot, or tensors pickled without torch.save
    obj = _restricted_load(path)
    if isinstance(obj, PersistentRecord):
        return record_state_dict(obj)
    if isinstance(obj, dict):
        return {k: record_state_dict(v) if isinstance(v, PersistentRecord) else v for k, v in obj.items()}
    return obj


def _is_npz(path: Path) -> bool:
    """numpy.savez's archive: every member an .npy array (a torch zip holds data.pkl under a folder)."""
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return bool(names) and all(n.endswith(".npy") for n in names)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _count_tensors(obj, depth=0) -> int:
    if torch.is_tensor(obj):
        return 1
    if isinstance(obj, dict) and depth < 16:  # bounded: only to describe a file, not to search it
        return sum(_count_tensors(v, depth + 1) for v in obj.values())
    return 0


def _describe(obj: dict) -> str:
    """'g (26 tensors), args (Namespace), ...': what a dict's top-level keys hold."""
    parts = []
    for k, v in obj.items():
        n = _count_tensors(v)
        parts.append(f"{k} ({n} tensor{'s' * (n > 1)})" if n else f"{k} ({type(v).__name__})")
    return ", ".join(parts) if parts else "none"


def _search(obj: dict, keys, prefix="", depth=1):
    """Dotted path of the first state dict under ``keys`` (priority order), looking inside
    known keys first, then inside any nested dict, ``SEARCH_DEPTH`` levels at most."""
    for k in keys:
        if k in obj and _is_state_dict(obj[k]):
            return prefix + k
    if depth >= SEARCH_DEPTH:
        return None
    nested = [k for k in keys if isinstance(obj.get(k), dict)]
    nested += [k for k, v in obj.items() if isinstance(v, dict) and k not in nested and not _is_state_dict(v)]
    for k in nested:
        found = _search(obj[k], keys, f"{prefix}{k}.", depth + 1)
        if found:
            return found
    return None


def _pick(obj, path: Path, key: str | None, role: str):
    """(state dict, where) in the object a file holds (see :func:`read_state_dict`)."""
    if key is not None and _is_state_dict(obj) and key not in obj:
        return _under_prefix(obj, key, path), key
    if key is not None:
        node, walked = obj, []
        rest = key
        while rest:
            if not isinstance(node, dict):
                raise ValueError(f"{str(path)}: {'.'.join(walked)} holds a {type(node).__name__}, not a dict with "
                                 f"key {rest!r}; pass key= naming a state dict (source.key=...)")
            # a whole remaining path that is itself a key wins over splitting it at its dots
            part = rest if rest in node else rest.split(".", 1)[0]
            if part not in node:
                where = f" under {'.'.join(walked)}" if walked else ""
                raise ValueError(f"{str(path)} has no key {part!r}{where}; its keys: {_describe(node)}; pass one of "
                                 "them as key= (source.key=..., dotted for nested keys)")
            node, walked, rest = node[part], walked + [part], rest[len(part) + 1:]
        if not _is_state_dict(node):
            what = (f"a dict with {_describe(node)}" if isinstance(node, dict) else f"a {type(node).__name__}")
            raise ValueError(f"{str(path)}: key {key!r} holds {what}, not a state dict of tensors; pass key= naming "
                             "the state dict itself (source.key=...)")
        return node, key
    if _is_state_dict(obj):
        return obj, "(the whole file)"
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)} holds a {type(obj).__name__}, not a state dict of tensors; save "
                         "model.state_dict() instead")
    found = _search(obj, ROLE_KEYS[role])
    if found:
        node = obj
        for part in found.split("."):
            node = node[part]
        return node, found
    # the one dict of tensors, unless it is under another role's key ("d" is no generator)
    others = {k for r, keys in ROLE_KEYS.items() if r != role for k in keys}
    candidates = [k for k, v in obj.items() if _is_state_dict(v) and k not in others]
    if len(candidates) == 1:
        return obj[candidates[0]], candidates[0]
    problem = "holds several dicts of tensors" if candidates else "holds no state dict of tensors"
    raise ValueError(f"{str(path)} has no known {role} key and {problem}; its keys: {_describe(obj)}; pass "
                     f"key= naming the {role}'s state dict (source.key=..., dotted for nested keys)")


def _strip_wrappers(state: dict) -> tuple[dict, list]:
    """Keys without DataParallel's ``module.`` / torch.compile's ``_orig_mod.`` (when every key has it)."""
    removed = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                removed.append(prefix)
                changed = True
    # a compiled submodule leaves ``_orig_mod.`` inside its keys: "mapping._orig_mod.fc0.weight"
    if any("._orig_mod." in k for k in state):
        state = {k.replace("._orig_mod.", "."): v for k, v in state.items()}
        removed.append("._orig_mod.")
    return state, removed


def _read_safetensors(path: Path, key: str | None) -> tuple[dict, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ValueError(f"{str(path)} is not a readable safetensors file ({_one_line(e)}); it may be truncated or "
                         "corrupt: re-export it or pick an earlier checkpoint") from None
    if key is None:
        return tensors, "(the whole file)"
    return _under_prefix(tensors, key, path), key


def _under_prefix(tensors: dict, key: str, path: Path) -> dict:
    """The tensors named ``key.*`` of a flat state dict, without the prefix."""
    n = len(key) + 1
    picked = {k[n:]: v for k, v in tensors.items() if k.startswith(key + ".")}
    if not picked:
        counts: dict[str, int] = {}
        for k in tensors:
            counts[k.split(".", 1)[0]] = counts.get(k.split(".", 1)[0], 0) + 1
        listing = ", ".join(f"{k} ({c} tensor{'s' * (c > 1)})" for k, c in counts.items())
        raise ValueError(f"{str(path)} has no tensors under {key + '.'!r}; its prefixes: {listing}; pass one of them "
                         "as key= (source.key=...)")
    return picked


def read_state_dict(path, key: str | None = None, role: str = "generator") -> tuple[dict, str]:
    """``(state_dict, where)``: the ``role`` network's weights in a checkpoint, on the CPU.

    ``path``: ``.safetensors``, a ``torch.save`` file (zip or legacy format), a network
    pickle (its ``G_ema`` / ``D``) or a plain pickle of tensors. A flat dict of tensors (a
    safetensors file always is one) is the state dict, or with ``key`` its tensors under ``key.``.
    Without ``key`` the state dict is found by :data:`GENERATOR_KEYS` / :data:`CRITIC_KEYS`
    in that order (nested dicts searched a few levels deep); a dict with one dict of tensors
    and no known key gives that one. ``key``: explicit, dotted for nested dicts (``"model.state_dict"``). Wrapper
    prefixes (``module.``, ``_orig_mod.``) are removed. ``where`` names the key used.
    Nothing from the file is executed: objects other than plain data are refused."""
    if role not in ROLE_KEYS:
        raise ValueError(f"role must be one of {sorted(ROLE_KEYS)}, got {role!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        state, where = _read_safetensors(path, key)
    else:
        state, where = _pick(load_checkpoint(path), path, key, role)
    return _unwrapped(state, where)


def state_dict_in(obj, path, key: str | None = None, role: str = "generator") -> tuple[dict, str]:
    """:func:`read_state_dict` on an object :func:`load_checkpoint` already read."""
    if role not in ROLE_KEYS:
        raise ValueError(f"role must be one of {sorted(ROLE_KEYS)}, got {role!r}")
    return _unwrapped(*_pick(obj, Path(path), key, role))


def _unwrapped(state: dict, where: str) -> tuple[dict, str]:
    state, removed = _strip_wrappers({k: v.detach() for k, v in state.items()})
    if removed:
        where += f" (removed {', '.join(repr(p) for p in removed)} from its keys)"
    return state, where


# --------------------------------------------------------------------------- network pickles
@dataclass(eq=False)
class PersistentRecord:
    """One network of a network pickle, as data: what the official code would have built by
    executing ``module_src`` and setting ``state`` as the instance's ``__dict__``.

    ``module_name``: the official module the class came from (``"training.networks"``,
    ``"training.networks_stylegan2"``, ``"training.networks_stylegan3"``,
    ``"training.augment"``), from the pickle's metadata when it says, else inferred from the
    classes the source defines (a snapshot stores the source, not its import path); None when
    neither tells. ``module_src`` is kept as text only: it is never executed or compiled."""
    class_name: str
    module_name: str | None
    init_args: tuple
    init_kwargs: dict
    state: dict = field(repr=False)
    module_src: str = field(repr=False)
    version: int | None = None


# class a module's source defines -> the official module that defines it (first match wins)
_MODULE_SIGNS = (
    ("training.networks_stylegan3", lambda classes, src: "SynthesisInput" in classes),
    ("training.augment", lambda classes, src: "AugmentPipe" in classes),
    # stylegan3's copy of the StyleGAN2 networks adds this keyword to the Generator
    ("training.networks_stylegan2", lambda classes, src: "fused_modconv_default" in src
     and {"Generator", "Discriminator"} & classes),
    ("training.networks", lambda classes, src: {"Generator", "Discriminator", "MappingNetwork"} & classes),
)


def _module_name(meta: dict) -> str | None:
    if isinstance(meta.get("module_name"), str):
        return meta["module_name"]
    src = meta["module_src"]
    classes = set(re.findall(r"^class\s+(\w+)", src, flags=re.M))
    return next((name for name, matches in _MODULE_SIGNS if matches(classes, src)), None)


def _persistent_record(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"unsupported persistent object {kind!r} (fastmine reads persistent classes)")
    for name, kind in (("class_name", str), ("module_src", str), ("state", dict)):
        if not isinstance(meta.get(name), kind):
            raise ValueError(f"persistent object metadata lacks a {kind.__name__} {name!r}")
    state = meta["state"]
    init_args, init_kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
    if not isinstance(init_args, (tuple, list)) or not isinstance(init_kwargs, dict):
        raise ValueError(f"{meta['class_name']}'s constructor arguments are not a tuple and a dict")
    return PersistentRecord(class_name=meta["class_name"], module_name=_module_name(meta),
                            init_args=tuple(init_args), init_kwargs=init_kwargs,
                            state=state, module_src=meta["module_src"], version=meta.get("version"))


def _check_ints(what, values):
    if not all(isinstance(v, int) and v >= 0 for v in values):
        raise ValueError(f"tensor {what} must be non-negative integers, got {values!r}")


def _tensor(storage, offset, size, stride, dtype=None, metadata=None):
    """A tensor viewing ``storage``: what torch's _rebuild_tensor* build, with bounds checked
    (``Tensor.set_`` does not check them: a forged file could read past the storage)."""
    if isinstance(storage, torch.storage.TypedStorage):
        untyped, dtype = storage._untyped_storage, storage.dtype
    elif isinstance(storage, torch.UntypedStorage) and isinstance(dtype, torch.dtype):
        untyped = storage
    else:
        raise ValueError(f"tensor data must be a torch storage, got {type(storage).__name__}")
    size, stride = tuple(size), tuple(stride)
    _check_ints("offset", [offset])
    _check_ints("sizes", size)
    _check_ints("strides", stride)
    if len(size) != len(stride):
        raise ValueError(f"tensor size {size} and stride {stride} differ in length")
    numel = untyped.nbytes() // torch.empty((), dtype=dtype).element_size()
    if all(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= numel:
        raise ValueError(f"tensor of size {size} (stride {stride}, offset {offset}) exceeds its storage of {numel}")
    t = torch.empty((0,), dtype=dtype).set_(untyped, offset, size, stride)
    if metadata:
        torch._utils.set_tensor_metadata(t, metadata)
    return t


def _rebuild_tensor(storage, offset, size, stride):
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _tensor(storage, offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    return _tensor(storage, offset, size, stride, dtype, metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not torch.is_tensor(data):
        raise ValueError(f"parameter data must be a tensor, got {type(data).__name__}")
    return data


class _TypeMark:
    """Stands in for a tensor class a pickle names (only ever compared, never called)."""

    def __init__(self, name):
        self.name = name


# numpy.ndarray as a network pickle names it: only compared (numpy's _reconstruct names the class it
# builds); the class itself would allocate an array of any size the file names
_NDARRAY = _TypeMark("numpy.ndarray")
_TENSOR_TYPES = {"torch.Tensor": _TypeMark("torch.Tensor"),
                 "torch.nn.parameter.Parameter": _TypeMark("torch.nn.parameter.Parameter")}
_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor that carried Python attributes: the tensor, without them."""
    if func not in _REBUILDERS or not isinstance(new_type, _TypeMark):
        raise ValueError("a tensor subclass that fastmine does not load")
    return func(*args)


def _pickled_ints(data: bytes):
    """Every integer the pickles of a torch.save'd object name (its zip's data.pkl, or the
    pickles a legacy file starts with): the sizes torch would allocate before reading."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            streams = [z.read(n) for n in z.namelist() if n.endswith("data.pkl")]
        pickles = [io.BytesIO(b) for b in streams]
    else:
        pickles = [io.BytesIO(data)]
        for _ in range(3):  # the magic number, the protocol version, the system info: then the object
            for _ in pickletools.genops(pickles[0]):
                pass
    for stream in pickles:
        for opcode, arg, _pos in pickletools.genops(stream):
            if isinstance(arg, int) and not isinstance(arg, bool) and opcode.name != "PROTO":
                yield arg


def _load_storage(budget: "_Budget", data):
    """The storage pickle stored as the bytes of a torch.save'd storage (torch.storage._load_from_bytes).
    Torch allocates a storage by the size its pickle names before reading the bytes: no size
    may exceed the bytes given (they hold the storage)."""
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"storage data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        big = max(_pickled_ints(data), default=0)
    except Exception as e:
        raise ValueError(f"storage bytes are not a torch.save'd storage ({e})") from None
    if big > len(data):
        raise ValueError(f"a storage of {len(data)} bytes names a size of {big}")
    budget.take(len(data), "a storage")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated")
        storage = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise ValueError(f"storage bytes hold a {type(storage).__name__}, not a storage")
    nbytes = storage.nbytes() if isinstance(storage, torch.UntypedStorage) else storage._untyped_storage.nbytes()
    if nbytes > len(data):
        raise ValueError(f"a storage of {nbytes} bytes came from {len(data)} bytes")
    return storage


def _encode(text, encoding):
    """Protocol-2 pickles write bytes as _codecs.encode(text, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("bytes must be encoded as latin1 text")
    return text.encode("latin1")


class _Budget:
    """The bytes one load may allocate from sizes its file names: the file's own size (a file
    carries the data of whatever it holds; a size it merely names is not data)."""

    def __init__(self, path, limit: int):
        self.path, self.left = path, limit

    def take(self, nbytes, what):
        if not isinstance(nbytes, int) or nbytes < 0 or nbytes > self.left:
            raise ValueError(f"{str(self.path)} asks for {what} of {nbytes} bytes, more than the file's size "
                             "allows; it is forged or corrupt")
        self.left -= nbytes


def _np_reconstruct(budget, subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise ValueError("numpy array subclasses are not loaded")
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    _check_ints("sizes", shape)
    budget.take(math.prod(shape) * np.dtype(dtype).itemsize, "a numpy array")
    return _NP_RECONSTRUCT(np.ndarray, shape, dtype)


def _bytearray(budget, source=b"", *args):
    if isinstance(source, int):  # a size, not data
        budget.take(source, "a bytearray")
    return bytearray(source, *args)


def _np_dtype(spec, align=False, copy=False):
    if not isinstance(spec, str) or spec == "O" or spec.startswith(("O", "|O")):
        raise ValueError(f"numpy dtype {spec!r} is not a plain numeric type")
    return np.dtype(spec, align, copy)


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ValueError(f"numpy scalar of dtype {dtype!r} is not plain data")
    return _NP_SCALAR(dtype, data)


def _np_frombuffer(budget, buffer, dtype, shape, order):
    """Protocol-5 pickles of numpy arrays (the default protocol from Python 3.14)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ValueError(f"numpy array of dtype {dtype!r} is not plain data")
    buffer = bytes(buffer)
    budget.take(len(buffer), "a numpy array")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _torch_size(dims):
    _check_ints("sizes", tuple(dims))
    return torch.Size(dims)


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise ValueError(f"bad torch.device({kind!r}, {index!r})")
    return torch.device(kind) if index is None else torch.device(kind, index)


_TORCH_DTYPES = {str(t): t for t in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64, torch.complex128, torch.uint16, torch.uint32, torch.uint64)}

# Every global a network pickle may name, mapped to fastmine's own stand-in. None of them
# runs code from the file: records and dicts hold data, the rebuilders view bytes as tensors
# (storages come from torch.load(weights_only=True)), classes are plain containers. Those in
# _BUDGETED allocate from a size the file names: they get the load's budget first.
NETWORK_PICKLE_GLOBALS = {
    "torch_utils.persistence._reconstruct_persistent_obj": _persistent_record,
    "dnnlib.util.EasyDict": dict,  # a dict with attribute access: the dict is what matters
    "collections.OrderedDict": OrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": _bytearray,
    "builtins.complex": complex,
    "_codecs.encode": _encode,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.storage._load_from_bytes": _load_storage,
    "torch.Size": _torch_size,
    "torch.device": _torch_device,
    "numpy.ndarray": _NDARRAY,
    "numpy.dtype": _np_dtype,
    **{f"{core}.multiarray._reconstruct": _np_reconstruct for core in ("numpy.core", "numpy._core")},
    **{f"{core}.multiarray.scalar": _np_scalar for core in ("numpy.core", "numpy._core")},
    **{f"{core}.numeric._frombuffer": _np_frombuffer for core in ("numpy.core", "numpy._core")},
    **_TENSOR_TYPES,
    **_TORCH_DTYPES,
}
_BUDGETED = {_bytearray, _np_reconstruct, _np_frombuffer, _load_storage}
TF_NETWORK = "dnnlib.tflib.network.Network"
TF_NETWORKS = (TF_NETWORK, "tfutil.Network")  # StyleGAN / StyleGAN2's dnnlib; progressive_growing_of_gans' tfutil
# what a TF-era network's build function is called, in the file's head -> (what it is, genforce's model type)
TF_GENFORCE_TYPES = {b"G_paper": ("Progressive GAN", "pggan"), b"G_style": ("StyleGAN (v1)", "stylegan")}


def _tf_refusal(path, full: str) -> str:
    """One line saying how to convert a TensorFlow-era pickle: genforce's converter for ProGAN and
    StyleGAN (v1), whose PyTorch checkpoints fastmine reads; the official legacy.py for StyleGAN2."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    for marker, (what, model_type) in TF_GENFORCE_TYPES.items():
        if marker in head or (full == "tfutil.Network" and model_type == "pggan"):
            return (f"{str(path)} is a TensorFlow-era {what} pickle ({full}); fastmine reads its PyTorch checkpoints: "
                    f"convert it with genforce's converter (github.com/genforce/genforce, TensorFlow 1.x), python "
                    f"convert_model.py {model_type} --source_model_path={str(path)} --target_model_path=converted.pth")
    return (f"{str(path)} is a TensorFlow-era StyleGAN pickle ({full}); fastmine reads PyTorch-era "
            "pickles: convert it with the official stylegan2-ada-pytorch or stylegan3 code, "
            f"python legacy.py --source={str(path)} --dest=converted.pkl")


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, so that each opcode can be checked: globals come from
    :data:`NETWORK_PICKLE_GLOBALS` only, allocations from sizes the file names are bounded by
    the file's size, and BUILD (``__setstate__``) applies only to numpy arrays and dtypes and to
    OrderedDicts — on a tensor it would be ``Tensor.set_``, re-pointing it past its storage."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path, budget: _Budget):
        super().__init__(file)
        self.path, self.budget = path, budget

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if not state:  # nothing to set
            self.stack.pop()
            return
        if not isinstance(inst, (np.ndarray, np.dtype, OrderedDict)):
            raise ValueError(f"{str(self.path)} sets the state of a {type(inst).__name__} (pickle BUILD), which "
                             "fastmine does not load: on a tensor it re-points the tensor's memory")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module, name):
        # protocol 0-2 pickles name builtins the Python 2 way; pickle maps that only in the
        # find_class this replaces
        module = {"__builtin__": "builtins"}.get(module, module)
        full = f"{module}.{name}"
        if full in TF_NETWORKS:
            raise ValueError(_tf_refusal(self.path, full))
        if full not in NETWORK_PICKLE_GLOBALS:
            raise ValueError(
                f"{str(self.path)} refers to {full}, which fastmine does not load: it reads only networks, tensors "
                "and plain data from a pickle (building anything else runs code from the file); if you trust the "
                "file, load it with the code that wrote it and save the networks' state_dict() as .safetensors")
        found = NETWORK_PICKLE_GLOBALS[full]
        if found in _BUDGETED:
            return functools.partial(found, self.budget)
        return found

    def persistent_load(self, pid):
        raise ValueError(f"{str(self.path)} uses pickle persistent ids, which a network pickle does not")


def _restricted_load(path: Path):
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path, _Budget(path, path.stat().st_size)).load()
        _check_views(obj, path)
        return obj
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{str(path)} is not a network pickle fastmine can read: {_one_line(e)}") from None
    except Exception as e:
        refused = _refused_name(e)  # inside the torch.save'd bytes of a storage
        if refused:
            raise _refused_global(path, refused) from None
        raise ValueError(f"{str(path)} is not a readable pickle ({type(e).__name__}: {_one_line(e)}); it may be "
                         "truncated or corrupt: re-export it or pick an earlier snapshot") from None


def _tensors_in(obj, where="", depth=0):
    """(name, tensor) of every tensor in the dicts, lists and records a pickle built."""
    if depth > 64:
        raise ValueError("objects nested more than 64 levels deep")
    if torch.is_tensor(obj):
        yield where or "(the object)", obj
    elif isinstance(obj, PersistentRecord):
        yield from _tensors_in(obj.state, where, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors_in(v, f"{where}.{k}" if where else str(k), depth + 1)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors_in(v, f"{where}[{i}]", depth + 1)


def _check_views(obj, path):
    """Every tensor a pickle built lies inside its own storage, and the storages are no larger
    than the file (what it carries), whatever opcodes built them."""
    total, seen = 0, set()
    for name, t in _tensors_in(obj):
        storage = t.untyped_storage()
        numel = storage.nbytes() // t.element_size()
        if t.numel() and (t.storage_offset() < 0 or any(s < 0 for s in t.stride()) or t.storage_offset() +
                          sum((n - 1) * s for n, s in zip(t.shape, t.stride())) >= numel):
            raise ValueError(f"{str(path)}: tensor {name} views memory outside its storage; it is forged or corrupt")
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    if total > path.stat().st_size:
        raise ValueError(f"{str(path)}: its tensors' storages hold {total} bytes, more than the file's size; it is "
                         "forged or corrupt")


def check_finite(state: dict, path):
    """Refuse weights that are NaN or infinite, naming (a few of) the tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{str(path)}: tensor(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} hold NaN or "
                         "infinite values; the file is damaged: re-export it")


def read_network_pickle(path) -> dict:
    """The dict a network pickle holds (``G``, ``D``, ``G_ema``, ``augment_pipe``,
    ``training_set_kwargs`` ...): networks as :class:`PersistentRecord`, the rest plain data
    (EasyDicts as dicts). Nothing from the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"network pickle {str(path)!r} does not exist")
    data = _restricted_load(path)
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)} holds a {type(data).__name__}, not the dict of networks a network pickle "
                         "holds (G, D, G_ema, ...)")
    return data


def _module_parts(record: PersistentRecord, where: str):
    state = record.state
    parts = [state.get(k) for k in ("_parameters", "_buffers", "_modules")]
    if not all(isinstance(p, dict) for p in parts):
        raise ValueError(f"{where or 'the network'} ({record.class_name}) is not a torch module: its state lacks "
                         "_parameters, _buffers or _modules")
    return (*parts, state.get("_non_persistent_buffers_set") or set())


def record_state_dict(record: PersistentRecord) -> dict:
    """The ``state_dict()`` the official module would give: parameters, then persistent
    buffers, then each submodule's, in their insertion order, ``None`` entries skipped."""
    out: dict[str, torch.Tensor] = {}

    def walk(rec, prefix):
        params, buffers, modules, non_persistent = _module_parts(rec, prefix.rstrip("."))
        for name, t in params.items():
            if t is not None:
                out[prefix + name] = t
        for name, t in buffers.items():
            if t is not None and name not in non_persistent:
                out[prefix + name] = t
        for name, sub in modules.items():
            if sub is None:
                continue
            if not isinstance(sub, PersistentRecord):
                raise ValueError(f"submodule {prefix + name} is a {type(sub).__name__}, not a network record")
            walk(sub, f"{prefix}{name}.")

    walk(record, "")
    return out


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def record_kwargs(record: PersistentRecord) -> dict:
    """The keyword arguments the network was constructed with, as plain values (dicts for
    EasyDicts, Python numbers and lists for numpy ones): ``Cls(**record_kwargs(r))``.
    Positional arguments, which the official networks never take, are in ``record.init_args``."""
    return _plain(record.init_kwargs)


def is_network_pickle(path) -> bool:
    """Whether ``path`` is a plain pickle naming ``torch_utils.persistence`` (or TF-era
    ``dnnlib.tflib``, which :func:`read_network_pickle` explains how to convert). Reads only
    the file's start: the first network's global comes before its module source."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    if not head.startswith(b"\x80") or head.startswith(TORCH_LEGACY_MAGIC):
        return False
    return b"torch_utils.persistence" in head or b"dnnlib.tflib.network" in head
