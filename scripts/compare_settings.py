"""One demo method on the digits-9 task under several settings: same seeds, same steps.

    python scripts/compare_settings.py --method minegan_noft --seeds 3 --jobs 2 --out runs/miner_init \
        --setting normal=miner.init=normal --setting residual=miner.init=residual
    python scripts/compare_settings.py --method minegan_noft --seeds 3 --jobs 2 --out runs/lazy_gp \
        --setting every=loss.gp_every=1 --setting lazy4=loss.gp_every=4

Each ``--setting NAME=key=value[,key=value...]`` is a set of config overrides applied to the
method's run. Uses the demo's cached source and settings (fastmine.apps.demo.FULL) and its
evaluation: the paper protocol (100 generated vs the 100 target 9s, digits features, mean of
5 draws) at the end, FID / target share logged every 50 steps, and the training time.
Prints a table (mean ± std over seeds) and writes OUT/compare.md, OUT/compare.json and
OUT/compare_fid.png.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastmine.apps.demo import DEMO_METHODS, run_demo
from fastmine.apps.report import fmt, plot_curves


def parse_setting(text: str):
    name, sep, overrides = text.partition("=")
    if not sep or not name or "=" not in overrides:
        raise SystemExit(f"--setting {text!r}: expected NAME=key=value[,key=value...]")
    return name, tuple(o.strip() for o in overrides.split(","))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="minegan_noft", choices=DEMO_METHODS)
    ap.add_argument("--setting", action="append", required=True, metavar="NAME=OVERRIDES")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    args = ap.parse_args(argv)
    out = Path(args.out)
    summary, curves = {}, {}
    for name, overrides in map(parse_setting, args.setting):
        res = run_demo(out=out / name, quick=args.quick, seeds=args.seeds, steps=None if args.quick else args.steps,
                       methods=(args.method,), overrides=overrides, jobs=args.jobs)
        runs = res["results"][args.method]
        summary[name] = {"overrides": list(overrides), "runs": [
            {"seed": r["seed"], **{k: r["metrics"][k] for k in ("fid", "kmmd", "mv", "target_share")},
             "heldout_fid": r["heldout"]["fid"], "heldout_target_share": r["heldout"]["target_share"],
             "curve": r["curve"], "train_s": r["train_s"]} for r in runs]}
        curves[name] = [r["curve"] for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out / "compare_fid.png", title=f"{args.method}: FID over updates (mean ± std over seeds)")
    lines = ["| setting | overrides | FID ↓ | KMMD ↓ | MV | target share ↑ | FID vs held-out 9s ↓ | train s "
             "| per-seed FID |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in summary.items():
        rows = s["runs"]
        cells = [fmt([r[k] for r in rows], spec) for k, spec in
                 (("fid", "{:.2f}"), ("kmmd", "{:.4f}"), ("mv", "{:.3f}"), ("target_share", "{:.2f}"),
                  ("heldout_fid", "{:.2f}"), ("train_s", "{:.0f}"))]
        lines.append(f"| {name} | {' '.join(s['overrides'])} | " + " | ".join(cells) + " | "
                     + ", ".join(f"{r['fid']:.1f}" for r in rows) + " |")
    table = "\n".join(lines)
    print(table)
    (out / "compare.md").write_text(
        f"# {args.method}, digits 0-8 -> 100 nines, steps {args.steps}, seeds {args.seeds}\n\n"
        f"{table}\n\n![FID over updates](compare_fid.png)\n")
    (out / "compare.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
