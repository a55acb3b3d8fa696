"""fastmine.checkpoints: torch checkpoints and NVIDIA network pickles read as data, never run."""
import argparse
import builtins
import io
import json
import os
import pickle
import pickletools
import re
import sys
from collections import OrderedDict
from pathlib import Path

import checkpoint_fixtures as cf  # beside this file: pytest puts tests/ (no __init__.py) on sys.path
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from fastmine.checkpoints import (
    CRITIC_KEYS,
    GENERATOR_KEYS,
    PersistentRecord,
    is_network_pickle,
    read_network_pickle,
    read_state_dict,
    record_kwargs,
    record_state_dict,
)

OFFICIAL = Path(__file__).parent / "fixtures" / "official"


def state(seed, n=3, width=4):
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}.weight": torch.randn(width, width, generator=g) for i in range(n)}


def assert_same(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def refusal(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def assert_key_picks(path, key, expected: dict, wrong_key, prefixes):
    """key= picks the tensors under `key.` without the prefix; a key that is no prefix is refused with the
    file's prefixes listed."""
    got, where = read_state_dict(path, key=key)
    assert where == key
    assert_same(got, expected)
    assert refusal(lambda: read_state_dict(path, key=wrong_key)) == (
        f"{path} has no tensors under '{wrong_key}.'; its prefixes: {prefixes}; pass one of them as key= "
        "(source.key=...)")


# --------------------------------------------------------------------------- torch checkpoints
def test_safetensors_whole_file_or_prefix(tmp_path):
    sd, d = state(0), state(1, n=2)
    path = tmp_path / "w.safetensors"
    save_file({**{f"G_ema.{k}": v for k, v in sd.items()}, **{f"D.{k}": v for k, v in d.items()}}, str(path))
    whole, where = read_state_dict(path)
    assert where == "(the whole file)" and len(whole) == 5
    assert_key_picks(path, "G_ema", sd, wrong_key="G", prefixes="D (2 tensors), G_ema (3 tensors)")


@pytest.mark.parametrize("zip_format", [True, False])
def test_flat_state_dict_file_is_the_state_dict(tmp_path, zip_format):
    sd = state(0)
    path = tmp_path / "w.pt"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    got, where = read_state_dict(path)
    assert where == "(the whole file)"
    assert_same(got, sd)
    torch.save({**{f"generator.{k}": v for k, v in sd.items()}, "critic.w": torch.ones(1)}, path)
    assert_key_picks(path, "generator", sd, wrong_key="gen", prefixes="generator (3 tensors), critic (1 tensor)")


def rosinality_checkpoint():
    """The dict rosinality's train.py saves, plus numpy values other repos keep beside the weights."""
    g, d, g_ema = state(0), state(1), state(2)
    p = nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(2)
    opt.step()
    return g, d, g_ema, {"g": g, "d": d, "g_ema": g_ema, "g_optim": opt.state_dict(), "d_optim": opt.state_dict(),
                         "args": argparse.Namespace(size=32, latent=8, n_mlp=2, channel_multiplier=2),
                         "best_fid": np.float64(12.5), "fid_history": np.array([30.0, 12.5], dtype=np.float32)}


@pytest.mark.parametrize("zip_format", [True, False])
def test_rosinality_checkpoint_picks_ema_generator_and_critic(tmp_path, zip_format):
    g, d, g_ema, ckpt = rosinality_checkpoint()
    path = tmp_path / "100000.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    got, where = read_state_dict(path)
    assert where == "g_ema"
    assert_same(got, g_ema)
    got, where = read_state_dict(path, role="critic")
    assert where == "d"
    assert_same(got, d)
    got, where = read_state_dict(path, key="g")
    assert where == "g"
    assert_same(got, g)


def test_state_dict_pickled_without_torch_save(tmp_path):
    """pickle.dump(model.state_dict()): tensors through torch's reducers, read by the restricted unpickler."""
    sd = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).state_dict()
    with open(tmp_path / "weights.pkl", "wb") as f:
        pickle.dump({"generator": sd, "step": 7}, f)
    got, where = read_state_dict(tmp_path / "weights.pkl")
    assert where == "generator"
    assert_same(got, sd)


def test_numpy_1_and_2_names_both_load(tmp_path):
    """numpy 2 pickles name numpy._core.multiarray, numpy 1 numpy.core.multiarray."""
    *_, g_ema, ckpt = rosinality_checkpoint()
    buf = io.BytesIO()
    torch.save(ckpt, buf, _use_new_zipfile_serialization=False)  # protocol 2: GLOBAL lines, no frames
    data = buf.getvalue()
    assert data.count(b"cnumpy._core.multiarray\n") == 2  # scalar, and _reconstruct for the array
    for name, raw in (("np2.pt", data), ("np1.pt", data.replace(b"cnumpy._core.multiarray\n",
                                                                b"cnumpy.core.multiarray\n"))):
        (tmp_path / name).write_bytes(raw)
        got, where = read_state_dict(tmp_path / name)
        assert where == "g_ema"
        assert_same(got, g_ema)


def test_priority_order_of_known_keys(tmp_path):
    for role, keys in (("generator", GENERATOR_KEYS), ("critic", CRITIC_KEYS)):
        for i, expected in enumerate(keys):
            sds = {k: state(j) for j, k in enumerate(keys)}
            path = tmp_path / f"{role}{i}.pt"
            torch.save({k: sds[k] for k in reversed(keys[i:])}, path)  # file order must not matter
            got, where = read_state_dict(path, role=role)
            assert where == expected
            assert_same(got, sds[expected])


def test_nested_dicts_searched_a_few_levels(tmp_path):
    sd = state(0)
    torch.save({"model": {"state_dict": sd}, "epoch": 3}, tmp_path / "a.pt")
    assert read_state_dict(tmp_path / "a.pt")[1] == "model.state_dict"
    torch.save({"checkpoint": {"nets": {"G_ema": sd, "D": state(1)}}}, tmp_path / "b.pt")
    got, where = read_state_dict(tmp_path / "b.pt")
    assert where == "checkpoint.nets.G_ema"
    assert_same(got, sd)
    assert read_state_dict(tmp_path / "b.pt", role="critic")[1] == "checkpoint.nets.D"
    torch.save({"a": {"b": {"c": {"g_ema": sd}}}}, tmp_path / "deep.pt")
    assert refusal(lambda: read_state_dict(tmp_path / "deep.pt")) == (
        f"{tmp_path / 'deep.pt'} has no known generator key and holds no state dict of tensors; its keys: "
        "a (3 tensors); pass key= naming the generator's state dict (source.key=..., dotted for nested keys)")
    got, where = read_state_dict(tmp_path / "deep.pt", key="a.b.c.g_ema")
    assert where == "a.b.c.g_ema"
    assert_same(got, sd)


def test_explicit_key_errors(tmp_path):
    *_, ckpt = rosinality_checkpoint()
    ckpt["nested"] = {"inner": state(5)}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    assert refusal(lambda: read_state_dict(path, key="g_emma")) == (
        f"{path} has no key 'g_emma'; its keys: g (3 tensors), d (3 tensors), g_ema (3 tensors), "
        "g_optim (3 tensors), d_optim (3 tensors), args (Namespace), best_fid (float64), fid_history (ndarray), "
        "nested (3 tensors); pass one of them as key= (source.key=..., dotted for nested keys)")
    assert refusal(lambda: read_state_dict(path, key="nested.outer")) == (
        f"{path} has no key 'outer' under nested; its keys: inner (3 tensors); pass one of them as key= "
        "(source.key=..., dotted for nested keys)")
    assert refusal(lambda: read_state_dict(path, key="args")) == (
        f"{path}: key 'args' holds a Namespace, not a state dict of tensors; pass key= naming the state dict itself "
        "(source.key=...)")
    assert refusal(lambda: read_state_dict(path, key="nested")) == (
        f"{path}: key 'nested' holds a dict with inner (3 tensors), not a state dict of tensors; pass key= naming "
        "the state dict itself (source.key=...)")
    assert refusal(lambda: read_state_dict(path, key="best_fid.x")) == (
        f"{path}: best_fid holds a float64, not a dict with key 'x'; pass key= naming a state dict (source.key=...)")
    got, where = read_state_dict(path, key="nested.inner")
    assert where == "nested.inner"
    assert_same(got, state(5))


def test_dotted_key_that_is_itself_a_key(tmp_path):
    torch.save({"ema.model": state(0), "ema": {"model": state(1)}}, tmp_path / "c.pt")
    assert_same(read_state_dict(tmp_path / "c.pt", key="ema.model")[0], state(0))


def test_ambiguous_or_empty_file_says_pass_key(tmp_path):
    path = tmp_path / "nets.pt"
    torch.save({"net_a": state(0), "net_b": state(1, n=2), "step": 5}, path)
    assert refusal(lambda: read_state_dict(path)) == (
        f"{path} has no known generator key and holds several dicts of tensors; its keys: net_a (3 tensors), net_b "
        "(2 tensors), step (int); pass key= naming the generator's state dict (source.key=..., dotted for nested "
        "keys)")
    torch.save({"weights": state(0), "step": 5}, path)
    got, where = read_state_dict(path)  # one dict of tensors: that one
    assert where == "weights"
    assert_same(got, state(0))
    torch.save({"d": state(0), "step": 5}, path)  # the critic's, under its known key: not the generator
    assert refusal(lambda: read_state_dict(path)) == (
        f"{path} has no known generator key and holds no state dict of tensors; its keys: d (3 tensors), step (int); "
        "pass key= naming the generator's state dict (source.key=..., dotted for nested keys)")
    torch.save([state(0)], path)
    assert refusal(lambda: read_state_dict(path)) == (
        f"{path} holds a list, not a state dict of tensors; save model.state_dict() instead")


def test_wrapper_prefixes_are_removed(tmp_path):
    sd = state(0)
    torch.save({"g_ema": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "ddp.pt")
    got, where = read_state_dict(tmp_path / "ddp.pt")
    assert where == "g_ema (removed 'module.' from its keys)"
    assert_same(got, sd)
    torch.save({f"_orig_mod.module.{k}": v for k, v in sd.items()}, tmp_path / "compiled.pt")
    got, where = read_state_dict(tmp_path / "compiled.pt")
    assert where == "(the whole file) (removed '_orig_mod.', 'module.' from its keys)"
    assert_same(got, sd)
    torch.save({"mapping._orig_mod.fc.weight": sd["layer0.weight"], "module.weight": sd["layer1.weight"]},
               tmp_path / "part.pt")
    got, _ = read_state_dict(tmp_path / "part.pt")
    assert list(got) == ["mapping.fc.weight", "module.weight"]  # 'module.' on one key only is a real name


def test_tensors_saved_on_a_gpu_land_on_the_cpu(tmp_path):
    sd = state(0)
    buf = io.BytesIO()
    torch.save({"g_ema": sd}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    old = b"X\x03\x00\x00\x00cpu"  # each storage's device tag, as protocol 2 writes it
    assert data.count(old) == 1  # written once, then referenced from the pickle's memo
    (tmp_path / "gpu.pt").write_bytes(data.replace(old, b"X\x06\x00\x00\x00cuda:0"))
    got, _ = read_state_dict(tmp_path / "gpu.pt")
    assert all(t.device.type == "cpu" for t in got.values())
    assert_same(got, sd)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_code_in_a_torch_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"g_ema": state(0), "hook": Evil(marker)}, tmp_path / "evil.pt")
    assert refusal(lambda: read_state_dict(tmp_path / "evil.pt")) == (
        f"{tmp_path / 'evil.pt'} refers to {os.system.__module__}.system, which fastmine does not load: a checkpoint "
        "may hold only tensors and plain data (building anything else runs code from the file); save the weights "
        "alone with torch.save(model.state_dict(), path) or as .safetensors, or, if you trust the file, load it "
        "with allow_pickle=True (source.allow_pickle=true), which runs its code")
    assert not marker.exists()
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    assert refusal(lambda: read_state_dict(tmp_path / "module.pt")).startswith(
        f"{tmp_path / 'module.pt'} refers to torch.nn.modules.linear.Linear, which fastmine does not load")


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    message = refusal(lambda: read_state_dict(tmp_path / "bad.pt"))
    assert message.startswith(f"{tmp_path / 'bad.pt'} is not a readable torch checkpoint (")
    assert message.endswith("); it may be truncated or corrupt: re-export it or pick an earlier checkpoint")
    save_file(state(0), str(tmp_path / "cut.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:-10])
    assert refusal(lambda: read_state_dict(tmp_path / "cut.safetensors")).startswith(
        f"{tmp_path / 'cut.safetensors'} is not a readable safetensors file (")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")
    assert refusal(lambda: read_state_dict(tmp_path / "bad.pt", role="discriminator")) == (
        "role must be one of ['critic', 'generator'], got 'discriminator'")


# --------------------------------------------------------------------------- network pickles (fake official format)
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])  # 3: Python 3.7's default, 4: 3.8-3.13, 5: 3.14
def test_network_pickle_records(tmp_path, protocol):
    snap = cf.snapshot()
    path = cf.dump_network_pickle(snap, tmp_path / "network-snapshot-000100.pkl", protocol=protocol)
    assert is_network_pickle(path)
    data = read_network_pickle(path)
    assert list(data) == ["G", "D", "G_ema", "augment_pipe", "training_set_kwargs"]
    assert data["augment_pipe"] is None
    assert type(data["training_set_kwargs"]) is dict  # EasyDict -> dict
    assert data["training_set_kwargs"] == {"path": "data.zip", "resolution": 8, "use_labels": False}
    for name in ("G", "D", "G_ema"):
        rec = data[name]
        assert isinstance(rec, PersistentRecord) and rec.class_name == "Net" and rec.version == 6
        assert rec.module_src == "class Net: pass\n" and rec.module_name is None
        sd = record_state_dict(rec)
        assert_same(sd, snap[name].state_dict())  # no non-persistent 'cache', no None bias, official order
        kwargs = record_kwargs(rec)
        assert kwargs == {"width": snap[name].width, "layer_kwargs": {"lr_multiplier": 0.01}}
        assert type(kwargs["layer_kwargs"]) is dict and type(rec.init_kwargs["layer_kwargs"]) is dict
    fc1 = data["G_ema"].state["_modules"]["fc1"]
    assert fc1.init_args == (4, 2) and record_kwargs(fc1) == {"bias": False, "lr_multiplier": 0.01}
    assert fc1.state["weight_gain"] == snap["G_ema"].fc1.weight_gain and type(fc1.state["weight_gain"]) is np.float64
    np.testing.assert_array_equal(fc1.state["size"], [2, 2])
    assert fc1.state["_non_persistent_buffers_set"] == {"cache"}
    assert_same(record_state_dict(fc1), snap["G_ema"].fc1.state_dict())


def test_read_state_dict_reads_network_pickles(tmp_path):
    snap = cf.snapshot()
    path = cf.dump_network_pickle(snap, tmp_path / "snap.pkl")
    got, where = read_state_dict(path)
    assert where == "G_ema"
    assert_same(got, snap["G_ema"].state_dict())
    got, where = read_state_dict(path, role="critic")
    assert where == "D"
    assert_same(got, snap["D"].state_dict())
    assert_same(read_state_dict(path, key="G")[0], snap["G"].state_dict())


def test_module_name_from_meta_or_the_classes_its_source_defines(tmp_path):
    net = cf.make_net()
    path = tmp_path / "n.pkl"
    cases = [("class SynthesisInput(torch.nn.Module):\nclass Generator(torch.nn.Module):\n",
              "training.networks_stylegan3"),
             ("class AugmentPipe(torch.nn.Module):\n", "training.augment"),
             ("class Generator(torch.nn.Module):\n    def __init__(self, fused_modconv_default=True): pass\n",
              "training.networks_stylegan2"),
             ("class MappingNetwork(torch.nn.Module):\nclass Generator(torch.nn.Module):\n", "training.networks"),
             ("class Something(torch.nn.Module):\n", None)]
    for src, expected in cases:
        cf.dump_network_pickle({"G": net}, path, sources={cf.Net: src})
        assert read_network_pickle(path)["G"].module_name == expected, src
    cf.dump_network_pickle({"G": net}, path, meta_extra={"module_name": "my_fork.networks"})
    assert read_network_pickle(path)["G"].module_name == "my_fork.networks"


def test_module_src_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "ran.txt"
    src = (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\n"
           "class Net:\n    pass\n")
    path = cf.dump_network_pickle(cf.snapshot(), tmp_path / "snap.pkl", sources={cf.Net: src})

    def guarded(real):
        def call(source, *args, **kwargs):
            if isinstance(source, str) and "write_text('executed')" in source:
                raise AssertionError("the source stored in the file was executed or compiled")
            return real(source, *args, **kwargs)
        return call

    monkeypatch.setattr(builtins, "exec", guarded(builtins.exec))
    monkeypatch.setattr(builtins, "compile", guarded(builtins.compile))
    modules_before = set(sys.modules)
    data = read_network_pickle(path)
    assert data["G"].module_src == src
    read_state_dict(path)
    monkeypatch.undo()
    assert not marker.exists()
    # the official loader registers the executed source as a module named _imported_module_<uuid>
    assert not [m for m in set(sys.modules) - modules_before if m.startswith("_imported_module_")]


class EvalOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).write_text('x')",)


