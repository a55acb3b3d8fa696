"""Evaluating runs: a cheap FID callback during training, and ``evaluate_run`` afterwards.

Two protocols, on purpose:

* **during training** (``fid_callback``): a fixed number of generated images (500 by
  default) against the whole target set, on the shipped digits net. It is a trend line,
  cheap enough to run every k steps; its numbers are not the paper's protocol and are
  logged as ``fid``/``kmmd``/``target_share`` in ``metrics.jsonl``.
* **final** (``evaluate_sampler`` / ``evaluate_run``): the paper's protocol, as many
  generated as real images (capped at 10,000). With a 100-image target that is 100
  generated images, and one draw of 100 is noisy; we average ``repeats`` draws with
  different sample seeds (the spread across draws is reported as ``fid_draw_std``).

Sampling never touches the trainer's random stream (``Sampler.sample`` has its own
generator, in eval mode, so batch-norm statistics do not move): a run with the callback
trains exactly as one without it.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .config import load_config
from .data import load_data
from .files import load_any, read_file
from .metrics.features import get_feature_extractor
from .metrics.scores import extract, fid, kmmd, mv, target_share

TREND_KEYS = ("fid", "kmmd", "target_share")


def default_target_class(data_cfg, extractor: str):
    """The digit a single-label digits target asks for (None when that does not apply)."""
    if extractor != "digits" or data_cfg is None or getattr(data_cfg, "dataset", None) != "digits":
        return None
    labels = getattr(data_cfg, "labels", None)
    return int(labels[0]) if labels is not None and len(labels) == 1 else None


class Scorer:
    """Real features computed once; fake images scored against them."""

    def __init__(self, real, extractor="digits", inception_weights=None, target_class=None, device="cpu"):
        self.name = extractor if isinstance(extractor, str) else type(extractor).__name__
        if isinstance(extractor, str):
            extractor = get_feature_extractor(
                extractor, weights=inception_weights if extractor.lower().startswith("incep") else None, device=device)
        self.net, self.device = extractor, device
        if target_class is not None and not hasattr(extractor, "forward_with_features"):
            raise ValueError(f"target_class needs an extractor with a class head; {self.name} has none (use 'digits')")
        self.target_class = target_class
        self.real = torch.as_tensor(real).float()
        self.real_feats = extract(self.net, self.real, device=device)

    def score(self, fake: torch.Tensor, real_feats=None) -> dict:
        real_feats = self.real_feats if real_feats is None else real_feats
        if self.target_class is not None:
            feats, logits = extract(self.net, fake, device=self.device, with_logits=True)
        else:
            feats, logits = extract(self.net, fake, device=self.device), None
        k, sigma = kmmd(real_feats, feats, return_bandwidth=True)
        out = {"fid": fid(real_feats, feats), "kmmd": k, "kmmd_sigma": sigma, "mv": mv(feats)}
        if logits is not None:
            out["target_share"] = target_share(logits, self.target_class)
        return out


def fid_callback(real, every=50, n=500, extractor="digits", target_class=None, inception_weights=None,
                 seed=0, device="cpu"):
    """A :class:`fastmine.trainer.Trainer` callback: FID/KMMD/target share every ``every`` steps.

    Call it at log steps (the trainer does); it scores at steps divisible by ``every`` and at
    the last step, with ``n`` samples from a fixed seed (so curves compare like with like).
    Keep ``every`` a multiple of ``log.log_every``.
    """
    state = {}

    def callback(trainer, step):
        if step % every and step != trainer.cfg.train.steps:
            return None
        if "scorer" not in state:  # built lazily: the feature net loads once, in the training process
            state["scorer"] = Scorer(real, extractor, inception_weights, target_class, device)
        scores = state["scorer"].score(trainer.sampler.sample(n, seed=seed))
        return {k: v for k, v in scores.items() if k in TREND_KEYS}

    return callback


def evaluate_sampler(sampler, real, extractor="digits", target_class=None, inception_weights=None, n_cap=10_000,
                     repeats=5, seed=0, device="cpu", scorer: Scorer | None = None) -> dict:
    """The paper's protocol (as many generated as real images, capped at ``n_cap``), averaged
    over ``repeats`` sample draws. Returns fid, kmmd, mv, [target_share], fid_draw_std, n_real,
    n_fake, repeats, extractor."""
    scorer = scorer or Scorer(_cap(real, n_cap, seed), extractor, inception_weights, target_class, device)
    n = len(scorer.real)
    draws = [scorer.score(sampler.sample(n, seed=seed + 1000 * r)) for r in range(repeats)]
    out = {k: sum(d[k] for d in draws) / len(draws) for k in draws[0]}
    std = mean_std([d["fid"] for d in draws])[1]
    out["fid_draw_std"] = 0.0 if std is None else std
    out.update(n_real=n, n_fake=n, repeats=repeats, extractor=scorer.name)
    return out


def _cap(real, n_cap, seed):
    real = torch.as_tensor(real).float()
    if len(real) > n_cap:
        g = torch.Generator().manual_seed(seed)
        real = real[torch.randperm(len(real), generator=g)[:n_cap]]
    return real


def mean_std(values) -> tuple:
    """(mean, sample standard deviation (n - 1)) of the values that are not None; the std is
    None for fewer than two values, both are None for none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return m, s


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logged_curve(run_dir, key="fid") -> list[tuple[int, float]]:
    """(step, value) of every metrics.jsonl line that logged ``key``."""
    return [(row["step"], float(row[key])) for row in read_metrics(run_dir) if key in row]


