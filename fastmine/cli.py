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
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import torch

from . import distributed, hub
from .apps.demo import DEMO_METHODS, ROWS, TOOLKIT_ROWS, run_demo
from .apps.demo_multi import DIGITS, run_demo_multi
from .apps.presets import COMMAND_DEFAULTS
from .apps.report import write_run_report
from .config import (
    ConfigError,
    RunConfig,
    fill_defaults,
    load_config,
    merge,
    parse_overrides,
    read_yaml,
    to_dict,
    validate,
)
from .evaluation import evaluate_run
from .files import RunFolderBusy, convert, load_any, read_info, save_latents
from .images import save_grid
from .inversion import invert
from .methods import METHODS, get_method, methods_of
from .runs import load_config_data, load_source, prepare, resolve_device
from .trainer import RunInterrupted

# bad input (exit 2) and a run that failed or was stopped (exit 1): one line each, no traceback
BAD_INPUT = (ConfigError, ValueError, FileNotFoundError, FileExistsError, ImportError, RunFolderBusy)
FAILED_RUN = (FloatingPointError, RunInterrupted)


def _settings_help() -> str:
    lines = ["config sections and their keys (key=value, e.g. train.steps=500):"]
    for f in dataclasses.fields(RunConfig):
        if dataclasses.is_dataclass(f.default_factory):
            keys = ", ".join(g.name for g in dataclasses.fields(f.default_factory))
            lines.append(f"  {f.name}: {keys}")
        else:
            lines.append(f"  {f.name}")
    return "\n".join(lines)


def command_defaults(cmd, config_path=None, overrides=()) -> dict:
    """The command's preset, less its data when the user names another dataset: the preset's
    data (digits, a label filter, limit 100) belongs to the built-in digits, and a folder or a
    tensor file is loaded whole unless the user limits it."""
    defaults = COMMAND_DEFAULTS[cmd]
    user = merge(read_yaml(config_path) if config_path else {}, parse_overrides(overrides))
    dataset = (user.get("data") or {}).get("dataset")
    if dataset and dataset != defaults.get("data", {}).get("dataset"):
        defaults = {k: v for k, v in defaults.items() if k != "data"}
    return defaults


def _train_command(cmd, args):
    config_path = None
    overrides = list(args.overrides)
    if overrides and overrides[0].endswith((".yaml", ".yml")) and "=" not in overrides[0]:
        config_path = overrides.pop(0)
    cfg = load_config(config_path, overrides, defaults=command_defaults(cmd, config_path, overrides))
    stored = cfg.run_dir / "config.yaml"
    if args.resume and stored.is_file():
        # the run's own settings are the base; what the command line says on top of them is
        # checked against them (only steps, device and logging may change: config.RESUMABLE)
        cfg = load_config(config_path, overrides, defaults=to_dict(load_config(stored)))
    allowed = methods_of(cmd)
    if cfg.method not in allowed:
        raise ConfigError(f"`fastmine {cmd}` runs method {' or '.join(allowed)}, not {cfg.method!r}")
    result = prepare(cfg, resume=args.resume, restart=args.restart).fit()
    if result.run_dir is not None and distributed.rank() == 0:  # once, not once per process
        print(f"wrote {result.model_path} (run folder {result.run_dir})")
    return result


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _sample(args):
    if Path(args.model).is_dir():  # a run folder: its model file
        args.model = str(Path(args.model) / "model.safetensors")
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


def _invert(args):
    cfg = load_config(None, args.overrides, defaults=command_defaults("mine", None, args.overrides))
    validate(fill_defaults(cfg, get_method(cfg.method)))
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{str(out)!r} already exists; choose another --out — nothing was changed")
    # a fastmine file, or any generator fastmine reads (an NVIDIA pickle in source.latent=w+ ...)
    generator = load_any(args.model, trust_code=cfg.source.trust_code) if read_info(args.model) else \
        load_source(args.model, cfg)
    target = load_config_data(cfg)
    inv = invert(generator, target, cfg.invert, seed=cfg.seed, device=resolve_device(cfg.device),
                 progress=cfg.log.progress)
    save_latents(out / "latents.safetensors", inv)
    # rows of up to 16 targets, each above its reconstruction
    pairs = [t for i in range(0, len(target), 16) for t in (target[i:i + 16], inv.images[i:i + 16])]
    save_grid(torch.cat(pairs), out / "reconstruction.png", nrow=min(16, len(target)))
    summary = {"n": len(target), "pixel_mse": float(inv.pixel_error.mean()),
               "random_latent_pixel_mse": float(inv.baseline_error.mean()),
               "feature_mse": None if inv.feature_error is None else float(inv.feature_error.mean()),
               "invert": to_dict(cfg.invert)}
    (out / "inversion.json").write_text(json.dumps(summary, indent=1))
    print(f"{inv.summary()}; wrote {out / 'latents.safetensors'} and {out / 'reconstruction.png'}")


