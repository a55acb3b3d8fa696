"""`fastmine bench` and its eager reference (benchmarks/reference.py).

The reference is only a yardstick if it trains the same thing: from the same weights and
the same random numbers it must log the same losses as fastmine. In float64 every rounding
difference between the two (on CUDA one critic pass over [real, fake] against two, re-run
candidates against gathered scores) stays far below 1e-9, so a real difference in the
math — a missing term, another ε, an optimizer that skips a parameter — shows up.
"""
import json
import subprocess
import sys

import pytest
import torch

from fastmine_benchmarks import bench_step
from fastmine_benchmarks.reference import reference_gradient_penalty

TINY = {"image_size": 16, "width": 8}


@pytest.mark.parametrize("name, variant", [
    ("single-b64", []),
    ("single-b64", ["train.channels_last=false"]),  # the CPU's default is channels_last
    ("single-b64", ["train.fused_adam=true"]),
    # compiled sampler and critic loss passes; the penalty's double backward stays eager
    ("single-b64", ["train.compile=first_order"]),
    # a generator none of whose candidates is chosen gets a zero gradient, so Adam still
    # moves its miner on momentum, as the loss over every candidate does (it did not: found here)
    ("multi-n4", []),
    ("multi-n4", ["train.selector_rule=max"]),
    ("multi-n4", ["train.selection_path=naive"]),
])
def test_fastmine_logs_the_references_losses_in_float64(one_thread, name, variant):
    from torch._dynamo.utils import counters

    counters.clear()
    res = bench_step.numerics_check({"name": name, **TINY}, "cpu", steps=12, dtype="float64", variant=variant)
    assert res["max_rel_diff"] < 1e-9, res
    if "train.compile=first_order" in variant:  # it did compile, whole: the sampler with and without
        # grad, the critic with its weights trainable and frozen
        assert counters["stats"]["unique_graphs"] >= 4 and not counters["graph_break"], dict(counters)


def test_float32_runs_agree_closely(one_thread):
    res = bench_step.numerics_check({"name": "multi-n4", **TINY}, "cpu", steps=8, dtype="float32")
    assert res["max_rel_diff"] < 1e-2, res


def test_reference_penalty_matches_fastmine_and_a_finite_difference():
    from fastmine.losses import gradient_penalty
    from fastmine.nets import DCGANCritic

    torch.manual_seed(0)
    critic = DCGANCritic(image_size=8, channels=1, width=4).double()
    real, fake = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randn(5, 1, 8, 8, dtype=torch.float64)
    eps = torch.rand(5, dtype=torch.float64)
    ref = reference_gradient_penalty(critic, real, fake, eps)
    ours, _ = gradient_penalty(critic, real, fake, weight=1.0, eps=eps, impl="torch")
    assert torch.allclose(ref, ours, rtol=1e-12)
    # the norm the penalty uses is the input gradient's: check one sample by central differences
    x = (eps[0] * real[0] + (1 - eps[0]) * fake[0])[None]
    g = torch.autograd.functional.jacobian(lambda v: critic(v).sum(), x).flatten()
    h, d = 1e-6, torch.zeros_like(x).flatten()
    for i in range(d.numel()):
        e = torch.zeros_like(d)
        e[i] = h
        d[i] = (critic(x + e.view_as(x)).sum() - critic(x - e.view_as(x)).sum()) / (2 * h)
    assert torch.allclose(g, d, atol=1e-7)


def test_bf16_autocast_follows_the_fp32_curves(one_thread):
    res = bench_step.bf16_check({"name": "single-b64", **TINY}, "cpu", steps=30, window=10)
    assert res["max_rel_l2"] < 0.1, res


def test_unknown_amp_setting_is_refused():
    with pytest.raises(ValueError, match="train.amp must be one of none, bf16"):
        bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu", ["train.amp=fp8"])


def test_channels_last_defaults_to_the_cpu_and_refuses_other_values():
    assert bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu").channels_last
    assert not bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu", ["train.channels_last=false"]).channels_last
    with pytest.raises(ValueError, match="train.channels_last must be true, false or null"):
        bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu", ["train.channels_last=auto"])


def test_a_trained_sampler_comes_back_in_the_default_layout(one_thread):
    # the CPU trains channels_last; what the user gets back must not be: `sample.view(n, -1)`
    # fails on an NHWC tensor (3 channels here: with one, NHWC and NCHW strides coincide)
    trainer = bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu", ["train.steps=1", "train.progress=false"])
    weights = lambda: [p for m in (trainer.sampler, trainer.critic) for p in m.parameters() if p.dim() == 4]
    assert not any(p.is_contiguous() for p in weights())  # trained NHWC
    trainer.fit()
    assert all(p.is_contiguous() for p in weights())
    with torch.no_grad():
        assert trainer.sampler(trainer.sampler.draw_seeds(4)).view(4, -1).shape == (4, 3 * 16 * 16)


