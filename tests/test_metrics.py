"""Tests for fastmine.metrics (CPU, fast)."""

from __future__ import annotations

import importlib.util
import math
import socket
import sys
import urllib.request
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import pdist
from torchmetrics.image.fid import NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance

from fastmine.apps.report import COLUMNS, metrics_table
from fastmine.data import load_digits
from fastmine.evaluation import TREND_KEYS, Scorer, evaluate_sampler, fid_callback, mean_std
from fastmine.metrics import (
    DIGITS_WEIGHTS_PATH,
    INCEPTION_WEIGHTS_FILENAME,
    DigitsFeatureNet,
    InceptionFeatures,
    digits_weights_metadata,
    extract,
    fid,
    get_feature_extractor,
    kmmd,
    load_digits_feature_net,
    mv,
    target_share,
)
from fastmine.metrics.scores import intra_cluster_diversity, kid, knn_radii, precision_recall


# ----------------------------------------------------------------------------- helpers
def _digits_split(size: int = 8):
    # the library's fixed stratified 75/25 split (random_state=0), the one the shipped net used
    x_train, y_train = load_digits(size=size, split="train", return_labels=True)
    x_test, y_test = load_digits(size=size, split="test", return_labels=True)
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="module")
def net():
    return load_digits_feature_net()


def _rng_feats(n, d, seed, shift=0.0):
    g = np.random.default_rng(seed)
    a = g.standard_normal((n, d)) @ (np.eye(d) + 0.3 * g.standard_normal((d, d)))
    return a + shift


