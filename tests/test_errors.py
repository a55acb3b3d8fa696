"""Bad input: a clear error naming the problem and the fix, and nothing changed on disk."""

import re

import pytest
import torch
import toy_models
from budgets import QUICK_INVERSION, QUICK_INVERSION_ARGS
from torch import nn

import fastmine as fm
from fastmine.apps.presets import COMMAND_DEFAULTS
from fastmine.cli import main
from fastmine.config import ConfigError, load_config


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fm.load_generator(str(tmp_path / "nope.safetensors"))
    assert main(["mine", f"source.generator={tmp_path / 'nope.safetensors'}", f"out_dir={tmp_path}"]) == 2
    assert not (tmp_path / "mine").exists()


def test_corrupt_checkpoint(digits_source, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(digits_source.read_bytes()[:1000])  # a truncated copy
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        fm.load_generator(bad)
    assert _snapshot(tmp_path) == before
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"garbage.pt is not a readable torch checkpoint \(Unsupported operand 110\); "
                                         "it may be truncated or corrupt"):
        fm.load_generator(garbage, arch={"type": "mlp", "latent_dim": 2, "out_dim": 2})


def test_pickled_checkpoint_needs_explicit_opt_in(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(nn.Linear(2, 2), path)  # a whole pickled module, not a state dict
    with pytest.raises(ValueError, match="allow_pickle=True"):
        fm.load_generator(path, latent_spec={"z": ((2,), "normal")})
    with pytest.warns(UserWarning, match="ran code from the file"):
        G = fm.load_generator(path, latent_spec={"z": ((2,), "normal")}, allow_pickle=True)
    assert G(torch.zeros(3, 2)).shape == (3, 2)


def test_undeclared_latent_spec_names_the_argument():
    with pytest.raises(ValueError, match=r"load_generator\(\.\.\., latent_spec=\{'z': \(\(128,\), 'normal'\)\}\)"):
        fm.load_generator("toy_models:make_generator")  # a plain module: no latent_spec, no latent_dim


def test_latent_size_mismatch(digits_source):
    G = fm.load_generator(digits_source)  # latent z of size 32
    wrong = fm.Miner({"z": ((16,), "normal")}, init="normal")
    with pytest.raises(ValueError, match=r"latent 'z' has shape \(16,\) per sample but the generator expects \(32,\)"):
        fm.Sampler(G, wrong)(torch.randn(4, 16))
    with pytest.raises(ValueError, match="residual miner init needs seed_dim == size"):
        fm.Miner(G.latent_spec, seed_dim=8, init="residual")


def test_output_shape_mismatch_names_the_setting(digits_source):
    target = fm.load_digits(labels=[9], limit=10, size=16)  # the source makes 8 px images
    with pytest.raises(ValueError, match="data.size=8"):
        fm.mine(digits_source, target, steps=1, progress=False)


def test_empty_and_non_image_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no PNG/JPEG images"):
        fm.load_image_folder(empty)
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"no PNG/JPEG images .*a\.txt"):
        fm.load_image_folder(texts)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "x.png").write_text("not really a png")
    with pytest.raises(ValueError, match="cannot read image"):
        fm.load_image_folder(fake)
    with pytest.raises(FileNotFoundError):
        fm.load_image_folder(tmp_path / "missing")


def test_image_folder_loads_to_minus_one_one(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (20, 12), (255 * (i % 2), 0, 128)).save(tmp_path / f"{i}.png")
    x = fm.load_image_folder(tmp_path, size=8)
    assert x.shape == (3, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert x[1, 0].mean().item() == pytest.approx(1.0) and x[0, 0].mean().item() == pytest.approx(-1.0)


def test_unknown_config_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lrr=1"], defaults=COMMAND_DEFAULTS["mine"])
    msg = str(e.value)
    assert "'train.lrr'" in msg and "valid keys in 'train'" in msg and "lr, critic_lr" in msg.replace("\n", " ")
    with pytest.raises(ConfigError, match="valid keys: name, out_dir, method"):
        load_config(None, ["epochs=3"])
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("miner:\n  widht: 3\n")
    assert main(["mine", str(yaml_file), f"out_dir={tmp_path}"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_moved_config_key_names_its_section():
    with pytest.raises(ConfigError, match="the config has sections now: 'train.gp_weight' is now 'loss.gp_weight'"):
        load_config(None, ["train.gp_weight=5"])
    with pytest.raises(ConfigError, match="'train.streams' is now 'dist.streams'"):
        load_config(None, ["train.streams=2"])


def test_unknown_setting_lists_the_valid_settings():
    target = torch.zeros(8, 2)
    with pytest.raises(ConfigError) as e:
        fm.mine(toy_models.make_generator(), target, no_such_setting=1)
    msg = str(e.value)
    assert "unknown setting 'no_such_setting'" in msg
    for valid in ("seed, device", "gp_weight", "log_every", "seed_dist", "streams", "train_cfg", "miner_cfg"):
        assert valid in msg, valid
    with pytest.raises(ConfigError, match=r"'path' is ambiguous: it is a key of data and multi; .*data_cfg=\{'path'"):
        fm.mine_multi([toy_models.make_generator()] * 2, target, path="naive")


@pytest.mark.parametrize("method, entry", [("minegan_multi", "fastmine.mine_multi"), ("fuse", "fastmine.fuse"),
                                           ("pretrain_conditional", "fastmine.pretrain_conditional")])
def test_train_names_the_entry_point_of_other_kinds(method, entry):
    G = fm.load_generator("toy_models:make_generator", latent_spec={"z": ((2,), "normal")})
    expected = f"method {method!r} is not a single-generator method: call {entry}("
    with pytest.raises(ValueError, match=re.escape(expected)):
        fm.train(G, torch.zeros(8, 2), method=method)


def test_existing_run_folder_is_not_overwritten(digits_source, tmp_path):
    args = ["mine", f"source.generator={digits_source}", f"out_dir={tmp_path}", "name=r", "data.size=8",
            "data.limit=20", "train.steps=2", "log.progress=false", *QUICK_INVERSION_ARGS]
    assert main(args) == 0
    before = _snapshot(tmp_path)
    assert main(args) == 2  # no --resume: refuse, touch nothing
    assert _snapshot(tmp_path) == before


class NaNCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 1)

    def forward(self, x):
        return self.lin(x.flatten(1)).squeeze(1) * float("nan")


def test_nan_loss_stops_with_step_and_term_and_saves_nothing(digits_source, tmp_path):
    target = fm.load_digits(labels=[9], limit=20, size=8)
    with pytest.raises(fm.NonFiniteLossError) as e:
        fm.mine(digits_source, target, critic=NaNCritic(), steps=6, log_every=3, checkpoint_every=3,
                progress=False, run_dir=tmp_path / "run", invert_cfg=QUICK_INVERSION)
    msg = str(e.value)
    assert "loss_critic became NaN/Inf at step 0" in msg and "--resume" in msg
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