def _convert(args):
    cfg = load_config(None, args.overrides)
    outside = sorted({key.split(".")[0] for key in parse_overrides(args.overrides)} - {"source"})
    if outside:
        raise ConfigError(f"fastmine convert takes source.* settings only, got {', '.join(outside)}")
    src = cfg.source
    written = convert(args.input, args.out, key=src.key, critic=not args.no_critic, overwrite=args.overwrite,
                      latent=src.latent, truncation_psi=src.truncation_psi, truncation_cutoff=src.truncation_cutoff,
                      noise_mode=src.noise_mode, noise=src.noise, arch=src.arch, latent_spec=src.latent_spec,
                      allow_pickle=src.allow_pickle, trust_code=src.trust_code)
    arch = written["generator"].get("arch", written["generator"])
    what = arch.get("family") or arch.get("type") or arch.get("factory") or "generator"
    critic = "no critic" if written["critic"] is None else f"critic {written['critic']:,} parameters"
    print(f"wrote {written['path']}: {what} generator {written['parameters']:,} parameters, latents "
          f"{json.dumps(written['latent_spec'])}, {critic}")


def _models(args):
    rows = [(e["name"], e["family"], str(e.get("resolution") or ""), " ".join(e.get("latents") or []),
             _size(e.get("size")), e["license"], e["source"]) for e in hub.catalogue().values()
            if args.all or e["kind"] == "models"]
    _table(("name", "family", "px", "latents", "size", "licence", "published at"), rows)
    print(f"\nuse a name wherever a path goes (source.generator=NAME); files are cached in {hub.cache_dir()}")


def _cache(args):
    for name in args.remove or []:
        print("\n".join(f"removed {p}" for p in hub.remove(name)))
    if args.clear:
        print(f"removed {len(hub.clear())} files from {hub.cache_dir()}")
    if args.remove or args.clear:
        return
    files = hub.cached()
    _table(("name", "size", "file"), [(name or "", _size(size), str(path)) for path, size, name in files])
    print(f"{len(files)} files, {_size(sum(size for _, size, _ in files))} in {hub.cache_dir()}")


def _download(args):
    for source in args.sources:
        print(f"{source}: {hub.fetch(source, cache=args.to)}")
    if args.to:
        print(f"use it with FASTMINE_CACHE={args.to} (and FASTMINE_OFFLINE=1 where there is no internet)")


