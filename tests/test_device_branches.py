"""Every branch the device type used to choose is reachable on the CPU through a setting (issue #24
item 1): the critic's joint real+fake pass (only for critics whose rows are independent), the
StyleGAN float16 layers; and the lazy-regularisation schedule against the official training loop's
phases (item 2)."""
import json
from pathlib import Path

import pytest
import torch

import fastmine as fm
from fastmine.config import ModelConfig
from fastmine.nets import DCGANCritic, MLPCritic, rows_independent
from fastmine.trainer import _resolve_joint_critic, critic_scores
from fastmine.zoo import StyleGANCritic, StyleGANSource, set_fp16_layers

MODEL = ModelConfig(latent_dim=16, width=8)
PHASES = Path(__file__).parent / "fixtures" / "official" / "stylegan2_ada_phases.json"
SG_D = {"c_dim": 0, "img_resolution": 16, "img_channels": 3, "channel_base": 64, "channel_max": 8,
        "epilogue_kwargs": {"mbstd_group_size": 2}}


def _images(n, seed, channels=3, size=16, dtype=torch.float64):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def _scores_and_grads(critic, real, fake, joint):
    d_real, d_fake = critic_scores(critic, real, fake, joint)
    loss = d_fake.mean() - d_real.mean() + (d_real ** 2).mean()  # a loss that reaches both kinds' rows
    return d_real, d_fake, torch.autograd.grad(loss, list(critic.parameters()))


