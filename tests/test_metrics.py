"""Tests for fastmine.metrics (CPU, fast)."""

from __future__ import annotations

import importlib.util
import socket
import sys
import urllib.request

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import pdist
from torchmetrics.image.fid import NoTrainInceptionV3

from fastmine.data import load_digits
from fastmine.evaluation import Scorer, evaluate_sampler, mean_std
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


def test_evaluate_sampler_averages_draws_of_as_many_fakes_as_reals():
    xtr, _, xte, _ = _digits_split(16)
    real = _Pool(xtr)  # disjoint real digits (train split), one slice per draw
    r_real = evaluate_sampler(real, xte, target_class=9, repeats=2)
    assert real.calls == [(len(xte), 0), (len(xte), 1000)]  # as many fake as real, a new seed per draw
    assert (r_real["n_real"], r_real["n_fake"], r_real["repeats"], r_real["extractor"]) == (len(xte), len(xte), 2,
                                                                                            "digits")
    scorer = Scorer(xte, "digits", target_class=9)
    draws = [scorer.score(xtr[i * len(xte) : (i + 1) * len(xte)]) for i in range(2)]
    for key in ("fid", "kmmd", "kmmd_sigma", "mv", "target_share"):
        assert r_real[key] == pytest.approx((draws[0][key] + draws[1][key]) / 2, rel=1e-12), key
    assert r_real["fid_draw_std"] == pytest.approx(float(np.std([d["fid"] for d in draws], ddof=1)), rel=1e-9)
    assert 0.05 < r_real["target_share"] < 0.15  # ~1/10 of a balanced real set are nines

    r_noise = evaluate_sampler(_Pool(), xte, target_class=9, repeats=1)
    assert r_noise["fid_draw_std"] == 0.0  # one draw: no spread
    assert r_noise["fid"] > 20 * max(r_real["fid"], 1e-6)
    assert r_noise["kmmd"] > 10 * max(r_real["kmmd"], 1e-6)

    # the cap: n_cap real images (fixed-seed subset) and as many generated
    r_cap = evaluate_sampler(_Pool(xtr), xte, n_cap=100, repeats=1)
    assert r_cap["n_real"] == r_cap["n_fake"] == 100
    assert "target_share" not in r_cap


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


@pytest.mark.parametrize("weights", [None, "/nonexistent/dir/pt_inception.pth"])
def test_missing_inception_weights_clear_error_no_download(no_network, weights, monkeypatch):
    # torch_fidelity must not even be imported when the file is missing
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)
    for make in (lambda: get_feature_extractor("inception", weights=weights), lambda: InceptionFeatures(weights)):
        with pytest.raises(FileNotFoundError) as ei:
            make()
        msg = str(ei.value)
        assert "cannot download" in msg
        assert INCEPTION_WEIGHTS_FILENAME in msg and "pt_inception-2015-12-05" in msg
        assert "inception_weights" in msg
        if weights is not None:
            assert weights in msg
    with pytest.raises(FileNotFoundError, match="cannot download"):
        evaluate_sampler(_Pool(), torch.zeros(4, 1, 8, 8), extractor="inception")


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
