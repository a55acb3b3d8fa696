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
  Besides MineGAN++'s FID/KMMD/MV, the final protocol scores what reviewers of few-shot
  adaptation expect (formulas and defaults in :mod:`fastmine.metrics.scores`): KID
  (``kid``, ``kid_std`` over subsets), improved precision and recall (k = 3) and CDC's
  intra-cluster diversity, on the same features as FID -- the extractor's name is
  ``extractor`` in the result and, for the intra-cluster distance (which CDC measures with
  LPIPS), also ``intra_cluster_features``. The training-time callback leaves them out.

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
from .metrics.lpips import extract_embedding, find_lpips
from .metrics.scores import (
    KID_SUBSET_SIZE,
    KID_SUBSETS,
    PR_K,
    extract,
    fid,
    intra_cluster_diversity,
    kid,
    kid_plan,
    kmmd,
    knn_radii,
    mv,
    precision_recall,
    target_share,
)

TREND_KEYS = ("fid", "kmmd", "target_share")


def default_target_class(data_cfg, extractor: str):
    """The digit a single-label digits target asks for (None when that does not apply)."""
    if extractor != "digits" or data_cfg is None or getattr(data_cfg, "dataset", None) != "digits":
        return None
    labels = getattr(data_cfg, "labels", None)
    return int(labels[0]) if labels is not None and len(labels) == 1 else None


class Scorer:
    """Real features computed once; fake images scored against them.

    ``extractor``: ``"auto"`` (the shipped digits network for 1-channel images, Inception-v3 for
    3-channel ones, as clean-fid and torch-fidelity score them), ``"digits"``, ``"inception"`` or a
    module. ``kid_subsets``: KID's number of subsets; ``seed``: the seed of the generator that draws
    them (a fresh one per :meth:`score`, so a set of fakes always gets the same subsets)."""

    def __init__(self, real, extractor="auto", inception_weights=None, target_class=None, device="cpu",
                 kid_subsets=KID_SUBSETS, seed=0, lpips="auto"):
        real = torch.as_tensor(real).float()
        if isinstance(extractor, str) and extractor == "auto":
            extractor = "inception" if real.ndim == 4 and real.shape[1] == 3 else "digits"
        self.name = extractor if isinstance(extractor, str) else type(extractor).__name__
        if isinstance(extractor, str):
            extractor = get_feature_extractor(
                extractor, weights=inception_weights if extractor.lower().startswith("incep") else None, device=device)
        self.net, self.device = extractor, device
        if target_class is not None and not hasattr(extractor, "forward_with_features"):
            raise ValueError(f"target_class needs an extractor with a class head; {self.name} has none (use 'digits')")
        self.target_class = target_class
        kid_plan(2, 2, kid_subsets)  # a bad number of subsets fails here, not after sampling
        self.kid_subsets, self.seed = kid_subsets, seed
        self.real = real
        self.real_feats = extract(self.net, self.real, device=device)
        self._real_radii = None
        # CDC's intra-cluster diversity on LPIPS ("auto": for 3-channel images, its weights fetched
        # on first use; grey digits keep the scorer's features), or an LPIPS module given; None:
        # on this scorer's features
        if isinstance(lpips, str) and lpips == "auto":
            lpips = find_lpips(device) if real.ndim == 4 and real.shape[1] == 3 else None
        self.lpips = lpips
        self._real_lpips = None

    def score(self, fake: torch.Tensor, real_feats=None, extra=True) -> dict:
        """fid, kmmd, kmmd_sigma, mv, [target_share]; with ``extra`` also the few-shot metrics
        of :meth:`extra_scores` (the training-time trend leaves them out: ``extra=False``)."""
        real_feats = self.real_feats if real_feats is None else real_feats
        if self.target_class is not None:
            feats, logits = extract(self.net, fake, device=self.device, with_logits=True)
        else:
            feats, logits = extract(self.net, fake, device=self.device), None
        k, sigma = kmmd(real_feats, feats, return_bandwidth=True)
        out = {"fid": fid(real_feats, feats), "kmmd": k, "kmmd_sigma": sigma, "mv": mv(feats)}
        if logits is not None:
            out["target_share"] = target_share(logits, self.target_class)
        if extra:
            lpips = None
            if self.lpips is not None and real_feats is self.real_feats and fake.dim() == 4:
                if self._real_lpips is None:
                    self._real_lpips = extract_embedding(self.lpips, self.real, self.device)
                lpips = (self._real_lpips, extract_embedding(self.lpips, fake, self.device))
            out.update(self.extra_scores(real_feats, feats, lpips))
        return out

    def extra_scores(self, real_feats, fake_feats, lpips=None) -> dict:
        """KID (mean and std over subsets, subset size and count), precision and recall
        (k = PR_K; None when a set has no more than k samples, so no k-NN manifold) and
        intra-cluster diversity (clusters counted, singletons left out), all on this scorer's
        features but the last, which is on LPIPS when ``lpips`` gives the (real, fake) LPIPS
        embeddings, as CDC's protocol has it; ``intra_cluster_features`` names which."""
        subsets, size = kid_plan(len(real_feats), len(fake_feats), self.kid_subsets, KID_SUBSET_SIZE)
        kid_mean, kid_std = kid(real_feats, fake_feats, self.kid_subsets, KID_SUBSET_SIZE,
                                generator=torch.Generator().manual_seed(self.seed))
        out = {"kid": kid_mean, "kid_std": kid_std, "kid_subsets": subsets, "kid_subset_size": size}
        if min(len(real_feats), len(fake_feats)) > PR_K:
            own = real_feats is self.real_feats
            if own and self._real_radii is None:
                self._real_radii = knn_radii(real_feats, PR_K)
            out["precision"], out["recall"] = precision_recall(real_feats, fake_feats, PR_K,
                                                               real_radii=self._real_radii if own else None)
        else:
            out["precision"] = out["recall"] = None
        if lpips is None:
            out.update(intra_cluster_diversity(real_feats, fake_feats), intra_cluster_features=self.name)
        else:
            out.update(intra_cluster_diversity(*lpips, squared=True), intra_cluster_features="lpips-alex")
        return out


