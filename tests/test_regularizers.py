"""fastmine.regularizers: EWC and CDC against direct float64 computations, their setup and state."""
import math
import re

import pytest
import torch
from torch import nn

from fastmine.config import RegularizeConfig
from fastmine.nets import DCGANCritic, DCGANGenerator
from fastmine.regularizers import CDC, EWC, build_regularizers, cdc_distance, default_cdc_layers, fisher_information
from fastmine.samplers import GeneratorAdapter, Sampler


@pytest.fixture(autouse=True)
def float64(one_thread):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def mlp_sampler(frozen=False):
    torch.manual_seed(0)
    g = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 5))
    return Sampler(GeneratorAdapter(g, {"z": 3}, frozen=frozen))


def linear_critic():
    torch.manual_seed(1)
    return nn.Linear(5, 1)


def dcgan_sampler(image_size=8, miner=True):
    torch.manual_seed(0)
    adapter = GeneratorAdapter(DCGANGenerator(latent_dim=8, image_size=image_size, channels=1, width=4), {"z": 8},
                               frozen=False)
    return Sampler(adapter, nn.Linear(6, 8), seed_dim=6) if miner else Sampler(adapter)


def perturb_(module, scale=0.1, seed=2):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def setup(reg, sampler, critic=None, seed=0):
    reg.setup(sampler, critic, torch.Generator().manual_seed(seed), "cpu")
    return reg


# ------------------------------------------------------------------ EWC
def test_fisher_equals_hand_per_sample_gradients():
    """Tiny MLP G(z) = W2 tanh(W1 z + b1) + b2, linear critic D(x) = a·x + c; gradients by hand."""
    sampler, critic = mlp_sampler(frozen=True), linear_critic()
    adapter = sampler.generator
    got = fisher_information(adapter, critic, 7, torch.Generator().manual_seed(5), batch_size=3)

    gen = torch.Generator().manual_seed(5)
    zs = torch.cat([torch.randn(b, 3, generator=gen) for b in (3, 3, 1)])  # the same draws, in batches of 3
    w1, b1, w2 = adapter.module[0].weight, adapter.module[0].bias, adapter.module[2].weight
    a = critic.weight[0].detach()
    squares = 0
    for z in zs:
        h = torch.tanh(w1 @ z + b1).detach()
        d_pre = (w2.detach().T @ a) * (1 - h**2)
        grads = [torch.outer(d_pre, z), d_pre, torch.outer(a, h), a]  # W1, b1, W2, b2: parameters() order
        squares = squares + torch.cat([g.flatten() for g in grads]) ** 2
    torch.testing.assert_close(got, squares / 7, rtol=1e-12, atol=0)
    assert not any(p.requires_grad for p in adapter.parameters())  # a frozen generator stays frozen
    assert all(p.grad is None for p in critic.parameters())


def test_fisher_runs_the_generator_in_eval_mode_and_restores_modes():
    sampler, critic = dcgan_sampler(miner=False), DCGANCritic(image_size=8, channels=1, width=4)
    adapter = sampler.generator.train()
    stats = adapter.module.blocks[0][0].running_mean.clone()
    fisher_information(adapter, critic, 3, torch.Generator().manual_seed(0))
    assert adapter.training and all(m.training for m in adapter.modules())
    assert torch.equal(adapter.module.blocks[0][0].running_mean, stats)  # eval: batch norm statistics untouched


def test_ewc_is_zero_at_the_source_and_its_gradient_is_2_lambda_f_delta():
    sampler, critic = mlp_sampler(), linear_critic()
    ewc = setup(EWC(0.7, samples=5), sampler, critic)
    params = list(sampler.generator.parameters())
    torch.testing.assert_close(ewc.theta0, torch.cat([p.detach().flatten() for p in params]), rtol=0, atol=0)
    assert ewc.sampler_term(sampler, None).item() == 0.0
    assert ewc.fisher.min() >= 0 and ewc.fisher.max() > 0

    perturb_(sampler.generator)
    theta = torch.cat([p.detach().flatten() for p in params])
    term = ewc.sampler_term(sampler, None)
    torch.testing.assert_close(term, 0.7 * (ewc.fisher * (theta - ewc.theta0) ** 2).sum(), rtol=1e-12, atol=0)
    term.backward()
    expected = (2 * 0.7 * ewc.fisher * (theta - ewc.theta0)).split([p.numel() for p in params])
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e.view_as(p), rtol=1e-12, atol=0)


class CountingCritic(nn.Linear):
    calls = 0

    def forward(self, x):
        self.calls += 1
        return super().forward(x)


