"""A run can always be continued or restarted: signals stop it cleanly, a damaged checkpoint
falls back to an intact one, one writer per folder, and --resume keeps the run's settings."""
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

from fastmine.cli import main
from fastmine.runfolder import RunLock

# perf.threads=1 in every run: the child killed by a signal and the in-process runs must reduce alike
# (by default a run takes every CPU it may use, and OMP_NUM_THREADS is not set here)
TINY = ["perf.threads=1", "data.limit=64", "train.batch_size=8", "model.width=8", "model.latent_dim=8",
        "log.progress=false", "log.sample_every=1000", "device=cpu", *QUICK_INVERSION_ARGS]


def _pretrain(tmp_path, *extra):
    return main(["pretrain", f"out_dir={tmp_path / 'runs'}", *TINY, *extra])


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def _same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def reference(tmp_path):
    """An uninterrupted 8-step run."""
    assert _pretrain(tmp_path, "name=ref", "train.steps=8", "log.checkpoint_every=2") == 0
    return _weights(tmp_path / "runs" / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_at_the_next_step_and_resume_matches(tmp_path, sig, one_thread):
    assert _pretrain(tmp_path, "name=ref", "train.steps=40") == 0
    run = tmp_path / "runs" / "sig"
    cmd = [sys.executable, "-m", "fastmine.cli", "pretrain", f"out_dir={tmp_path / 'runs'}", "name=sig", *TINY,
           "train.steps=400", "log.log_every=1", "log.checkpoint_every=1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same reductions as this process's one thread
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.strip().count("\n") == 0 and f"stopped by {sig.name} after step" in err and "--resume" in err
    stopped = int(err.split("after step ")[1].split(";")[0])
    assert 2 <= stopped < 40, stopped  # stopped within a few steps, not at the end
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == stopped
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'runs'}", "name=sig", "train.steps=40"]) == 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 41))
    _same_weights(_weights(run), _weights(tmp_path / "runs" / "ref"))


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference, capsys):
    run = tmp_path / "runs" / "fb"
    assert _pretrain(tmp_path, "name=fb", "train.steps=6", "log.checkpoint_every=2") == 0
    ckpt = run / "checkpoints"
    assert sorted(p.name for p in ckpt.glob("ckpt-*.safetensors")) == ["ckpt-0000004.safetensors",
                                                                       "ckpt-0000006.safetensors"]
    data = (ckpt / "ckpt-0000006.safetensors").read_bytes()
    (ckpt / "ckpt-0000006.safetensors").write_bytes(data[: len(data) // 2])  # torn by a full disk
    (ckpt / ".ckpt-0000008.safetensors.tmp-99999").write_bytes(b"x" * 100)  # a write killed mid-way
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss_cri')  # a torn last line
    capsys.readouterr()
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'runs'}", "name=fb", "train.steps=8"]) == 0
    err = capsys.readouterr().err
    assert "step 6" in err and "resuming from the newest intact one, step 4" in err
    assert not list(ckpt.glob(".*.tmp-*"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [8]  # the torn line and step 6's row (after the fallback) dropped
    _same_weights(_weights(run), reference)  # steps 4..8 replayed on the checkpoint's random streams


def test_empty_latest_json_uses_the_newest_intact_files(tmp_path, reference):
    run = tmp_path / "runs" / "empty"
    assert _pretrain(tmp_path, "name=empty", "train.steps=6", "log.checkpoint_every=2") == 0
    (run / "checkpoints" / "latest.json").write_text("")
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'runs'}", "name=empty", "train.steps=8"]) == 0
    _same_weights(_weights(run), reference)


def test_a_run_without_checkpoint_resumes_from_step_zero(tmp_path, reference):
    from fastmine.apps.presets import COMMAND_DEFAULTS
    from fastmine.config import load_config
    from fastmine.runs import prepare

    over = [f"out_dir={tmp_path / 'runs'}", "name=early", *TINY, "train.steps=8", "log.checkpoint_every=2"]
    built = prepare(load_config(None, over, COMMAND_DEFAULTS["pretrain"]))  # died before its first step
    built.lock.release()
    assert not (tmp_path / "runs" / "early" / "checkpoints").exists()
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'runs'}", "name=early"]) == 0
    _same_weights(_weights(tmp_path / "runs" / "early"), reference)


def test_resume_refuses_other_settings_and_leaves_the_folder_as_it_was(tmp_path, capsys):
    run = tmp_path / "runs" / "keep"
    assert _pretrain(tmp_path, "name=keep", "train.steps=2", "data.labels=[8]") == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'runs'}", "name=keep", "data.labels=[9]",
                 "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data.labels was [8], now [9]" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # the run's own settings are the base: a shorter command line keeps digit 8
    assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'runs'}", "name=keep", "train.steps=3"]) == 0
    assert "- 8" in (run / "config.yaml").read_text() and "steps: 3" in (run / "config.yaml").read_text()
    history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert history == [{"resumed_with": {"train.steps": [2, 3]}}]


def test_one_writer_per_run_folder(tmp_path, capsys):
    run = tmp_path / "runs" / "busy"
    assert _pretrain(tmp_path, "name=busy", "train.steps=2") == 0
    lock = RunLock(run)  # another process's run holds it (flock is per open file)
    try:
        capsys.readouterr()
        assert main(["pretrain", "--resume", f"out_dir={tmp_path / 'runs'}", "name=busy", "train.steps=3"]) == 2
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    finally:
        lock.release()


def test_restart_replaces_a_run_and_keeps_what_fastmine_did_not_write(tmp_path):
    run = tmp_path / "runs" / "again"
    assert _pretrain(tmp_path, "name=again", "train.steps=2", "log.checkpoint_every=1") == 0
    (run / "stray.txt").write_text("x")
    assert (run / "checkpoints" / "ckpt-0000001.safetensors").is_file()
    assert _pretrain(tmp_path, "name=again", "--restart", "train.steps=3", "log.checkpoint_every=3") == 0
    assert (run / "stray.txt").read_text() == "x"  # the user's file
    assert not (run / "checkpoints" / "ckpt-0000001.safetensors").exists()  # the old run's
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3


@pytest.mark.parametrize("name", ["../outside", "/abs", ".", "a/b"])
def test_names_stay_inside_out_dir(tmp_path, name, capsys):
    assert main(["mine", f"out_dir={tmp_path / 'runs'}", f"name={name}"]) == 2
    assert "name must be a plain folder name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_model_files_get_the_umasks_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        assert _pretrain(tmp_path, "name=perm", "train.steps=1") == 0
    finally:
        os.umask(old)
    run = tmp_path / "runs" / "perm"
    for path in (run / "model.safetensors", run / "checkpoints" / "ckpt-0000001.safetensors", run / "config.yaml"):
        assert path.stat().st_mode & 0o777 == 0o644, path
