"""Feature extractors for fastmine's metrics (FID, KMMD, MV, target share).

Two extractors share one small interface: ``features(x) -> [N, F]`` for images
``x`` NCHW float in [-1, 1], plus ``num_features``. A class head is optional;
``DigitsFeatureNet`` has one (``forward(x)`` gives logits, ``forward_with_features``
gives both in one pass), Inception has none that we use.

* ``DigitsFeatureNet`` -- the offline default. A small CNN trained by
  ``scripts/train_digits_classifier.py`` on scikit-learn's digits (train split) and
  shipped as ``fastmine/metrics/weights/digits_classifier.safetensors``. Any input
  resolution is resized to 16x16 inside the net, so 8/16/32 px generators are scored
  on the same footing. Features: the 64-d penultimate layer (after its ReLU).
* ``InceptionFeatures`` -- Inception-v3 pool3 features (2048-d), the FID standard, via
  torchmetrics' ``NoTrainInceptionV3`` (which needs the optional ``torch-fidelity``
  package). Its weights are torch-fidelity's published file, fetched on first use into
  fastmine's cache and checked against the hash prefix in its name (:mod:`fastmine.hub`,
  catalogue name ``metrics/inception-v3``), or a local file given explicitly.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from .. import hub

__all__ = [
    "DigitsFeatureNet",
    "InceptionFeatures",
    "DIGITS_WEIGHTS_PATH",
    "INCEPTION_WEIGHTS_FILENAME",
    "load_digits_feature_net",
    "digits_weights_metadata",
    "get_feature_extractor",
]

DIGITS_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "digits_classifier.safetensors"

# The file torch-fidelity (and so torchmetrics' FID) fetches -- the TF "pt_inception-2015-12-05"
# graph converted to PyTorch; its URL is the catalogue's entry INCEPTION_WEIGHTS
INCEPTION_WEIGHTS = "metrics/inception-v3"
INCEPTION_WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"


# --------------------------------------------------------------------------------------
# Digits classifier (offline default)
# --------------------------------------------------------------------------------------
class DigitsFeatureNet(nn.Module):
    """Small CNN for [N, 1, H, W] digit images in [-1, 1].

    Inputs of any size are resized to ``input_size`` (16) with bilinear interpolation
    (antialiased when downsampling). No BatchNorm or dropout: train and eval modes
    compute the same function.
    """

    def __init__(self, input_size: int = 16, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        if input_size % 4:
            raise ValueError("input_size must be a multiple of 4")
        self.input_size = int(input_size)
        self.num_features = int(feature_dim)
        self.num_classes = int(num_classes)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        flat = 64 * (input_size // 4) ** 2
        self.fc = nn.Linear(flat, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"DigitsFeatureNet expects [N, 1, H, W] images, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.input_size
        if (h, w) == (s, s):
            return x
        return F.interpolate(
            x, size=(s, s), mode="bilinear", align_corners=False, antialias=(h > s or w > s)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [N, feature_dim] (post-ReLU)."""
        x = self.resize(x.float())
        return F.relu(self.fc(self.conv(x).flatten(1)))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def recorded_accuracy(self) -> float:
        """Test accuracy recorded in the weights file this net was loaded from."""
        meta = getattr(self, "metadata", None)
        if not meta or "test_accuracy" not in meta:
            raise AttributeError("this DigitsFeatureNet was not loaded from a weights file")
        return float(meta["test_accuracy"])


def digits_weights_metadata(path: Optional[Union[str, os.PathLike]] = None) -> dict:
    """Metadata recorded in the shipped digits weights file (values decoded from JSON
    where they are JSON, e.g. ``test_accuracy`` is a float)."""
    path = Path(path) if path is not None else DIGITS_WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"digits feature-net weights not found at {path}; regenerate them with "
            "`python scripts/train_digits_classifier.py`"
        )
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            out[k] = v
    return out


def load_digits_feature_net(
    device: Union[str, torch.device] = "cpu", path: Optional[Union[str, os.PathLike]] = None
) -> DigitsFeatureNet:
    """Load the shipped digits classifier: eval mode, requires_grad False.

    ``net.metadata`` holds the file's metadata; ``net.recorded_accuracy()`` the test
    accuracy the training script measured."""
    meta = digits_weights_metadata(path)
    path = Path(path) if path is not None else DIGITS_WEIGHTS_PATH
    net = DigitsFeatureNet(
        input_size=int(meta.get("input_size", 16)),
        feature_dim=int(meta.get("feature_dim", 64)),
        num_classes=int(meta.get("num_classes", 10)),
    )
    net.load_state_dict(load_file(str(path)))
    net.metadata = meta
    net.requires_grad_(False)
    return net.eval().to(device)


# --------------------------------------------------------------------------------------
# Inception-v3 (torch-fidelity's weights, fetched once into fastmine's cache)
# --------------------------------------------------------------------------------------
class InceptionFeatures(nn.Module):
    """Inception-v3 pool3 features (2048-d): torch-fidelity's FID network.

    Uses torchmetrics' ``NoTrainInceptionV3`` (the network behind
    ``torchmetrics.image.fid.FrechetInceptionDistance``), which requires the optional
    package ``torch-fidelity`` (``pip install torch-fidelity``). Images in [-1, 1] with
    1 or 3 channels are quantised to uint8 RGB (grey repeated to 3 channels); the
    network resizes them to 299x299 itself.

    ``weights_path``: a local file (or URL); None fetches torch-fidelity's published weights on
    first use (``FASTMINE_OFFLINE=1``: the cached copy, else a one-line error saying where to
    put the file).
    """

    num_features = 2048

    def __init__(self, weights_path: Optional[Union[str, os.PathLike]] = None):
        super().__init__()
        if weights_path is not None and not hub.is_remote(weights_path) and not Path(weights_path).is_file():
            raise FileNotFoundError(f"Inception-v3 weights: no file at {str(weights_path)!r}; pass the path of "
                                    f"{INCEPTION_WEIGHTS_FILENAME} (inception_weights=...), or none to fetch it")
        if importlib.util.find_spec("torch_fidelity") is None:  # pragma: no cover - depends on the environment
            raise ImportError(
                "extractor='inception' needs the optional package torch-fidelity "
                "(`pip install 'fastmine[inception]'` or `pip install torch-fidelity`); "
                "it builds the network around the weights file."
            )
        # torchmetrics' image metrics take seconds to import (matplotlib, scipy); only this needs them
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.weights_path = str(hub.resolve(weights_path) if weights_path is not None else hub.fetch(INCEPTION_WEIGHTS))
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[str(self.num_features)],
            feature_extractor_weights_path=self.weights_path,
        )
        self.net.requires_grad_(False)

    @staticmethod
    def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected [N, 1|3, H, W] images, got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.to_uint8_rgb(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


# --------------------------------------------------------------------------------------
def get_feature_extractor(
    name: str = "digits",
    weights: Optional[Union[str, os.PathLike]] = None,
    device: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """Build a feature extractor by name.

    ``"digits"``: the shipped digits classifier (``weights`` optionally overrides the
    file). ``"inception"``: Inception-v3 from ``weights``, by default torch-fidelity's file
    fetched on first use (:class:`InceptionFeatures`).
    """
    key = name.lower()
    if key == "digits":
        return load_digits_feature_net(device=device, path=weights)
    if key in ("inception", "inception_v3", "inceptionv3"):
        return InceptionFeatures(weights).eval().to(device)
    raise ValueError(f"unknown feature extractor {name!r}; choose 'digits' or 'inception'")
