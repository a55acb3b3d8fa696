"""Runs stream to experiment trackers through Accelerate: TensorBoard's own reader parses what
was written, and the numbers are metrics.jsonl's."""
import json

import pytest
import torch

import fastmine as fm
from fastmine.config import ConfigError

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

TINY = dict(steps=4, log_every=2, sample_every=2, batch_size=8, progress=False,
            model_cfg={"width": 8, "latent_dim": 8})


def _events(run_dir):
    files = sorted((run_dir / "trackers").rglob("events.out.tfevents.*"), key=lambda p: len(p.parts))
    assert files, "no event file"
    acc = EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_every_logged_row_and_grid(tmp_path, one_thread):
    data = fm.load_digits(labels=[0, 1], size=8, limit=64)
    fm.train(None, data, method="scratch", run_dir=tmp_path / "run", trackers=["tensorboard"], **TINY)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = _events(tmp_path / "run")
    for term in ("loss_critic", "loss_sampler", "penalty", "wasserstein", "grad_norm"):
        logged = [(e.step, e.value) for e in events.Scalars(term)]
        assert [s for s, _ in logged] == [r["step"] for r in rows] == [2, 4]
        for (_, value), row in zip(logged, rows):
            assert value == pytest.approx(row[term], rel=1e-6)  # TensorBoard keeps float32
    images = events.Images("samples")
    assert [i.step for i in images] == [2, 4] and images[0].width == images[0].height > 8


def test_the_selector_goes_out_one_scalar_per_generator(tmp_path, one_thread):
    torch.manual_seed(0)
    gens = [fm.new_generator(torch.zeros(1, 1, 8, 8), fm.RunConfig().model) for _ in range(2)]
    target = fm.load_digits(labels=[3], size=8, limit=40)
    result = fm.mine_multi(gens, target, run_dir=tmp_path / "multi", trackers=["tensorboard"], window=20,
                           model_cfg={"width": 8}, **{k: v for k, v in TINY.items() if k != "model_cfg"})
    events = _events(tmp_path / "multi")
    last = [events.Scalars(f"selector_probs/{i}")[-1].value for i in range(2)]
    assert last == pytest.approx(result.selector_probs, abs=1e-5)


def test_trackers_are_chosen_by_name(tmp_path):
    data = fm.load_digits(labels=[0], size=8, limit=16)
    with pytest.raises(ConfigError, match="unknown tracker.*'nope'.*tensorboard"):
        fm.train(None, data, method="scratch", run_dir=tmp_path / "bad", trackers=["nope"], **TINY)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    fm.train(None, data, method="scratch", run_dir=tmp_path / "none", trackers=[], **TINY)
    assert not (tmp_path / "none" / "trackers").exists()
