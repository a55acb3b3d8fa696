"""Data loading says what it did: channels, transparency, 16-bit, non-square images, a random
limit, and a summary line; the digits features refuse other data."""
import numpy as np
import pytest
import torch
from budgets import QUICK_INVERSION
from PIL import Image

import fastmine as fm
from fastmine.config import DataConfig, RunConfig, dump_config
from fastmine.data import describe, load_data


def _save(folder, name, array, mode=None):
    Image.fromarray(array, mode).save(folder / name)


@pytest.fixture
def mixed(tmp_path):
    """A gray first file, then RGB, RGBA (fully transparent blue), palette and 16-bit images."""
    _save(tmp_path, "a_gray.png", np.full((16, 16), 100, np.uint8), "L")
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    _save(tmp_path, "b_red.png", red, "RGB")
    clear = np.zeros((16, 16, 4), np.uint8)
    clear[..., 2] = 255
    _save(tmp_path, "c_clear.png", clear, "RGBA")
    Image.fromarray(np.full((16, 16), 7, np.uint8), "L").convert("P").save(tmp_path / "d_palette.png")
    deep = np.full((16, 16), 32896, np.uint16)  # 128.0 on the 8-bit scale: 0.004 in [-1, 1]
    deep[:8] = 65535
    Image.fromarray(deep).save(tmp_path / "e_16bit.png")
    return tmp_path


def test_a_gray_first_file_does_not_turn_colour_images_gray(mixed):
    report = {}
    x = fm.load_image_folder(mixed, size=8, report=report)
    assert x.shape == (5, 3, 8, 8) and report["channels"] == "rgb"
    torch.testing.assert_close(x[1, :, 4, 4], torch.tensor([1.0, -1.0, -1.0]))  # still red
    torch.testing.assert_close(x[0, :, 4, 4], torch.full((3,), 100 / 127.5 - 1))  # gray in all three channels
    gray = fm.load_image_folder(mixed, size=8, channels="gray")
    assert gray.shape == (5, 1, 8, 8)
    assert gray[1, 0, 4, 4].item() == pytest.approx(0.299 * 255 / 127.5 - 1, abs=1e-4)  # luma of red


def test_transparency_is_composited_or_refused(mixed):
    torch.testing.assert_close(fm.load_image_folder(mixed, size=8)[2, :, 4, 4], torch.ones(3))  # over white
    torch.testing.assert_close(fm.load_image_folder(mixed, size=8, alpha="black")[2, :, 4, 4], -torch.ones(3))
    with pytest.raises(ValueError, match="c_clear.png' has transparency; set data.alpha"):
        fm.load_image_folder(mixed, size=8, alpha="refuse")


def test_16_bit_images_are_scaled_not_clipped(mixed):
    x = fm.load_image_folder(mixed, size=16)[4, 0]
    assert x[0, 0].item() == pytest.approx(1.0, abs=1e-4)
    assert x[15, 0].item() == pytest.approx(32896 / 257 / 127.5 - 1, abs=1e-3)  # mid-gray, not +1.0
    assert (x > 0.99).float().mean().item() < 0.6


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_non_square_images_are_fitted_as_configured(tmp_path, fit):
    tall = np.zeros((32, 16), np.uint8)  # white top half, black bottom half
    tall[:16] = 255
    _save(tmp_path, "tall.png", tall, "L")
    x = fm.load_image_folder(tmp_path, size=16, fit=fit)[0, 0]
    column = x[:, 8]
    if fit == "crop":  # the centre square: white above its middle, black below
        assert column[1].item() > 0.9 and column[-2].item() < -0.9
    elif fit == "pad":  # black bars left and right, the image in the middle
        assert x[2, 0].item() == pytest.approx(-1.0) and x[2, 8].item() > 0.9
    else:  # squashed: still white on top, black below, and no bars
        assert x[2, 0].item() > 0.9 and column[-2].item() < -0.9


def test_limit_is_a_random_subset_chosen_with_the_seed(tmp_path):
    for i in range(10):
        _save(tmp_path, f"{i}.png", np.full((8, 8), 20 * i, np.uint8), "L")
    level = lambda x: sorted(round((v.item() + 1) * 127.5 / 20) for v in x[:, 0, 0, 0])
    a = fm.load_image_folder(tmp_path, size=8, limit=3, seed=0)
    assert level(a) == level(fm.load_image_folder(tmp_path, size=8, limit=3, seed=0))
    expected = sorted(np.random.default_rng(0).choice(10, size=3, replace=False).tolist())
    assert level(a) == expected and expected != [0, 1, 2]
    assert level(fm.load_image_folder(tmp_path, size=8, limit=3, seed=1)) != level(a)


def test_tensor_files_take_a_random_limit_and_the_summary_line_says_so(tmp_path):
    torch.save(torch.arange(20.0).view(20, 1), tmp_path / "x.pt")
    cfg = DataConfig(dataset="tensor", path=str(tmp_path / "x.pt"), limit=5, seed=3)
    report = {}
    x = load_data(cfg, report)
    picked = sorted(np.random.default_rng(3).choice(20, size=5, replace=False).tolist())
    assert x[:, 0].tolist() == [float(i) for i in picked]
    assert describe(cfg, x, report) == (f"data: 5 samples of shape (1,) from {tmp_path / 'x.pt'}; 5 of 20 chosen at "
                                        "random (data.limit, data.seed=3)")


def test_a_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    _save(tmp_path, "big.png", np.zeros((64, 64), np.uint8), "L")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64*64 > 2 * 100: PIL's bomb error
    with pytest.raises(ValueError, match="cannot read image .*big.png"):
        fm.load_image_folder(tmp_path, size=8)


def test_eval_refuses_digits_features_on_other_data(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"")
    dump_config(RunConfig(data=DataConfig(dataset="folder", path="faces")), run / "config.yaml")
    with pytest.raises(ValueError, match="digits feature network scores .* --extractor inception"):
        fm.evaluate_run(run, extractor="digits")
    with pytest.raises(FileNotFoundError, match="image folder 'faces' does not exist"):
        fm.evaluate_run(run)  # the default on such data is Inception: past that check, on to reading the data


def test_the_commands_digits_preset_does_not_cut_other_datasets(tmp_path):
    from fastmine.cli import command_defaults
    from fastmine.config import load_config

    over = ["data.dataset=folder", f"data.path={tmp_path}"]
    cfg = load_config(None, over, command_defaults("mine", None, over))
    assert cfg.data.limit is None and cfg.data.labels is None
    digits = load_config(None, [], command_defaults("mine"))
    assert digits.data.limit == 100 and digits.data.labels == [9]


def test_a_target_given_in_code_is_recorded_and_asked_for_again(digits_source, tmp_path, one_thread):
    from fastmine.config import load_config

    target = fm.load_digits(labels=[9], limit=32, size=8)
    fm.mine(str(digits_source), target, steps=2, batch_size=8, progress=False, run_dir=tmp_path / "r",
            invert_cfg=QUICK_INVERSION)
    assert load_config(tmp_path / "r" / "config.yaml").data.dataset == "given"
    with pytest.raises(ValueError, match="given in code"):
        fm.evaluate_run(tmp_path / "r", repeats=1)
    assert fm.evaluate_run(tmp_path / "r", repeats=1, target=target)["metrics"]["n_real"] == 32
