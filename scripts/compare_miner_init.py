"""Miner init for MineGAN w/o FT on the digits-9 task: ``residual`` (starts at the source
prior) vs ``normal`` (the paper's N(0, 0.01) weights), same seeds, same steps.

    python scripts/compare_miner_init.py --seeds 3 --steps 300 --out runs/miner_init

Uses the demo's cached source and settings (fastmine.demo.FULL) and its evaluation: the
paper protocol (100 generated vs the 100 target 9s, digits features, mean of 5 draws) at
the end, and FID / target share logged every 50 steps. Prints a table (mean ± std over
seeds) and writes OUT/miner_init.md and OUT/miner_init.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fastmine.demo import run_demo
from fastmine.report import fmt, plot_curves


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="runs/miner_init")
    ap.add_argument("--inits", nargs="+", default=["residual", "normal"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    ap.add_argument("--collect", nargs="*", metavar="INIT=DIR", default=None,
                    help="train nothing: score finished runs DIR/seed*/minegan_noft (e.g. residual=runs/demo "
                         "normal=runs/miner_init/normal) and write the table")
    args = ap.parse_args(argv)
    out = Path(args.out)
    summary, curves = {}, {}
    if args.collect is not None:
        summary, curves = collect(dict(item.split("=", 1) for item in args.collect))
        args.steps = sorted({r["steps"] for rows in summary.values() for r in rows})
        args.seeds = sorted({r["seed"] for rows in summary.values() for r in rows})
    for init in args.inits if args.collect is None else ():
        res = run_demo(out=out / init, quick=args.quick, seeds=args.seeds, steps=None if args.quick else args.steps,
                       methods=("minegan_noft",), overrides=(f"miner.init={init}",), jobs=args.jobs)
        runs = res["results"]["minegan_noft"]
        summary[init] = [{"seed": r["seed"], **{k: r["metrics"][k] for k in ("fid", "kmmd", "mv", "target_share")},
                          "heldout_fid": r["heldout"]["fid"], "heldout_target_share": r["heldout"]["target_share"],
                          "curve": r["curve"], "train_s": r["train_s"]} for r in runs]
        curves[f"init={init}"] = [r["curve"] for r in runs]
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, out / "miner_init_fid.png", title="MineGAN w/o FT: miner init (mean ± std over seeds)")
    lines = ["| miner init | FID ↓ | KMMD ↓ | MV | target share ↑ | FID vs held-out 9s ↓ | per-seed FID |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for init, rows in summary.items():
        cells = [fmt([r[k] for r in rows], spec) for k, spec in
                 (("fid", "{:.2f}"), ("kmmd", "{:.4f}"), ("mv", "{:.3f}"), ("target_share", "{:.2f}"),
                  ("heldout_fid", "{:.2f}"))]
        lines.append(f"| {init} | " + " | ".join(cells) + " | " + ", ".join(f"{r['fid']:.1f}" for r in rows) + " |")
    table = "\n".join(lines)
    print(table)
    (out / "miner_init.md").write_text(
        f"# Miner init, MineGAN w/o FT, digits 0-8 -> 100 nines, steps {args.steps}, seeds {args.seeds}\n\n"
        f"{table}\n\n![FID over steps](miner_init_fid.png)\n")
    (out / "miner_init.json").write_text(json.dumps(summary, indent=1))


def collect(dirs: dict):
    """Score the finished MineGAN w/o FT runs under each DIR (eval.json when present)."""
    import torch

    from fastmine.config import load_config
    from fastmine.demo import _scorers, score_model
    from fastmine.evaluation import logged_curve
    from fastmine.models import load_sampler

    torch.set_num_threads(1)
    summary, curves, scorers = {}, {}, None
    for init, d in dirs.items():
        rows = []
        for run in sorted(Path(d).glob("seed*/minegan_noft")):
            if not (run / "model.safetensors").is_file():
                continue
            cfg = load_config(run / "config.yaml")
            assert cfg.miner.init == init, f"{run} was trained with miner.init={cfg.miner.init}, not {init}"
            ev = run / "eval.json"
            scores = json.loads(ev.read_text()) if ev.is_file() else {}
            if "heldout" not in scores:
                scorers = scorers or _scorers()
                scores = score_model(load_sampler(run / "model.safetensors"), 5, scorers)
                ev.write_text(json.dumps(scores))
            m = scores["metrics"]
            rows.append({"seed": cfg.seed, "steps": cfg.train.steps, **{k: m[k] for k in ("fid", "kmmd", "mv", "target_share")},
                         "heldout_fid": scores["heldout"]["fid"], "heldout_target_share": scores["heldout"]["target_share"],
                         "curve": logged_curve(run)})
        summary[init] = rows
        curves[f"init={init}"] = [r["curve"] for r in rows]
    return summary, curves


if __name__ == "__main__":
    main()
