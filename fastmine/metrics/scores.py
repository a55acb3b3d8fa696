"""Scores on features: FID, KMMD, MV, target share (the paper's protocol around them is
:mod:`fastmine.evaluation`).

All scores take feature matrices [N, F] (any float dtype, any device) and compute on the
CPU in float64.

FID -- implementation choice
    ``fid`` feeds the feature matrices to torchmetrics' public
    ``FrechetInceptionDistance`` through its documented custom-extractor path: the
    ``feature`` argument is an identity ``nn.Module`` carrying ``num_features``, so
    torchmetrics neither resizes nor quantises anything (images-to-features is ours, see
    ``features.py``; torchmetrics would otherwise want uint8 3x299x299 images). The metric
    accumulates sums and Gram matrices in float64, uses the unbiased (N-1) covariance,
    and takes the trace of the matrix square root as sum(sqrt(eigvals(S1 @ S2))), so no
    hand-written matrix square root lives here. Features are handed over as float64 so
    the result stays float64.

KMMD
    Squared maximum mean discrepancy with the Gaussian kernel
    k(a, b) = exp(-||a - b||^2 / (2 sigma^2)), *unbiased* U-statistic estimator
    (Gretton et al. 2012, eq. 3):

        MMD^2_u = 1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
                  - 2/(mn) sum_{i,j} k(x_i, y_j)

    (it can be slightly negative when the two sets match). Bandwidth when not given --
    median heuristic: sigma = median of the Euclidean distances ||a - b|| over all pairs
    a != b of the pooled real+fake features (numpy median; when more than
    ``MEDIAN_MAX_POINTS`` pooled points exist, over a fixed-seed random subset of that
    many). The sigma used is returned with ``return_bandwidth=True`` and reported by
    :class:`fastmine.evaluation.Scorer` as ``kmmd_sigma``.

MV
    Mean variance (the paper's diversity measure, after BSA [16]): mean over feature
    dimensions of the variance across the generated samples. The paper gives no
    estimator; we use the unbiased (N-1) variance by default, matching FID's covariance
    (``unbiased=False`` gives the population variance).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["fid", "kmmd", "mv", "target_share", "extract", "MEDIAN_MAX_POINTS"]

log = logging.getLogger(__name__)

MEDIAN_MAX_POINTS = 2000
_KERNEL_CHUNK = 2048


def _as_f64(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    x = x.detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a [N, F] feature matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


class _Identity(nn.Module):
    """Feature 'extractor' for torchmetrics' FID that passes features through."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# ----------------------------------------------------------------------------------- FID
def fid(real_feats, fake_feats) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] (float64)."""
    r, f = _as_f64(real_feats, "real_feats"), _as_f64(fake_feats, "fake_feats")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dims differ: {r.shape[1]} vs {f.shape[1]}")
    if len(r) < 2 or len(f) < 2:
        raise ValueError("FID needs at least 2 samples per set")
    metric = FrechetInceptionDistance(feature=_Identity(r.shape[1]), reset_real_features=True)
    metric.update(r, real=True)
    metric.update(f, real=False)
    return float(metric.compute())


# ---------------------------------------------------------------------------------- KMMD
def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def median_bandwidth(real_feats, fake_feats, max_points: int = MEDIAN_MAX_POINTS, seed: int = 0) -> float:
    """Median heuristic: median pairwise Euclidean distance over the pooled features
    (pairs i<j; a fixed-seed subset of ``max_points`` points if there are more)."""
    x = torch.cat([_as_f64(real_feats, "real_feats"), _as_f64(fake_feats, "fake_feats")])
    if len(x) > max_points:
        g = torch.Generator().manual_seed(seed)
        x = x[torch.randperm(len(x), generator=g)[:max_points]]
    iu = torch.triu_indices(len(x), len(x), offset=1)
    d = _sq_dists(x, x)[iu[0], iu[1]].sqrt()
    sigma = float(np.median(d.numpy()))
    if not sigma > 0:
        sigma = 1.0  # all points identical: any bandwidth gives MMD 0
    return sigma


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, same: bool) -> float:
    """sum_{i,j} exp(-gamma ||a_i - b_j||^2), excluding i==j when ``same``."""
    total = 0.0
    for i in range(0, len(a), _KERNEL_CHUNK):
        k = torch.exp(-gamma * _sq_dists(a[i : i + _KERNEL_CHUNK], b))
        total += float(k.sum())
    if same:
        total -= len(a)  # diagonal: k(a_i, a_i) = exp(0) = 1 exactly
    return total


def kmmd(real_feats, fake_feats, bandwidth: Optional[float] = None, return_bandwidth: bool = False):
    """Unbiased squared MMD with a Gaussian kernel (see module docstring).

    ``bandwidth`` is sigma in k(a,b)=exp(-||a-b||^2/(2 sigma^2)); None -> median heuristic.
    Returns the value, or ``(value, sigma)`` when ``return_bandwidth``.
    """
    x, y = _as_f64(real_feats, "real_feats"), _as_f64(fake_feats, "fake_feats")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("the unbiased KMMD needs at least 2 samples per set")
    sigma = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"bandwidth must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * sigma * sigma)
    kxx = _kernel_sum(x, x, gamma, same=True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, gamma, same=True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, gamma, same=False) / (m * n)
    value = kxx + kyy - 2.0 * kxy
    log.debug("kmmd=%.6g sigma=%.6g (m=%d, n=%d)", value, sigma, m, n)
    return (value, sigma) if return_bandwidth else value


# ------------------------------------------------------------------------------------ MV
def mv(fake_feats, unbiased: bool = True) -> float:
    """Mean over feature dimensions of the variance across samples (N-1 by default)."""
    f = _as_f64(fake_feats, "fake_feats")
    if unbiased and len(f) < 2:
        raise ValueError("unbiased variance needs at least 2 samples")
    return float(f.var(dim=0, unbiased=unbiased).mean())


# -------------------------------------------------------------------------- target share
def target_share(logits, target_class: int) -> float:
    """Fraction of samples whose argmax class is ``target_class``."""
    logits = torch.as_tensor(logits)
    if logits.dim() != 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty [N, C] matrix, got shape {tuple(logits.shape)}")
    if not 0 <= int(target_class) < logits.shape[1]:
        raise ValueError(f"target_class {target_class} out of range for {logits.shape[1]} classes")
    return float((logits.argmax(1) == int(target_class)).double().mean())


# ------------------------------------------------------------------------------ features
@torch.no_grad()
def extract(extractor: nn.Module, images: torch.Tensor, batch_size: int = 500, device="cpu", with_logits=False):
    """Features (and logits when ``with_logits``) of ``images`` in batches, on the CPU."""
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        xb = images[i : i + batch_size].to(device)
        if with_logits:
            lo, fe = extractor.forward_with_features(xb)
            logits.append(lo.float().cpu())
        else:
            fe = extractor.features(xb)
        feats.append(fe.double().cpu())
    f = torch.cat(feats)
    return (f, torch.cat(logits)) if with_logits else f
