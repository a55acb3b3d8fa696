"""Data parallel and sharded frozen generators on the CPU: 2 gloo processes vs 1 process.

The 2-process runs start this file as a script (``python tests/test_distributed.py WORKER
ARGS``) with the environment torchrun would set (RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1, ...),
so every process goes through the same :func:`fastmine.distributed.setup` as a real launch.

Same global batch: each rank draws ``batch_size`` samples per step from its random
stream(s); the 1-process reference uses ``batch_size = 2 * b`` and ``dist.streams = 2``, so
it draws stream 0 and stream 1 (b each) and concatenates them: exactly the union of what
rank 0 and rank 1 draw (fastmine.distributed, "Random streams").
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve()
LAUNCH = HERE.parents[1] / "launch"
PER_RANK_BATCH = 8
STEPS = 4
# 8px DCGAN-style images (the MLP critic's checkpoints trip over its aliased `blocks`)
GEN_ARCH = {"type": "dcgan", "latent_dim": 8, "image_size": 8, "channels": 1, "width": 16, "norm": "batch"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker: str, args: dict, world: int = 2, timeout: float = 240, script: Path = HERE):
    """Start ``world`` processes of ``script``'s ``worker`` as torchrun would; return their outputs."""
    port = free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu",
                   TQDM_DISABLE="1")
        procs.append(subprocess.Popen([sys.executable, str(script), worker, json.dumps(args)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-4000:]}"
    return outs


# --------------------------------------------------------------------------- the runs
def make_problem():
    """A frozen random generator and 8px digit 9s (identical in every process)."""
    import fastmine as fm
    from fastmine.nets import build_generator

    torch.manual_seed(123)
    adapter = fm.GeneratorAdapter(build_generator(GEN_ARCH), {"z": ((8,), "normal")}, build={"arch": GEN_ARCH})
    target = fm.load_digits(labels=[9], limit=64, size=8)
    return adapter, target


def mine_run(run_dir, batch_size, steps=STEPS, accelerator=None, shard="none", resume=False, checkpoint_every=1000,
             ds_config=None, callbacks=()):
    import fastmine as fm
    from fastmine.config import ModelConfig

    adapter, target = make_problem()
    return fm.mine(adapter, target, model_cfg=ModelConfig(width=8), callbacks=callbacks, steps=steps,
                   batch_size=batch_size, n_critic=2, log_every=1, progress=False, sample_every=10_000,
                   checkpoint_every=checkpoint_every, device="cpu", seed=3, run_dir=run_dir, resume=resume,
                   accelerator=accelerator, dist_cfg={"streams": 2, "shard": shard, "deepspeed_config": ds_config},
                   miner_cfg={"init": "normal"})  # no inversion: its 700 optimiser steps amplify thread-count noise


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def trained_state(result):
    out = {f"miner.{k}": v.detach().clone() for k, v in result.sampler.miner.state_dict().items()}
    out |= {f"critic.{k}": v.detach().clone() for k, v in result.critic.state_dict().items()}
    return out


def assert_same_run(metrics_a, metrics_b, state_a, state_b):
    assert [r["step"] for r in metrics_a] == [r["step"] for r in metrics_b]
    for ra, rb in zip(metrics_a, metrics_b):
        for term in ("loss_critic", "loss_sampler", "penalty", "wasserstein"):
            assert ra[term] == pytest.approx(rb[term], rel=1e-4, abs=1e-6), (ra["step"], term, ra[term], rb[term])
    assert state_a.keys() == state_b.keys()
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


# --------------------------------------------------------------------------- workers
def worker_train(args):
    """One sharded (or replicated) mining run per mode; rank 0 stores the trained weights."""
    from fastmine import distributed
    from fastmine.config import DistConfig

    acc = distributed.setup(DistConfig(timeout_s=120), "cpu")
    report = {}
    for mode in args["modes"]:
        run_dir = Path(args["out"]) / mode
        trainers = []
        result = mine_run(run_dir, PER_RANK_BATCH, accelerator=acc, shard=mode,
                          ds_config=args.get("ds_config") if mode == "zero3" else None,
                          callbacks=[lambda trainer, step: trainers.append(trainer)])
        gen = result.sampler.generator.module
        gen_ids = {id(p) for p in gen.parameters()}
        opt = trainers[0].opt_sampler
        in_optimizer = [p for g in opt.param_groups for p in g["params"] if id(p) in gen_ids]
        with_state = [p for p in opt.state if id(p) in gen_ids]
        miner_grads = [p.grad for p in result.sampler.miner.parameters()]
        report[mode] = {
            "local_params": distributed.local_param_count(gen), "full_params": distributed.full_param_count(gen),
            "gen_grads_none": all(p.grad is None for p in gen.parameters()),
            "gen_requires_grad": any(p.requires_grad for p in gen.parameters()),
            "miner_grads_nonzero": all(g is not None and float(g.abs().sum()) > 0 for g in miner_grads),
            "sharded_kind": distributed.sharded_kind(gen),
            "gen_in_optimizer": len(in_optimizer) + len(with_state),
            "opt_state_params": len(opt.state), "miner_params": len(list(result.sampler.miner.parameters())),
        }
        if acc.process_index == 0:
            torch.save(trained_state(result), run_dir / "trained.pt")
    Path(args["out"], f"report-{acc.process_index}.json").write_text(json.dumps(report))


def worker_resume(args):
    """Continue a checkpointed run at this world size (sharded as asked)."""
    from fastmine import distributed
    from fastmine.config import DistConfig

    acc = distributed.setup(DistConfig(timeout_s=120), "cpu")
    result = mine_run(args["run_dir"], PER_RANK_BATCH, steps=args["steps"], accelerator=acc, shard=args["shard"],
                      resume=args["resume"], checkpoint_every=args["checkpoint_every"])
    if acc.process_index == 0:
        torch.save(trained_state(result), Path(args["run_dir"]) / "trained.pt")


def worker_timeout(args):
    """Rank 1 never joins the collective: rank 0 must raise after dist.timeout_s, not hang."""
    import time

    from fastmine import distributed
    from fastmine.config import DistConfig

    acc = distributed.setup(DistConfig(timeout_s=args["timeout_s"]), "cpu")
    if acc.process_index == 1:
        time.sleep(args["timeout_s"] + 4)  # alive (sockets open) past rank 0's timeout
        return
    t0 = time.perf_counter()
    try:
        torch.distributed.all_reduce(torch.ones(3))
    except Exception as e:  # gloo: "Timed out waiting ... for recv operation to complete"
        print(f"RAISED after {time.perf_counter() - t0:.1f}s: {type(e).__name__}")
        return
    raise SystemExit("the collective returned although rank 1 never joined")


# --------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The single-process run with the same global batch (2 * per-rank batch, 2 streams)."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    result = mine_run(run_dir, 2 * PER_RANK_BATCH)
    return read_metrics(run_dir), trained_state(result), result


def has_deepspeed():
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One 2-process launch runs every mode in turn (process start-up dominates the cost)."""
    out = tmp_path_factory.mktemp("dist")
    modes = ["none", "fsdp2"] + (["zero3"] if has_deepspeed() else [])
    # zero3 reads launch/deepspeed/zero3.json: the shipped file is the one tested
    run_ranks("train", {"out": str(out), "modes": modes, "ds_config": str(LAUNCH / "deepspeed" / "zero3.json")},
              timeout=600)
    return out


@pytest.mark.slow
def test_data_parallel_matches_one_process(reference, two_process_runs):
    ref_metrics, ref_state, _ = reference
    out = two_process_runs / "none"
    assert len(read_metrics(out)) == STEPS  # rank 0 alone writes metrics (one line per step)
    assert_same_run(read_metrics(out), ref_metrics, torch.load(out / "trained.pt"), ref_state)
    # the weights moved: equality is not two untrained copies
    first_layer = "critic.blocks.0.0.weight"
    assert not torch.allclose(ref_state[first_layer], torch.load(out / "trained.pt")[first_layer] * 0)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp2", "zero3"])
def test_sharded_generator_matches_unsharded(reference, two_process_runs, mode):
    if mode == "zero3" and not has_deepspeed():
        pytest.skip("DeepSpeed not installed: pip install 'fastmine[deepspeed]'")
    ref_metrics, ref_state, ref_result = reference
    out = two_process_runs / mode
    assert_same_run(read_metrics(out), ref_metrics, torch.load(out / "trained.pt"), ref_state)
    _check_shard_reports(two_process_runs, mode, ref_result)


def _check_shard_reports(folder, mode, ref_result):
    from fastmine import distributed

    full = distributed.full_param_count(ref_result.sampler.generator.module)
    reports = [json.loads((folder / f"report-{r}.json").read_text())[mode] for r in range(2)]
    for rep in reports:
        assert rep["sharded_kind"] == mode
        assert rep["full_params"] == full
        assert abs(rep["local_params"] - full / 2) <= 0.02 * full, (rep["local_params"], full)
        assert rep["gen_grads_none"] and not rep["gen_requires_grad"]  # frozen: no gradient buffers
        assert rep["gen_in_optimizer"] == 0 and rep["opt_state_params"] == rep["miner_params"]  # no optimizer state
        assert rep["miner_grads_nonzero"]  # gradients flowed through the sharded generator
    assert sum(r["local_params"] for r in reports) >= full  # nothing dropped (padding may add a little)


@pytest.mark.slow
def test_resume_across_world_sizes_and_export(tmp_path):
    """2 (fsdp2) -> 1 and 1 -> 2 (fsdp2) resumes reach the uninterrupted run's weights."""
    import fastmine as fm

    steps, half = 6, 3
    full_dir = tmp_path / "full"
    full = trained_state(mine_run(full_dir, 2 * PER_RANK_BATCH, steps=steps))

    a = tmp_path / "two_then_one"  # 2 sharded processes write the checkpoint at step 3
    run_ranks("resume", {"run_dir": str(a), "steps": half, "shard": "fsdp2", "resume": False, "checkpoint_every": half})
    ckpt = torch.load(sorted((a / "checkpoints").glob("*.state.pt"))[-1], weights_only=True)
    assert len(ckpt["rngs"]) == 2  # both ranks' streams
    from safetensors import safe_open

    with safe_open(str(sorted((a / "checkpoints").glob("*.safetensors"))[-1]), "pt") as f:
        assert not any(k.startswith("sampler.generator.") for k in f.keys())  # frozen, sharded: not saved
    resumed = trained_state(mine_run(a, 2 * PER_RANK_BATCH, steps=steps, resume=True))
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-4, atol=1e-6)

    b = tmp_path / "one_then_two"
    mine_run(b, 2 * PER_RANK_BATCH, steps=half, checkpoint_every=half)
    run_ranks("resume", {"run_dir": str(b), "steps": steps, "shard": "fsdp2", "resume": True, "checkpoint_every": 1000})
    resumed = torch.load(b / "trained.pt")
    for k in full:
        torch.testing.assert_close(resumed[k], full[k], rtol=1e-4, atol=1e-6)
    assert_same_run(read_metrics(b), read_metrics(full_dir), resumed, full)

    # the sharded run's export is one ordinary file: no process group needed to load it
    assert not torch.distributed.is_initialized()
    loaded = fm.load_sampler(b / "model.safetensors")
    source, _ = make_problem()
    for (k, v), (_, w) in zip(loaded.generator.module.state_dict().items(), source.module.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)  # the whole generator, gathered from its shards
    for k, v in loaded.miner.state_dict().items():
        torch.testing.assert_close(v, full[f"miner.{k}"], rtol=1e-4, atol=1e-6)
    assert loaded.sample(5, seed=0).shape == (5, 1, 8, 8)