def _size(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def _demo(args):
    if args.multi:
        run_demo_multi(out=args.out, quick=args.quick, seed=args.seed, steps=args.steps, jobs=args.jobs,
                       digits=tuple(args.digits or DIGITS), baselines=not args.pi_only)
    else:
        run_demo(out=args.out, quick=args.quick, seed=args.seed, seeds=args.seeds, steps=args.steps,
                 methods=args.methods or (DEMO_METHODS + TOOLKIT_ROWS if args.toolkit else DEMO_METHODS),
                 threads=args.threads, jobs=args.jobs)


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
        p.add_argument("--resume", action="store_true",
                       help="continue runs/NAME as it was configured, from its newest intact checkpoint "
                            "(key=value may change train.steps, device and log.*)")
        p.add_argument("--restart", action="store_true", help="replace what runs/NAME holds with a fresh run")
    p = sub.add_parser("sample", help="draw samples from a trained model file")
    p.add_argument("model", help="a model file, a run folder (its model.safetensors), a URL or a catalogue name")
    p.add_argument("--n", type=_positive, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help=".png grid or .pt tensor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--trust-code", action="store_true", help="let the file name a factory to run (see README, Models)")
    p = sub.add_parser("invert", help="GAN inversion: latents of MODEL that reconstruct the target images",
                       epilog="keys: data.* (the images; default the 100 nines), invert.* (init, steps, lr, "
                              "feature_weight, prior_weight, ...), seed, device")
    p.add_argument("model", help="a model file, a run folder's model.safetensors, or any generator fastmine reads "
                                 "(an NVIDIA pickle: source.latent=w+ picks the space)")
    p.add_argument("overrides", nargs="*", help="key=value ...")
    p.add_argument("--out", default="runs/invert", help="folder for latents.safetensors, reconstruction.png")
    p = sub.add_parser("convert", help="write any generator fastmine reads as a self-describing fastmine file",
                       epilog="keys: source.key, source.latent, source.truncation_psi, source.truncation_cutoff, "
                              "source.noise_mode, source.arch, source.latent_spec, source.allow_pickle")
    p.add_argument("input", help="an NVIDIA network pickle, a rosinality checkpoint, a torch checkpoint (with "
                                 "source.arch=...), a fastmine file; a file, a URL or a name (`fastmine models`)")
    p.add_argument("out", help="OUT.safetensors")
    p.add_argument("overrides", nargs="*", help="source.key=value ...")
    p.add_argument("--no-critic", action="store_true", help="leave out the discriminator the input holds")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p = sub.add_parser("demo", help="digits 0-8 source (cached) -> 100 nines: all methods compared in OUT/report.md")
    p.add_argument("--quick", action="store_true", help="tiny settings (about a minute)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=_positive, default=1, help="number of seeds (3 gives mean ± std)")
    p.add_argument("--methods", nargs="+", default=None, choices=list(ROWS), metavar="ROW",
                   help=f"rows to run: {', '.join(ROWS)}")
    p.add_argument("--toolkit", action="store_true",
                   help="also the few-shot toolkit's rows: " + ", ".join(TOOLKIT_ROWS) + " (about twice as long)")
    p.add_argument("--steps", type=int, default=None, help="generator updates per method")
    p.add_argument("--threads", type=int, default=1, 
                   help="torch CPU threads per run (1 is fastest on a shared 2-core box)")
    p.add_argument("--jobs", type=_positive, default=1, help="runs trained in parallel processes (e.g. the core count)")
    p.add_argument("--multi", action="store_true",
                   help="the two-generator task instead (sources on 0-4 / 5-9, a 2/6 target): OUT/report_multi.md")
    p.add_argument("--digits", type=int, nargs=2, default=None, metavar=("A", "B"),
                   help="--multi: the target's two digits, one of 0-4 and one of 5-9 (default 2 6)")
    p.add_argument("--pi-only", action="store_true", help="--multi: the π table only (no baselines, no fusion)")
    p = sub.add_parser("eval", help="score a run folder and write RUN_DIR/report.md")
    p.add_argument("run_dir")
    p.add_argument("--extractor", default="auto", choices=["auto", "digits", "inception"],
                   help="auto: the shipped digits network for the built-in digits, Inception-v3 otherwise")
    p.add_argument("--inception-weights", default=None,
                   help="an Inception-v3 weights file (default: torch-fidelity's, fetched once into the cache)")
    p.add_argument("--target-class", default="auto",
                   help="class for the target share (default: the single digits label)")
    p.add_argument("--repeats", type=_positive, default=5, help="sample draws averaged")
    p = sub.add_parser("models", help="the named pretrained models (use a name wherever a path goes)")
    p.add_argument("--all", action="store_true", help="also the metric networks' weights")
    p = sub.add_parser("cache", help="what fastmine's cache holds ($FASTMINE_CACHE); remove entries")
    p.add_argument("--remove", nargs="+", metavar="NAME", help="a catalogue name, URL or file of the cache")
    p.add_argument("--clear", action="store_true", help="remove every file fastmine put there")
    p = sub.add_parser("download", help="fetch named models or URLs into the cache (for a cluster without internet)")
    p.add_argument("sources", nargs="+", metavar="NAME_OR_URL")
    p.add_argument("--to", default=None, metavar="DIR", help="a cache folder to fill instead (then FASTMINE_CACHE=DIR)")
    for name in plugins:
        sub.add_parser(name, add_help=False, help=f"{name} (fastmine {name} --help)")
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    plugins = _plugins()
    if argv[:1] and argv[0] in plugins:  # a plugin parses its own arguments
        try:
            return plugins[argv[0]].load()(argv[1:])
        except BAD_INPUT as e:
            print(f"fastmine {argv[0]}: error: {_one_line(e)}", file=sys.stderr)
            return 2
    debug = "--debug" in argv  # show the traceback instead of the one-line message
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser(plugins)
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(e.startswith("-") for e in extra):
        args.overrides += extra  # key=value after a flag (`--resume train.steps=600`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "sample":
            _sample(args)
        elif args.command == "demo":
            _demo(args)
        elif args.command == "eval":
            _eval(args)
        elif args.command == "invert":
            _invert(args)
        elif args.command == "convert":
            _convert(args)
        elif args.command in ("models", "cache", "download"):
            {"models": _models, "cache": _cache, "download": _download}[args.command](args)
        else:
            _train_command(args.command, args)
    except (*BAD_INPUT, *FAILED_RUN, OSError) as e:
        if debug:
            raise
        print(f"fastmine {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, FAILED_RUN) else 2
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename and e.strerror:  # a read-only folder, a full disk
        return f"{e.strerror}: {e.filename!r}"
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