def test_ewc_state_loads_before_setup_without_re_estimating_and_after_setup():
    sampler = mlp_sampler()
    saved = setup(EWC(1.0, samples=4), sampler, linear_critic()).state_dict()
    assert set(saved) == {"theta0", "fisher"}
    perturb_(sampler.generator)  # the generator has adapted: the saved θ0 is not its weights

    critic = CountingCritic(5, 1)
    resumed = EWC(1.0, samples=4)
    resumed.load_state_dict(saved)
    setup(resumed, sampler, critic)
    assert critic.calls == 0
    torch.testing.assert_close(resumed.state_dict(), saved, rtol=0, atol=0)

    late = setup(EWC(1.0, samples=4), sampler, critic)
    assert critic.calls == 4
    late.load_state_dict(saved)
    torch.testing.assert_close(late.state_dict(), saved, rtol=0, atol=0)


def test_ewc_state_of_another_generator_is_refused():
    saved = setup(EWC(1.0, samples=2), mlp_sampler(), linear_critic()).state_dict()
    other = dcgan_sampler(miner=False)
    message = ("the saved ewc state does not fit this generator (keys ['fisher', 'theta0'] missing, extra or of "
               "another shape): resume with the generator the run started from")
    late = setup(EWC(1.0, samples=2), other, DCGANCritic(image_size=8, channels=1, width=4))
    with pytest.raises(ValueError, match=re.escape(message)):
        late.load_state_dict(saved)
    early = EWC(1.0, samples=2)
    early.load_state_dict(saved)
    with pytest.raises(ValueError, match=re.escape(message)):
        setup(early, other)


# ------------------------------------------------------------------ CDC
def direct_cdc(source, adapted):
    """Σ_layers mean_i Σ_j p_s,ij log(p_s,ij / p_a,ij), p_i = softmax over j≠i of cos(f_i, f_j)."""
    total = 0.0
    for fs, fa in zip(source, adapted):
        n = fs.shape[0]
        layer = 0.0
        for i in range(n):
            probs = []
            for f in (fs.flatten(1), fa.flatten(1)):
                sims = [float(f[i] @ f[j] / (f[i].norm() * f[j].norm())) for j in range(n) if j != i]
                z = sum(math.exp(s) for s in sims)
                probs.append([math.exp(s) / z for s in sims])
            layer += sum(ps * math.log(ps / pa) for ps, pa in zip(*probs))
        total += layer / n
    return total


def test_cdc_distance_equals_the_direct_formula():
    torch.manual_seed(3)
    source = [torch.randn(5, 3, 2, 2), torch.randn(5, 7)]
    adapted = [f + 0.5 * torch.randn_like(f) for f in source]
    got = cdc_distance(source, adapted)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(direct_cdc(source, adapted), rel=1e-12)
    assert got.item() != pytest.approx(direct_cdc(adapted, source), rel=1e-3)  # the direction matters
    assert cdc_distance(source, source).item() == 0.0


def dcgan_features(module, z):
    """blocks.0 / blocks.1 / blocks.2 outputs of an 8 px DCGAN generator in eval mode, by hand."""
    x = module.fc(z).view(z.shape[0], module.start_width, 4, 4)
    feats = []
    for block in module.blocks:
        x = block(x)
        feats.append(x)
    return feats


def test_cdc_is_zero_at_the_source_then_equals_the_direct_computation_and_trains_only_the_generator():
    sampler = dcgan_sampler()
    cdc = setup(CDC(2.5), sampler)
    assert cdc.layers == ["blocks.0", "blocks.1"]
    seeds = torch.randn(6, 6, generator=torch.Generator().manual_seed(4))
    assert cdc.sampler_term(sampler, seeds).item() == 0.0

    perturb_(sampler.generator)
    sampler.train()
    adapter = sampler.generator
    stats = adapter.module.blocks[0][0].running_mean.clone()
    term = cdc.sampler_term(sampler, seeds)
    assert adapter.module.training and torch.equal(adapter.module.blocks[0][0].running_mean, stats)

    with torch.no_grad():
        z = sampler.miner(seeds)
        adapter.eval()
        expected = 2.5 * direct_cdc(dcgan_features(cdc.source.module, z), dcgan_features(adapter.module, z))
        adapter.train()
    assert term.item() == pytest.approx(expected, rel=1e-10)

    term.backward()
    assert adapter.module.fc.weight.grad.abs().max() > 0
    assert adapter.module.blocks[1][0].weight.grad.abs().max() > 0
    assert all(not p.requires_grad and p.grad is None for p in cdc.source.parameters())
    assert all(p.grad is None for p in sampler.miner.parameters())  # latents are taken without gradient


