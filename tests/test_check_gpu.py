"""`fastmine check-gpu` (issue #24's acceptance run): its dry run lists every step within 8 minutes, and
the whole command runs on a CPU with tiny shapes, so that the one call to make on a GPU cannot rot."""
import json
import subprocess
import sys

import pytest

from fastmine_benchmarks import check_gpu


def test_dry_run_lists_every_step_with_its_budget_within_8_minutes(capsys):
    assert check_gpu.main(["--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "fastmine check-gpu: 5 steps, at most 465 s"
    assert [line.split()[1] for line in out[1:]] == ["kernel_tests", "kernels", "bench", "stylegan2", "mining"]
    assert [int(line.split()[2]) for line in out[1:]] == [s.budget_s for s in check_gpu.STEPS]
    assert sum(s.budget_s for s in check_gpu.STEPS) <= 8 * 60


def test_a_full_run_on_the_cpu_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit, match="on the CPU only --quick"):
        check_gpu.main(["--device", "cpu"])


def test_markdown_reports_each_step_and_the_bench_rows():
    rows = [{"config": "single-b64", "variant": "default", "reference": True, "reference_ms": 2.0, "fastmine_ms": 1.0,
             "speedup_text": "2.00x [1.90, 2.10]", "reference_peak_bytes": 2**20, "fastmine_peak_bytes": 2**19,
             "peak_ratio": 0.5}]
    steps = {"kernel_tests": {"status": "ok", "seconds": 3.0, "summary": "31 passed"},
             "bench": {"status": "ok", "seconds": 50.0, "rows": rows},
             "mining": {"status": "ok", "seconds": 61.0, "updates_per_s": 4.5, "gpu_util_mean_pct": 97.0,
                        "gpu_util_source": "nvidia-smi"}}
    md = check_gpu.markdown({"type": "cuda", "gpu": "NVIDIA H100"}, steps)
    assert md.startswith("**NVIDIA H100** (cuda; `fastmine check-gpu`")
    assert "| kernel_tests | ok | 3.0 | 31 passed |" in md
    assert "| bench | ok | 50.0 | single-b64 default: 2.00x [1.90, 2.10] |" in md
    assert "| mining | ok | 61.0 | 4.50 updates/s over 61.0 s, GPU util 97 % (nvidia-smi) |" in md
    assert "| single-b64 | default | 2.0 | 1.0 | 2.00x [1.90, 2.10] | 1.0 | 0.5 | 0.50 |" in md


@pytest.mark.slow
def test_quick_run_on_the_cpu_goes_through_every_step(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fastmine_benchmarks.check_gpu", "--quick", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "check_gpu.json").read_text())
    steps = {r["step"]: r for r in res["results"]}
    assert list(steps) == ["kernel_tests", "kernels", "bench", "stylegan2", "mining"]
    assert all(r["status"] == "ok" for r in steps.values())
    assert "tests collected" in steps["kernel_tests"]["summary"]
    assert [(r["config"], r["variant"]) for r in steps["bench"]["rows"]] == [("single-b64", "default")]
    assert [r["variant"] for r in steps["stylegan2"]["rows"]] == ["default", "perf.amp=bf16"]
    assert steps["mining"]["updates"] >= 1 and steps["mining"]["updates_per_s"] > 0
    md = (tmp_path / "check_gpu.md").read_text()
    assert "| mining | ok |" in md and "stylegan2-wplus-b16" in md
