"""Network pickles in the layout of stylegan2-ada-pytorch / stylegan3 snapshots, written
without the official code: while pickling, stand-ins for ``torch_utils.persistence`` and
``dnnlib.util`` sit in ``sys.modules`` (pickle records a function by its module and name,
so the file names ``torch_utils.persistence._reconstruct_persistent_obj`` exactly as a real
one does), and every module pickles as ``(_reconstruct_persistent_obj, (meta,))`` with
``meta = dict(type='class', version=6, module_src=..., class_name=..., state=module.__dict__)``.
"""
from __future__ import annotations

import contextlib
import copy
import io
import pickle
import sys
import types

import numpy as np
import torch
from torch import nn

PERSISTENCE_VERSION = 6  # the official persistence format version


def _reconstruct_persistent_obj(meta):
    raise AssertionError("only its name is pickled; fastmine must never call the official function")


class EasyDict(dict):
    """Stands in for dnnlib.util.EasyDict (a dict with attribute access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Network:
    """Stands in for the TF-era dnnlib.tflib.network.Network."""

    def __init__(self, name):
        self.name = name


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
EasyDict.__module__ = "dnnlib.util"
Network.__module__ = "dnnlib.tflib.network"


def _module(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    return m


FAKE_MODULES = {
    "torch_utils": _module("torch_utils"),
    "torch_utils.persistence": _module("torch_utils.persistence",
                                       _reconstruct_persistent_obj=_reconstruct_persistent_obj),
    "dnnlib": _module("dnnlib"),
    "dnnlib.util": _module("dnnlib.util", EasyDict=EasyDict),
    "dnnlib.tflib": _module("dnnlib.tflib"),
    "dnnlib.tflib.network": _module("dnnlib.tflib.network", Network=Network),
}


@contextlib.contextmanager
def official_names():
    """The stand-in modules in sys.modules (so pickle can name their objects), then removed."""
    saved = {name: sys.modules.get(name) for name in FAKE_MODULES}
    sys.modules.update(FAKE_MODULES)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def persistent(cls, *args, **kwargs):
    """``cls(*args, **kwargs)`` remembering its arguments as the official decorator does."""
    module = cls(*args, **kwargs)
    module._init_args = copy.deepcopy(args)
    module._init_kwargs = copy.deepcopy(kwargs)
    return module


def legacy_storage_bytes(storage, location="cpu") -> bytes:
    """What torch.storage._load_from_bytes gets: the storage torch.save'd in the legacy
    format, its device tag set to ``location`` (a pickle dumped from a GPU says 'cuda:0')."""
    buf = io.BytesIO()
    torch.save(storage, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    if location != "cpu":  # protocol 2 writes the tag as BINUNICODE: 'X', 4-byte length, text
        old, new = b"X\x03\x00\x00\x00cpu", b"X" + len(location).to_bytes(4, "little") + location.encode()
        assert data.count(old) == 1
        data = data.replace(old, new)
    return data


class OfficialPickler(pickle.Pickler):
    """Pickles nn.Modules in the official persistent layout (see the module docstring).

    ``sources``: class -> module_src text (default: a one-line stub); ``storage_location``:
    the device tag written into every storage's bytes."""

    def __init__(self, file, protocol=None, sources=None, storage_location="cpu", meta_extra=None):
        super().__init__(file, protocol=protocol)
        self.sources = sources or {}
        self.storage_location = storage_location
        self.meta_extra = meta_extra or {}

    def reducer_override(self, obj):
        if isinstance(obj, nn.Module):
            cls = type(obj)
            src = self.sources.get(cls, f"class {cls.__name__}: pass\n")
            meta = dict(type="class", version=PERSISTENCE_VERSION, module_src=src, class_name=cls.__name__,
                        state=obj.__dict__, **self.meta_extra)
            return _reconstruct_persistent_obj, (meta,)
        if isinstance(obj, torch.storage.TypedStorage) and self.storage_location != "cpu":
            return torch.storage._load_from_bytes, (legacy_storage_bytes(obj, self.storage_location),)
        return NotImplemented


def dump_network_pickle(obj, path, protocol=None, **kwargs):
    with official_names(), open(path, "wb") as f:
        OfficialPickler(f, protocol=protocol, **kwargs).dump(obj)
    return path


# --------------------------------------------------------------------------- small networks
class Layer(nn.Module):
    """Parameters (one possibly None), a persistent and a non-persistent buffer, numpy attributes."""

    def __init__(self, in_features, out_features, bias=True, lr_multiplier=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.randn(out_features)) if bias else None
        self.register_buffer("scale", torch.rand(out_features) + 0.5)
        self.register_buffer("cache", torch.randn(3), persistent=False)
        self.weight_gain = np.float32(lr_multiplier) / np.sqrt(in_features)  # a numpy scalar, as SG3 has
        self.size = np.broadcast_to(np.asarray(out_features), [2])  # a numpy array, as SG3 has
        self.taps = np.linspace(0.0, 1.0, 3)  # contiguous: protocol 5 pickles it with _frombuffer

    def forward(self, x):
        return x @ (self.weight * self.weight_gain).t() * self.scale


class Net(nn.Module):
    """Nested modules (one slot None), a buffer of its own, an EasyDict constructor keyword."""

    def __init__(self, width=4, layer_kwargs=None):
        super().__init__()
        layer_kwargs = layer_kwargs or {}
        self.fc0 = persistent(Layer, width, width, **layer_kwargs)
        self.fc1 = persistent(Layer, width, 2, bias=False, **layer_kwargs)
        self.register_module("skip", None)
        self.register_buffer("w_avg", torch.randn(width))
        self.width = width


def make_net(width=4, seed=0):
    torch.manual_seed(seed)
    return persistent(Net, width=width, layer_kwargs=EasyDict(lr_multiplier=0.01)).eval().requires_grad_(False)


def snapshot(seed=0):
    """The dict a training snapshot holds, small."""
    return dict(G=make_net(seed=seed), D=make_net(width=3, seed=seed + 1), G_ema=make_net(seed=seed + 2),
                augment_pipe=None, training_set_kwargs=EasyDict(path="data.zip", resolution=8, use_labels=False))
