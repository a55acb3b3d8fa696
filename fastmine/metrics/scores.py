"""Scores on features: FID, KMMD, MV, target share, KID, precision/recall and intra-cluster
diversity (the paper's protocol around them is :mod:`fastmine.evaluation`).

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

KID -- implementation choice
    Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"): the
    squared MMD with the cubic polynomial kernel k(x, y) = (x^T y / d + 1)^3 (d: feature
    dimension), estimated on ``subsets`` random pairs of subsets of s real and s fake
    features (drawn without replacement), with the estimator of Bińkowski et al.'s code
    and torchmetrics' ``KernelInceptionDistance``:

        MMD^2 = [sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)] / (s(s-1)) - 2/s^2 sum_{i,j} k(x_i, y_j)

    returned as the mean and the population (ddof 0) standard deviation over subsets, as
    both of those do. Defaults: 100 subsets (torchmetrics' and torch-fidelity's default),
    s = min(1000, n_real, n_fake) (1000 is the paper's subset size). torchmetrics' metric is
    not called here because it draws the subsets from the *global* RNG (``torch.randperm``
    with no generator); ``kid`` draws the same sequence (per subset one permutation of the
    real set, then one of the fake set) from an explicit ``torch.Generator``, so with equal
    seeds the two give the same numbers (tests/test_metrics.py checks this). When s equals
    both set sizes every subset is the whole of both sets and gives the same value; it is
    computed once (std 0).

Precision and recall
    Improved precision and recall (Kynkäänniemi et al. 2019), k = 3 as in the paper: the
    manifold of a set is the union of balls around each of its points, of radius the
    distance to the point's k-th nearest neighbour in the same set (the point itself left
    out, duplicates counted, as the authors' code). precision = share of fake features
    inside the real manifold (distance <= radius of some real point), recall = share of
    real features inside the fake manifold. Euclidean distances of the features.

Intra-cluster diversity
    CDC's protocol (Ojha et al. 2021, "Few-shot image generation via cross-domain
    correspondence"), on features: each generated sample joins the cluster of its nearest
    target image (Euclidean feature distance instead of LPIPS; ties to the first image);
    the score is the mean pairwise distance between the members of a cluster, averaged over
    the clusters with at least 2 members. Empty and single-member clusters have no pair and
    are left out, as in the authors' code (their NaN cluster means are dropped from the
    final average); how many clusters counted and how many samples were alone in theirs is
    returned with the value. Every pair of a cluster is used (the authors subsample at
    most 50 members per cluster to save LPIPS evaluations; features are cheap).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

__all__ = ["fid", "kmmd", "mv", "target_share", "extract", "kid", "kid_plan", "knn_radii", "precision_recall",
           "intra_cluster_diversity", "MEDIAN_MAX_POINTS", "KID_SUBSETS", "KID_SUBSET_SIZE", "PR_K"]

log = logging.getLogger(__name__)

MEDIAN_MAX_POINTS = 2000
_KERNEL_CHUNK = 2048
KID_SUBSETS = 100  # torchmetrics' and torch-fidelity's default
KID_SUBSET_SIZE = 1000  # Bińkowski et al. 2018
PR_K = 3  # Kynkäänniemi et al. 2019


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
    # torchmetrics' image metrics take seconds to import (matplotlib, scipy): imported when scoring
    from torchmetrics.image.fid import FrechetInceptionDistance

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


# ----------------------------------------------------------------------------------- KID
def _pair(real_feats, fake_feats) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_f64(real_feats, "real_feats"), _as_f64(fake_feats, "fake_feats")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dims differ: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def kid_plan(n_real: int, n_fake: int, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE):
    """(subsets actually evaluated, subset size) for sets of these sizes: the size is
    min(subset_size, n_real, n_fake); one subset when that takes the whole of both sets."""
    if not (isinstance(subsets, int) and subsets >= 1):
        raise ValueError(f"KID subsets must be an integer >= 1, got {subsets!r}")
    if not (isinstance(subset_size, int) and subset_size >= 2):
        raise ValueError(f"KID subset_size must be an integer >= 2, got {subset_size!r}")
    s = min(subset_size, n_real, n_fake)
    if s < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n_real} real and {n_fake} fake")
    return (1 if s == n_real == n_fake else subsets), s


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Bińkowski et al.'s MMD^2 estimator, cubic kernel, for two sets of the same size."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
    return float(within / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def kid(real_feats, fake_feats, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        generator: Optional[torch.Generator] = None) -> tuple[float, float]:
    """KID (see module docstring): (mean, std) over subsets of min(subset_size, n_real, n_fake)
    features per set. ``generator`` draws the subsets (default: a CPU generator seeded 0)."""
    x, y = _pair(real_feats, fake_feats)
    n_subsets, s = kid_plan(len(x), len(y), subsets, subset_size)
    if n_subsets == 1 and s == len(x) == len(y):
        return _poly_mmd2(x, y), 0.0
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    values = torch.tensor([_poly_mmd2(x[torch.randperm(len(x), generator=g)[:s]],
                                      y[torch.randperm(len(y), generator=g)[:s]]) for _ in range(n_subsets)],
                          dtype=torch.float64)
    return float(values.mean()), float(values.std(unbiased=False))


# ------------------------------------------------------------------- precision and recall
def knn_radii(feats, k: int = PR_K) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself left out)."""
    x = _as_f64(feats, "feats")
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if len(x) <= k:
        raise ValueError(f"a k-NN manifold with k={k} needs more than {k} samples, got {len(x)}")
    # the point itself is the nearest (distance 0), so the (k+1)-th smallest is the k-th neighbour
    sq = [_sq_dists(x[i : i + _KERNEL_CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), _KERNEL_CHUNK)]
    return torch.cat(sq).sqrt()


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    inside = [(_sq_dists(points[i : i + _KERNEL_CHUNK], centres).sqrt() <= radii[None, :]).any(1)
              for i in range(0, len(points), _KERNEL_CHUNK)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real_feats, fake_feats, k: int = PR_K, real_radii=None) -> tuple[float, float]:
    """Improved precision and recall (see module docstring): (precision, recall).

    ``real_radii``: :func:`knn_radii` of the real features with the same k, when already known."""
    x, y = _pair(real_feats, fake_feats)
    if real_radii is None:
        real_radii = knn_radii(x, k)
    elif len(real_radii) != len(x):
        raise ValueError(f"real_radii has {len(real_radii)} entries for {len(x)} real features")
    return _share_inside(y, x, torch.as_tensor(real_radii, dtype=torch.float64)), _share_inside(x, y, knn_radii(y, k))