def test_cdc_state_carries_the_source_copy_loaded_before_setup():
    sampler = dcgan_sampler()
    first = setup(CDC(1.0), sampler)
    saved = {k: v.clone() for k, v in first.state_dict().items()}
    assert "source.module.fc.weight" in saved and "source.module.blocks.0.0.running_mean" in saved
    perturb_(sampler.generator)

    resumed = CDC(1.0)
    nn.ModuleList([resumed]).load_state_dict({f"0.{k}": v for k, v in saved.items()})  # as part of a larger state
    setup(resumed, sampler)
    torch.testing.assert_close(resumed.state_dict(), saved, rtol=0, atol=0)
    assert not torch.equal(resumed.source.module.fc.weight, sampler.generator.module.fc.weight)
    assert resumed.sampler_term(sampler, torch.randn(4, 6)).item() > 0


def test_default_layers_one_module_per_resolution():
    torch.manual_seed(0)
    for size, layers in [(16, ["blocks.0", "blocks.1", "blocks.2"]), (32, ["blocks.0", "blocks.1", "blocks.2",
                                                                          "blocks.3"])]:
        adapter = GeneratorAdapter(DCGANGenerator(latent_dim=8, image_size=size, width=4), {"z": 8})
        assert default_cdc_layers(adapter) == layers
        with torch.no_grad():
            feats = dcgan_features(adapter.module, torch.zeros(2, 8))
        assert [tuple(f.shape[2:]) for f in feats] == [(4 * 2**i,) * 2 for i in range(len(layers))]


class RGBBranch(nn.Module):
    """Features and an RGB output at the same 4x4 size, the RGB layer finishing last."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 8 * 16)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.to_rgb = nn.Conv2d(8, 3, 1)

    def forward(self, z):
        return self.to_rgb(self.act(self.conv(self.fc(z).view(-1, 8, 4, 4))))


def test_default_layers_prefer_the_widest_activation_the_latest_among_equals():
    assert default_cdc_layers(GeneratorAdapter(RGBBranch(), {"z": 2})) == ["act"]


# ------------------------------------------------------------------ configuration and bad input
def test_build_regularizers():
    assert build_regularizers(RegularizeConfig()) == []
    regs = build_regularizers(RegularizeConfig(ewc=3.0, ewc_samples=16, cdc=0.5, cdc_layers=["blocks.1"]))
    assert [(r.name, r.weight) for r in regs] == [("ewc", 3.0), ("cdc", 0.5)]
    assert regs[0].samples == 16 and regs[1].requested == ["blocks.1"]


@pytest.mark.parametrize("cfg, message", [
    (RegularizeConfig(ewc=-1.0), "regularize.ewc must be a number >= 0 (0 turns it off), got -1.0"),
    (RegularizeConfig(cdc=-0.5), "regularize.cdc must be a number >= 0 (0 turns it off), got -0.5"),
    (RegularizeConfig(cdc="1"), "regularize.cdc must be a number >= 0 (0 turns it off), got '1'"),
    (RegularizeConfig(ewc=1.0, ewc_samples=0),
     "regularize.ewc_samples must be a positive number of source samples, got 0"),
    (RegularizeConfig(cdc=1.0, cdc_layers="blocks.0"),
     "regularize.cdc_layers must be a non-empty list of generator module names or null (one per resolution), "
     "got 'blocks.0'"),
])
def test_bad_config(cfg, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_regularizers(cfg)


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(3, 5)
        self.spare = nn.Linear(3, 5)

    def forward(self, z):
        return self.net(z)


class NoSampler(nn.Module):
    latents = None


@pytest.mark.parametrize("reg, sampler, message", [
    (CDC(1.0, ["nope", "fc"]), lambda: dcgan_sampler(),
     "unknown regularize.cdc_layers ['nope']: the generator's modules include fc, blocks, blocks.0, blocks.0.0, "
     "blocks.0.1, blocks.1, blocks.1.0, blocks.1.1; name some of them or set cdc_layers to null (one per resolution)"),
    (CDC(1.0, ["spare"]), lambda: Sampler(GeneratorAdapter(Unused(), {"z": 3})),
     "regularize.cdc_layers: module 'spare' does not run in the generator's forward; name a module that does"),
    (CDC(1.0), lambda: mlp_sampler(),
     "CDC found no 4-D activations in the generator to compare; set regularize.cdc_layers to the modules whose "
     "outputs it should compare"),
    (EWC(1.0, 2), lambda: NoSampler(),
     "ewc regularizes one generator: it needs a sampler with .generator (a GeneratorAdapter) and .latents, got "
     "NoSampler; use a single-generator method"),
])
def test_bad_setup(reg, sampler, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        setup(reg, sampler(), linear_critic())


def test_cdc_needs_three_samples():
    sampler = dcgan_sampler()
    cdc = setup(CDC(1.0), sampler)
    message = "CDC compares each sample with the others and needs a batch of at least 3, got 2; raise train.batch_size"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cdc.sampler_term(sampler, torch.randn(2, 6))
