"""LPIPS (fastmine.metrics.lpips) against torchmetrics' implementation, its embedding form, and
its use in CDC's intra-cluster diversity.

The tests never fetch torchvision's ImageNet AlexNet: both sides use the same seeded random
backbone and the LPIPS linear weights torchmetrics ships; the reference distances come from
``scripts/reference_lpips.py`` (torchmetrics' ``_LPIPS``), committed in
``tests/fixtures/lpips_reference.json``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from fastmine.evaluation import Scorer
from fastmine.metrics.lpips import LIN_FILE, LPIPS, extract_embedding, find_lpips, load_lpips
from fastmine.metrics.scores import intra_cluster_diversity

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
from reference_lpips import image_pairs, random_backbone  # noqa: E402  (the reference's own inputs)

REFERENCE = json.loads((HERE / "fixtures" / "lpips_reference.json").read_text())[
    "torchmetrics_lpips_alex_v0.1_random_backbone"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lpips")
    torch.save(random_backbone(), folder / "alexnet.pth")
    return folder / "alexnet.pth"


@pytest.fixture(scope="module")
def lpips(weights):
    return load_lpips(backbone=weights)


def test_distances_match_torchmetrics(lpips):
    for name, (x, y) in image_pairs().items():
        with torch.no_grad():
            got = lpips(x, y)
        torch.testing.assert_close(got, torch.tensor(REFERENCE[name]), rtol=2e-4, atol=1e-7, msg=name)
        assert float(got.min()) > 0


def test_embedding_gives_the_same_distance_in_float64(lpips):
    net = LPIPS().load(random_backbone(), torch.load(LIN_FILE, map_location="cpu", weights_only=True)).double()
    x, y = (t.double() for t in image_pairs()["rgb64"])
    with torch.no_grad():
        direct = net(x, y)
        embedded = (net.embed(x) - net.embed(y)).pow(2).sum(1)
    torch.testing.assert_close(embedded, direct, rtol=1e-10, atol=0)
    assert torch.equal(lpips(x.float(), x.float()), torch.zeros(len(x)))


def test_intra_cluster_diversity_on_lpips_is_the_mean_pairwise_distance_within_clusters(lpips):
    g = torch.Generator().manual_seed(3)
    real = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    fake = (real.repeat(3, 1, 1, 1) + 0.2 * torch.randn(9, 3, 64, 64, generator=g)).clamp(-1, 1)
    out = intra_cluster_diversity(extract_embedding(lpips, real), extract_embedding(lpips, fake), squared=True)
    with torch.no_grad():  # direct: nearest real image by LPIPS, then LPIPS of every pair inside a cluster
        nearest = torch.stack([lpips(f.expand(3, -1, -1, -1), real).argmin() for f in fake])
        means = []
        for c in nearest.unique():
            members = fake[nearest == c]
            if len(members) > 1:
                pairs = [(i, j) for i in range(len(members)) for j in range(len(members)) if i != j]
                d = lpips(members[[i for i, _ in pairs]], members[[j for _, j in pairs]])
                means.append(float(d.mean()))
    assert out["intra_cluster_clusters"] == len(means) >= 2
    assert out["intra_cluster"] == pytest.approx(sum(means) / len(means), rel=1e-5)


def test_scorer_uses_lpips_when_given_and_says_so(lpips):
    g = torch.Generator().manual_seed(4)
    real = torch.rand(12, 1, 16, 16, generator=g) * 2 - 1
    fake = torch.rand(12, 1, 16, 16, generator=g) * 2 - 1
    with_lpips = Scorer(real, lpips=lpips).score(fake)
    plain = Scorer(real, lpips=None).score(fake)
    assert with_lpips["intra_cluster_features"] == "lpips-alex" and plain["intra_cluster_features"] == "digits"
    expect = intra_cluster_diversity(extract_embedding(lpips, real), extract_embedding(lpips, fake), squared=True)
    assert with_lpips["intra_cluster"] == pytest.approx(expect["intra_cluster"], rel=1e-12)
    assert with_lpips["fid"] == plain["fid"]  # only the intra-cluster diversity changes


def test_missing_weights_are_named(tmp_path, monkeypatch):
    # the suite runs with FASTMINE_OFFLINE=1 and an empty cache: where the file goes is said in one line
    assert find_lpips() is None
    with pytest.raises(FileNotFoundError, match=r"FASTMINE_OFFLINE=1 forbids downloading it: put "
                                                r"alexnet-owt-7be5be79\.pth at \S+download\.pytorch\.org/models/"):
        load_lpips()
    with pytest.raises(FileNotFoundError, match=r"no-such\.pth'"):
        load_lpips(backbone=tmp_path / "no-such.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(KeyError):
        load_lpips(backbone=tmp_path / "bad.pth")


def test_inversion_of_rgb_images_uses_lpips_when_its_weights_are_on_disk(tmp_path, monkeypatch, lpips):
    from fastmine.inversion import default_features

    x, y = image_pairs()["rgb64"]
    assert default_features(x, "cpu") is None  # offline, nothing cached: pixels only
    torch.save(random_backbone(), tmp_path / "alexnet.pth")
    monkeypatch.setattr("fastmine.metrics.lpips.default_backbone_path", lambda: tmp_path / "alexnet.pth")
    features = default_features(x, "cpu")
    with torch.no_grad():  # the inversion's feature term, a mean over dimensions, is LPIPS itself
        term = (features(x) - features(y)).pow(2).mean(1)
        torch.testing.assert_close(term, lpips(x, y), rtol=1e-4, atol=1e-7)