def fid_callback(real, every=50, n=500, extractor="auto", target_class=None, inception_weights=None,
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
        scores = state["scorer"].score(trainer.sampler.sample(n, seed=seed), extra=False)
        return {k: v for k, v in scores.items() if k in TREND_KEYS}

    return callback


def evaluate_sampler(sampler, real, extractor="auto", target_class=None, inception_weights=None, n_cap=10_000,
                     repeats=5, seed=0, device="cpu", scorer: Scorer | None = None) -> dict:
    """The paper's protocol (as many generated as real images, capped at ``n_cap``), averaged
    over ``repeats`` sample draws. Returns :meth:`Scorer.score`'s keys (fid, kmmd, kmmd_sigma,
    mv, [target_share], kid, kid_std, kid_subsets, kid_subset_size, precision, recall,
    intra_cluster, intra_cluster_clusters, intra_cluster_singletons, intra_cluster_features),
    each the mean over draws of the draws that have it (a value every draw shares, such as a
    name or a subset size, as it is), and fid_draw_std, n_real, n_fake, repeats, extractor."""
    scorer = scorer or Scorer(_cap(real, n_cap, seed), extractor, inception_weights, target_class, device)
    n = len(scorer.real)
    draws = [scorer.score(sampler.sample(n, seed=seed + 1000 * r)) for r in range(repeats)]
    out = {k: _over_draws([d[k] for d in draws]) for k in draws[0]}
    std = mean_std([d["fid"] for d in draws])[1]
    out["fid_draw_std"] = 0.0 if std is None else std
    out.update(n_real=n, n_fake=n, repeats=repeats, extractor=scorer.name)
    return out


def _over_draws(values):
    if all(v == values[0] for v in values):
        return values[0]
    return mean_std(values)[0]  # draws where a score is undefined (None) are left out


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
        curve.append((step, scorer.score(sampler.sample(n or len(scorer.real), seed=seed), extra=False)["fid"]))
    return curve


def evaluate_run(run_dir, extractor="auto", inception_weights=None, target_class="auto", repeats=5,
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
    if extractor == "auto":  # the shipped network for the built-in digits, Inception for images from files;
        # a target given in code is scored by its channels (Scorer)
        extractor = {"digits": "digits", "folder": "inception", "tensor": "inception"}.get(cfg.data.dataset, "auto")
    if extractor == "digits" and cfg.data.dataset in ("folder", "tensor"):
        raise ValueError(f"the digits feature network scores 16 px handwritten digits, not this run's "
                         f"{cfg.data.dataset} data ({cfg.data.path}): use --extractor inception (the default) for "
                         "the paper's FID on natural images")
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
