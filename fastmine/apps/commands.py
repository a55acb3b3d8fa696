"""What each `fastmine` command does once its arguments are parsed and checked.

:mod:`fastmine.cli` parses without importing torch and loads this module only to run a
command (its table names ``fastmine.apps.commands:FUNCTION``). Each function takes the
parsed arguments; a training command's are checked and resolved into ``args.cfg`` first.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import distributed
from ..config import fill_defaults, load_config, to_dict, validate
from ..evaluation import evaluate_run
from ..files import convert, load_any, read_info, save_latents
from ..images import save_grid
from ..inversion import invert
from ..methods import get_method
from ..runfolder import RunFolderBusy
from ..runs import load_config_data, load_source, prepare, resolve_device
from ..trainer import RunInterrupted
from .demo import run_demo
from .demo_multi import run_demo_multi
from .presets import DEMO_METHODS, DIGITS, TOOLKIT_ROWS
from .report import write_run_report

# this module's own kinds of bad input (exit 2) and of a run that failed or was stopped
# (exit 1), on top of the CLI's built-in ones: each is told in one line, without a traceback
BAD_INPUT = (RunFolderBusy,)
FAILED_RUN = (RunInterrupted,)


def train(args):
    result = prepare(args.cfg, resume=args.resume, restart=args.restart).fit()
    if result.run_dir is not None and distributed.rank() == 0:  # once, not once per process
        print(f"wrote {result.model_path} (run folder {result.run_dir})")
    return result


def sample(args):
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


def evaluate(args):
    tc = args.target_class
    tc = None if tc in ("none", "None") else (tc if tc == "auto" else int(tc))
    res = evaluate_run(args.run_dir, extractor=args.extractor, inception_weights=args.inception_weights,
                       target_class=tc, repeats=args.repeats)
    report = write_run_report(args.run_dir, res)
    print(f"wrote {report}: " + ", ".join(
        f"{k} {v:.4g}" for k, v in res["metrics"].items() if k in ("fid", "kmmd", "mv", "target_share")))


def inversion(args):
    cfg = load_config(None, args.overrides, defaults=args.defaults)
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


def conversion(args):
    cfg = load_config(None, args.overrides)
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


def demo(args):
    if args.multi:
        run_demo_multi(out=args.out, quick=args.quick, seed=args.seed, steps=args.steps, jobs=args.jobs,
                       digits=tuple(args.digits or DIGITS), baselines=not args.pi_only)
    else:
        run_demo(out=args.out, quick=args.quick, seed=args.seed, seeds=args.seeds, steps=args.steps,
                 methods=args.methods or (DEMO_METHODS + TOOLKIT_ROWS if args.toolkit else DEMO_METHODS),
                 threads=args.threads, jobs=args.jobs)
