"""`fastmine demo --quick` and `fastmine eval` end to end (CPU, about a minute together)."""
import json
import math
import multiprocessing
import os
import re
from pathlib import Path

import pytest
import torch
from budgets import QUICK_INVERSION_ARGS
from PIL import Image

from fastmine.apps.demo import DEMO_METHODS, LABELS, QUICK, pretrained_source
from fastmine.apps.report import orderings
from fastmine.cli import main

GRID_PX = (8 * (16 + 1) + 1) * 4  # 64 samples of 16 px: 8x8 cells, 1 px padding, shown 4x


def _table(report_text):
    """{row label: [cell strings]} of the first markdown table in a report."""
    rows, in_table = {}, False
    for line in report_text.splitlines():
        if line.startswith("| method |"):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                break
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= set("-:"):
                rows[cells[0]] = cells[1:]
    return rows


def _number(cell):
    return float(re.match(r"-?[\d.]+(e-?\d+)?", cell).group(0))


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTMINE_CACHE", str(root / "cache"))
    out = root / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    yield out, root / "cache"
    mp.undo()


def test_demo_quick_report_has_a_finite_row_per_method(quick_demo):
    out, _ = quick_demo
    table = _table((out / "report.md").read_text())
    assert set(table) == {"source (no adaptation)"} | {LABELS[m] for m in DEMO_METHODS}
    for label, cells in table.items():
        # FID, KMMD, MV, target share, KID, precision, recall, intra-cluster ("–": no cluster of two)
        values = [_number(c) for c in cells[:7]]
        assert len(cells) == 8 and all(math.isfinite(v) for v in values), (label, cells)
        assert values[0] > 0 and 0 <= values[3] <= 1 and 0 <= values[5] <= 1 and 0 <= values[6] <= 1, (label, values)
        assert cells[7] == "–" or _number(cells[7]) >= 0, (label, cells)
    report = (out / "report.md").read_text()
    assert "80 digit-9 images of the dataset that are **not** in the target set" in report  # the held-out table
    # a quick run says its numbers mean nothing and judges no ordering
    assert "its numbers mean nothing" in report and "Not judged in a `--quick` run." in report
    assert "- MineGAN < TransferGAN:" not in report


def test_demo_quick_pictures_open_at_the_expected_size(quick_demo):
    out, _ = quick_demo
    for name in ["source", *DEMO_METHODS]:
        with Image.open(out / f"samples_{name}.png") as im:
            assert im.size == (GRID_PX, GRID_PX), name
    with Image.open(out / "fid_over_steps.png") as im:
        assert im.size == (640, 420)  # figsize 6.4 x 4.2 at 100 dpi
    report = (out / "report.md").read_text()
    for name in ["source", *DEMO_METHODS]:
        assert f"(samples_{name}.png)" in report
    assert "(fid_over_steps.png)" in report and "torch" in report and "python" in report
    # the latent picture shows where the inversion start began, as `fastmine eval`'s does
    assert "the target's inverted latents, where the miner started, as red crosses" in report
    assert "read a negative value as 0" in report  # the footnote for the unbiased estimators


def test_demo_runs_log_fid_every_k_steps(quick_demo):
    out, _ = quick_demo
    for method in DEMO_METHODS:
        rows = [json.loads(line) for line in (out / "seed0" / method / "metrics.jsonl").read_text().splitlines()]
        logged = [r["step"] for r in rows if "fid" in r]
        assert logged == list(range(QUICK.eval_every, QUICK.steps + 1, QUICK.eval_every)), method
        assert all(math.isfinite(r["fid"]) and 0 <= r["target_share"] <= 1 for r in rows if "fid" in r)


def test_eval_on_a_tiny_run_writes_the_table_and_a_curve_from_checkpoints(quick_demo, tmp_path, monkeypatch):
    _, cache = quick_demo
    (source,) = (cache / "sources").glob("digits0-8-*.safetensors")
    # a run with no logged FID: the curve must come from the checkpoints left on disk
    assert main(["mine", f"source.generator={source}", f"out_dir={tmp_path}", "name=tiny", "train.steps=4",
                 "log.log_every=2", "log.checkpoint_every=2", "log.keep_checkpoints=3", "log.progress=false",
                 "device=cpu", *QUICK_INVERSION_ARGS]) == 0
    run = tmp_path / "tiny"
    assert main(["eval", str(run), "--repeats", "1"]) == 0
    report = (run / "report.md").read_text()
    cells = _table(report)["minegan_noft"]
    assert all(math.isfinite(_number(c)) for c in cells)
    assert "From the checkpoints on disk" in report and "(fid_over_steps.png)" in report
    with Image.open(run / "fid_over_steps.png") as im:
        assert im.size == (640, 420)


def test_eval_with_inception_and_no_weights_says_where_to_put_them(quick_demo, capsys):
    out, _ = quick_demo
    code = main(["eval", str(out / "seed0" / "minegan_noft"), "--extractor", "inception",
                 "--inception-weights", "/nonexistent/inception.pth"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no file at '/nonexistent/inception.pth'" in err and "weights-inception-2015-12-05" in err
    assert len(err.strip().splitlines()) == 1


def test_orderings_judge_means_and_spread():
    runs = {"minegan": [{"metrics": {"fid": 10.0}}, {"metrics": {"fid": 12.0}}],
            "transfergan": [{"metrics": {"fid": 30.0}}, {"metrics": {"fid": 34.0}}],
            "scratch": [{"metrics": {"fid": 31.0}}, {"metrics": {"fid": 33.0}}]}
    lines = orderings(runs, LABELS)
    assert lines == ["- MineGAN < TransferGAN: holds — 11.00 vs 32.00 (outside one std of each other)",
                     "- TransferGAN < from scratch: does **not** hold — 32.00 vs 32.00 (within one std)"]


def _cached_source(cache, barrier, results):
    os.environ["FASTMINE_CACHE"] = cache
    torch.set_num_threads(1)
    barrier.wait()  # both ask for the source at the same moment
    results.put(str(pretrained_source(steps=30, seed=5)))


@pytest.mark.slow
def test_two_demos_share_an_empty_source_cache(tmp_path):
    """Started together on an empty cache, the second waits for the first's source and reuses it."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_cached_source, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    paths = [results.get(timeout=5) for _ in procs]
    assert paths[0] == paths[1] and Path(paths[0]).is_file()
    assert [p.name for p in (tmp_path / "sources").iterdir() if p.suffix == ".safetensors"] == [Path(paths[0]).name]
