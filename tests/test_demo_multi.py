"""`fastmine demo --multi --quick`: the two-generator report has finite rows and a π table."""
import json
import math
import re

import pytest


def test_mixed_target_has_the_asked_ratio():
    from fastmine.data import load_digits
    from fastmine.demo_multi import DIGITS, mixed_target

    x = mixed_target(0.25)
    assert x.shape == (100, 1, 16, 16)
    ones = load_digits(labels=[DIGITS[0]], size=16)
    is_one = (x.flatten(1)[:, None, :] == ones.flatten(1)[None]).all(-1).any(1)
    assert int(is_one.sum()) == 25


def test_mixed_target_takes_other_digits_and_refuses_a_pair_from_one_source():
    from fastmine.data import load_digits
    from fastmine.demo_multi import mixed_target, run_demo_multi

    x = mixed_target(0.75, digits=(0, 6))
    zeros = load_digits(labels=[0], size=16)
    is_zero = (x.flatten(1)[:, None, :] == zeros.flatten(1)[None]).all(-1).any(1)
    assert int(is_zero.sum()) == 75
    with pytest.raises(ValueError, match="one of A's"):
        run_demo_multi(digits=(1, 2))


def test_quick_multi_demo_report(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    monkeypatch.setenv("FASTMINE_CACHE", str(tmp_path / "cache"))
    from fastmine.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--multi", "--quick", "--out", str(out)]) == 0
    text = (out / "report_multi.md").read_text()

    pi_rows = [l for l in text.splitlines() if re.match(r"\| 0\.\d\d : 0\.\d\d \|", l)]
    assert {l.split("|")[1].strip() for l in pi_rows} == {"0.25 : 0.75", "0.50 : 0.50", "0.75 : 0.25"}
    assert {l.split("|")[2].strip() for l in pi_rows} == {"permute", "max"}
    for l in pi_rows:
        a, b = float(l.split("|")[3]), float(l.split("|")[4])
        assert 0 <= a <= 1 and 0 <= b <= 1 and abs(a + b - 1) < 0.02

    metric_rows = [l for l in text.splitlines() if l.startswith("| MineGAN") or l.startswith("| TransferGAN")]
    assert len(metric_rows) == 6
    for l in metric_rows:
        for cell in l.strip("|").split("|")[1:]:
            assert math.isfinite(float(cell)), l

    res = json.loads((out / "results_multi.json").read_text())["results"]
    multi = [r for r in res if r["kind"] == "multi"]
    assert len(multi) == 6 and all(abs(sum(r["pi"]) - 1) < 1e-4 for r in multi)