def checkpoint_curve(run_dir, scorer: Scorer, n=None, seed=0) -> list[tuple[int, float]]:
    """FID of every checkpoint still on disk (``log.keep_checkpoints`` decides how many)."""
    run_dir = Path(run_dir)
    sampler = load_any(run_dir / "model.safetensors")
    curve = []
    for path in sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors")):
        tensors, _ = read_file(path)
        sampler.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("sampler.")})
        step = int(path.stem.split("-")[1])
        curve.append((step, scorer.score(sampler.sample(n or len(scorer.real), seed=seed))["fid"]))
    return curve


def evaluate_run(run_dir, extractor="digits", inception_weights=None, target_class="auto", repeats=5,
                 n_cap=10_000, seed=0, target=None) -> dict:
    """Score RUN_DIR/model.safetensors against the target data its config.yaml names, with
    the paper's protocol; with the FID over training (from the logged evaluations, or failing
    that from the checkpoints on disk). ``fastmine eval`` writes it up as RUN_DIR/report.md."""
    run_dir = Path(run_dir)
    model = run_dir / "model.safetensors"
    cfg_path = run_dir / "config.yaml"
    for p in (model, cfg_path):
        if not p.is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} is not a finished run folder: {p.name} is missing")
    cfg = load_config(cfg_path)
    if extractor == "digits" and cfg.data.dataset in ("folder", "tensor"):
        raise ValueError(f"the digits feature network scores 16 px handwritten digits, not this run's "
                         f"{cfg.data.dataset} data ({cfg.data.path}): pass --extractor inception with "
                         "--inception-weights FILE for the paper's FID on natural images")
    # a target given in code is not in the config (data.dataset=given): the caller passes it again
    real = torch.as_tensor(target).float() if target is not None else load_data(cfg.data)
    if real.ndim != 4:
        raise ValueError("fastmine eval scores images; this run's data are vectors")
    if target_class == "auto":
        target_class = default_target_class(cfg.data, extractor)
    sampler = load_any(model)
    scorer = Scorer(_cap(real, n_cap, seed), extractor, inception_weights, target_class)
    metrics = evaluate_sampler(sampler, real, repeats=repeats, seed=seed, scorer=scorer)

    curve, curve_source = logged_curve(run_dir), "logged evaluations in metrics.jsonl (500 samples each, fixed seed)"
    if not curve and (run_dir / "checkpoints").is_dir():
        curve = checkpoint_curve(run_dir, scorer, seed=seed)
        curve_source = "checkpoints on disk (paper protocol, one draw each)"
    return {"metrics": metrics, "curve": curve, "curve_source": curve_source if curve else None,
            "method": cfg.method, "steps": cfg.train.steps, "target_class": target_class}
