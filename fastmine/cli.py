"""``fastmine <command> [CONFIG.yaml] [key=value ...]``.

Every training command resolves defaults <- the command's built-in settings <- the YAML
file <- ``key=value`` overrides (``train.steps=500 data.labels=[9]``) and runs in
``runs/NAME/``: config.yaml, metrics.jsonl, samples/, checkpoints/, model.safetensors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, load_config

DIGITS_0_8 = list(range(9))
TARGET_9 = {"dataset": "digits", "labels": [9], "limit": 100, "size": 16}

COMMAND_DEFAULTS = {
    "pretrain": {"name": "source", "method": "scratch",
                 "data": {"dataset": "digits", "labels": DIGITS_0_8, "size": 16},
                 "train": {"steps": 2000, "lr": 2e-4, "critic_lr": 2e-4, "betas": [0.5, 0.9]}},
    "mine": {"name": "mine", "method": "minegan_noft", "data": TARGET_9, "train": {"steps": 300}},
    "finetune": {"name": "finetune", "method": "finetune", "data": TARGET_9, "train": {"steps": 300}},
    "reprogram": {"name": "reprogram", "method": "reprogram", "data": TARGET_9, "train": {"steps": 300}},
    "baseline": {"name": "baseline", "method": "transfergan", "data": TARGET_9, "train": {"steps": 300}},
    "mine-multi": {"name": "mine_multi", "method": "minegan_multi", "data": TARGET_9, "train": {"steps": 300}},
    "fuse": {"name": "fuse", "method": "fuse", "train": {"steps": 2000}},
}
METHODS_OF = {"mine": ("minegan_noft", "minegan", "minegan_pp"), "finetune": ("finetune",), "reprogram": ("reprogram",),
              "baseline": ("transfergan", "freezed", "scratch", "transfergan_pp"), "pretrain": ("scratch",),
              "mine-multi": ("minegan_multi",), "fuse": ("fuse",)}


def _train_command(cmd, args):
    from .api import run_config

    config_path = None
    overrides = list(args.overrides)
    if overrides and overrides[0].endswith((".yaml", ".yml")) and "=" not in overrides[0]:
        config_path = overrides.pop(0)
    cfg = load_config(config_path, overrides, defaults=COMMAND_DEFAULTS[cmd])
    if cfg.method not in METHODS_OF[cmd]:
        raise ConfigError(f"`fastmine {cmd}` runs method {' or '.join(METHODS_OF[cmd])}, not {cfg.method!r}")
    result = run_config(cfg, resume=args.resume)
    print(f"wrote {result.model_path} (run folder {result.run_dir})")
    return result


def _sample(args):
    import torch

    from .images import save_grid
    from .multi import load_any_sampler as load_sampler  # single, multi-generator or fused files

    sampler = load_sampler(args.model, device=args.device)
    x = sampler.sample(args.n, seed=args.seed, device=args.device)
    out = Path(args.out)
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x.cpu(), out)
    else:
        save_grid(x, out)
    print(f"wrote {args.n} samples to {out}")


def _bench(argv):
    from fastmine_benchmarks.bench_step import main as bench_main

    try:
        return bench_main(argv)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"fastmine bench: error: {e}", file=sys.stderr)
        return 2


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastmine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMAND_DEFAULTS:
        p = sub.add_parser(cmd, help=f"train ({', '.join(METHODS_OF[cmd])})")
        p.add_argument("overrides", nargs="*", help="[CONFIG.yaml] key=value ...")
        p.add_argument("--resume", action="store_true", help="continue runs/NAME from its last checkpoint")
    p = sub.add_parser("sample", help="draw samples from a trained model file")
    p.add_argument("model")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help=".png grid or .pt tensor")
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("demo", help="digits 0-8 source (cached) -> 100 nines: all methods compared in OUT/report.md")
    p.add_argument("--quick", action="store_true", help="tiny settings (about a minute)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (3 gives mean ± std)")
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods to run")
    p.add_argument("--steps", type=int, default=None, help="generator updates per method")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run (1 is fastest on a shared 2-core box)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes (e.g. the core count)")
    p.add_argument("--multi", action="store_true",
                   help="the two-generator task instead (sources on 0-4 / 5-9, a 2/6 target): OUT/report_multi.md")
    p.add_argument("--digits", type=int, nargs=2, default=None, metavar=("A", "B"),
                   help="--multi: the target's two digits, one of 0-4 and one of 5-9 (default 2 6)")
    p.add_argument("--pi-only", action="store_true", help="--multi: the π table only (no baselines, no fusion)")
    p = sub.add_parser("eval", help="score a run folder and write RUN_DIR/report.md")
    p.add_argument("run_dir")
    p.add_argument("--extractor", default="digits", choices=["digits", "inception"])
    p.add_argument("--inception-weights", default=None, help="local Inception-v3 weights file (never downloaded)")
    p.add_argument("--target-class", default="auto", help="class for the target share (default: the single digits label)")
    p.add_argument("--repeats", type=int, default=5, help="sample draws averaged")
    p = sub.add_parser("bench", add_help=False,
                       help="time mining steps against an eager reference (fastmine bench --help)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # its own parser (benchmarks/bench_step.py)
        return _bench(argv[1:])
    args = parser.parse_args(argv)
    try:
        if args.command == "sample":
            _sample(args)
        elif args.command == "demo" and args.multi:
            from .demo_multi import DIGITS, run_demo_multi

            run_demo_multi(out=args.out, quick=args.quick, seed=args.seed, steps=args.steps, jobs=args.jobs,
                           digits=tuple(args.digits or DIGITS), baselines=not args.pi_only)
        elif args.command == "demo":
            from .demo import DEMO_METHODS, run_demo

            run_demo(out=args.out, quick=args.quick, seed=args.seed, seeds=args.seeds, steps=args.steps,
                     methods=args.methods or DEMO_METHODS, threads=args.threads, jobs=args.jobs)
        elif args.command == "eval":
            from .evaluation import evaluate_run

            tc = args.target_class
            tc = None if tc in ("none", "None") else (tc if tc == "auto" else int(tc))
            res = evaluate_run(args.run_dir, extractor=args.extractor, inception_weights=args.inception_weights,
                               target_class=tc, repeats=args.repeats)
            print(f"wrote {res['report']}: " + ", ".join(
                f"{k} {v:.4g}" for k, v in res["metrics"].items() if k in ("fid", "kmmd", "mv", "target_share")))
        else:
            _train_command(args.command, args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        print(f"fastmine {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
