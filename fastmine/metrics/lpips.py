"""LPIPS (Zhang et al. 2018, v0.1, AlexNet).

For images x, y in [-1, 1] (shifted and scaled per channel as the original), f_l the
activations after AlexNet's five ReLUs, unit-normalised over channels, and w_l ≥ 0 the
learned per-channel weights (LPIPS's "lin" layers)::

    d(x, y) = Σ_l mean_hw Σ_c w_lc (f_lchw(x) − f_lchw(y))²

Because w ≥ 0, d(x, y) = ‖e(x) − e(y)‖² for the embedding e(x) = concat_l √(w_l/HW_l) ⊙ f_l(x)
(:meth:`LPIPS.embed`): pairwise LPIPS over many images costs one AlexNet pass per image and a
matrix product, which is how CDC's intra-cluster diversity uses it.

Two files, both read as data (``torch.load(weights_only=True)``):

- the backbone: torchvision's ImageNet AlexNet, ``alexnet-owt-7be5be79.pth`` (keys
  ``features.{0,3,6,8,10}.{weight,bias}``), fetched on first use into fastmine's cache and
  checked against the hash prefix in its name (:mod:`fastmine.hub`, catalogue name
  ``metrics/alexnet``), or given as a path;
- the linear weights: LPIPS v0.1 ``alex.pth`` (keys ``lin{0..4}.model.1.weight``), which
  torchmetrics ships in its package (used from there unless another path is given).

Images smaller than 64 px are resized to 64 (bilinear; AlexNet's stride-4 stem leaves nothing
of a 16 px image), 1-channel images repeated to 3. Tested against torchmetrics' LPIPS
(``scripts/reference_lpips.py``).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import hub

BACKBONE = "metrics/alexnet"  # the catalogue's torchvision alexnet-owt-7be5be79.pth
# found without importing torchmetrics (seconds: matplotlib, scipy)
LIN_FILE = Path(importlib.util.find_spec("torchmetrics").origin).parent / "functional/image/lpips_models/alex.pth"
# AlexNet's convolutions (in, out, kernel, stride, padding), torchvision's feature indices,
# and a 3x3/2 max-pool before the second and third
CONVS = ((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1))
TORCHVISION_INDEX = (0, 3, 6, 8, 10)
POOL_BEFORE = (1, 2)
MIN_SIZE = 64


def default_backbone_path() -> Path:
    """torchvision's AlexNet weights in fastmine's cache, fetched the first time."""
    return hub.fetch(BACKBONE)


class LPIPS(nn.Module):
    """LPIPS v0.1 with an AlexNet backbone (module docstring); frozen, eval mode."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, s, p) for i, o, k, s, p in CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for _, o, _, _, _ in CONVS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def load(self, backbone: dict, lin: dict):
        """Weights from torchvision's AlexNet state dict and LPIPS's linear-layer state dict."""
        state = {}
        for k, idx in enumerate(TORCHVISION_INDEX):
            state[f"convs.{k}.weight"] = backbone[f"features.{idx}.weight"]
            state[f"convs.{k}.bias"] = backbone[f"features.{idx}.bias"]
            state[f"lins.{k}.weight"] = lin[f"lin{k}.model.1.weight"]
        self.load_state_dict({**state, "shift": self.shift, "scale": self.scale})
        if any(float(m.weight.min()) < 0 for m in self.lins):
            raise ValueError("LPIPS linear weights must be non-negative (as trained); these are not")
        return self

    def layers(self, x: torch.Tensor) -> list:
        """The five unit-normalised activations of ``x`` [N, 1 or 3, H, W] in [-1, 1]."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if min(x.shape[-2:]) < MIN_SIZE:
            x = F.interpolate(x, size=(MIN_SIZE, MIN_SIZE), mode="bilinear", align_corners=False)
        h, out = (x - self.shift) / self.scale, []
        for k, conv in enumerate(self.convs):
            if k in POOL_BEFORE:
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(conv(h))
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """d(x_i, y_i) per pair [N] (the definition, term by term)."""
        return sum(lin((a - b).pow(2)).mean((1, 2, 3)) for lin, a, b in zip(self.lins, self.layers(x), self.layers(y)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """e(x) [N, D] with d(x, y) = ‖e(x) − e(y)‖²."""
        parts = []
        for lin, f in zip(self.lins, self.layers(x)):
            w = lin.weight.view(1, -1, 1, 1)
            parts.append((f * (w / (f.shape[-2] * f.shape[-1])).sqrt()).flatten(1))
        return torch.cat(parts, 1)


def load_lpips(backbone=None, lin=None, device="cpu") -> LPIPS:
    """LPIPS from its two files (module docstring; the backbone fetched on first use unless
    given); FileNotFoundError naming what is missing and where it was looked for."""
    backbone = Path(hub.resolve(backbone)) if backbone is not None else default_backbone_path()
    lin = Path(lin) if lin is not None else LIN_FILE
    for path, what in ((backbone, "torchvision's ImageNet AlexNet weights"), (lin, "LPIPS v0.1 linear weights")):
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS needs {what} at {str(path)!r}: pass the path of {path.name}, or none "
                                    "to use the copy fastmine fetches")
    read = lambda p: torch.load(p, map_location="cpu", weights_only=True)
    return LPIPS().load(read(backbone), read(lin)).to(device)


def find_lpips(device="cpu") -> LPIPS | None:
    """LPIPS with its weights fetched on first use; None when they cannot be had (offline and not
    cached, or the download failed: the caller falls back to other features and says so)."""
    try:
        return load_lpips(device=device)
    except (FileNotFoundError, hub.DownloadError) as e:
        print(f"LPIPS unavailable ({' '.join(str(e).split())}); using other features", file=sys.stderr)
        return None


@torch.no_grad()
def extract_embedding(lpips: LPIPS, images: torch.Tensor, device="cpu", batch_size: int = 100) -> torch.Tensor:
    """:meth:`LPIPS.embed` of ``images`` in batches, float64 on the CPU."""
    return torch.cat([lpips.embed(images[i:i + batch_size].float().to(device)).double().cpu()
                      for i in range(0, len(images), batch_size)])
