"""The Trainer's speed settings (perf.*) and what it hands back, built through the public
builder (``fastmine.prepare`` / ``fastmine.mine_multi``)."""
from pathlib import Path

import pytest
import torch
from budgets import QUICK_INVERSION

import fastmine as fm
from fastmine.config import ConfigError, LogConfig, LossConfig, ModelConfig, RunConfig, TrainConfig
from fastmine.samplers import check_sampler
from fastmine.trainer import ParamGroup, Trainer

MODEL = ModelConfig(latent_dim=16, width=8)


def _target():
    # 3 channels: with one, NHWC and NCHW strides coincide and a layout test could not fail
    return torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _generator(seed=100):
    torch.manual_seed(seed)
    return fm.new_generator(_target(), MODEL)


def _prepare(**settings):
    return fm.prepare(_generator(), _target(), device="cpu", batch_size=16, progress=False, model_cfg=MODEL,
                      **{"invert_cfg": QUICK_INVERSION, **settings})


def test_unknown_amp_setting_is_refused():
    with pytest.raises(ConfigError, match="'perf.amp' must be one of none, bf16"):
        _prepare(amp="fp8")


def test_channels_last_defaults_to_the_cpu_and_refuses_other_values():
    assert _prepare().trainer.channels_last
    assert not _prepare(channels_last=False).trainer.channels_last
    with pytest.raises(ConfigError, match="'perf.channels_last' must be true or false or null"):
        _prepare(channels_last="auto")


def test_a_trained_sampler_comes_back_in_the_default_layout(one_thread):
    # the CPU trains channels_last; what the user gets back must not be: `sample.view(n, -1)`
    # fails on an NHWC tensor
    run = _prepare(steps=1)
    trainer = run.trainer
    weights = lambda: [p for m in (trainer.sampler, trainer.critic) for p in m.parameters() if p.dim() == 4]
    assert not any(p.is_contiguous() for p in weights())  # trained NHWC
    result = run.fit()
    assert all(p.is_contiguous() for p in weights())
    with torch.no_grad():
        assert result.sampler(result.sampler.draw_seeds(4)).view(4, -1).shape == (4, 3 * 16 * 16)


def test_compile_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="'perf.compile' must be one of none, sampler, first_order"):
        _prepare(compile="all")
    with pytest.raises(ValueError, match="multi-generator sampler picks candidates"):
        fm.mine_multi([_generator(100), _generator(101)], _target(), device="cpu", batch_size=16, progress=False,
                      model_cfg=MODEL, compile="sampler")


class _NoSeeds(torch.nn.Module):
    """A sampler that forgot draw_seeds."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 8)

    def forward(self, seeds):
        return self.net(seeds)


class _NoForward(torch.nn.Module):
    def draw_seeds(self, n, generator=None, device=None):
        return torch.randn(n, 4, generator=generator, device=device)


class _Plain(_NoSeeds):
    """Has what the protocol requires and none of the optional hooks."""

    def draw_seeds(self, n, generator=None, device=None):
        return torch.randn(n, 4, generator=generator, device=device)


def _vector_cfg():
    return RunConfig(train=TrainConfig(steps=2, batch_size=8, n_critic=1, lr=1e-3, critic_lr=1e-3, betas=[0.5, 0.9]),
                     loss=LossConfig(gp_weight=1.0), log=LogConfig(progress=False, log_every=1))


@pytest.mark.parametrize("sampler,message", [
    (_NoSeeds(), "the sampler _NoSeeds lacks draw_seeds: a sampler needs draw_seeds(n, generator, device) and "
                 "forward(seeds) (fastmine.samplers.SamplerProtocol)"),
    (_NoForward(), "the sampler _NoForward lacks forward: "),
    (lambda u: u, "the sampler must be an nn.Module with draw_seeds and forward (fastmine.samplers.SamplerProtocol), "
                  "got function"),
])
def test_a_sampler_missing_the_protocol_is_refused_in_one_line(sampler, message):
    critic = torch.nn.Sequential(torch.nn.Linear(8, 1))
    with pytest.raises(TypeError) as info:
        Trainer(sampler, critic, torch.randn(32, 8), _vector_cfg(), [])
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_sampler_without_optional_hooks_trains_on_their_defaults(one_thread):
    sampler = _Plain()
    hooks = check_sampler(sampler)
    assert hooks.generator is sampler and hooks.bind_critic is None
    x = torch.randn(3, 8)
    assert hooks.visible(x) is x
    before = sampler.net.weight.detach().clone()
    trainer = Trainer(sampler, torch.nn.Sequential(torch.nn.Linear(8, 1)), torch.randn(32, 8), _vector_cfg(),
                      [ParamGroup("sampler", sampler, 0)])
    trainer.fit()
    assert trainer.state.step == 2 and not torch.equal(before, sampler.net.weight)


def test_the_trainer_asks_no_sampler_what_it_has():
    """The sampler's interface is declared (SamplerProtocol) and checked once: no hasattr probes."""
    source = (Path(fm.__file__).parent / "trainer.py").read_text()
    assert "hasattr(" not in source