@pytest.mark.slow
def test_collective_timeout_from_config():
    outs = run_ranks("timeout", {"timeout_s": 3}, timeout=120)
    assert "RAISED after" in outs[0], outs[0][-2000:]
    waited = float(outs[0].split("RAISED after ")[1].split("s")[0])
    assert 2.0 <= waited < 30, waited


def test_stream_layout_validates():
    from fastmine.distributed import stream_layout

    assert stream_layout(None, 1, 0, 16) == ([0], 16)  # one process: the trainer's single stream
    assert stream_layout(2, 1, 0, 16) == ([0, 1], 8)
    assert stream_layout(2, 2, 1, 8) == ([1], 8)
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        stream_layout(3, 2, 0, 8)
    with pytest.raises(ValueError, match="batch_size=7"):
        stream_layout(2, 1, 0, 7)


def test_shard_auto_follows_the_accelerate_launch_config():
    from types import SimpleNamespace

    from fastmine.distributed import resolve_shard

    acc = lambda **state: SimpleNamespace(state=SimpleNamespace(**state))
    assert resolve_shard("auto", acc(fsdp_plugin=object(), deepspeed_plugin=None)) == "fsdp2"
    assert resolve_shard("auto", acc(fsdp_plugin=None, deepspeed_plugin=SimpleNamespace(zero_stage=3))) == "zero3"
    assert resolve_shard("auto", acc(fsdp_plugin=None, deepspeed_plugin=SimpleNamespace(zero_stage=2))) == "none"
    assert resolve_shard("auto", None) == "none" and resolve_shard("fsdp2", None) == "fsdp2"
    with pytest.raises(ValueError, match="dist.shard must be one of"):
        resolve_shard("zero2", None)


def test_shard_needs_frozen_generator_and_process_group():
    import fastmine as fm

    adapter, target = make_problem()
    with pytest.raises(ValueError, match="needs a process group"):
        fm.mine(adapter, target, steps=1, batch_size=4, progress=False, device="cpu", dist_cfg={"shard": "fsdp2"})
    adapter, target = make_problem()
    with pytest.raises(ValueError, match="frozen generators only"):
        fm.train(adapter, target, method="transfergan", steps=1, batch_size=4, progress=False, device="cpu",
                 dist_cfg={"shard": "fsdp2"})


if __name__ == "__main__":
    globals()[f"worker_{sys.argv[1]}"](json.loads(sys.argv[2]))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
