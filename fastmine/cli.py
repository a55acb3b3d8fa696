"""``fastmine <command> [CONFIG.yaml] [key=value ...]``.

Every training command resolves defaults <- the command's built-in settings <- the YAML
file <- ``key=value`` overrides (``train.steps=500 data.labels=[9]``) and runs in
``runs/NAME/``: config.yaml, metrics.jsonl, samples/, checkpoints/, model.safetensors.
Other packages add commands through the ``fastmine.commands`` entry-point group (``fastmine
bench`` comes from the benchmarks package that installs with fastmine).
"""
# This module imports no torch: help, argument errors and config errors answer at once, and
# a command's module (the table's "module:function") loads only to run it.
from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from importlib.metadata import entry_points
from typing import Callable, NamedTuple, Optional

from .apps.presets import COMMAND_DEFAULTS, DIGITS, ROWS, TOOLKIT_ROWS
from .config import (
    RESUMABLE,
    ConfigError,
    RunConfig,
    has_run_mark,
    load_config,
    merge,
    parse_overrides,
    read_yaml,
    to_dict,
    without_trust,
)
from .methods import METHODS, methods_of

# bad input (exit 2) and a run that failed or was stopped (exit 1): one line each, no traceback;
# a command's module adds its own exception classes as BAD_INPUT / FAILED_RUN
BAD_INPUT = (ValueError, OSError, ImportError)  # ConfigError is a ValueError; a missing file an OSError
FAILED_RUN = (FloatingPointError,)


def arg(*flags, **kwargs):
    """One ``add_argument`` call, as data."""
    return flags, kwargs


class Command(NamedTuple):
    help: str
    run: str                                   # "module:function" called with the parsed arguments
    args: tuple = ()                           # arg(...) entries
    epilog: Optional[str] = None
    check: Optional[Callable] = None           # torch-free checks of the arguments before `run` loads


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


def _train_config(args):
    """The run's settings, resolved and checked (``args.cfg``) before torch loads."""
    config_path = None
    overrides = list(args.overrides)
    if overrides and overrides[0].endswith((".yaml", ".yml")) and "=" not in overrides[0]:
        config_path = overrides.pop(0)
    cfg = load_config(config_path, overrides, defaults=command_defaults(args.command, config_path, overrides))
    stored = cfg.run_dir / "config.yaml"
    if args.resume and has_run_mark(stored):
        # the run's own settings are the base; what the command line says on top of them is
        # checked against them (only steps, device and logging may change: config.RESUMABLE).
        # Settings that run code are not: only this command line gives them (config.TRUST_KEYS)
        cfg = load_config(config_path, overrides, defaults=without_trust(to_dict(load_config(stored))))
    allowed = methods_of(args.command)
    if cfg.method not in allowed:
        raise ConfigError(f"`fastmine {args.command}` runs method {' or '.join(allowed)}, not {cfg.method!r}")
    args.cfg = cfg


def _invert_config(args):
    args.defaults = command_defaults("mine", None, args.overrides)


def _source_overrides_only(args):
    outside = sorted({key.split(".")[0] for key in parse_overrides(args.overrides)} - {"source"})
    if outside:
        raise ConfigError(f"fastmine convert takes source.* settings only, got {', '.join(outside)}")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _train_command(cmd) -> Command:
    methods = methods_of(cmd)
    epilog = "methods:\n" + "\n".join(f"  {m}: {METHODS[m].summary}" for m in methods) + "\n\n" + _settings_help()
    return Command(
        f"train ({', '.join(methods)})", "fastmine.apps.commands:train", epilog=epilog, check=_train_config, args=(
            arg("overrides", nargs="*", help="[CONFIG.yaml] key=value ..."),
            arg("--resume", action="store_true",
                help="continue runs/NAME as it was configured, from its newest intact checkpoint "
                     "(key=value may change " + ", ".join(RESUMABLE) + ")"),
            arg("--restart", action="store_true", help="replace what runs/NAME holds with a fresh run")))