def _fid_reference(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _kmmd_reference(x, y, sigma):
    """Unbiased squared MMD by explicit loops over pairs (float64)."""
    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


# --------------------------------------------------------------------------------- FID
def test_fid_self_zero_and_monotone_in_shift():
    a = torch.from_numpy(_rng_feats(500, 16, 0))
    assert abs(fid(a, a)) < 1e-3
    b = torch.from_numpy(_rng_feats(500, 16, 1))
    vals = [fid(a, b + s) for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(v2 > v1 for v1, v2 in zip(vals, vals[1:])), vals
    # a pure mean shift adds exactly ||shift||^2 for identical sets
    assert fid(a, a + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)


def test_fid_matches_scipy_sqrtm_reference():
    a, b = _rng_feats(400, 12, 2), _rng_feats(300, 12, 3, shift=0.3)
    b[:, :4] *= 1.7  # different covariance too
    ref = _fid_reference(a, b)
    assert ref > 1.0
    assert fid(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, rel=1e-3)
    # float32 input is accepted and promoted to float64
    assert fid(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(ref, rel=1e-3)


# -------------------------------------------------------------------------------- KMMD
def test_kmmd_matches_double_loop_unbiased_estimator():
    x, y = _rng_feats(30, 5, 4), _rng_feats(25, 5, 5, shift=0.4)
    for sigma in (0.7, 2.5):
        ref = _kmmd_reference(x, y, sigma)
        got = kmmd(torch.from_numpy(x), torch.from_numpy(y), bandwidth=sigma)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_kmmd_median_bandwidth_rule():
    x, y = _rng_feats(40, 6, 6), _rng_feats(35, 6, 7, shift=1.0)
    val, sigma = kmmd(x, y, return_bandwidth=True)
    assert sigma == pytest.approx(float(np.median(pdist(np.concatenate([x, y])))), rel=1e-12)
    assert val == pytest.approx(_kmmd_reference(x, y, sigma), rel=1e-9)
    # unbiased: same distribution gives ~0 (can be negative), shifted is clearly positive
    same = kmmd(_rng_feats(200, 6, 8), _rng_feats(200, 6, 9))
    assert abs(same) < 0.02 < kmmd(_rng_feats(200, 6, 8), _rng_feats(200, 6, 9, shift=1.0))


# --------------------------------------------------------------------------------- KID
def _kid_reference(x, y):
    """Bińkowski et al.'s MMD^2 estimator with k(a, b) = (a.b / d + 1)^3, by explicit loops (float64)."""
    def k(a, b):
        return (np.dot(a, b) / len(a) + 1.0) ** 3

    m = len(x)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (sxx + syy) / (m * (m - 1)) - 2 * sxy / m**2


class _Identity(torch.nn.Module):
    """torchmetrics' custom-feature path: our features go in as they are."""

    def forward(self, x):
        return x


def _torchmetrics_kid(x, y, subsets, subset_size, seed):
    metric = KernelInceptionDistance(feature=_Identity(), subsets=subsets, subset_size=subset_size)
    metric.update(torch.from_numpy(x), real=True)
    metric.update(torch.from_numpy(y), real=False)
    with torch.random.fork_rng(devices=[]):  # it draws its subsets from the global RNG
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_on_the_whole_sets_matches_the_explicit_formula_and_torchmetrics():
    x, y = _rng_feats(30, 5, 20), _rng_feats(30, 5, 21, shift=0.3)
    ref = _kid_reference(x, y)
    assert ref > 0.01
    assert kid(torch.from_numpy(x), torch.from_numpy(y)) == (pytest.approx(ref, rel=1e-10), 0.0)
    tm_mean, tm_std = _torchmetrics_kid(x, y, subsets=3, subset_size=30, seed=0)  # 3 orderings of the same sets
    assert tm_mean == pytest.approx(ref, rel=1e-10) and tm_std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_over_subsets_matches_the_formula_on_the_same_subsets_and_torchmetrics():
    x, y = _rng_feats(40, 6, 22), _rng_feats(35, 6, 23, shift=0.2)
    got = kid(x, y, subsets=7, subset_size=20, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(123)  # per subset: a permutation of the real set, then one of the fake set
    values = [_kid_reference(x[torch.randperm(40, generator=g)[:20].numpy()],
                             y[torch.randperm(35, generator=g)[:20].numpy()]) for _ in range(7)]
    assert got == (pytest.approx(np.mean(values), rel=1e-10), pytest.approx(np.std(values, ddof=0), rel=1e-9))
    assert got[1] > 0
    tm = _torchmetrics_kid(x, y, subsets=7, subset_size=20, seed=123)
    assert got == (pytest.approx(tm[0], rel=1e-10), pytest.approx(tm[1], rel=1e-9))
    # the subset size is min(subset_size, n_real, n_fake), and the default generator is seeded 0
    assert kid(x, y, subsets=4) == kid(x, y, subsets=4, subset_size=35, generator=torch.Generator().manual_seed(0))


def test_kid_is_about_zero_for_one_distribution_and_rejects_bad_input():
    a = _rng_feats(600, 8, 24)
    same, shifted = (kid(a[:300], a[300:] + shift, subset_size=100)[0] for shift in (0.0, 1.0))
    assert abs(same) < 0.05 * shifted
    x = _rng_feats(10, 3, 26)
    with pytest.raises(ValueError, match="KID needs at least 2 samples per set, got 10 real and 1 fake"):
        kid(x, x[:1])
    with pytest.raises(ValueError, match="KID subset_size must be an integer >= 2, got 1"):
        kid(x, x, subset_size=1)
    with pytest.raises(ValueError, match="KID subsets must be an integer >= 1, got 0"):
        kid(x, x, subsets=0)
    with pytest.raises(ValueError, match="feature dims differ: 3 vs 4"):
        kid(x, _rng_feats(10, 4, 27))


# ---------------------------------------------------------------- precision and recall
def _pr_reference(real, fake, k):
    """Kynkäänniemi et al.'s precision and recall by explicit loops (float64)."""
    def radii(a):
        return [sorted(np.linalg.norm(a[i] - a[j]) for j in range(len(a)) if j != i)[k - 1] for i in range(len(a))]

    def share(points, centres, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points])

    return share(fake, real, radii(real)), share(real, fake, radii(fake))


def test_precision_recall_match_explicit_loops():
    x, y = _rng_feats(40, 6, 30), _rng_feats(30, 6, 31, shift=0.6)
    y[:, 0] *= 2.5  # a wider fake set: precision and recall differ
    for k in (1, 3, 5):
        p_ref, r_ref = _pr_reference(x, y, k)
        assert 0 < p_ref < 1 and 0 < r_ref < 1 and p_ref != r_ref
        assert precision_recall(torch.from_numpy(x), torch.from_numpy(y), k=k) == (pytest.approx(p_ref, abs=1e-12),
                                                                                  pytest.approx(r_ref, abs=1e-12))
    radii = knn_radii(x)
    assert radii.numpy() == pytest.approx([sorted(np.linalg.norm(x - x[i], axis=1))[3] for i in range(40)], rel=1e-9)
    assert precision_recall(x, y, real_radii=radii) == precision_recall(x, y)


def test_precision_recall_known_answers_and_bad_input():
    x = _rng_feats(25, 4, 32)
    assert precision_recall(x, x.copy()) == (1.0, 1.0)  # identical sets
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)  # disjoint, far apart
    # half the fakes are real points, half are far: precision 1/2; the copies' own manifold holds the real points
    # they copy, so recall is at least 10/25
    p, r = precision_recall(x, np.concatenate([x[:10], x[:10] + 100.0]))
    assert p == 0.5 and r >= 10 / 25
    with pytest.raises(ValueError, match="a k-NN manifold with k=3 needs more than 3 samples, got 3"):
        precision_recall(x, x[:3])
    with pytest.raises(ValueError, match="real_radii has 5 entries for 25 real features"):
        precision_recall(x, x, real_radii=torch.ones(5))


# ------------------------------------------------------------- intra-cluster diversity
def _intra_reference(real, fake):
    """CDC's intra-cluster distance by explicit loops (Euclidean instead of LPIPS)."""
    clusters = {}
    for f in fake:
        clusters.setdefault(int(np.argmin([np.linalg.norm(f - r) for r in real])), []).append(f)
    means = [np.mean([np.linalg.norm(m[i] - m[j]) for i in range(len(m)) for j in range(i + 1, len(m))])
             for m in clusters.values() if len(m) >= 2]
    return (np.mean(means) if means else None), len(means), sum(len(m) == 1 for m in clusters.values())


def test_intra_cluster_diversity_matches_a_direct_loop():
    real, fake = _rng_feats(6, 5, 40), _rng_feats(60, 5, 41)
    real = np.concatenate([real, real[:1] + 50.0])  # a far target image ...
    fake = np.concatenate([fake, real[-1:] + 0.1])  # ... with one generated sample of its own: a singleton
    value, clusters, singletons = _intra_reference(real, fake)
    assert clusters >= 3 and singletons >= 1
    assert intra_cluster_diversity(torch.from_numpy(real), torch.from_numpy(fake)) == {
        "intra_cluster": pytest.approx(value, rel=1e-9), "intra_cluster_clusters": clusters,
        "intra_cluster_singletons": singletons}


def test_intra_cluster_diversity_known_answers():
    real = _rng_feats(8, 4, 42)
    # one sample repeated: one cluster, no diversity
    assert intra_cluster_diversity(real, np.repeat(real[2:3], 5, axis=0)) == {
        "intra_cluster": 0.0, "intra_cluster_clusters": 1, "intra_cluster_singletons": 0}
    # the target images themselves: each its own cluster of one, so no cluster counts
    assert intra_cluster_diversity(real, real.copy()) == {
        "intra_cluster": None, "intra_cluster_clusters": 0, "intra_cluster_singletons": 8}
    # by hand: (3, 0) and (-2, 0) join (0, 0) and lie 5 apart; (10, 1) is alone with (10, 0); (0, 10) gets none
    targets, fake = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), np.array([[3.0, 0.0], [-2.0, 0.0], [10.0, 1.0]])
    assert intra_cluster_diversity(targets, fake) == {"intra_cluster": 5.0, "intra_cluster_clusters": 1,
                                                      "intra_cluster_singletons": 1}
    # a second cluster (two samples 2 apart at (0, 10)) counts equally: (5 + 2) / 2
    fake = np.concatenate([fake, [[1.0, 10.0], [-1.0, 10.0]]])
    assert intra_cluster_diversity(targets, fake)["intra_cluster"] == 3.5


def test_metrics_table_has_the_few_shot_columns():
    rows = {"a": [{"fid": 1.0, "kid": 0.5, "precision": 0.25, "recall": 0.75, "intra_cluster": 2.0},
                  {"fid": 3.0, "kid": 1.5, "precision": 0.75, "recall": 0.25, "intra_cluster": None}]}
    header, _, row = metrics_table(rows).splitlines()
    assert header == "| method | FID ↓ | KID ↓ | precision ↑ | recall ↑ | intra-cluster ↑ |"
    assert row == "| a | 2.00 ± 1.41 | 1 ± 0.7071 | 0.50 ± 0.35 | 0.50 ± 0.35 | 2 |"
    assert [c[0] for c in COLUMNS[:4]] == ["fid", "kmmd", "mv", "target_share"]  # the paper's columns first


# ---------------------------------------------------------------------------------- MV
def test_mv_matches_numpy_definition():
    f = _rng_feats(123, 9, 10) * np.linspace(0.5, 3, 9)
    assert mv(torch.from_numpy(f)) == pytest.approx(float(np.var(f, axis=0, ddof=1).mean()), rel=1e-12)
    assert mv(f, unbiased=False) == pytest.approx(float(np.var(f, axis=0, ddof=0).mean()), rel=1e-12)
    assert mv(np.ones((10, 4))) == 0.0


def test_target_share():
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    assert target_share(logits, 1) == 0.5
    assert target_share(logits, 0) == 0.5
    with pytest.raises(ValueError):
        target_share(logits, 2)


# -------------------------------------------------------------------------- digits net
def test_shipped_weights_file_small_with_metadata():
    assert DIGITS_WEIGHTS_PATH.is_file()
    assert DIGITS_WEIGHTS_PATH.stat().st_size < 1_000_000
    meta = digits_weights_metadata()
    for key in ("test_accuracy", "input_size", "seed", "date", "script"):
        assert key in meta, key
    assert meta["script"] == "scripts/train_digits_classifier.py"
    assert meta["test_accuracy"] >= 0.97


def test_feature_net_loads_frozen_and_classifies_test_split(net):
    assert isinstance(net, DigitsFeatureNet)
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())
    recorded = net.recorded_accuracy()
    for size in (8, 16, 32):
        _, _, xte, yte = _digits_split(size)
        with torch.no_grad():
            logits = net(xte)
            feats = net.features(xte)
        assert logits.shape == (len(yte), 10)
        assert feats.shape == (len(yte), net.num_features)
        acc = (logits.argmax(1) == yte).float().mean().item()
        assert acc >= recorded - 0.01, (size, acc, recorded)
    # train and eval modes compute the same function (no BatchNorm / dropout)
    x = _digits_split(16)[2][:16]
    net.train()
    try:
        assert torch.equal(net(x), net.eval()(x))
    finally:
        net.eval()