# ----------------------------------------------------------------- intra-cluster diversity
def intra_cluster_diversity(real_feats, fake_feats, squared: bool = False) -> dict:
    """CDC's intra-cluster diversity on features (see module docstring); ``squared``: the
    distance is the squared Euclidean one (LPIPS on its embedding, :mod:`fastmine.metrics.lpips`).

    Returns {"intra_cluster": mean over counted clusters of the mean pairwise distance (None
    when no cluster has 2 members), "intra_cluster_clusters": clusters counted (>= 2
    members), "intra_cluster_singletons": samples alone in their cluster (left out)}."""
    x, y = _pair(real_feats, fake_feats)
    if len(x) < 1 or len(y) < 1:
        raise ValueError("intra-cluster diversity needs at least 1 real and 1 fake sample")
    nearest = torch.cat([_sq_dists(y[i : i + _KERNEL_CHUNK], x).argmin(1) for i in range(0, len(y), _KERNEL_CHUNK)])
    means, singletons = [], 0
    for cluster in nearest.unique():
        members = y[nearest == cluster]
        n = len(members)
        if n < 2:
            singletons += 1
            continue
        total = 0.0
        for i in range(0, n, _KERNEL_CHUNK):
            sq = _sq_dists(members[i : i + _KERNEL_CHUNK], members)
            rows = torch.arange(len(sq))
            sq[rows, rows + i] = 0.0  # a member's distance to itself, exactly
            total += float(sq.sum() if squared else sq.sqrt().sum())
        means.append(total / (n * (n - 1)))  # ordered pairs i != j: the mean over unordered pairs
    return {"intra_cluster": sum(means) / len(means) if means else None, "intra_cluster_clusters": len(means),
            "intra_cluster_singletons": singletons}


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
