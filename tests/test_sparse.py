"""Sparse subnetwork selection S³ (MineGAN++ §3.4.2, eq. 11-14)."""
import json
import math

import pytest
import torch

import fastmine as fm
from fastmine.config import LogConfig, LossConfig, ModelConfig, RunConfig, TrainConfig
from fastmine.miner import Miner
from fastmine.nets import DCGANCritic, MLPCritic, build_generator
from fastmine.samplers import GeneratorAdapter, Sampler
from fastmine.sparse import gradient_and_hvp, select_subnetwork
from fastmine.trainer import ParamGroup, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _loss_grad(critic, real):
    params = list(critic.parameters())
    loss = -critic(real).mean()
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_hessian_vector_product_matches_central_differences(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        critic, real = MLPCritic(in_dim=3, width=8, depth=3).double(), torch.randn(16, 3, dtype=torch.float64)
    else:
        critic = DCGANCritic(image_size=8, channels=1, width=4).double()
        real = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    # a smooth critic would be easier; the project's critics are piecewise linear (LeakyReLU),
    # whose Hessian still couples weights of different layers
    grads, hvp = gradient_and_hvp(critic, real)
    params = list(critic.parameters())
    v = [g.clone() for g in grads]
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    plus = _loss_grad(critic, real)
    with torch.no_grad():
        for p, d in zip(params, v):
            p.sub_(2 * eps * d)
    minus = _loss_grad(critic, real)
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    fd = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
    flat_fd, flat_hvp = torch.cat([f.flatten() for f in fd]), torch.cat([h.flatten() for h in hvp])
    assert flat_hvp.abs().max() > 1e-6  # there is curvature to compare
    assert torch.allclose(flat_hvp, flat_fd, rtol=1e-5, atol=1e-8 * flat_fd.abs().max().item())


def _direct_masks(critic, real, p, theta_f):
    """Eq. 13-14 with plain Python loops over weights and filters."""
    _, hvp = gradient_and_hvp(critic, real)
    score = {id(w): (-w.detach() * h) for w, h in zip(critic.parameters(), hvp)}
    layers = [m for m in critic.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    values = []
    for m in layers:
        values += score[id(m.weight)].flatten().tolist()
    values.sort(reverse=True)
    theta_w = values[math.ceil(p * len(values)) - 1]
    out = {}
    for m in layers:
        s = score[id(m.weight)]
        trainable = []
        for f in range(s.shape[0]):
            weights = s[f].flatten().tolist()
            hits = 0
            for x in weights:
                if x >= theta_w:
                    hits += 1
            trainable.append(hits >= min(theta_f, len(weights)))
        out[id(m.weight)] = trainable
    return theta_w, out


@pytest.mark.parametrize("p, theta_f", [(0.3, 6), (0.1, 3)])
def test_filter_rule_matches_a_direct_loop(p, theta_f):
    torch.manual_seed(1)
    critic = DCGANCritic(image_size=8, channels=1, width=8)
    real = torch.rand(32, 1, 8, 8) * 2 - 1
    masks = select_subnetwork(critic, real, p=p, theta_f=theta_f)
    theta_w, direct = _direct_masks(critic, real, p, theta_f)
    assert masks.theta_w == pytest.approx(theta_w, rel=1e-6)
    names = {id(q): n for n, q in critic.named_parameters()}
    n_frozen = n_trainable = 0
    for module in critic.modules():
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        mask = masks.masks[names[id(module.weight)]]
        per_filter = mask.reshape(mask.shape[0], -1)
        assert (per_filter.all(1) | ~per_filter.any(1)).all()  # whole filters, never single weights
        got = per_filter[:, 0].tolist()
        assert got == direct[id(module.weight)]
        assert masks.masks[names[id(module.bias)]].tolist() == got  # the bias follows its filter
        n_trainable += sum(got)
        n_frozen += len(got) - sum(got)
    assert n_trainable > 0 and n_frozen > 0
    report = masks.report()
    assert 0 < report["trainable_fraction"] < 1 and set(report["layers"]) == {
        n for n, m in critic.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


def test_frozen_filters_keep_exact_weights_and_zero_optimizer_state():
    torch.manual_seed(2)
    arch = {"type": "dcgan", "latent_dim": 8, "image_size": 8, "channels": 1, "width": 8, "norm": "batch"}
    gen = GeneratorAdapter(build_generator(arch), {"z": ((8,), "normal")}, build={"arch": arch})
    sampler = Sampler(gen, Miner(gen.latent_spec))
    critic = DCGANCritic(image_size=8, channels=1, width=8)
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    masks = select_subnetwork(critic, data, p=0.3, theta_f=6).apply(critic)
    before = {n: q.detach().clone() for n, q in critic.named_parameters()}
    cfg = RunConfig(seed=0, train=TrainConfig(steps=25, batch_size=16, n_critic=3, lr=1e-3, critic_lr=1e-2,
                                              betas=[0.5, 0.9]),
                    loss=LossConfig(gp_weight=10.0), log=LogConfig(progress=False, log_every=25))
    trainer = Trainer(sampler, critic, data, cfg, [ParamGroup("miner", sampler.miner, 0)])
    trainer.fit()
    params = dict(critic.named_parameters())
    moved = 0
    for name, mask in masks.masks.items():
        q = params[name].detach()
        assert torch.equal(q[~mask], before[name][~mask]), name  # bit-for-bit
        moved += int((q[mask] != before[name][mask]).sum())
        state = trainer.opt_critic.state[params[name]]
        assert torch.count_nonzero(state["exp_avg"][~mask]) == 0, name
        assert torch.count_nonzero(state["exp_avg_sq"][~mask]) == 0, name
        if mask.any() and mask.dim() > 1:  # (the critic's output bias has zero WGAN gradient anyway)
            assert torch.count_nonzero(state["exp_avg_sq"][mask]) > 0, name
    assert moved > 0  # the selected filters did train


def test_minegan_pp_and_transfergan_pp_apply_masks_and_report(tmp_path):
    torch.manual_seed(3)
    arch = {"type": "dcgan", "latent_dim": 8, "image_size": 8, "channels": 1, "width": 8, "norm": "batch"}
    data = torch.rand(40, 1, 8, 8) * 2 - 1
    for method in ("minegan_pp", "transfergan_pp"):
        gen = GeneratorAdapter(build_generator(arch), {"z": ((8,), "normal")}, build={"arch": arch})
        critic = DCGANCritic(image_size=8, channels=1, width=8)
        reference = select_subnetwork(critic, data, p=0.3, theta_f=6)
        before = {n: q.detach().clone() for n, q in critic.named_parameters()}
        fm.train(gen, data, method=method, critic=critic, steps=6, batch_size=16, progress=False,
                 run_dir=tmp_path / method, checkpoint_every=1000, sample_every=1000, log_every=3,
                 model_cfg=ModelConfig(width=8))
        report = json.loads((tmp_path / method / "s3_masks.json").read_text())
        assert report["trainable_fraction"] == pytest.approx(reference.trainable_fraction())
        params = dict(critic.named_parameters())
        for name, mask in reference.masks.items():
            assert torch.equal(params[name].detach()[~mask], before[name][~mask]), (method, name)


def test_s3_refuses_bad_settings():
    critic = MLPCritic(in_dim=2, width=4, depth=2)
    with pytest.raises(ValueError, match="0 < p"):
        select_subnetwork(critic, torch.randn(4, 2), p=0.0)
    with pytest.raises(ValueError, match="θ_f"):
        select_subnetwork(critic, torch.randn(4, 2), theta_f=0)
