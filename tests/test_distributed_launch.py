"""`fastmine mine` launched the way launch/ says: torchrun on one "node", two torchrun "nodes"
on 127.0.0.1, a rank SIGKILLed mid-run (the job must end, naming the rank) and the resume.

Tiny settings: 8px digits, a small frozen DCGAN source, CPU and gloo, 2 processes at most.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
CLI = ["-m", "fastmine.cli", "mine"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env():
    return dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", DS_ACCELERATOR="cpu")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A frozen 8px generator file, as `fastmine pretrain` would write (untrained: speed)."""
    import torch

    import fastmine as fm
    from fastmine.config import ModelConfig

    torch.manual_seed(0)
    data = fm.load_digits(labels=[9], limit=8, size=8)
    path = tmp_path_factory.mktemp("source") / "source.safetensors"
    fm.save_sampler(path, fm.Sampler(fm.new_generator(data, ModelConfig(latent_dim=16, width=8))))
    return path


def mine_args(source, out, name, steps, batch_size, **extra):
    args = {"source.generator": source, "data.size": 8, "data.limit": 64, "out_dir": out, "name": name,
            "device": "cpu", "model.width": 8, "train.steps": steps, "train.batch_size": batch_size,
            "train.n_critic": 1, "dist.streams": 2, "log.progress": "false", "log.log_every": 1,
            "log.checkpoint_every": 3, "log.sample_every": 100_000, "dist.timeout_s": 60} | extra
    return [f"{k}={v}" for k, v in args.items()]


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def check_same_losses(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for term in ("loss_critic", "loss_sampler", "penalty"):
            assert ra[term] == pytest.approx(rb[term], rel=1e-4, abs=1e-6), (ra["step"], term)


@pytest.fixture(scope="module")
def single_process_run(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    p = subprocess.run([sys.executable, *CLI, *mine_args(source, out, "one", 6, 16)], env=env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return out / "one"


@pytest.mark.slow
def test_torchrun_one_node_two_processes_sharded(source, single_process_run, tmp_path):
    port = free_port()
    cmd = [*TORCHRUN, "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={port}",
           *CLI, *mine_args(source, tmp_path, "two", 6, 8, **{"dist.shard": "fsdp2"})]
    p = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    check_same_losses(metrics(tmp_path / "two"), metrics(single_process_run))
    import fastmine as fm

    sampler = fm.load_sampler(tmp_path / "two" / "model.safetensors")  # one ordinary file
    assert sampler.sample(3, seed=0).shape == (3, 1, 8, 8)


@pytest.mark.slow
def test_torchrun_two_nodes_on_loopback(source, single_process_run, tmp_path):
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        cmd = [*TORCHRUN, "--nnodes=2", f"--node-rank={node_rank}", "--nproc-per-node=1",
               "--master-addr=127.0.0.1", f"--master-port={port}", *CLI, *mine_args(source, tmp_path, "nodes", 6, 8)]
        procs.append(subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    check_same_losses(metrics(tmp_path / "nodes"), metrics(single_process_run))


def _worker_pids(agent_pid):
    """{RANK: pid} of the workers torchrun started (read from /proc)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != agent_pid:
                continue
            environ = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(d.name)
    return found


@pytest.mark.slow
def test_killed_rank_ends_the_job_and_resume_completes(source, tmp_path):
    port = free_port()
    launch = [*TORCHRUN, "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={port}",
              "--max-restarts=0"]
    run = tmp_path / "killed"
    p = subprocess.Popen([*launch, *CLI, *mine_args(source, tmp_path, "killed", 100_000, 8)], env=env(), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        latest = run / "checkpoints" / "latest.json"
        deadline = time.monotonic() + 240
        while not latest.is_file():
            assert p.poll() is None, p.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        pids = _worker_pids(p.pid)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        out = p.communicate(timeout=60)[0]  # bounded: a hang fails the test here
        waited = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert waited < 60
    # torchrun's summary names the dead worker: "rank : 1 (local_rank: 1)" and SIGKILL
    assert "rank      : 1" in out or "rank: 1" in out, out[-3000:]
    assert "SIGKILL" in out or "exitcode  : -9" in out, out[-3000:]

    step = json.loads(latest.read_text())["step"]
    target = step + 3
    p = subprocess.run([*TORCHRUN, "--nnodes=1", "--nproc-per-node=2", "--master-addr=127.0.0.1",
                        f"--master-port={free_port()}", *CLI,
                        *mine_args(source, tmp_path, "killed", target, 8), "--resume"],
                       env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = metrics(run)
    assert rows[-1]["step"] == target and [r["step"] for r in rows] == list(range(1, target + 1))
    assert (run / "model.safetensors").is_file()


@pytest.mark.parametrize("name,kind", [("single_device", "NO"), ("multi_gpu", "MULTI_GPU"), ("multi_node", "MULTI_GPU"),
                                       ("fsdp", "FSDP"), ("deepspeed_zero3", "DEEPSPEED")])
def test_accelerate_yamls_load(name, kind):
    """GPU launches cannot run here: check that Accelerate itself accepts each file."""
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ROOT / "launch" / "accelerate" / f"{name}.yaml"))
    assert str(cfg.distributed_type).split(".")[-1] == kind
    if kind == "DEEPSPEED":
        ds_file = ROOT / cfg.deepspeed_config["deepspeed_config_file"]
        assert json.loads(ds_file.read_text())["zero_optimization"]["stage"] == 3
        assert (ROOT / cfg.deepspeed_config["deepspeed_hostfile"]).is_file()


def test_launch_scripts_parse():
    for script in ("launch/slurm/mine.sbatch", "launch/torchrun.sh"):
        p = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    out = subprocess.run(["bash", str(ROOT / "launch/torchrun.sh")], capture_output=True, text=True).stdout
    assert "usage:" in out


def test_shipped_configs_are_valid():
    from fastmine.config import load_config

    cfg = load_config(ROOT / "launch" / "configs" / "mine_1b.yaml")
    assert cfg.dist.shard == "fsdp2" and cfg.dist.streams == 2
    assert (cfg.log.checkpoint_every, cfg.log.sample_every) == (100, 100_000)


@pytest.mark.slow
def test_mine_multi_with_two_processes_all_reduces_the_selector(source, tmp_path):
    """Two ranks mine two generators: every minibatch's win counts in the selector window
    cover both ranks' supersamples (K per rank x 2 ranks), and rank 0 alone writes the run."""
    from safetensors.torch import load_file

    args = mine_args(source, tmp_path, "multi", steps=3, batch_size=4, **{"multi.window": 50})
    args = [a for a in args if not a.startswith(("source.generator=", "dist.streams="))]
    cmd = [*TORCHRUN, "--nproc-per-node=2", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
           "-m", "fastmine.cli", "mine-multi", f"source.generators=[{source},{source}]", *args]
    out = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "multi"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]  # one writer
    window = load_file(str(run / "model.safetensors"))["selector_window"]
    rows = window[window.sum(1) > 0]
    assert len(rows) >= 3
    assert torch_equal_all(rows.sum(1), 2 * 4.0)
    pi = json.loads((run / "selector.json").read_text())["selector_probs"]
    assert abs(sum(pi) - 1) < 1e-6


def torch_equal_all(values, expected):
    return bool((values == expected).all())
