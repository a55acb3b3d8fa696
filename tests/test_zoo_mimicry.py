"""fastmine.zoo.mimicry: kwotsin/mimicry checkpoints read as data, against torch_mimicry's code.

The fixture (tests/fixtures/official/mimicry.safetensors, made by scripts/reference_mimicry.py)
holds, for SNGAN at 32, 64 and 128 px, SSGAN at 48 px and cGAN-PD at 32 px (small widths), the
classes and keywords, the state dict layouts, the buffers, fixed latents and labels, and the images
and GAN logits Mimicry's code computed. Parameters are filled by fixed_tensor on both sides.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_zoo_studiogan import fixed_tensor

import fastmine as fm
from fastmine.files import has_critic, load_critic, read_weights
from fastmine.zoo import ZSource, mimicry

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "mimicry.safetensors"
TOL = 1e-4
NAMES = ("sngan32", "ssgan48", "sngan64", "cgan_pd32", "sngan128")


@pytest.fixture(scope="module")
def fixture():
    with safe_open(str(FIXTURE), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    return tensors, json.loads(meta["classes"]), json.loads(meta["layouts"])


def official_state(fixture, name, net):
    tensors, _, layouts = fixture
    return {key: tensors.get(f"{name}.{net}.{key}", None) if f"{name}.{net}.{key}" in tensors
            else fixed_tensor(key, tuple(shape), getattr(torch, dtype))
            for key, (shape, dtype) in layouts[name][net].items()}


def write_run(fixture, name, log_dir: Path, critic=True) -> Path:
    """Mimicry's layout: LOG_DIR/checkpoints/netG/netG_{step}_steps.pth and netD/netD_…"""
    for net, write in (("G", True), ("D", critic)):
        if write:
            folder = log_dir / "checkpoints" / f"net{net}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save({"model_state_dict": official_state(fixture, name, net), "optimizer_state_dict": None,
                        "global_step": 100}, folder / f"net{net}_100_steps.pth")
    return log_dir / "checkpoints" / "netG" / "netG_100_steps.pth"


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_gives_mimicrys_images_and_logits(fixture, name, tmp_path, record_property):
    tensors, classes, _ = fixture
    path = write_run(fixture, name, tmp_path / name)
    adapter = fm.load_generator(path)
    critic = load_critic(path).eval()
    num_classes = classes[name]["G"][1].get("num_classes", 0)
    latents = {"z": tensors[f"{name}.z"]}
    c = torch.nn.functional.one_hot(tensors[f"{name}.labels"], num_classes).float() if num_classes else None
    if num_classes:
        latents["c"] = c
    assert list(adapter.latent_spec) == list(latents) and isinstance(adapter.module, ZSource)
    with torch.no_grad():
        images = adapter(latents)
        scores = critic.net(tensors[f"{name}.images"], c)
    err_img = (images.double() - tensors[f"{name}.images"].double()).abs().max().item()
    err_score = (scores.double() - tensors[f"{name}.scores"].double()).abs().max().item()
    record_property("max_abs_images", err_img)
    record_property("max_abs_scores", err_score)
    assert err_img <= TOL and err_score <= TOL
    assert tensors[f"{name}.images"].std() > 0.1  # not a constant image a wrong layer could match


def test_kwargs_read_from_the_tensors(fixture, tmp_path):
    path = write_run(fixture, "ssgan48", tmp_path / "run")
    g, d = read_weights(path), read_weights(path, "critic")
    assert g.kwargs == {"resolution": 48, "nz": 16, "ngf": 32, "bottom_width": 6, "num_classes": 0}
    assert d.kwargs == {"resolution": 48, "ndf": 32, "num_classes": 0, "rotations": 4, "mimicry_sn": False}
    assert d.where == "netD_100_steps.pth" and g.family == d.family == "mimicry"
    cgan = read_weights(write_run(fixture, "cgan_pd32", tmp_path / "cgan"), "critic")
    assert cgan.kwargs == {"resolution": 32, "ndf": 16, "num_classes": 3, "rotations": 0, "mimicry_sn": True}
    assert has_critic(path)
    assert not has_critic(write_run(fixture, "sngan32", tmp_path / "released", critic=False))


def test_refusals_name_the_problem(fixture, tmp_path):
    state = official_state(fixture, "sngan32", "G")
    state["block5.c1.weight"] = torch.zeros(16, 16, 3, 3)  # a layer no Mimicry SNGAN has
    torch.save({"model_state_dict": state}, tmp_path / "netG.pth")
    with pytest.raises(ValueError) as err:
        fm.load_generator(tmp_path / "netG.pth")
    assert "is a Mimicry checkpoint (layers b5, block2, block3, block4, block5, c5, l1) whose network fastmine " \
           "does not build" in str(err.value)
    d_path = write_run(fixture, "sngan32", tmp_path / "run").parents[1] / "netD" / "netD_100_steps.pth"
    with pytest.raises(ValueError, match="is Mimicry's discriminator; name the run's netG file"):
        fm.load_generator(d_path)
    npz = tmp_path / "sngan_cifar10.npz"
    np.savez(npz, w=np.zeros(3))
    with pytest.raises(ValueError) as err:
        fm.load_generator(npz)
    assert "is a NumPy .npz archive" in str(err.value) and "\n" not in str(err.value)


def test_mimicry_modules_refuse_unknown_sizes():
    with pytest.raises(ValueError, match="Mimicry builds 32, 48, 64, 128 px networks, not 96"):
        mimicry.Generator(resolution=96)
