"""Sample grids: image batches as one PNG, vector batches as a scatter/histogram PNG."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path, nrow: int | None = None, scale: int | None = None, real=None):
    """Write a PNG of ``images`` (NCHW) or, for vectors [N, d], a scatter (d >= 2) or histogram."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if images.ndim == 2:
        return _save_vectors(images, path, real)
    grid = make_grid(images, nrow)
    im = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    h = images.shape[-1]
    scale = scale or max(1, 64 // h)  # tiny digits are unreadable at 1:1
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)
    return path


def _save_vectors(x, path, real=None):
    # matplotlib (a while to import) only for vector-valued samples' plots
    from matplotlib.figure import Figure

    x = x.detach().float().cpu().numpy()
    # a Figure of its own, not pyplot: no global figure state and no GUI backend to choose
    fig = Figure(figsize=(4, 4), dpi=80)
    ax = fig.subplots()
    if x.shape[1] == 1:
        if real is not None:
            ax.hist(real.detach().cpu().numpy()[:, 0], bins=50, alpha=0.5, density=True, label="target")
        ax.hist(x[:, 0], bins=50, alpha=0.5, density=True, label="samples")
    else:
        if real is not None:
            r = real.detach().cpu().numpy()
            ax.scatter(r[:, 0], r[:, 1], s=4, alpha=0.4, label="target")
        ax.scatter(x[:, 0], x[:, 1], s=4, alpha=0.6, label="samples")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path