def test_compile_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="train.compile must be one of none, sampler, first_order"):
        bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu", ["train.compile=true"])
    with pytest.raises(ValueError, match="multi-generator sampler picks candidates"):
        bench_step.build_fastmine({"name": "multi-n4", **TINY}, "cpu", ["train.compile=sampler"])


def test_count_work_counts_flops_and_bytes_of_a_known_step():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(32, 16)
    # forward 2·B·in·out; backward the same for the weight gradient, and again for the input's
    assert bench_step.count_work(lambda: lin(x).sum().backward())["flops_per_update"] == 2 * 2 * 32 * 16 * 8
    x.requires_grad_(True)
    assert bench_step.count_work(lambda: lin(x).sum().backward())["flops_per_update"] == 3 * 2 * 32 * 16 * 8
    a, b, c = torch.randn(1000), torch.randn(1000), torch.randn(1)
    assert bench_step.count_work(lambda: a + b)["bytes_per_update"] == 3 * 4000
    # a broadcast operand is read from its storage (4 bytes), a view moves nothing
    assert bench_step.count_work(lambda: a + c.expand(1000))["bytes_per_update"] == 4000 + 4 + 4000
    assert bench_step.count_work(lambda: a.view(10, 100))["bytes_per_update"] == 0


def test_both_sides_do_the_same_convolutions_on_the_cpu(one_thread):
    trainer = bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu")
    ref = bench_step.build_reference(bench_step.build_fastmine({"name": "single-b64", **TINY}, "cpu"))
    # the reference keeps the default memory format when fastmine runs channels_last (the CPU's default)
    conv = next(p for p in trainer.critic.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(p.is_contiguous() for m in (*ref.samplers, ref.critic) for p in m.parameters())
    ours, theirs = bench_step.count_work(bench_step._stepper("fastmine", trainer)), bench_step.count_work(ref.step)
    assert ours["flops_per_update"] == theirs["flops_per_update"] > 0


def _bench(args, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "fastmine.cli", "bench", *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    return proc, (json.loads(out.read_text()) if out.is_file() else None)


def test_bench_command_writes_a_row_per_config_and_variant(tmp_path):
    proc, res = _bench(["--configs", "multi-n4", "--image-size", "16", "--width", "8", "--warmup", "1", "--steps", "1",
                        "--reps", "1", "--device", "cpu", "--variant", "train.gp_every=4", "--profile"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = res["rows"]
    assert [(r["config"], r["variant"]) for r in rows] == [("multi-n4", "default"), ("multi-n4", "train.gp_every=4")]
    for r in rows:
        assert r["reference_ms"] > 0 and r["fastmine_ms"] > 0
        # one rep: the paired speed-up is the one block ratio (blocks are stored to 0.01 ms)
        assert r["speedup"] == pytest.approx(r["reference_ms"] / r["fastmine_ms"], rel=1e-3)
        assert r["reference_peak_bytes"] > 0 and r["fastmine_peak_bytes"] > 0
    assert rows[0]["numerics"]["float64"]["max_rel_diff"] < 1e-9
    assert res["meta"]["device"] == "cpu" and res["meta"]["sizes"]
    assert "| multi-n4 | default |" in proc.stdout
    prof = rows[0]["profile"]
    assert prof["device"]["matmul_tflops"] > 0 and prof["device"]["copy_gbps"] > 0
    for side in ("reference", "fastmine"):  # where the time goes: convolutions dominate these DCGANs
        assert prof[side]["ops_per_update"] > 100
        assert any("conv" in t["name"] for t in prof[side]["top"][:3])
        r = prof[side]["rates"]
        assert prof[side]["timed_ms"] == rows[0][f"{side}_ms"]
        assert r["tflops"] == pytest.approx(prof[side]["flops_per_update"] / rows[0][f"{side}_ms"] / 1e9)
        assert 0 < r["matmul_fraction"] < 1 and r["copy_fraction"] > 0
    # the fast path scores the N·K candidates without autograd: fewer FLOPs than the reference
    assert prof["fastmine"]["flops_per_update"] < prof["reference"]["flops_per_update"]
    assert "% of the matmul ceiling" in proc.stdout
    assert "### multi-n4" in proc.stdout


def test_bench_takes_a_users_mining_config(tmp_path, digits_source):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"method: minegan_noft\nsource: {{generator: {digits_source}}}\n"
                   "data: {dataset: digits, labels: [9], limit: 50, size: 8}\ntrain: {batch_size: 16}\n")
    proc, res = _bench([str(cfg), "train.n_critic=2", "--warmup", "1", "--steps", "1", "--reps", "1",
                        "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = res["rows"]
    assert row["config"] == "mine" and row["numerics"]["float64"]["max_rel_diff"] < 1e-9
    assert not (tmp_path / "runs").exists()  # benchmarking writes no run folder


def test_bench_refuses_a_method_that_trains_the_generator(tmp_path, digits_source):
    proc, res = _bench(["method=transfergan", f"source.generator={digits_source}", "--device", "cpu"], tmp_path)
    assert proc.returncode == 2 and res is None
    assert "times mining steps" in proc.stderr and "transfergan" in proc.stderr