@pytest.mark.parametrize("evil_class, global_name", [(Evil, f"{os.system.__module__}.system"),
                                                     (EvalOnLoad, "builtins.eval")])
def test_code_in_a_network_pickle_state_is_refused(tmp_path, evil_class, global_name):
    marker = tmp_path / "ran"
    snap = cf.snapshot()
    snap["G_ema"].fc0.payload = evil_class(marker)
    path = cf.dump_network_pickle(snap, tmp_path / "network-snapshot.pkl")
    expected = (f"{path} refers to {global_name}, which fastmine does not load: it reads only networks, tensors and "
                "plain data from a pickle (building anything else runs code from the file); if you trust the file, "
                "load it with the code that wrote it and save the networks' state_dict() as .safetensors")
    assert refusal(lambda: read_network_pickle(path)) == expected
    assert refusal(lambda: read_state_dict(path)) == expected
    assert not marker.exists()


def test_classic_os_system_pickle_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())  # the textbook protocol-0 payload
    assert refusal(lambda: read_network_pickle(path)).startswith(
        f"{path} refers to os.system, which fastmine does not load: ")
    assert not marker.exists()


def test_tf_era_pickle_says_how_to_convert(tmp_path):
    nets = tuple(cf.Network(name) for name in ("G", "D", "Gs"))
    path = tmp_path / "stylegan2-ffhq-config-f.pkl"
    with cf.official_names(), open(path, "wb") as f:
        pickle.dump(nets, f)
    assert is_network_pickle(path)
    assert refusal(lambda: read_network_pickle(path)) == (
        f"{path} is a TensorFlow-era StyleGAN pickle (dnnlib.tflib.network.Network); fastmine reads PyTorch-era "
        "pickles: convert it with the official stylegan2-ada-pytorch or stylegan3 code, python legacy.py "
        f"--source={path} --dest=converted.pkl")


