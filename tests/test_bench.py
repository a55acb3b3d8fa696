"""`fastmine bench` and its eager reference (benchmarks/reference.py).

The reference is only a yardstick if it trains the same thing: from the same weights and
the same random numbers it must log the same losses as fastmine. In float64 every rounding
difference between the two (on CUDA one critic pass over [real, fake] against two, re-run
candidates against gathered scores) stays far below 1e-9, so a real difference in the
math — a missing term, another ε, an optimizer that skips a parameter — shows up.
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from fastmine.config import ConfigError
from fastmine.losses import gradient_penalty
from fastmine.nets import DCGANCritic
from fastmine_benchmarks import (
    bench_multi,
    bench_sharded,
    bench_toolkit,
    common,
    step_configs,
    step_profile,
    step_replay,
    step_timing,
)
from fastmine_benchmarks.reference import reference_gradient_penalty

TINY = {"image_size": 16, "width": 8}
SCHEMA = {"device", "versions", "date", "config", "results"}


@pytest.mark.parametrize("name, variant", [
    ("single-b64", []),
    ("single-b64", ["perf.channels_last=false"]),  # the CPU's default is channels_last
    ("single-b64", ["perf.fused_adam=true"]),
    # compiled sampler and critic loss passes; the penalty's double backward stays eager
    ("single-b64", ["perf.compile=first_order"]),
    # a generator none of whose candidates is chosen gets a zero gradient, so Adam still
    # moves its miner on momentum, as the loss over every candidate does (it did not: found here)
    ("multi-n4", []),
    ("multi-n4", ["multi.rule=max"]),
    ("multi-n4", ["multi.path=naive"]),
    # a StyleGAN2 source mined in w+ against its discriminator (whose minibatch-std layer mixes samples)
    ("stylegan2-wplus-b16", []),
])
def test_fastmine_logs_the_references_losses_in_float64(one_thread, name, variant):
    counters.clear()
    res = step_replay.numerics_check({"name": name, **TINY}, "cpu", steps=12, dtype="float64", variant=variant)
    assert res["max_rel_diff"] < 1e-9, res
    if "perf.compile=first_order" in variant:  # it did compile, whole: the sampler with and without
        # grad, the critic with its weights trainable and frozen
        assert counters["stats"]["unique_graphs"] >= 4 and not counters["graph_break"], dict(counters)


def test_float32_runs_agree_closely(one_thread):
    res = step_replay.numerics_check({"name": "multi-n4", **TINY}, "cpu", steps=8, dtype="float32")
    assert res["max_rel_diff"] < 1e-2, res


def test_reference_penalty_matches_fastmine_and_a_finite_difference():
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
    res = step_replay.bf16_check({"name": "single-b64", **TINY}, "cpu", steps=30, window=10)
    assert res["max_rel_l2"] < 0.1, res


def test_count_work_counts_flops_and_bytes_of_a_known_step():
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(32, 16)
    # forward 2·B·in·out; backward the same for the weight gradient, and again for the input's
    assert step_profile.count_work(lambda: lin(x).sum().backward())["flops_per_update"] == 2 * 2 * 32 * 16 * 8
    x.requires_grad_(True)
    assert step_profile.count_work(lambda: lin(x).sum().backward())["flops_per_update"] == 3 * 2 * 32 * 16 * 8
    a, b, c = torch.randn(1000), torch.randn(1000), torch.randn(1)
    assert step_profile.count_work(lambda: a + b)["bytes_per_update"] == 3 * 4000
    # a broadcast operand is read from its storage (4 bytes), a view moves nothing
    assert step_profile.count_work(lambda: a + c.expand(1000))["bytes_per_update"] == 4000 + 4 + 4000
    assert step_profile.count_work(lambda: a.view(10, 100))["bytes_per_update"] == 0


def test_both_sides_do_the_same_convolutions_on_the_cpu(one_thread):
    trainer = step_configs.build_fastmine({"name": "single-b64", **TINY}, "cpu")
    ref = step_configs.build_reference(step_configs.build_fastmine({"name": "single-b64", **TINY}, "cpu"))
    # the reference keeps the default memory format when fastmine runs channels_last (the CPU's default)
    conv = next(p for p in trainer.critic.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(p.is_contiguous() for m in (*ref.samplers, ref.critic) for p in m.parameters())
    ours = step_profile.count_work(step_timing.stepper("fastmine", trainer))
    theirs = step_profile.count_work(ref.step)
    assert ours["flops_per_update"] == theirs["flops_per_update"] > 0


@pytest.mark.parametrize("name, method", [("fuse-n2", "fuse"), ("conditional-b64", "pretrain_conditional")])
def test_builtin_fusion_and_conditional_configs_build_through_the_builder(name, method):
    spec = {"name": name, **TINY}
    trainer = step_configs.build_fastmine(spec, "cpu")
    assert trainer.cfg.method == method and trainer.run_dir is None  # runs.prepare(write=False): no run folder
    assert [g.name for g in trainer.groups] == ["generator"]  # what trains: a generator, no miner
    assert not step_configs.has_reference(spec)
    with pytest.raises(ValueError, match="the eager reference mines"):
        step_configs.build_reference(trainer)


def test_a_users_conditional_pretraining_config_gets_its_commands_defaults_and_no_reference():
    spec = {"label": "c", "config": None,
            "overrides": ["method=pretrain_conditional", "data.size=8", "data.limit=64", "model.width=8"]}
    step_configs.check_spec(spec, "cpu")
    assert not step_configs.has_reference(spec)
    cfg = step_configs.build_fastmine(spec, "cpu").cfg
    assert cfg.data.labels == list(range(9))  # `fastmine pretrain`'s data, not `fastmine mine`'s nines


def test_variants_of_builtin_configs_take_the_new_sections_only():
    spec = {"name": "single-b64", **TINY}
    cfg = step_configs.builtin_config(spec, "cpu", ["loss.gp_every=4", "perf.channels_last=false"])
    assert cfg.loss.gp_every == 4 and cfg.perf.channels_last is False
    with pytest.raises(ConfigError, match="'train.gp_every' is now 'loss.gp_every'"):
        step_configs.check_spec(spec, "cpu", [["train.gp_every=4"]])
    with pytest.raises(ValueError, match="variants of the built-in configurations set keys of"):
        step_configs.check_spec(spec, "cpu", [["data.size=8"]])
    with pytest.raises(ConfigError, match="perf.amp"):  # checked before any process starts
        step_configs.check_spec(spec, "cpu", [["perf.amp=fp8"]])


def test_result_files_share_one_layout(tmp_path):
    path = common.write_result(tmp_path / "r.json", device=common.device_info("cpu", 1), config={"a": 1},
                               results=[{"x": 1}])
    doc = json.loads(path.read_text())
    assert set(doc) == SCHEMA and doc["results"] == [{"x": 1}] and doc["config"] == {"a": 1}
    assert doc["device"]["type"] == "cpu" and doc["versions"]["torch"] == torch.__version__


def test_bench_multi_times_both_selection_paths(tmp_path, one_thread):
    job = {"device": "cpu", "n": 2, "k": 8, "size": 16, "width": 8, "latent": 16, "reps": 1, "threads": 1,
           "result_dir": str(tmp_path)}
    for path in ("naive", "fast"):
        bench_multi.child(dict(job, path=path))
        res = json.loads((tmp_path / "rank0.json").read_text())
        assert res["median_s"] > 0 and res["peak_bytes"] >= 0


def _bench(args, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "fastmine.cli", "bench", *args, "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    return proc, (json.loads(out.read_text()) if out.is_file() else None)


def test_bench_command_writes_a_row_per_config_and_variant(tmp_path):
    proc, res = _bench(["--configs", "multi-n4", "--image-size", "16", "--width", "8", "--warmup", "1", "--steps", "1",
                        "--reps", "1", "--device", "cpu", "--variant", "loss.gp_every=4", "--profile"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(res) == SCHEMA
    rows = res["results"]
    assert [(r["config"], r["variant"]) for r in rows] == [("multi-n4", "default"), ("multi-n4", "loss.gp_every=4")]
    for r in rows:
        assert r["reference_ms"] > 0 and r["fastmine_ms"] > 0
        # one rep: the paired speed-up is the one block ratio (blocks are stored to 0.01 ms)
        assert r["speedup"] == pytest.approx(r["reference_ms"] / r["fastmine_ms"], rel=1e-3)
        assert r["speedup_verdict"] == "too few blocks" and r["speedup_ci"] == [None, None]
        assert r["reference_peak_bytes"] > 0 and r["fastmine_peak_bytes"] > 0
    assert rows[0]["numerics"]["float64"]["max_rel_diff"] < 1e-9
    assert res["device"]["type"] == "cpu" and res["config"]["sizes"]
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


def test_bench_times_fusion_and_conditional_pretraining_alone(tmp_path):
    proc, res = _bench(["--configs", "fuse-n2", "conditional-b64", "--image-size", "16", "--width", "8",
                        "--warmup", "1", "--steps", "1", "--reps", "1", "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = res["results"]
    assert [r["config"] for r in rows] == ["fuse-n2", "conditional-b64"]
    for r in rows:
        assert not r["reference"] and "error" not in r and "numerics" not in r
        assert r["fastmine_ms"] > 0 and r["fastmine_peak_bytes"] > 0
        assert r["reference_ms"] != r["reference_ms"]  # NaN: no reference side
    assert proc.stdout.count("no eager reference: fastmine timed alone") == 2


def test_bench_takes_a_users_mining_config(tmp_path, digits_source):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(f"method: minegan_noft\nsource: {{generator: {digits_source}}}\n"
                   "data: {dataset: digits, labels: [9], limit: 50, size: 8}\ntrain: {batch_size: 16}\n")
    proc, res = _bench([str(cfg), "train.n_critic=2", "--warmup", "1", "--steps", "1", "--reps", "1",
                        "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = res["results"]
    assert row["config"] == "mine" and row["numerics"]["float64"]["max_rel_diff"] < 1e-9
    assert not (tmp_path / "runs").exists()  # benchmarking writes no run folder


def test_bench_refuses_a_method_that_trains_the_generator(tmp_path, digits_source):
    proc, res = _bench(["method=transfergan", f"source.generator={digits_source}", "--device", "cpu"], tmp_path)
    assert proc.returncode == 2 and res is None
    assert "trains the generator" in proc.stderr and "transfergan" in proc.stderr


def test_bench_refuses_an_old_config_key_before_running_anything(tmp_path):
    proc, res = _bench(["--configs", "single-b64", "--variant", "train.gp_every=4", "--device", "cpu"], tmp_path)
    assert proc.returncode == 2 and res is None
    assert "'train.gp_every' is now 'loss.gp_every'" in proc.stderr


def test_every_stored_result_file_has_the_shared_layout():
    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    files = sorted(results.glob("*.json"))
    assert files
    for path in files:
        doc = json.loads(path.read_text())
        assert list(doc) == ["device", "versions", "date", "config", "results"], path.name
        assert doc["results"] and re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["date"]), path.name


def test_bench_toolkit_times_each_augmentation_and_regularizer(tmp_path, one_thread):
    bench_toolkit.main(["--calls", "1", "--reps", "1", "--image-size", "8", "--batch", "8",
                        "--out", str(tmp_path / "t.json")])
    rows = json.loads((tmp_path / "t.json").read_text())["results"]
    assert [r["part"] for r in rows] == ["augment diffaugment", "augment ada p=0.5", "regularize ewc",
                                         "regularize cdc"]
    assert all(r["ms"] > 0 and r["ratio"] == pytest.approx(r["ms"] / r["against_ms"]) for r in rows)


@pytest.mark.slow
def test_bench_sharded_measures_every_phase_and_compares_the_exports(tmp_path):
    bench_sharded.main(["--arch", "tiny", "--modes", "none", "fsdp2", "--steps", "3", "--workdir",
                        str(tmp_path / "work"), "--out", str(tmp_path / "s.json")])
    rows = json.loads((tmp_path / "s.json").read_text())["results"]
    assert [(r["mode"], r["rank"]) for r in rows] == [("none", 0), ("fsdp2", 0), ("fsdp2", 1)]
    for r in rows[1:]:
        assert set(r["peak_rss_bytes"]) == set(bench_sharded.PHASES) and min(r["peak_rss_bytes"].values()) > 0
        assert r["local_params"] * 2 == r["full_params"] == rows[0]["full_params"]
        assert r["export_vs_first_mode"]["same_header"] and r["export_vs_first_mode"]["generator_identical"]
        assert r["export_vs_first_mode"]["trained_max_abs_diff"] < 1e-5
        assert r["last_metrics"]["loss_sampler"] == pytest.approx(rows[0]["last_metrics"]["loss_sampler"], rel=1e-4)
    assert not (tmp_path / "work").exists()  # several GB at full size: removed unless --keep


def test_speedup_is_the_ratio_of_medians_not_the_median_of_pair_ratios():
    ref, fm = [2.0, 1.0, 3.0, 1.0, 2.0], [1.0, 2.0, 2.0, 2.0, 1.5]  # pair ratios 2, .5, 1.5, .5, 1.33: median 1.33
    s = step_timing.speedup(ref, fm)
    assert s["speedup"] == pytest.approx(2.0 / 2.0) and s["verdict"] == "too few blocks" and s["ci_low"] is None
    assert step_timing.describe_speedup(s) == "1.00x (too few blocks: 5 < 9)"


def test_speedup_interval_says_faster_slower_or_inconclusive():
    rng = np.random.default_rng(0)
    base = 1 + 0.05 * rng.standard_normal(11)
    fast = step_timing.speedup(2 * base, base[::-1])
    assert fast["verdict"] == "faster" and 1 < fast["ci_low"] <= fast["speedup"] <= fast["ci_high"]
    slow = step_timing.speedup(base, 2 * base[::-1], paired=False)
    assert slow["verdict"] == "slower" and slow["ci_high"] < 1
    noisy = step_timing.speedup(base, base[::-1])
    assert noisy["verdict"] == "inconclusive" and noisy["ci_low"] <= 1 <= noisy["ci_high"]
    assert step_timing.describe_speedup(noisy).endswith("] inconclusive")
    assert step_timing.speedup(base, base[::-1]) == noisy  # a fixed bootstrap seed: the same interval
