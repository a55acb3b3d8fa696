"""Multi-generator mining (MineGAN++ §3.3): selector convergence, the permute rule, fast == naive."""
import json

import pytest
import torch
import toy_models

import fastmine as fm
from fastmine.config import LogConfig, LossConfig, ModelConfig, RunConfig, TrainConfig
from fastmine.files import load_any, read_info, save_multi_sampler, save_sampler
from fastmine.miner import Miner
from fastmine.multi import MultiSampler
from fastmine.nets import MLPCritic, build_generator
from fastmine.samplers import GeneratorAdapter, Sampler
from fastmine.trainer import ParamGroup, Trainer

MEANS = [[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]]


pytestmark = pytest.mark.usefixtures("one_thread")


def gauss_gen(mean, scale=0.5):
    """A frozen generator whose output is exactly N(mean, scale² I): a one-layer MLP."""
    arch = {"type": "mlp", "latent_dim": 2, "out_dim": 2, "width": 8, "depth": 1}
    module = build_generator(arch)
    with torch.no_grad():
        module.net[0].weight.copy_(torch.eye(2) * scale)
        module.net[0].bias.copy_(torch.tensor(mean))
    return GeneratorAdapter(module, {"z": ((2,), "normal")}, build={"arch": arch})


def mixture(means, ratios, n=600, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = [round(r * n) for r in ratios]
    return torch.cat([torch.tensor(m) + scale * torch.randn(c, 2, generator=g) for m, c in zip(means, counts)])


def make_multi(n=2, seed=0, **kw):
    torch.manual_seed(seed)
    samplers = []
    for m in MEANS[:n]:
        g = gauss_gen(m)
        miner = Miner(g.latent_spec, init="residual", hidden=16)
        with torch.no_grad():  # a non-trivial miner, so that gradients differ per generator
            for p in miner.parameters():
                p.add_(0.1 * torch.randn_like(p))
        samplers.append(Sampler(g, miner))
    return MultiSampler(samplers, seed=seed, **kw)


@pytest.mark.parametrize("n, ratios, steps, rule", [
    (2, (0.3, 0.7), 200, "permute"),
    (2, (0.7, 0.3), 200, "max"),
    (3, (0.2, 0.3, 0.5), 400, "permute"),
])
def test_selector_converges_to_the_target_ratio(n, ratios, steps, rule):
    gens = [gauss_gen(m) for m in MEANS[:n]]
    data = mixture(MEANS[:n], ratios)
    result = fm.mine_multi(gens, data, steps=steps, window=50, rule=rule, progress=False, log_every=steps,
                           model_cfg=ModelConfig(width=64, depth=3), device="cpu", seed=0)
    probs = result.sampler.selector_probs
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(probs, torch.tensor(ratios), atol=0.1), (probs.tolist(), ratios)
    # and sampling follows π: count which generator's region each sample falls in
    x = result.sampler.sample(3000, seed=1)
    region = torch.cdist(x, torch.tensor(MEANS[:n])).argmin(1)
    freq = torch.bincount(region, minlength=n).float() / len(x)
    assert torch.allclose(freq, probs, atol=0.05), (freq.tolist(), probs.tolist())


class SumCritic(torch.nn.Module):
    def forward(self, x):
        return x.sum(1) + 0.1 * x[:, 0] ** 2


def test_permute_keeps_the_multiset_of_winners_and_reassigns_seeds():
    ms = make_multi(3, rule="permute").train()
    ms.bind_critic(SumCritic())
    u = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = ms(u)
        sel = ms.last_selection
        cands = ms.candidates(u)
    scores = SumCritic()(cands.flatten(0, 1)).view(64, 3)
    assert torch.equal(sel.winners, scores.argmax(1))
    assert torch.equal(torch.sort(sel.chosen).values, torch.sort(sel.winners).values)  # ratio kept
    assert torch.equal(sel.counts, torch.bincount(sel.winners, minlength=3))
    assert (sel.chosen != sel.winners).any()  # pairings with seeds were shuffled
    # row j is generator chosen[j] applied to *its own* seed u[j]
    assert torch.allclose(out, cands[torch.arange(64), sel.chosen])
    # max rule: the winners stay with their seeds
    ms.rule = "max"
    with torch.no_grad():
        out = ms(u)
    assert torch.equal(ms.last_selection.chosen, ms.last_selection.winners)
    assert torch.allclose(out, cands[torch.arange(64), sel.winners])
    # the window counted both minibatches
    assert ms.selector_window.sum().item() == 128 and ms.selector_pos.item() == 2


def _grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


@pytest.mark.parametrize("rule", ["permute", "max"])
def test_fast_path_matches_naive_path(rule):
    from fastmine.losses import critic_loss, gradient_penalty

    torch.manual_seed(0)
    critic_state = MLPCritic(in_dim=2, width=32, depth=3).state_dict()
    runs = {}
    for path in ("naive", "fast"):
        ms = make_multi(3, rule=rule, path=path, seed=7).train()
        critic = MLPCritic(in_dim=2, width=32, depth=3)
        critic.load_state_dict(critic_state)
        ms.bind_critic(critic)
        gen = torch.Generator().manual_seed(11)
        seeds = ms.draw_seeds(48, gen)
        real = torch.randn(48, 2, generator=gen)
        # sampler step: miner gradients
        loss = -critic(ms(seeds)).mean()
        loss.backward()
        chosen_s = ms.last_selection.chosen.clone()
        miner_grads = [g for s in ms.samplers for g in _grads(s.miner)]
        # critic step: critic gradients through the loss and the penalty
        critic.zero_grad()
        with torch.no_grad():
            fake = ms(seeds)
        chosen_c = ms.last_selection.chosen.clone()
        d = critic(torch.cat([real, fake]))
        eps = torch.rand(48, generator=gen)
        penalty, _ = gradient_penalty(critic, real, fake, weight=10.0, eps=eps, impl="torch")
        (critic_loss(d[48:], d[:48]) + penalty).backward()
        runs[path] = (chosen_s, chosen_c, fake, miner_grads, _grads(critic))
    naive, fast = runs["naive"], runs["fast"]
    assert torch.equal(naive[0], fast[0]) and torch.equal(naive[1], fast[1])
    assert torch.allclose(naive[2], fast[2], atol=1e-6)
    assert any(g.abs().sum() > 0 for g in fast[3])
    for a, b in zip(naive[3], fast[3]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(naive[4], fast[4]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_fast_and_naive_train_identically_and_the_selector_survives_save_and_load(tmp_path):
    data = mixture(MEANS[:2], (0.5, 0.5), n=200)
    weights = {}
    for path in ("naive", "fast"):
        ms = make_multi(2, path=path, window=20, seed=3)
        torch.manual_seed(5)
        critic = MLPCritic(in_dim=2, width=32, depth=3)
        cfg = RunConfig(seed=0, train=TrainConfig(steps=6, batch_size=32, n_critic=2, lr=1e-3, critic_lr=1e-3,
                                                  betas=[0.5, 0.9]),
                        loss=LossConfig(gp_weight=10.0), log=LogConfig(progress=False, log_every=3))
        groups = [ParamGroup(f"miner{i}", s.miner, 0) for i, s in enumerate(ms.samplers)]
        Trainer(ms, critic, data, cfg, groups).fit()
        weights[path] = (ms.state_dict(), critic.state_dict())
    for key, v in weights["naive"][0].items():
        if torch.is_floating_point(v):
            assert torch.allclose(v, weights["fast"][0][key], atol=1e-5), key
        else:
            assert torch.equal(v, weights["fast"][0][key]), key
    assert weights["fast"][0]["selector_pos"].item() == 6 * 3  # every call is one minibatch
    # file round trip keeps the selector and the miners
    ms.eval()
    save_multi_sampler(tmp_path / "m.safetensors", ms)
    loaded = load_any(tmp_path / "m.safetensors")
    assert isinstance(loaded, MultiSampler)
    assert torch.allclose(loaded.selector_probs, ms.selector_probs)
    assert torch.allclose(loaded.sample(64, seed=2), ms.sample(64, seed=2))


def test_multi_sampler_refuses_mismatched_seeds_and_training_without_critic():
    a = Sampler(gauss_gen(MEANS[0]), Miner({"z": ((2,), "normal")}))
    b = Sampler(gauss_gen(MEANS[1]), Miner({"z": ((2,), "normal")}, seed_dim=3, init="normal"))
    with pytest.raises(ValueError, match="same seed"):
        MultiSampler([a, b])
    with pytest.raises(ValueError, match="rule"):
        MultiSampler([a], rule="best")
    ms = MultiSampler([a]).train()
    with pytest.raises(RuntimeError, match="bind_critic"):
        ms(ms.draw_seeds(4))


def test_cli_mine_multi_runs_and_logs_the_selector(tmp_path):
    from fastmine.cli import main

    files = []
    for i in range(2):  # two (untrained) 8 px DCGAN sources: enough to exercise the command end to end
        torch.manual_seed(i)
        arch = {"type": "dcgan", "latent_dim": 8, "image_size": 8, "channels": 1, "width": 8, "norm": "batch"}
        files.append(tmp_path / f"g{i}.safetensors")
        save_sampler(files[-1], Sampler(GeneratorAdapter(build_generator(arch), {"z": ((8,), "normal")},
                                                         build={"arch": arch})))
    rc = main(["mine-multi", f"source.generators=[{files[0]},{files[1]}]", "data.size=8", "data.limit=40",
               f"out_dir={tmp_path}", "name=mm", "train.steps=4", "train.batch_size=16", "log.log_every=2",
               "log.progress=false", "model.width=8", "multi.window=10"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "mm" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and len(rows[-1]["selector_probs"]) == 2
    assert sum(rows[-1]["selector_probs"]) == pytest.approx(1.0, abs=1e-4)
    loaded = load_any(tmp_path / "mm" / "model.safetensors")
    assert isinstance(loaded, MultiSampler) and loaded.sample(5).shape == (5, 1, 8, 8)
    assert main(["mine-multi", "source.generators=[" + str(files[0]) + "]", f"out_dir={tmp_path}", "name=x"]) == 2


def test_user_miners_train_and_the_selector_is_in_the_result_and_the_file(tmp_path):
    """``miner=[m1, m2]``: the user's own modules are what trains; π of the Result is the
    one written into model.safetensors."""
    # two generators on one region, so that each wins some supersamples from the start (a miner
    # whose generator is never chosen gets no gradient: MineGAN trains only the selected one)
    gens = [gauss_gen([0.0, 0.0]), gauss_gen([0.0, 0.0])]
    torch.manual_seed(1)
    miners = [toy_models.make_miner(), toy_models.make_miner()]
    before = [[p.detach().clone() for p in m.parameters()] for m in miners]
    result = fm.mine_multi(gens, mixture(MEANS[:2], (0.5, 0.5), n=200), miner=miners, seed_dim=3, steps=4,
                           batch_size=32, n_critic=2, window=20, progress=False, log_every=4, device="cpu",
                           model_cfg=ModelConfig(width=16, depth=2), run_dir=tmp_path / "run", seed=1)
    assert [s.miner for s in result.sampler.samplers] == miners  # the very modules passed in
    assert (result.sampler.selector_window.sum(0) > 0).all()  # both generators were selected
    for m, old in zip(miners, before):
        assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), old)), "a user miner did not train"
    probs = result.selector_probs
    assert isinstance(probs, list) and len(probs) == 2 and all(isinstance(p, float) for p in probs)
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert read_info(result.model_path)["selector_probs"] == probs
    assert json.loads((tmp_path / "run" / "selector.json").read_text())["selector_probs"] == probs


def test_miner_module_setting_builds_every_miner(tmp_path):
    """``miner_cfg={"module": "toy_models:make_miner"}``: one fresh instance per generator."""
    gens = [gauss_gen(m) for m in MEANS[:2]]
    result = fm.mine_multi(gens, mixture(MEANS[:2], (0.5, 0.5), n=200), miner_cfg={"module": "toy_models:make_miner",
                                                                                   "seed_dim": 3},
                           steps=2, batch_size=16, n_critic=1, window=10, progress=False, device="cpu",
                           model_cfg=ModelConfig(width=16, depth=2))
    miners = [s.miner for s in result.sampler.samplers]
    assert all(isinstance(m, toy_models.ToyMiner) for m in miners) and miners[0] is not miners[1]
    assert result.sampler.seed_dim == 3


def test_several_generators_refuse_the_inversion_start_instead_of_ignoring_it(tmp_path):
    gens = [gauss_gen([0.0, 0.0]), gauss_gen([1.0, 1.0])]
    with pytest.raises(ValueError, match="miner.init=inversion inverts the target in one generator"):
        fm.mine_multi(gens, mixture(MEANS[:2], (0.5, 0.5), n=50), steps=1, batch_size=8, progress=False,
                      device="cpu", miner_cfg={"init": "inversion"}, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
