"""Augmentations and regularizers inside the one trainer (issue #17): the critic sees augmented
real and fake images, ADA's p moves and resumes bit-exactly, EWC / CDC join the sampler's loss
once the generator trains."""
import json

import pytest
import torch
from budgets import QUICK_INVERSION
from safetensors.torch import load_file

import fastmine as fm
from fastmine.config import ModelConfig

MODEL = ModelConfig(latent_dim=16, width=8)


def _target():
    return torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _prepare(method="minegan_noft", **settings):
    torch.manual_seed(100)
    generator = fm.new_generator(_target(), MODEL)
    generator.freeze(True)
    return fm.prepare(generator, _target(), method=method, device="cpu", batch_size=16, progress=False,
                      model_cfg=MODEL, **{"invert_cfg": QUICK_INVERSION, **settings})


class Spy(torch.nn.Module):
    """Wraps a critic and keeps every batch it scores."""

    def __init__(self, critic):
        super().__init__()
        self.critic, self.seen = critic, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.critic(x)


@pytest.mark.parametrize("kind", ["none", "diffaugment", "ada"])
def test_the_critic_sees_augmented_real_and_fake_images(kind, one_thread):
    loss = {"objective": "logistic"} if kind == "ada" else {}
    run = _prepare(augment_cfg={"kind": kind, "ada_p": 0.9}, loss_cfg=loss, steps=1, n_critic=1, log_every=1)
    trainer = run.trainer
    spy = Spy(trainer.critic)
    trainer._critic_fwd = spy
    trainer.critic_step(0, 0)
    real_seen, fake_seen = (x.contiguous() for x in spy.seen[:2])
    data = trainer.data.data
    # the real batch the critic scored is one of the target images only when nothing augments it
    rows, images = real_seen.flatten(1), data.contiguous().flatten(1)
    in_data = (rows[:, None] == images[None]).all(-1).any(1).float().mean().item()
    assert in_data == (1.0 if kind == "none" else pytest.approx(0.0, abs=0.2)), kind
    assert fake_seen.shape == real_seen.shape


def test_ada_p_moves_and_a_resumed_run_is_bit_exact(tmp_path, one_thread):
    ada = {"kind": "ada", "ada_interval": 2, "ada_images": 2000, "ada_target": 0.6, "ada_p": 0.5}
    common = dict(augment_cfg=ada, loss_cfg={"objective": "logistic", "r1_every": 4}, log_every=2, checkpoint_every=2,
                  sample_every=1000)
    full = _prepare(steps=8, run_dir=tmp_path / "full", **common).fit()
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert all("ada_p" in r for r in rows)
    assert rows[-1]["ada_p"] != 0.5  # p moved off its start at this speed
    _prepare(steps=4, run_dir=tmp_path / "cut", **common).fit()
    _prepare(steps=8, run_dir=tmp_path / "cut", resume=True, **common).fit()
    a, b = load_file(str(full.model_path)), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cut = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["ada_p"], r["loss_critic"]) for r in cut] == [
        (r["step"], r["ada_p"], r["loss_critic"]) for r in rows]


@pytest.mark.parametrize("reg", [{"ewc": 1e4, "ewc_samples": 16}, {"cdc": 10.0}])
def test_regularizers_join_the_sampler_loss_when_the_generator_trains(reg, tmp_path, one_thread):
    run = _prepare(method="minegan", regularize_cfg=reg, steps=4, mine_steps=2, log_every=1, n_critic=1,
                   run_dir=tmp_path / "run", sample_every=1000)
    (regularizer,) = run.trainer.regularizers
    terms = []
    term = regularizer.sampler_term

    def spy(sampler, seeds):
        terms.append(term(sampler, seeds))
        return terms[-1]

    regularizer.sampler_term = spy
    run.fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # mining first (the generator frozen: no term), then the term joins the sampler's loss every step
    assert len(terms) == 2 and all(t.requires_grad for t in terms)
    assert [r["regularize"] for r in rows] == pytest.approx([0.0, 0.0] + [t.item() for t in terms], abs=1e-12)


def test_ada_needs_an_objective_whose_scores_have_a_sign():
    with pytest.raises(fm.ConfigError, match="augment.kind=ada steers p by the sign of the critic's scores on real "
                                             "images, which loss.objective=wgan_gp does not give a meaning"):
        _prepare(augment_cfg={"kind": "ada"})
