"""``fastmine <command> [CONFIG.yaml] [key=value ...]``.

Every training command resolves defaults <- the command's built-in settings <- the YAML
file <- ``key=value`` overrides (``train.steps=500 data.labels=[9]``) and runs in
``runs/NAME/``: config.yaml, metrics.jsonl, samples/, checkpoints/, model.safetensors.
Other packages add commands through the ``fastmine.commands`` entry-point group (``fastmine
bench`` comes from the benchmarks package that installs with fastmine).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from importlib.metadata import entry_points
from pathlib import Path

import torch

from . import distributed
from .api import run
from .apps.demo import DEMO_METHODS, run_demo
from .apps.demo_multi import DIGITS, run_demo_multi
from .apps.presets import COMMAND_DEFAULTS
from .apps.report import write_run_report
from .config import ConfigError, RunConfig, load_config
from .evaluation import evaluate_run
from .files import load_any
from .images import save_grid
from .methods import METHODS, methods_of

ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError, FloatingPointError, ImportError)


def _settings_help() -> str:
    lines = ["config sections and their keys (key=value, e.g. train.steps=500):"]
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(f.default_factory):
            keys = ", ".join(g.name for g in dataclasses.fields(f.default_factory))
            lines.append(f"  {f.name}: {keys}")
        else:
            lines.append(f"  {f.name}")
    return "\n".join(lines)


def _train_command(cmd, args):
    config_path = None
    overrides = list(args.overrides)
    if overrides and overrides[0].endswith((".yaml", ".yml")) and "=" not in overrides[0]:
        config_path = overrides.pop(0)
    cfg = load_config(config_path, overrides, defaults=COMMAND_DEFAULTS[cmd])
    allowed = methods_of(cmd)
    if cfg.method not in allowed:
        raise ConfigError(f"`fastmine {cmd}` runs method {' or '.join(allowed)}, not {cfg.method!r}")
    result = run(cfg, resume=args.resume)
    if result.run_dir is not None and distributed.rank() == 0:  # once, not once per process
        print(f"wrote {result.model_path} (run folder {result.run_dir})")
    return result


def _sample(args):
    sampler = load_any(args.model, device=args.device, trust_code=args.trust_code)
    x = sampler.sample(args.n, seed=args.seed, device=args.device)
    out = Path(args.out)
    if out.suffix == ".pt":
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(x.cpu(), out)
    else:
        save_grid(x, out)
    print(f"wrote {args.n} samples to {out}")


def _eval(args):
    tc = args.target_class
    tc = None if tc in ("none", "None") else (tc if tc == "auto" else int(tc))
    res = evaluate_run(args.run_dir, extractor=args.extractor, inception_weights=args.inception_weights,
                       target_class=tc, repeats=args.repeats)
    report = write_run_report(args.run_dir, res)
    print(f"wrote {report}: " + ", ".join(
        f"{k} {v:.4g}" for k, v in res["metrics"].items() if k in ("fid", "kmmd", "mv", "target_share")))


def _demo(args):
    if args.multi:
        run_demo_multi(out=args.out, quick=args.quick, seed=args.seed, steps=args.steps, jobs=args.jobs,
                       digits=tuple(args.digits or DIGITS), baselines=not args.pi_only)
    else:
        run_demo(out=args.out, quick=args.quick, seed=args.seed, seeds=args.seeds, steps=args.steps,
                 methods=args.methods or DEMO_METHODS, threads=args.threads, jobs=args.jobs)


def _plugins() -> dict:
    """Commands other installed packages add (entry-point group ``fastmine.commands``): each a
    ``main(argv) -> exit code`` with its own parser."""
    return {ep.name: ep for ep in entry_points(group="fastmine.commands")}


def build_parser(plugins=()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMAND_DEFAULTS:
        methods = methods_of(cmd)
        epilog = "methods:\n" + "\n".join(f"  {m}: {METHODS[m].summary}" for m in methods) + "\n\n" + _settings_help()
        p = sub.add_parser(cmd, help=f"train ({', '.join(methods)})", epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("overrides", nargs="*", help="[CONFIG.yaml] key=value ...")
        p.add_argument("--resume", action="store_true", help="continue runs/NAME from its last checkpoint")
    p = sub.add_parser("sample", help="draw samples from a trained model file")
    p.add_argument("model")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help=".png grid or .pt tensor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--trust-code", action="store_true", help="let the file name a factory to run (see README, Models)")
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
    for name in plugins:
        sub.add_parser(name, add_help=False, help=f"{name} (fastmine {name} --help)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    plugins = _plugins()
    if argv[:1] and argv[0] in plugins:  # a plugin parses its own arguments
        try:
            return plugins[argv[0]].load()(argv[1:])
        except ERRORS as e:
            print(f"fastmine {argv[0]}: error: {e}", file=sys.stderr)
            return 2
    args = build_parser(plugins).parse_args(argv)
    try:
        if args.command == "sample":
            _sample(args)
        elif args.command == "demo":
            _demo(args)
        elif args.command == "eval":
            _eval(args)
        else:
            _train_command(args.command, args)
    except ERRORS as e:
        print(f"fastmine {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