def test_joint_pass_equals_separate_passes_for_an_independent_critic_fp64():
    torch.manual_seed(0)
    critic = DCGANCritic(image_size=16, channels=3, width=8).double()
    real, fake = _images(6, 1), _images(6, 2)
    joint, separate = _scores_and_grads(critic, real, fake, True), _scores_and_grads(critic, real, fake, False)
    for a, b in zip(joint[:2], separate[:2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(joint[2], separate[2]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_minibatch_std_critic_mixes_real_and_fake_in_a_joint_batch_so_it_never_gets_one():
    torch.manual_seed(0)
    critic = StyleGANCritic("stylegan2", SG_D).double()
    real, fake = _images(4, 1), _images(4, 2)
    joint, separate = critic_scores(critic, real, fake, True), critic_scores(critic, real, fake, False)
    assert not torch.allclose(joint[0], separate[0])  # why: a real image's score depends on the fakes
    assert not rows_independent(critic)
    cuda = torch.device("cuda")  # resolving the setting needs no GPU
    assert _resolve_joint_critic("auto", critic, cuda) is False
    assert _resolve_joint_critic("off", critic, cuda) is False
    with pytest.raises(ValueError, match="perf.joint_critic=on, but the critic StyleGANCritic mixes the rows"):
        _resolve_joint_critic("on", critic, torch.device("cpu"))
    one = StyleGANCritic("stylegan2", {**SG_D, "epilogue_kwargs": {"mbstd_group_size": 1}})
    assert rows_independent(one)  # groups of one: the statistic is a constant


def test_rows_independent_is_declared_and_checked():
    assert rows_independent(DCGANCritic(image_size=16)) and rows_independent(MLPCritic(in_dim=4))
    assert not rows_independent(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1)))  # undeclared
    bn = MLPCritic(in_dim=4)
    bn.blocks.insert(0, torch.nn.BatchNorm1d(4))
    assert not rows_independent(bn)
    dcgan = DCGANCritic(image_size=16)
    assert _resolve_joint_critic("auto", dcgan, torch.device("cuda")) is True
    assert _resolve_joint_critic("auto", dcgan, torch.device("cpu")) is False
    assert _resolve_joint_critic("on", dcgan, torch.device("cpu")) is True
    with pytest.raises(ValueError, match="perf.joint_critic must be one of auto, on, off, got 'yes'"):
        _resolve_joint_critic("yes", dcgan, torch.device("cpu"))


def _prepare(critic=None, **settings):
    torch.manual_seed(100)
    target = _images(64, 1, dtype=torch.float32)
    generator = fm.new_generator(target, MODEL)
    return fm.prepare(generator, target, method="transfergan", critic=critic, device="cpu", batch_size=8,
                      progress=False, model_cfg=MODEL, log_every=1, **settings)


def _critic_batches(run):
    sizes = []
    run.trainer.critic.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    run.trainer.critic_step(0, 0)  # the loss's pass(es), then the gradient penalty's on 8 interpolates
    return sizes


@pytest.mark.parametrize("setting,sizes", [("on", [16, 8]), ("off", [8, 8, 8]), ("auto", [8, 8, 8])])
def test_the_trainer_takes_the_joint_pass_on_the_cpu_when_asked(one_thread, setting, sizes):
    assert _critic_batches(_prepare(perf_cfg={"joint_critic": setting})) == sizes


def test_joint_and_separate_trainers_reach_the_same_critic(one_thread):
    weights = []
    for setting in ("on", "off"):
        run = _prepare(perf_cfg={"joint_critic": setting}, steps=2)
        run.fit()
        weights.append(torch.cat([p.detach().flatten() for p in run.trainer.critic.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-5)


def test_a_stylegan_critic_takes_separate_passes_and_refuses_the_forced_joint_one(one_thread):
    critic = StyleGANCritic("stylegan2", SG_D)
    assert _critic_batches(_prepare(critic=critic, perf_cfg={"joint_critic": "auto"})) == [8, 8, 8]
    with pytest.raises(ValueError, match="perf.joint_critic=on, but the critic StyleGANCritic"):
        _prepare(critic=StyleGANCritic("stylegan2", SG_D), perf_cfg={"joint_critic": "on"})


SG_G = {"z_dim": 8, "c_dim": 0, "w_dim": 8, "img_resolution": 16, "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "synthesis_kwargs": {"channel_base": 64, "channel_max": 8, "num_fp16_res": 2, "conv_clamp": 256}}


def test_fp16_layers_compute_in_float16_on_the_cpu_when_asked():
    torch.manual_seed(0)
    source = StyleGANSource("stylegan2", SG_G, latent="w", noise_mode="const").eval()
    w = torch.randn(2, *source.latent_spec["w"].shape)
    seen = []
    for block in source.modules():
        if getattr(block, "use_fp16", False):
            block.register_forward_hook(lambda m, args, out: seen.append(out[0].dtype))
    with torch.no_grad():
        auto = source(w=w)
        assert set(seen) == {torch.float32}  # auto on the CPU: float32, as NVIDIA's code
        seen.clear()
        half = set_fp16_layers(source, "on")(w=w)
        assert set(seen) == {torch.float16}
        seen.clear()
        off = set_fp16_layers(source, "off")(w=w)
        assert set(seen) == {torch.float32}
    assert torch.equal(auto, off)
    assert not torch.equal(half, auto)
    torch.testing.assert_close(half.float(), auto, atol=2e-2, rtol=0)  # float16 rounding, same images
    with pytest.raises(ValueError, match="perf.fp16_layers must be one of auto, on, off, got 'half'"):
        set_fp16_layers(source, "half")


def _phases():
    return {p["name"]: p for p in json.loads(PHASES.read_text())["phases"]}


@pytest.mark.parametrize("reg_step", ["separate", "joined"])
def test_lazy_r1_schedule_counts_steps_lr_and_betas_of_the_official_phases(one_thread, reg_step):
    fixture = json.loads(PHASES.read_text())
    phases, base = _phases(), fixture["base"]
    k = fixture["reg_intervals"]["D_reg_interval"]
    batches = fixture["batches"]
    run = _prepare(loss_cfg={"objective": "logistic", "r1_every": k, "reg_step": reg_step}, n_critic=4,
                   steps=batches // 4, critic_lr=base["lr"], betas=base["betas"])
    trainer, events = run.trainer, []
    opt, penalty = trainer.opt_critic, trainer._penalty
    step = opt.step
    opt.step = lambda *a, **kw: (events.append("step"), step(*a, **kw))[1]
    trainer._penalty = lambda *a: (events.append("reg"), penalty(*a))[1]
    run.fit()
    group = opt.param_groups[0]
    if reg_step == "separate":  # Dmain every minibatch, Dreg every k-th as a step of its own, one Adam
        assert events.count("step") == phases["Dmain"]["steps"] + phases["Dreg"]["steps"]
        assert events.count("reg") == phases["Dreg"]["steps"]
        assert events[:4] == ["step", "reg", "step", "step"]  # minibatch 0: the main step, then the reg step
        assert group["lr"] == pytest.approx(phases["Dreg"]["lr"], rel=1e-12)
        assert list(group["betas"]) == pytest.approx(phases["Dreg"]["betas"], rel=1e-12)
        assert phases["Dmain"]["optimizer"] == ["Dmain", "Dreg"]
    else:  # the penalty rides on the main step: no extra step, so no correction
        assert events.count("step") == phases["Dmain"]["steps"]
        assert events.count("reg") == phases["Dreg"]["steps"]
        assert group["lr"] == base["lr"] and list(group["betas"]) == pytest.approx(base["betas"])


def test_reg_step_is_validated():
    with pytest.raises(Exception, match="loss.reg_step"):
        _prepare(loss_cfg={"objective": "logistic", "reg_step": "both"})
