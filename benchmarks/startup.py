"""Start-up cost: `import fastmine`, its whole public API and the CLI's answers that need no
model, against `import torch` alone in the same run.

Each case runs in a fresh interpreter, the cases alternating within each round so that a busy
machine slows all of them alike. Per case: the wall time of the statement (after interpreter
start), the process's CPU time (user + system, interpreter start included), its peak RSS (VmHWM), the
total of ``python -X importtime`` (the cumulative times of the top-level imports, a separate
run) and whether torch was imported. The medians print as a table, with the time and RSS each
as a ratio to ``import torch``, and go to benchmarks/results/startup.json.

    python -m fastmine_benchmarks.startup [--rounds 5] [--before DIR]

``--before DIR`` also runs each case with fastmine imported from another checkout (say, a
worktree of an older commit), in the same rounds, as rows marked "(DIR)".
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

from fastmine_benchmarks.common import RESULTS_DIR, device_info, write_result

CASES = {
    "import torch": "import torch",
    "import fastmine": "import fastmine",
    "from fastmine import *": "from fastmine import *",
    "fastmine --help": "from fastmine.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
    "fastmine mine --help": "from fastmine.cli import main\ntry:\n    main(['mine', '--help'])\n"
                            "except SystemExit:\n    pass",
    "fastmine mine train.stepz=1": "from fastmine.cli import main\ntry:\n    main(['mine', 'train.stepz=1'])\n"
                                   "except SystemExit:\n    pass",
}

CHILD = """
import contextlib, io, json, re, resource, sys, time
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    exec({code!r})
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not ru_maxrss: the latter keeps the peak of the (torch-importing) parent across fork + exec
hwm_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({{"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": hwm_kb / 1024,
                  "torch": "torch" in sys.modules}}))
"""


def _env(pythonpath):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return env


def run_case(code: str, env) -> dict:
    # from a neutral folder: `python -c` puts the working folder ahead of PYTHONPATH
    done = subprocess.run([sys.executable, "-c", CHILD.format(code=code)], capture_output=True, text=True, env=env,
                          check=True, cwd=tempfile.gettempdir())
    return json.loads(done.stdout.strip().splitlines()[-1])


def importtime_total(code: str, env) -> float:
    """Seconds: the cumulative import times of the top-level imports ``-X importtime`` lists."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    rows = re.findall(r"import time:\s+\d+ \|\s+(\d+) \| (\S)", done.stderr)
    return sum(int(cumulative) for cumulative, first in rows) / 1e6


def measure(rounds: int, before=None) -> dict:
    variants = [("", _env(None))] + ([(f" ({before})", _env(before))] if before else [])
    runs = [(name + label, code, env) for name, code in CASES.items() for label, env in variants
            if not (label and name == "import torch")]
    samples = {name: [] for name, _, _ in runs}
    for _ in range(rounds):
        for name, code, env in runs:
            row = run_case(code, env)
            row["importtime_s"] = importtime_total(code, env)
            samples[name].append(row)
    out = {}
    for name, rows in samples.items():
        out[name] = {key: statistics.median(r[key] for r in rows)
                     for key in ("wall_s", "cpu_s", "rss_mb", "importtime_s")}
        out[name]["torch"] = any(r["torch"] for r in rows)
    return out


def table(results: dict) -> str:
    torch_row = results["import torch"]
    lines = ["| case | torch imported | wall s | × torch | CPU s | importtime s | peak RSS MB | × torch |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| `{name}` | {'yes' if r['torch'] else 'no'} | {r['wall_s']:.2f} | "
                     f"{r['wall_s'] / torch_row['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['importtime_s']:.2f} | "
                     f"{r['rss_mb']:.0f} | {r['rss_mb'] / torch_row['rss_mb']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh interpreters per case (medians)")
    parser.add_argument("--before", default=None, help="also import fastmine from this checkout")
    args = parser.parse_args(argv)
    results = measure(args.rounds, args.before)
    print(table(results))
    path = write_result(RESULTS_DIR / "startup.json", device=device_info("cpu"),
                        config={"rounds": args.rounds, "before": args.before},
                        results=[{"case": case, **row} for case, row in results.items()])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