def test_target_share_on_real_nines_equals_recall(net):
    _, _, xte, yte = _digits_split(16)
    nines = xte[yte == 9]
    with torch.no_grad():
        logits = net(nines)
    share = target_share(logits, 9)
    recall = float(np.mean(logits.argmax(1).numpy() == 9))
    assert share == pytest.approx(recall)
    assert share > 0.9
    recorded = digits_weights_metadata()["test_recall_by_class"][9]
    assert share >= recorded - 0.05


# ----------------------------------------------------------------------------- evaluate
class _Pool:
    """A stand-in sampler: ``sample(n, seed)`` hands out the next n images of ``pool`` for each
    draw (``seed // 1000``, as evaluate_sampler numbers them), or uniform noise without a pool."""

    def __init__(self, pool=None):
        self.pool, self.calls = pool, []

    def sample(self, n, seed=0):
        self.calls.append((n, seed))
        if self.pool is None:
            return torch.rand(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
        start = (seed // 1000) * n
        return self.pool[start : start + n]


def test_scorer_matches_the_scores_computed_directly(net):
    xtr, _, xte, _ = _digits_split(16)
    fake = xtr[:200]
    got = Scorer(xte, "digits", target_class=9).score(fake)
    real_feats = net.features(xte).double()
    logits, fake_feats = net.forward_with_features(fake)
    k, sigma = kmmd(real_feats, fake_feats, return_bandwidth=True)
    assert got["fid"] == pytest.approx(fid(real_feats, fake_feats), rel=1e-9)
    assert (got["kmmd"], got["kmmd_sigma"]) == (pytest.approx(k, rel=1e-9), pytest.approx(sigma, rel=1e-12))
    assert got["mv"] == pytest.approx(mv(fake_feats), rel=1e-9)
    assert got["target_share"] == target_share(logits, 9)
    # 450 real vs 200 fake: KID on 100 subsets of 200, drawn by a generator seeded with the scorer's seed
    kid_mean, kid_std = kid(real_feats, fake_feats, generator=torch.Generator().manual_seed(0))
    assert (got["kid"], got["kid_std"]) == (pytest.approx(kid_mean, rel=1e-9), pytest.approx(kid_std, rel=1e-9))
    assert (got["kid_subsets"], got["kid_subset_size"]) == (100, 200) and got["kid_std"] > 0
    p, r = precision_recall(real_feats, fake_feats, k=3)
    assert (got["precision"], got["recall"]) == (p, r) and 0 < p < 1 and 0 < r < 1
    intra = intra_cluster_diversity(real_feats, fake_feats)
    assert got["intra_cluster"] == pytest.approx(intra["intra_cluster"], rel=1e-9)
    assert (got["intra_cluster_clusters"], got["intra_cluster_singletons"]) == (intra["intra_cluster_clusters"],
                                                                                intra["intra_cluster_singletons"])
    assert got["intra_cluster_features"] == "digits"
    assert set(got) == {"fid", "kmmd", "kmmd_sigma", "mv", "target_share", "kid", "kid_std", "kid_subsets",
                        "kid_subset_size", "precision", "recall", "intra_cluster", "intra_cluster_clusters",
                        "intra_cluster_singletons", "intra_cluster_features"}
    # the same fakes get the same KID subsets every time; the cheap score leaves the few-shot metrics out
    assert Scorer(xte, "digits").score(fake)["kid"] == got["kid"]
    assert set(Scorer(xte, "digits", target_class=9).score(fake, extra=False)) == {"fid", "kmmd", "kmmd_sigma", "mv",
                                                                                   "target_share"}


def test_evaluate_sampler_averages_draws_of_as_many_fakes_as_reals():
    xtr, _, xte, _ = _digits_split(16)
    real = _Pool(xtr)  # disjoint real digits (train split), one slice per draw
    r_real = evaluate_sampler(real, xte, target_class=9, repeats=2)
    assert real.calls == [(len(xte), 0), (len(xte), 1000)]  # as many fake as real, a new seed per draw
    assert (r_real["n_real"], r_real["n_fake"], r_real["repeats"], r_real["extractor"]) == (len(xte), len(xte), 2,
                                                                                            "digits")
    scorer = Scorer(xte, "digits", target_class=9)
    draws = [scorer.score(xtr[i * len(xte) : (i + 1) * len(xte)]) for i in range(2)]
    for key in ("fid", "kmmd", "kmmd_sigma", "mv", "target_share", "kid", "precision", "recall", "intra_cluster",
                "intra_cluster_clusters", "intra_cluster_singletons"):
        assert r_real[key] == pytest.approx((draws[0][key] + draws[1][key]) / 2, rel=1e-12), key
    # what every draw shares stays as it is: the features' name, KID's plan (the whole sets: 450 vs 450)
    assert (r_real["intra_cluster_features"], r_real["kid_subsets"], r_real["kid_subset_size"]) == ("digits", 1,
                                                                                                    len(xte))
    assert r_real["kid_std"] == 0.0
    assert r_real["fid_draw_std"] == pytest.approx(float(np.std([d["fid"] for d in draws], ddof=1)), rel=1e-9)
    assert 0.05 < r_real["target_share"] < 0.15  # ~1/10 of a balanced real set are nines

    r_noise = evaluate_sampler(_Pool(), xte, target_class=9, repeats=1)
    assert r_noise["fid_draw_std"] == 0.0  # one draw: no spread
    assert r_noise["fid"] > 20 * max(r_real["fid"], 1e-6)
    assert r_noise["kmmd"] > 10 * max(r_real["kmmd"], 1e-6)
    assert r_noise["kid"] > 10 * max(r_real["kid"], 1e-6)
    assert r_noise["precision"] < 0.5 * r_real["precision"] and r_noise["recall"] < 0.5 * r_real["recall"]

    # the cap: n_cap real images (fixed-seed subset) and as many generated
    r_cap = evaluate_sampler(_Pool(xtr), xte, n_cap=100, repeats=1)
    assert r_cap["n_real"] == r_cap["n_fake"] == 100
    assert "target_share" not in r_cap


def test_evaluating_a_tiny_sampler_on_a_tiny_target():
    x = _digits_split(16)[2]
    for n_real in (3, 6):
        r = evaluate_sampler(_Pool(x[100:]), x[:n_real], repeats=2)
        assert all(math.isfinite(r[k]) for k in ("fid", "kmmd", "mv", "kid")), r
        assert (r["kid_subsets"], r["kid_subset_size"], r["kid_std"]) == (1, n_real, 0.0)
        # a k-NN manifold with k = 3 needs 4 points: with 3 real images there is none
        assert (r["precision"] is None) == (n_real == 3) and (r["recall"] is None) == (n_real == 3)
        assert r["intra_cluster_clusters"] + r["intra_cluster_singletons"] <= n_real


def test_the_trend_callback_computes_none_of_the_few_shot_metrics(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the trend callback computed a few-shot metric")

    monkeypatch.setattr(Scorer, "extra_scores", refuse)
    x = _digits_split(16)[2]
    trainer = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(steps=10)), sampler=_Pool())
    logged = fid_callback(x[:50], every=5, n=50, target_class=9)(trainer, 5)
    assert set(logged) == set(TREND_KEYS)


def test_mean_std_is_the_sample_std_of_the_given_values():
    assert mean_std([]) == (None, None)
    assert mean_std([2.0, None]) == (2.0, None)
    m, s = mean_std([1.0, None, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(float(np.std([1.0, 2.0, 4.0], ddof=1)), rel=1e-12)


def test_evaluation_rejects_target_class_without_class_head():
    class FeatOnly(torch.nn.Module):
        def features(self, x):
            return x.flatten(1)

    x = torch.rand(10, 1, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="class head"):
        evaluate_sampler(_Pool(x), x, extractor=FeatOnly(), target_class=3)
    r = evaluate_sampler(_Pool(x), x, extractor=FeatOnly(), repeats=1)
    assert abs(r["fid"]) < 1e-3  # identical sets (rank-deficient covariance: 10 samples, 64 dims)


# ---------------------------------------------------------------------------- inception
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_a_missing_inception_weights_file_is_named_without_any_network_access(no_network, monkeypatch):
    # torch_fidelity must not even be imported when the file given is missing
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    weights = "/nonexistent/dir/pt_inception.pth"
    for make in (lambda: get_feature_extractor("inception", weights=weights), lambda: InceptionFeatures(weights)):
        with pytest.raises(FileNotFoundError) as ei:
            make()
        msg = str(ei.value)
        assert weights in msg and INCEPTION_WEIGHTS_FILENAME in msg and "inception_weights" in msg
    with pytest.raises(FileNotFoundError, match="no file at"):
        evaluate_sampler(_Pool(), torch.zeros(4, 1, 8, 8), extractor="inception", inception_weights=weights)


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None, reason="torch-fidelity not installed")
def test_offline_without_cached_inception_weights_says_where_to_put_them(no_network):
    with pytest.raises(FileNotFoundError, match=f"FASTMINE_OFFLINE=1 forbids downloading it: put "
                                                f"{INCEPTION_WEIGHTS_FILENAME} at "):
        evaluate_sampler(_Pool(), torch.zeros(4, 3, 8, 8))  # 3-channel images: Inception by default


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is None, reason="torch-fidelity not installed")
def test_inception_features_from_local_file(no_network, tmp_path, monkeypatch):
    """With torch-fidelity installed: build a randomly initialised Inception, save its
    weights, and check the extractor loads that local file (no download) and runs."""
    dummy = tmp_path / "empty.pth"
    torch.save({}, dummy)
    with monkeypatch.context() as m:
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, sd, *a, **k: None)
        rand = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                  feature_extractor_weights_path=str(dummy))
    path = tmp_path / INCEPTION_WEIGHTS_FILENAME
    torch.save(rand.state_dict(), path)
    ext = get_feature_extractor("inception", weights=path)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        f = ext.features(x)
    assert f.shape == (3, 2048)
    with torch.no_grad():
        f2 = extract(ext, x, batch_size=2)
    assert torch.allclose(f.double(), f2, atol=1e-5)