@pytest.mark.parametrize("protocol", [2, 5])
def test_network_pickle_numpy_1_and_2_names(tmp_path, protocol):
    """numpy 2 writes numpy._core..., numpy 1 numpy.core...; protocol 5 pickles arrays with _frombuffer."""
    snap = cf.snapshot()
    path = cf.dump_network_pickle(snap, tmp_path / "np2.pkl", protocol=protocol)
    data = path.read_bytes()
    if protocol == 2:  # GLOBAL 'module\nname\n' lines
        numpy1 = data.replace(b"cnumpy._core.", b"cnumpy.core.")
    else:  # SHORT_BINUNICODE: length byte, text; then the frame lengths are rebuilt
        numpy1 = re.sub(rb"\x8c(.)numpy\._core\.", lambda m: b"\x8c" + bytes([m.group(1)[0] - 1]) + b"numpy.core.",
                        data, flags=re.S)
        numpy1 = pickletools.optimize(numpy1)
    assert data.count(b"numpy._core") == 2  # scalar, and _reconstruct (protocol 2) or _frombuffer (5) for arrays
    (tmp_path / "np1.pkl").write_bytes(numpy1)
    assert b"numpy._core" not in numpy1
    for name in ("np2.pkl", "np1.pkl"):
        fc0 = read_network_pickle(tmp_path / name)["G_ema"].state["_modules"]["fc0"]
        np.testing.assert_array_equal(fc0.state["size"], snap["G_ema"].fc0.size)
        np.testing.assert_array_equal(fc0.state["taps"], snap["G_ema"].fc0.taps)
        assert fc0.state["weight_gain"] == snap["G_ema"].fc0.weight_gain
        assert_same(record_state_dict(fc0), snap["G_ema"].fc0.state_dict())


