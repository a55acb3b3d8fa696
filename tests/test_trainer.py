"""The Trainer's speed settings (perf.*) and what it hands back, built through the public
builder (``fastmine.prepare`` / ``fastmine.mine_multi``)."""
import pytest
import torch

import fastmine as fm
from fastmine.config import ConfigError, ModelConfig

MODEL = ModelConfig(latent_dim=16, width=8)


def _target():
    # 3 channels: with one, NHWC and NCHW strides coincide and a layout test could not fail
    return torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _generator(seed=100):
    torch.manual_seed(seed)
    return fm.new_generator(_target(), MODEL)


def _prepare(**settings):
    return fm.prepare(_generator(), _target(), device="cpu", batch_size=16, progress=False, model_cfg=MODEL,
                      **settings)


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
