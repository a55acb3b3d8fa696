"""Resume: a run stopped mid-way (cleanly, or by SIGKILL at any moment) ends with the same
weights as an uninterrupted run (CPU, fixed seed)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from budgets import QUICK_INVERSION_ARGS
from safetensors.torch import load_file

# long enough that the kill lands mid-run: an update takes milliseconds here, start-up seconds
STEPS = 200
ARGS = ["data.size=8", "data.limit=40", f"train.steps={STEPS}", "train.batch_size=16", "train.n_critic=2",
        "log.checkpoint_every=4", "log.log_every=2", "log.sample_every=1000", "log.progress=false",
        "miner.layers=2", *QUICK_INVERSION_ARGS]


def _cmd(source, out, extra=()):
    return [sys.executable, "-m", "fastmine.cli", "mine", f"source.generator={source}", f"out_dir={out}",
            "name=run", *ARGS, *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    return env


def _weights(run):
    return load_file(str(run / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(digits_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    subprocess.run(_cmd(digits_source, out), check=True, env=_env(), timeout=600)
    return out / "run"


def _assert_same(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    la = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    for ra, rb in zip(la, lb):
        assert ra["loss_critic"] == rb["loss_critic"] and ra["loss_sampler"] == rb["loss_sampler"]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(digits_source, uninterrupted, tmp_path):
    proc = subprocess.Popen(_cmd(digits_source, tmp_path), env=_env())
    latest = tmp_path / "run" / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["step"] >= 8:
            time.sleep(0.02)  # land somewhere between checkpoints, possibly mid-write
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert 8 <= killed_at < STEPS
    assert not (tmp_path / "run" / "model.safetensors").exists()
    subprocess.run(_cmd(digits_source, tmp_path, ["--resume"]), check=True, env=_env(), timeout=600)
    _assert_same(tmp_path / "run", uninterrupted)


@pytest.mark.slow
def test_resume_after_clean_stop_matches_uninterrupted(digits_source, uninterrupted, tmp_path):
    # the same run first configured for 20 of its steps, then resumed with its full length
    subprocess.run(_cmd(digits_source, tmp_path, ["train.steps=20"]), check=True, env=_env(), timeout=600)
    subprocess.run(_cmd(digits_source, tmp_path, ["--resume"]), check=True, env=_env(), timeout=600)
    _assert_same(tmp_path / "run", uninterrupted)