def test_network_pickle_dumped_from_a_gpu_loads_on_the_cpu(tmp_path):
    snap = cf.snapshot()
    path = cf.dump_network_pickle(snap, tmp_path / "gpu.pkl", storage_location="cuda:0")
    assert path.read_bytes().count(b"cuda:0") == 24  # one per tensor of the three networks, 8 each
    sd = record_state_dict(read_network_pickle(path)["G_ema"])
    assert all(t.device.type == "cpu" for t in sd.values())
    assert_same(sd, snap["G_ema"].state_dict())


def test_tensors_with_python_attributes(tmp_path):
    """A tensor or parameter carrying attributes pickles through _rebuild_from_type_v2 /
    _rebuild_parameter_with_state: the values load, the attributes are dropped."""
    snap = cf.snapshot()
    snap["G_ema"].w_avg.note = "ema of w"
    snap["G_ema"].fc0.weight.lr_note = 0.01
    path = cf.dump_network_pickle(snap, tmp_path / "attrs.pkl")
    raw = path.read_bytes()
    assert b"_rebuild_from_type_v2" in raw and b"_rebuild_parameter_with_state" in raw
    assert_same(record_state_dict(read_network_pickle(path)["G_ema"]), snap["G_ema"].state_dict())


class Forged:
    """A tensor whose pickled size claims more elements than its storage holds."""

    def __reduce__(self):
        storage = torch.zeros(4).untyped_storage()
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
        return torch._utils._rebuild_tensor_v2, (typed, 0, (1000,), (1,), False, OrderedDict())