# `fastmine COMMAND`: adding a command is one entry here (its module loads only when it runs)
COMMANDS = {cmd: _train_command(cmd) for cmd in COMMAND_DEFAULTS}
COMMANDS.update({
    "sample": Command("draw samples from a trained model file", "fastmine.apps.commands:sample", args=(
        arg("model", help="a model file, a run folder (its model.safetensors), a URL or a catalogue name"),
        arg("--n", type=_positive, default=64),
        arg("--seed", type=int, default=0),
        arg("--out", default="samples.png", help=".png grid or .pt tensor"),
        arg("--device", default="cpu"),
        arg("--trust-code", action="store_true", help="let the file name a factory to run (see docs/models.md)"))),
    "invert": Command(
        "GAN inversion: latents of MODEL that reconstruct the target images", "fastmine.apps.commands:inversion",
        epilog="keys: data.* (the images; default the 100 nines), invert.* (init, steps, lr, feature_weight, "
               "prior_weight, ...), seed, device", check=_invert_config, args=(
            arg("model", help="a model file, a run folder's model.safetensors, or any generator fastmine reads "
                              "(an NVIDIA pickle: source.latent=w+ picks the space)"),
            arg("overrides", nargs="*", help="key=value ..."),
            arg("--out", default="runs/invert", help="folder for latents.safetensors, reconstruction.png"))),
    "convert": Command(
        "write any generator fastmine reads as a self-describing fastmine file", "fastmine.apps.commands:conversion",
        epilog="keys: source.key, source.latent, source.truncation_psi, source.truncation_cutoff, "
               "source.noise_mode, source.arch, source.latent_spec, source.allow_pickle",
        check=_source_overrides_only, args=(
            arg("input", help="an NVIDIA network pickle, a rosinality checkpoint, a torch checkpoint (with "
                              "source.arch=...), a fastmine file; a file, a URL or a name (`fastmine models`)"),
            arg("out", help="OUT.safetensors"),
            arg("overrides", nargs="*", help="source.key=value ..."),
            arg("--no-critic", action="store_true", help="leave out the discriminator the input holds"),
            arg("--overwrite", action="store_true", help="replace OUT if it exists"))),
    "demo": Command(
        "digits 0-8 source (cached) -> 100 nines: all methods compared in OUT/report.md",
        "fastmine.apps.commands:demo", args=(
            arg("--quick", action="store_true", help="tiny settings (about a minute)"),
            arg("--out", default="runs/demo"),
            arg("--seed", type=int, default=0, help="first seed"),
            arg("--seeds", type=_positive, default=1, help="number of seeds (3 gives mean ± std)"),
            arg("--methods", nargs="+", default=None, choices=list(ROWS), metavar="ROW",
                help=f"rows to run: {', '.join(ROWS)}"),
            arg("--toolkit", action="store_true",
                help="also the few-shot toolkit's rows: " + ", ".join(TOOLKIT_ROWS) + " (about twice as long)"),
            arg("--steps", type=int, default=None, help="generator updates per method"),
            arg("--threads", type=int, default=1,
                help="torch CPU threads per run (1 is fastest on a shared 2-core box)"),
            arg("--jobs", type=_positive, default=1, help="runs trained in parallel processes (e.g. the core count)"),
            arg("--multi", action="store_true",
                help="the two-generator task instead (sources on 0-4 / 5-9, a 2/6 target): OUT/report_multi.md"),
            arg("--digits", type=int, nargs=2, default=None, metavar=("A", "B"),
                help=f"--multi: the target's two digits, one of 0-4 and one of 5-9 (default {DIGITS[0]} {DIGITS[1]})"),
            arg("--pi-only", action="store_true", help="--multi: the π table only (no baselines, no fusion)"))),
    "eval": Command("score a run folder and write RUN_DIR/report.md", "fastmine.apps.commands:evaluate", args=(
        arg("run_dir"),
        arg("--extractor", default="auto", choices=["auto", "digits", "inception"],
            help="auto: the shipped digits network for the built-in digits, Inception-v3 otherwise"),
        arg("--inception-weights", default=None,
            help="an Inception-v3 weights file (default: torch-fidelity's, fetched once into the cache)"),
        arg("--target-class", default="auto", help="class for the target share (default: the single digits label)"),
        arg("--repeats", type=_positive, default=5, help="sample draws averaged"))),
    "models": Command("the named pretrained models (use a name wherever a path goes)",
                      "fastmine.apps.hub_commands:models", args=(
                          arg("--all", action="store_true", help="also the metric networks' weights"),)),
    "cache": Command("what fastmine's cache holds ($FASTMINE_CACHE); remove entries",
                     "fastmine.apps.hub_commands:cache", args=(
                         arg("--remove", nargs="+", metavar="NAME", help="a catalogue name, URL or file of the cache"),
                         arg("--clear", action="store_true", help="remove every file fastmine put there"))),
    "download": Command("fetch named models or URLs into the cache (for a cluster without internet)",
                        "fastmine.apps.hub_commands:download", args=(
                            arg("sources", nargs="+", metavar="NAME_OR_URL"),
                            arg("--to", default=None, metavar="DIR",
                                help="a cache folder to fill instead (then FASTMINE_CACHE=DIR)"))),
})


def _plugins() -> dict:
    """Commands other installed packages add (entry-point group ``fastmine.commands``): each a
    ``main(argv) -> exit code`` with its own parser."""
    return {ep.name: ep for ep in entry_points(group="fastmine.commands")}


def build_parser(plugins=()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmine", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, epilog=command.epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, kwargs in command.args:
            p.add_argument(*flags, **kwargs)
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
    command = COMMANDS[args.command]
    module_name, function = command.run.split(":")
    try:
        if command.check is not None:
            command.check(args)  # key=value syntax and the config, before anything heavy loads
        getattr(importlib.import_module(module_name), function)(args)
    except Exception as e:
        module = sys.modules.get(module_name)
        bad = BAD_INPUT + getattr(module, "BAD_INPUT", ())
        failed = FAILED_RUN + getattr(module, "FAILED_RUN", ())
        if debug or not isinstance(e, bad + failed):
            raise
        print(f"fastmine {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1 if isinstance(e, failed) else 2
    return 0


def _one_line(e: BaseException) -> str:
    if hasattr(e, "for_cli"):  # fastmine.runfolder.RunFolderError: the flags, not the Python keywords
        return e.for_cli()
    if isinstance(e, OSError) and e.filename and e.strerror:  # a read-only folder, a full disk
        return f"{e.strerror}: {e.filename!r}"
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
