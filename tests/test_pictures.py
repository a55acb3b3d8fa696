"""Pictures of what was mined (fastmine.apps.pictures) and their place in the run report, on tiny
real runs: an 8 px digits source trained for 20 steps, then mined, multi-mined and MineGAN++'d."""
import json

import pytest
import torch
from budgets import QUICK_INVERSION
from conftest import single_thread
from PIL import Image
from torch import nn

import fastmine as fm
from fastmine.apps import pictures as P
from fastmine.apps.demo import mined_pictures as demo_mined_pictures
from fastmine.apps.demo_multi import selector_over_training
from fastmine.apps.report import mined_pictures, write_run_report
from fastmine.config import DataConfig, ModelConfig
from fastmine.data import load_data
from fastmine.files import load_any, load_generator
from fastmine.metrics.features import get_feature_extractor
from fastmine.metrics.scores import extract
from fastmine.miner import Miner
from fastmine.samplers import GeneratorAdapter, Sampler

QUIET = dict(progress=False, batch_size=16, checkpoint_every=10 ** 6, sample_every=10 ** 6, device="cpu",
             invert_cfg=QUICK_INVERSION)


def px(size_in):
    return round(size_in[0] * P.DPI), round(size_in[1] * P.DPI)


def opened_size(path):
    with Image.open(path) as im:
        im.load()
        return im.size


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"source", "mine", "multi", "pp"}: run folders, and "target" (30 nines at 8 px)."""
    root = tmp_path_factory.mktemp("pictures")
    # the data settings ride along with the tensors so that config.yaml names the target the report compares with
    nines = {"labels": [9], "limit": 30, "size": 8}
    target = load_data(DataConfig(**nines))
    with single_thread():
        source = fm.train(None, fm.load_digits(labels=range(9), size=8), method="scratch", steps=20,
                          run_dir=root / "source", model_cfg=ModelConfig(latent_dim=8, width=8),
                          data_cfg={"labels": list(range(9)), "size": 8}, **QUIET)
        gen = source.model_path
        mine = fm.mine(gen, target, steps=4, log_every=2, run_dir=root / "mine", data_cfg=nines, **QUIET)
        multi = fm.mine_multi([gen, gen], target, steps=4, log_every=1, run_dir=root / "multi", data_cfg=nines,
                              **QUIET)
        pp = fm.train(gen, target, method="minegan_pp", steps=4, mine_steps=2, run_dir=root / "pp", data_cfg=nines,
                      **QUIET)
    return {"source": source.run_dir, "mine": mine.run_dir, "multi": multi.run_dir, "pp": pp.run_dir,
            "target": target}


def test_latent_picture_single_and_multi(runs, tmp_path):
    mined = load_any(runs["mine"] / "model.safetensors")
    path = P.latent_picture(mined, tmp_path / "latents.png", inverted=torch.randn(20, 8))
    assert opened_size(path) == px(P.LATENT_ROW) == P.latent_picture_size(1) == (800, 400)
    multi = load_any(runs["multi"] / "model.safetensors")
    path = P.latent_picture(multi, tmp_path / "latents_multi.png", inverted=[None, torch.randn(5, 8)])
    assert opened_size(path) == P.latent_picture_size(2) == (800, 800)  # one row per generator
    with pytest.raises(ValueError, match="one entry per generator"):
        P.latent_picture(multi, tmp_path / "x.png", inverted=torch.randn(5, 8))
    with pytest.raises(ValueError, match="7 values per sample, latent .z. has 8"):
        P.latent_picture(mined, tmp_path / "x.png", inverted=torch.randn(5, 7))
    with pytest.raises(ValueError, match="no miner"):
        P.latent_picture(load_any(runs["source"] / "model.safetensors"), tmp_path / "x.png")


def test_mined_latents_come_from_the_miner_and_the_prior(runs):
    sampler = load_any(runs["mine"] / "model.safetensors")
    name, mined, prior = P.mined_and_prior(sampler, n=50, seed=3)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        expected = sampler.eval().latents(sampler.draw_seeds(50, gen))["z"]
    assert name == "z" and torch.equal(mined, expected)
    assert torch.equal(prior, torch.randn(50, 8, generator=gen))  # the same stream, after the seeds
    mean, comps, ratio = P.pca_2d(torch.cat([prior, mined]))
    assert comps.shape == (8, 2) and torch.allclose(comps.T @ comps, torch.eye(2, dtype=torch.float64))
    assert 0 < float(ratio[1]) <= float(ratio[0]) <= 1


def test_a_conditional_sampler_pictures_its_first_latent_with_a_prior(tmp_path):
    class Conditional(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 64)

        def forward(self, class_embedding, z):
            return self.lin(torch.cat([z, class_embedding], 1)).view(-1, 1, 8, 8).tanh()

    spec = {"class_embedding": ((4,), "none"), "z": ((8,), "normal")}
    sampler = Sampler(GeneratorAdapter(Conditional(), spec), Miner(spec, seed_dim=8))
    assert P.prior_latent(sampler)[0] == "z"
    name, mined, prior = P.mined_and_prior(sampler, n=30)
    assert name == "z" and mined.shape == prior.shape == (30, 8)
    assert opened_size(P.latent_picture(sampler, tmp_path / "c.png")) == (800, 400)
    assert opened_size(P.interpolation_picture(sampler, tmp_path / "s.png")) == px(P.STRIP_SIZE)
    only_embedding = {"class_embedding": ((4,), "none")}
    unpriored = Sampler(GeneratorAdapter(nn.Linear(4, 4), only_embedding), Miner(only_embedding, seed_dim=4))
    with pytest.raises(ValueError, match="has a prior to compare"):
        P.latent_picture(unpriored, tmp_path / "u.png")


def test_selector_picture_from_the_logged_rows(runs, tmp_path):
    rows = P.selector_rows(runs["multi"])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    names = P.generator_names(runs["multi"], 2)
    assert names == ["G0 (model)", "G1 (model)"]
    path = P.selector_picture([{"rows": rows, "title": "one run"}], tmp_path / "pi.png", names=names)
    assert opened_size(path) == px(P.SELECTOR_PANEL) == P.selector_picture_size(1) == (400, 300)
    panels = [{"rows": rows, "title": str(i), "truth": [0.3, 0.7]} for i in range(4)]
    path = P.selector_picture(panels, tmp_path / "pi4.png")
    assert opened_size(path) == P.selector_picture_size(4) == (1200, 600)  # 3 to a row, 2 rows
    assert P.selector_rows(runs["mine"]) == []
    with pytest.raises(ValueError, match="selector_probs"):
        P.selector_picture([{"rows": [], "title": "none"}], tmp_path / "x.png")


def test_s3_picture(runs, tmp_path):
    masks = runs["pp"] / "s3_masks.json"
    info = json.loads(masks.read_text())
    assert info["layers"]
    assert opened_size(P.s3_picture(masks, tmp_path / "s3.png")) == px(P.S3_SIZE) == (640, 400)


def _direct_nearest(queries, refs, exclude_self=False):
    """Nearest reference per query by a plain double loop (float64)."""
    dists, idxs = [], []
    for i, q in enumerate(queries):
        best = (float("inf"), -1)
        for j, r in enumerate(refs):
            if exclude_self and i == j:
                continue
            d = float(((q.double() - r.double()) ** 2).sum().sqrt())
            best = min(best, (d, j))
        dists.append(best[0])
        idxs.append(best[1])
    return torch.tensor(dists, dtype=torch.float64), torch.tensor(idxs)


def test_nearest_numbers_match_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    fake, real = torch.randn(9, 1, 4, 4, generator=gen), torch.randn(11, 1, 4, 4, generator=gen)
    d, i = P.nearest(fake, real, chunk=4)  # several chunks: the leave-one-out diagonal must follow the offset
    dd, di = _direct_nearest(fake, real)
    assert torch.allclose(d, dd, rtol=1e-12, atol=1e-12) and torch.equal(i, di)
    d, i = P.nearest(real, real, exclude_self=True, chunk=4)
    rd, ri = _direct_nearest(real, real, exclude_self=True)
    assert torch.allclose(d, rd, rtol=1e-12, atol=1e-12) and torch.equal(i, ri)

    out = P.memorisation(fake, real, "pixels")
    assert out["ratio"] == pytest.approx(float(dd.mean() / rd.mean()), rel=1e-12)
    assert torch.equal(out["index"], di) and out["n_fake"] == 9 and out["n_real"] == 11
    # copies of training images sit at distance 0: the ratio says so
    assert P.memorisation(real[:5], real, "pixels")["ratio"] == 0.0


def test_nearest_in_digits_feature_space_matches_a_direct_computation():
    real = fm.load_digits(labels=[9], limit=12, size=8)
    fake = fm.load_digits(labels=[8], limit=6, size=8)
    net = get_feature_extractor("digits")
    ff, rf = extract(net, fake), extract(net, real)
    dd, _ = _direct_nearest(ff, rf)
    rd, _ = _direct_nearest(rf, rf, exclude_self=True)
    out = P.memorisation(fake, real, "digits")
    assert torch.allclose(out["distances"], dd, rtol=1e-9)
    assert out["ratio"] == pytest.approx(float(dd.mean() / rd.mean()), rel=1e-9)
    assert P.resolve_space(real) == "digits" and P.resolve_space(torch.zeros(2, 3, 32, 32)) == "pixels"
    assert P.resolve_space(torch.zeros(2, 1, 64, 64)) == "pixels"


def test_nearest_pairs_picture_on_a_mined_run(runs, tmp_path):
    sampler = load_any(runs["mine"] / "model.safetensors")
    check = P.memorisation_check(sampler, runs["target"], seed=1)
    assert check["space"] == "digits" and check["n_fake"] == check["n_real"] == 30
    assert torch.equal(check["fake"], sampler.sample(30, seed=1))
    path = P.nearest_pairs_picture(check, tmp_path / "nearest.png")
    assert opened_size(path) == px(P.NEAREST_SIZE) == (800, 500)
    capped = P.memorisation_check(sampler, runs["target"], cap=10, space="pixels")
    assert capped["n_real"] == capped["n_fake"] == 10 and capped["space"] == "pixels"
    dd, di = _direct_nearest(capped["fake"], capped["real"])
    assert torch.allclose(capped["distances"], dd, rtol=1e-9) and torch.equal(capped["index"], di)


def test_interpolation_ends_are_the_samplers_outputs_at_the_seeds(runs, tmp_path):
    sampler = load_any(runs["mine"] / "model.safetensors")
    rows, steps = 4, 8
    images, seeds = P.interpolate(sampler, rows, steps, seed=5)
    ends = sampler.draw_seeds(2 * rows, torch.Generator().manual_seed(5))
    line = seeds.view(rows, steps, -1)
    assert torch.equal(line[:, 0], ends[:rows]) and torch.equal(line[:, -1], ends[rows:])
    t = torch.arange(steps, dtype=torch.float32)[None, :, None] / (steps - 1)
    assert torch.allclose(line, (1 - t) * ends[:rows, None] + t * ends[rows:, None])
    images = images.view(rows, steps, *images.shape[1:])
    with torch.no_grad():
        sampler.eval()
        assert torch.equal(images[:, 0], sampler(ends[:rows])) and torch.equal(images[:, -1], sampler(ends[rows:]))
    path = P.interpolation_picture(sampler, tmp_path / "strip.png")
    assert opened_size(path) == px(P.STRIP_SIZE) == (800, 450)


def test_uniform_seeds_stay_in_the_unit_cube(runs):
    generator = load_generator(runs["source"] / "model.safetensors")
    sampler = Sampler(generator, Miner(generator.latent_spec, seed_dist="uniform"))
    seeds = P.interpolation_seeds(sampler, seed=2)
    assert seeds.min() >= 0 and seeds.max() <= 1


def test_multi_interpolation_keeps_one_generator_per_row(runs, tmp_path):
    sampler = load_any(runs["multi"] / "model.safetensors")
    images, seeds = P.interpolate(sampler, 4, 8, seed=1)
    line = seeds.view(4, 8, -1)
    d = sampler.seed_dim
    assert (line[:, :, d:] == line[:, :1, d:]).all()  # the generator pick is u_a's all along
    ends = sampler.draw_seeds(8, torch.Generator().manual_seed(1))
    right = torch.cat([ends[4:, :d], ends[:4, d:]], 1)
    with torch.no_grad():
        sampler.eval()
        images = images.view(4, 8, *images.shape[1:])
        assert torch.equal(images[:, 0], sampler(ends[:4])) and torch.equal(images[:, -1], sampler(right))
    assert opened_size(P.interpolation_picture(sampler, tmp_path / "s.png")) == (800, 450)


def test_pictures_draw_nothing_from_the_global_random_stream(runs, tmp_path):
    sampler = load_any(runs["mine"] / "model.safetensors")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    P.latent_picture(sampler, tmp_path / "a.png")
    P.interpolation_picture(sampler, tmp_path / "b.png")
    P.nearest_pairs_picture(P.memorisation_check(sampler, runs["target"]), tmp_path / "c.png")
    mined_pictures(runs["multi"])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("run, present, skipped", [
    ("mine", {"latents", "interpolation", "nearest"}, ("no π", "no s3_masks.json")),
    ("multi", {"latents", "interpolation", "nearest", "selector"}, ("no s3_masks.json",)),
    ("pp", {"latents", "interpolation", "nearest", "s3_layers"}, ("no π",)),
    ("source", {"nearest"}, ("method `scratch` has no miner", "method `scratch` has no miner", "no π",
                             "no s3_masks.json")),
])
def test_run_report_pictures_or_why_not(runs, run, present, skipped):
    run_dir = runs[run]
    text = "\n".join(mined_pictures(run_dir))
    written = {p.stem for p in (run_dir / "pictures").glob("*.png")}
    assert written == present
    for name in present:
        assert f"(pictures/{name}.png)" in text
    # five pictures: each one is there or says why not
    skip_lines = [line for line in text.splitlines() if line.startswith("Skipped:")]
    assert len(skip_lines) == len(skipped) == 5 - len(present)
    for why in set(skipped):
        assert sum(line.startswith(f"Skipped: {why}") for line in skip_lines) == skipped.count(why), why
    sizes = {"latents": P.latent_picture_size(2 if run == "multi" else 1), "interpolation": px(P.STRIP_SIZE),
             "nearest": px(P.NEAREST_SIZE), "selector": P.selector_picture_size(1), "s3_layers": px(P.S3_SIZE)}
    for name in present:
        assert opened_size(run_dir / "pictures" / f"{name}.png") == sizes[name], name


def test_a_target_of_other_images_is_skipped_with_the_reason(runs):
    text = "\n".join(mined_pictures(runs["mine"], target=fm.load_digits(labels=[9], limit=10, size=16)))
    assert "Skipped: samples of shape (1, 8, 8) cannot be compared with target images of shape (1, 16, 16)." in text


def test_eval_report_links_the_pictures_and_the_ratio(runs, tmp_path):
    result = fm.evaluate_run(runs["mine"], repeats=1)
    report = write_run_report(runs["mine"], result).read_text()
    for name in ("latents", "interpolation", "nearest"):
        assert f"(pictures/{name}.png)" in report
    ratio = float(report.split("**Nearest-distance ratio: ")[1].split("**")[0])
    check = P.memorisation_check(load_any(runs["mine"] / "model.safetensors"), runs["target"])
    assert ratio == pytest.approx(check["ratio"], abs=5e-4)
    assert "## What was mined" in report and report.index("## What was mined") < report.index("## Versions")
    without = write_run_report(runs["mine"], result, with_pictures=False).read_text()
    assert "## What was mined" not in without


def test_demo_pictures_of_the_mining_run_and_of_pi(runs, tmp_path):
    mined = demo_mined_pictures(tmp_path, {"minegan_noft": [{"run_dir": runs["mine"], "seed": 0}]})
    assert mined["seed_dist"] == "normal"
    assert opened_size(tmp_path / mined["latents"]) == P.latent_picture_size(1)
    assert opened_size(tmp_path / mined["interpolation"]) == px(P.STRIP_SIZE)
    assert demo_mined_pictures(tmp_path, {"scratch": [{"run_dir": runs["source"], "seed": 0}]}) is None
    # the multi demo's runs live in OUT/<name>; one logged π row per step here
    (tmp_path / "multi_permute_r0.5").symlink_to(runs["multi"], target_is_directory=True)
    path = selector_over_training(tmp_path, {("permute", 0.5): {"name": "multi_permute_r0.5"}}, ratios=(0.5,))
    assert opened_size(path) == P.selector_picture_size(1)
    assert selector_over_training(tmp_path, {}, ratios=(0.5,)) is None
