"""``fastmine demo``: the single-generator story on the built-in digits, offline.

Pretrain a WGAN-GP source on digits 0-8 (cached by its settings, so a second run reuses
it), then mine it for 100 images of digit 9 (the MineGAN++ off-manifold MNIST setting).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .cli import COMMAND_DEFAULTS
from .config import load_config


def cache_dir() -> Path:
    return Path(os.environ.get("FASTMINE_CACHE", Path.home() / ".cache" / "fastmine"))


def pretrained_source(steps: int, seed: int = 0, overrides=()) -> Path:
    """Path of a digits 0-8 source GAN, trained once per distinct setting and cached."""
    from .api import run_config

    over = [f"train.steps={steps}", f"seed={seed}", *overrides]
    cfg = load_config(None, over, defaults=COMMAND_DEFAULTS["pretrain"])
    key = hashlib.sha256(json.dumps(over + [repr(cfg)], sort_keys=True).encode()).hexdigest()[:12]
    final = cache_dir() / "sources" / f"digits0-8-{key}.safetensors"
    if final.is_file():
        print(f"using the cached source generator {final}")
        return final
    work = cache_dir() / "sources" / f"run-{key}"
    shutil.rmtree(work, ignore_errors=True)  # a half-finished earlier attempt
    cfg.out_dir, cfg.name = str(work.parent), work.name
    print(f"pretraining the source WGAN-GP on digits 0-8 ({steps} steps); cached for next time at {final}")
    result = run_config(cfg)
    os.replace(result.model_path, final)
    shutil.rmtree(work, ignore_errors=True)
    return final


def run_demo(out="runs/demo", quick=False, seed=0):
    from .api import run_config

    out = Path(out)
    source = pretrained_source(steps=150 if quick else 2000, seed=seed)
    over = [f"source.generator={source}", f"out_dir={out}", "name=minegan_noft", f"seed={seed}",
            f"train.steps={40 if quick else 400}"]
    if (out / "minegan_noft").exists():
        shutil.rmtree(out / "minegan_noft")  # the demo re-runs from its cached source each time
    cfg = load_config(None, over, defaults=COMMAND_DEFAULTS["mine"])
    result = run_config(cfg)
    grids = sorted((result.run_dir / "samples").glob("*.png"))
    print(f"mined generator: {result.model_path}\nsample grids: {grids[-1] if grids else 'none'}")
    return result
