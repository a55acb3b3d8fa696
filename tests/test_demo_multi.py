"""`fastmine demo --multi --quick`: the two-generator report has finite rows and a π table."""
import json
import math
import re

import pytest

from fastmine.apps.demo_multi import DIGITS, mixed_target, run_demo_multi
from fastmine.cli import main
from fastmine.data import load_digits


def test_mixed_target_has_the_asked_ratio():
    x = mixed_target(0.25)
    assert x.shape == (100, 1, 16, 16)
    firsts = load_digits(labels=[DIGITS[0]], size=16)
    is_first = (x.flatten(1)[:, None, :] == firsts.flatten(1)[None]).all(-1).any(1)
    assert int(is_first.sum()) == 25


def test_mixed_target_takes_other_digits_and_refuses_a_pair_from_one_source():
    x = mixed_target(0.75, digits=(0, 6))
    zeros = load_digits(labels=[0], size=16)
    is_zero = (x.flatten(1)[:, None, :] == zeros.flatten(1)[None]).all(-1).any(1)
    assert int(is_zero.sum()) == 75
    with pytest.raises(ValueError, match="one of A's"):
        run_demo_multi(digits=(1, 2))


def test_quick_multi_demo_report(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("FASTMINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--multi", "--quick", "--out", str(out)]) == 0
    text = (out / "report_multi.md").read_text()

    pi_rows = [row for row in text.splitlines() if re.match(r"\| 0\.\d\d : 0\.\d\d \|", row)]
    assert {row.split("|")[1].strip() for row in pi_rows} == {"0.25 : 0.75", "0.50 : 0.50", "0.75 : 0.25"}
    assert {row.split("|")[2].strip() for row in pi_rows} == {"permute", "max"}
    for row in pi_rows:
        a, b = float(row.split("|")[3]), float(row.split("|")[4])
        assert 0 <= a <= 1 and 0 <= b <= 1 and abs(a + b - 1) < 0.02

    metric_rows = [row for row in text.splitlines() if row.startswith(("| MineGAN", "| TransferGAN"))]
    assert len(metric_rows) == 6
    for row in metric_rows:
        for cell in row.strip("|").split("|")[1:]:
            assert math.isfinite(float(cell)), row

    res = json.loads((out / "results_multi.json").read_text())["results"]
    multi = [r for r in res if r["kind"] == "multi"]
    assert len(multi) == 6 and all(abs(sum(r["pi"]) - 1) < 1e-4 for r in multi)