def test_forged_tensor_cannot_read_past_its_storage(tmp_path):
    net = cf.make_net()
    net.forged = Forged()
    path = cf.dump_network_pickle({"G": net}, tmp_path / "forged.pkl")
    assert refusal(lambda: read_network_pickle(path)) == (
        f"{path} is not a network pickle fastmine can read: tensor of size (1000,) (stride (1,), offset 0) exceeds "
        "its storage of 4")


def test_is_network_pickle_is_false_for_other_files(tmp_path):
    torch.save(state(0), tmp_path / "zip.pt")
    torch.save(state(0), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file(state(0), str(tmp_path / "w.safetensors"))
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    for name in ("zip.pt", "legacy.pt", "w.safetensors", "plain.pkl", "missing.pkl"):
        assert not is_network_pickle(tmp_path / name), name


def test_network_pickle_that_is_not_a_dict(tmp_path):
    path = cf.dump_network_pickle([cf.make_net()], tmp_path / "list.pkl")
    assert refusal(lambda: read_network_pickle(path)) == (
        f"{path} holds a list, not the dict of networks a network pickle holds (G, D, G_ema, ...)")


# --------------------------------------------------------------------------- real pickles made by the official code
@pytest.mark.parametrize("name, modules", [
    ("stylegan2_ada_tiny", {"G": "training.networks", "G_ema": "training.networks", "D": "training.networks"}),
    ("stylegan3_t_tiny", {"G": "training.networks_stylegan3", "G_ema": "training.networks_stylegan3"}),
])
def test_official_pickle_matches_the_official_state_dicts(name, modules):
    """Pickled by NVIDIA's persistence code (scripts/make_tiny_network_pickle.py); beside it,
    each network's state_dict() and init kwargs as the official modules reported them."""
    path = OFFICIAL / f"{name}.pkl"
    with safe_open(str(OFFICIAL / f"{name}.safetensors"), framework="pt") as f:
        meta = f.metadata()
        expected = {k: f.get_tensor(k) for k in f.keys()}
    init_kwargs, keys = json.loads(meta["init_kwargs"]), json.loads(meta["state_dict_keys"])
    assert is_network_pickle(path)
    data = read_network_pickle(path)
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert data["training_set_kwargs"]["resolution"] == 8
    assert set(init_kwargs) == {"G", "D", "G_ema", "augment_pipe"}
    for net, kwargs in init_kwargs.items():
        rec = data[net]
        assert record_kwargs(rec) == kwargs
        sd = record_state_dict(rec)
        assert list(sd) == keys[net]
        for k, t in sd.items():
            torch.testing.assert_close(t, expected[f"{net}.{k}"].float(), rtol=0, atol=0)
    for net, module in {**modules, "augment_pipe": "training.augment"}.items():
        assert data[net].module_name == module
    assert not torch.equal(record_state_dict(data["G"])["mapping.w_avg"],
                           record_state_dict(data["G_ema"])["mapping.w_avg"])
    got, where = read_state_dict(path)
    assert where == "G_ema" and list(got) == keys["G_ema"]
    assert read_state_dict(path, role="critic")[1] == "D"
