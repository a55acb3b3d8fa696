"""The moving average of trained weights (fastmine.ema): stylegan2-ada's G_ema update rule, used
for samples, evaluations and the written model, checkpointed beside the raw weights."""
import pytest
import torch
from safetensors.torch import load_file

import fastmine as fm
from fastmine.config import ModelConfig
from fastmine.ema import WeightAverage, ema_beta

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ModelConfig(arch="mlp", latent_dim=4, width=16, depth=2)


def _official_ema(g_ema, g, cur_nimg, batch_size, ema_kimg, ema_rampup):
    """stylegan2-ada-pytorch training/training_loop.py, "Update G_ema", on {name: tensor}."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
    for name in g_ema:
        g_ema[name].copy_(g[name].lerp(g_ema[name], ema_beta))


@pytest.mark.parametrize("kimg,rampup", [(10.0, 0.05), (10.0, None), (0.5, None), (2.0, 0.5)])
def test_the_average_follows_the_official_update_in_fp64(kimg, rampup):
    gen = torch.Generator().manual_seed(0)
    weights = {"a": torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64)),
               "b.c": torch.nn.Parameter(torch.randn(7, generator=gen, dtype=torch.float64))}
    average = WeightAverage(weights)
    reference = {n: p.detach().clone() for n, p in weights.items()}
    batch = 64
    betas = []
    for step in range(300):
        with torch.no_grad():
            for p in weights.values():  # a training step moves the raw weights
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
        beta = ema_beta(batch, step * batch, kimg, rampup)
        betas.append(beta)
        average.update(beta)
        _official_ema(reference, {n: p.detach() for n, p in weights.items()}, step * batch, batch, kimg, rampup)
    for (name, ref), avg in zip(reference.items(), average.averages()):
        assert avg.dtype == torch.float64
        assert torch.equal(avg, ref), name  # the same arithmetic: equal to the last bit
    assert (betas[0] == 0.0) == (rampup is not None)  # with a ramp-up the first update copies the raw weights
    assert not torch.equal(average.averages()[0], weights["a"].detach())
    # half-life: the weight of an update decays to 1/2 after kimg thousand images (no ramp-up)
    if rampup is None:
        assert betas[-1] ** (kimg * 1000 / batch) == pytest.approx(0.5)


def test_swapped_restores_the_raw_weights_bit_for_bit():
    p = torch.nn.Parameter(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
    average = WeightAverage({"p": p})
    raw = p.detach().clone()
    with torch.no_grad():
        p.mul_(3.0)
    average.update(0.9)
    expected = (3.0 * raw).lerp(raw, 0.9)
    moved = p.detach().clone()
    with average.swapped():
        assert torch.equal(p, expected)
    assert torch.equal(p, moved)


def _target():
    return torch.randn(256, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 1.0


def _source():
    torch.manual_seed(3)
    return fm.new_generator(_target(), MODEL)


def _train(run_dir, steps, **settings):
    return fm.train(_source(), _target(), method="transfergan", steps=steps, batch_size=16, n_critic=1,
                    model_cfg=MODEL, progress=False, run_dir=run_dir, checkpoint_every=1, keep_checkpoints=100,
                    sample_every=1000, log_every=2, **settings)


def test_the_written_model_is_the_average_of_the_checkpointed_raw_weights(tmp_path):
    """TransferGAN (EMA on by default): replaying the official update in fp64 over the raw weights
    of every checkpoint gives the model file's weights; the checkpoints keep the raw ones."""
    kimg, rampup, steps, batch = 0.2, 0.5, 12, 16
    result = _train(tmp_path / "r", steps, ema_cfg={"kimg": kimg, "rampup": rampup})
    cfg = fm.load_config(tmp_path / "r" / "config.yaml")
    assert (cfg.ema.kimg, cfg.ema.rampup) == (kimg, rampup)
    ckpts = [load_file(str(tmp_path / "r" / "checkpoints" / f"ckpt-{s:07d}.safetensors")) for s in range(1, steps + 1)]
    raw = lambda c: {k[len("sampler.generator.module."):]: v.double() for k, v in c.items()
                     if k.startswith("sampler.generator.module.")}
    reference = {k: v.clone() for k, v in raw(ckpts[0]).items()}  # β = 0 at the first update: a copy
    for step in range(1, steps):
        _official_ema(reference, raw(ckpts[step]), step * batch, batch, kimg, rampup)
    model = load_file(str(result.model_path))
    for name, ref in reference.items():
        written = model[f"generator.{name}"].double()
        torch.testing.assert_close(written, ref, rtol=0, atol=1e-6)
        assert not torch.allclose(written, raw(ckpts[-1])[name], atol=1e-4), name  # the average, not the raw
        stored = ckpts[-1][f"parts.ema.generator__module__{name.replace('.', '__')}"].double()
        torch.testing.assert_close(stored, ref, rtol=0, atol=1e-6)
    # the returned sampler is the average too
    for name, p in result.sampler.generator.module.named_parameters():
        torch.testing.assert_close(p.detach().double(), reference[name], rtol=0, atol=1e-6)


def test_a_resumed_run_continues_the_average_exactly(tmp_path):
    full = _train(tmp_path / "full", 10)
    _train(tmp_path / "part", 4)
    resumed = fm.train(_source(), _target(), method="transfergan", steps=10, batch_size=16, n_critic=1,
                       model_cfg=MODEL, progress=False, run_dir=tmp_path / "part", resume=True)
    a, b = load_file(str(full.model_path)), load_file(str(resumed.model_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_average_is_off_where_only_a_miner_trains_and_can_be_turned_off():
    cfg = fm.make_config("minegan_noft", {})
    assert fm.prepare(_source(), _target(), steps=1, model_cfg=MODEL, progress=False,
                      miner_cfg={"init": "normal"}).trainer.ema is None
    assert cfg.ema.kimg is None  # filled from the method's defaults when prepared
    run = fm.prepare(_source(), _target(), method="transfergan", steps=1, model_cfg=MODEL, progress=False,
                     ema_cfg={"kimg": 0})
    assert run.trainer.ema is None
    with pytest.raises(fm.ConfigError, match="config key 'ema.kimg' must be >= 0"):
        fm.prepare(_source(), _target(), method="transfergan", steps=1, model_cfg=MODEL, progress=False,
                   ema_cfg={"kimg": -1})
