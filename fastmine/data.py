"""Target and source data: built-in digits, image folders, tensor files, vector data.

Few-shot sets are tiny, so they are loaded whole into one tensor that lives on the training
device; the trainer draws batch indices there (no host-side loader, no copies per step).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .config import register_choices

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_digits(labels=None, limit=None, size=8, seed=0, split=None, return_labels=False):
    """scikit-learn's 8x8 digits as [N, 1, size, size] floats in [-1, 1].

    ``labels`` keeps only those classes (``[9]`` or ``range(9)``); ``limit`` keeps that many
    images chosen at random with ``seed`` (``labels=[9], limit=100`` is the MineGAN target).
    ``split`` = "train" / "test" uses a fixed stratified 75/25 split (random_state=0).
    """
    # scikit-learn takes seconds to import; only the built-in digits need it
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32)) / 16.0 * 2.0 - 1.0
    targets = torch.from_numpy(bunch.target.astype(np.int64))
    index = np.arange(len(targets))
    if split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        train, test = train_test_split(index, test_size=0.25, random_state=0, stratify=bunch.target)
        index = np.sort(train if split == "train" else test)
    if labels is not None:
        keep = set(int(label) for label in labels)
        if not keep <= set(range(10)):
            raise ValueError(f"digit labels must be in 0..9, got {sorted(keep)}")
        index = index[np.isin(bunch.target[index], sorted(keep))]
    if limit is not None:
        if limit > len(index):
            raise ValueError(f"asked for {limit} digits but only {len(index)} match labels={labels}")
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(index, size=limit, replace=False))
    x = resize(images[index].unsqueeze(1), size)
    return (x, targets[index]) if return_labels else x


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    if size is None or x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


CHANNELS = register_choices("data.channels", {"gray": "L", "rgb": "RGB"}, optional=True)
FITS = register_choices("data.fit", ("crop", "pad", "stretch"))
ALPHAS = register_choices("data.alpha", ("white", "black", "refuse"))


def subset_indices(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of ``limit`` of ``n`` items chosen at random with ``seed`` (all of them without a limit)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _to_float(im: Image.Image) -> tuple:
    """(array in [0, 255], whether the image had colour, whether it had an alpha channel)."""
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit PNGs: scale, do not clip at 255
        arr = np.asarray(im, dtype=np.float32) / 257.0
        return arr, False, False
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    if has_alpha:
        im = im.convert("RGBA")
    color = im.mode not in ("L", "1", "LA") and not (im.mode == "RGBA" and _is_gray(im))
    return np.asarray(im.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32), color, has_alpha


def _is_gray(im) -> bool:
    r, g, b = (np.asarray(c) for c in im.split()[:3])
    return bool((r == g).all() and (g == b).all())


def _fit(arr: np.ndarray, size: int, fit: str) -> np.ndarray:
    """Square ``arr`` (H, W[, C]) by centre crop or padding with -1 (black), then resize."""
    h, w = arr.shape[:2]
    if h != w and fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        arr = arr[top:top + s, left:left + s]
    elif h != w and fit == "pad":
        s = max(h, w)
        out = np.zeros((s, s, *arr.shape[2:]), dtype=arr.dtype)
        top, left = (s - h) // 2, (s - w) // 2
        out[top:top + h, left:left + w] = arr
        arr = out
    t = torch.from_numpy(np.ascontiguousarray(arr)).float()
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return F.interpolate(t[None], size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True)[0].clamp(0, 255)


def load_image_folder(path, size=64, channels=None, limit=None, seed=0, fit="crop", alpha="white", report=None):
    """PNG/JPEG images under ``path`` (recursively) as [N, C, size, size] in [-1, 1].

    channels: "gray", "rgb", or None (gray when every image is gray, else RGB).
    limit: that many images chosen at random with ``seed`` (all without a limit).
    fit: a non-square image is centre-cropped ("crop"), padded with black ("pad") or
        stretched ("stretch") to a square before resizing.
    alpha: transparent pixels composited over "white" or "black", or "refuse" such images.
    16-bit images are scaled to the 8-bit range, not clipped. ``report`` (a dict) receives
    what was done, for the summary line of a run.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    if channels not in (None, *CHANNELS) or fit not in FITS or alpha not in ALPHAS:
        raise ValueError(f"channels must be one of {list(CHANNELS)} or None, fit one of {list(FITS)}, alpha one of "
                         f"{list(ALPHAS)}; got {channels!r}, {fit!r}, {alpha!r}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sorted(p.name for p in root.rglob("*") if p.is_file())[:5]
        raise ValueError(
            f"no PNG/JPEG images in {str(root)!r} (found {len(others)} other files, e.g. {others}); "
            "point data.path at a folder of .png/.jpg/.jpeg images"
        )
    chosen = [files[i] for i in subset_indices(len(files), limit, seed)]
    images, any_color, n_alpha, n_nonsquare, n_16bit = [], False, 0, 0, 0
    for f in chosen:
        try:
            with Image.open(f) as im:
                im.load()
                n_16bit += im.mode.startswith("I;16") or im.mode == "I"
                arr, color, has_alpha = _to_float(im)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read image {str(f)!r}: {e}; remove or replace the file") from e
        if has_alpha:
            if alpha == "refuse":
                raise ValueError(f"image {str(f)!r} has transparency; set data.alpha=white or black to composite it")
            background = 255.0 if alpha == "white" else 0.0
            a = arr[..., 3:4] / 255.0
            arr = arr[..., :3] * a + background * (1 - a)
            n_alpha += 1
        any_color |= color
        n_nonsquare += arr.shape[0] != arr.shape[1]
        images.append(_fit(arr, size, "stretch" if fit == "stretch" else fit))
    mode = channels or ("rgb" if any_color else "gray")
    out = []
    for t in images:
        if t.shape[0] == 3 and mode == "gray":  # ITU-R 601 luma, what PIL's "L" conversion uses
            t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]
        elif t.shape[0] == 1 and mode == "rgb":
            t = t.expand(3, -1, -1)
        out.append(t)
    x = torch.stack(out) / 127.5 - 1.0
    if report is not None:
        report.update(found=len(files), loaded=len(chosen), channels=mode, alpha_composited=n_alpha,
                      nonsquare=n_nonsquare, fit=fit, sixteen_bit=n_16bit)
    return x.contiguous()


def load_tensor_file(path, key=None):
    """A ``.pt`` (loaded with weights_only=True) or ``.npz`` file holding one float tensor.

    Images must already be in [-1, 1]; vectors are [N, d].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as arrays:
            names = list(arrays.keys())
            name = key or (names[0] if len(names) == 1 else None)
            if name not in names:
                raise ValueError(f"{str(path)!r} holds arrays {names}; name one with data.key")
            x = torch.from_numpy(arrays[name])
    elif path.suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            name = key or (next(iter(obj)) if len(obj) == 1 else None)
            if name not in obj:
                raise ValueError(f"{str(path)!r} holds tensors {list(obj)}; name one with data.key")
            obj = obj[name]
        x = obj
    else:
        raise ValueError(f"unsupported data file {str(path)!r}: use .pt, .pth or .npz")
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(f"{str(path)!r} must hold a tensor of shape [N, d] or [N, C, H, W]")
    return x.float()


def load_data(cfg, report=None) -> torch.Tensor:
    """The tensor described by a :class:`fastmine.config.DataConfig`; ``report`` (a dict)
    receives what was loaded and how (:func:`describe`)."""
    report = {} if report is None else report
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; use one of {', '.join(DATASETS)}")
    x = DATASETS[cfg.dataset](cfg, report)
    if len(x) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} is empty after filtering (labels={cfg.labels}, limit={cfg.limit})")
    return x


def describe(cfg, x: torch.Tensor, report: dict) -> str:
    """One line saying what :func:`load_data` loaded."""
    where = {"digits": f"scikit-learn digits {cfg.labels if cfg.labels is not None else 'all'}",
             "folder": f"images in {cfg.path}", "tensor": f"{cfg.path}"}[cfg.dataset]
    parts = [f"data: {len(x)} samples of shape {tuple(x.shape[1:])} from {where}"]
    if cfg.limit is not None and report.get("found", len(x)) > len(x):
        parts.append(f"{len(x)} of {report['found']} chosen at random (data.limit, data.seed={cfg.seed})")
    if report.get("channels"):
        parts.append(f"as {report['channels']} (data.channels)")
    if report.get("nonsquare"):
        parts.append(f"{report['nonsquare']} non-square: {report['fit']} (data.fit)")
    if report.get("alpha_composited"):
        parts.append(f"{report['alpha_composited']} with transparency composited over {cfg.alpha} (data.alpha)")
    if report.get("sixteen_bit"):
        parts.append(f"{report['sixteen_bit']} 16-bit scaled to 8-bit range")
    return "; ".join(parts)


def _digits_of(cfg, report):
    return load_digits(labels=cfg.labels, limit=cfg.limit, size=cfg.size, seed=cfg.seed)


def _folder_of(cfg, report):
    return load_image_folder(_need_path(cfg), size=cfg.size, channels=cfg.channels, limit=cfg.limit, seed=cfg.seed,
                             fit=cfg.fit, alpha=cfg.alpha, report=report)


def _tensor_of(cfg, report):
    x = load_tensor_file(_need_path(cfg), key=cfg.key)
    report.update(found=len(x))
    return x[torch.from_numpy(subset_indices(len(x), cfg.limit, cfg.seed))]


def _given(cfg, report):
    raise ValueError("this run's target was given in code (a tensor or a function), not by its config: "
                     "pass it again (target=...)")


# data.dataset names a loader (DataConfig, report dict) -> tensor [N, ...]
DATASETS = register_choices("data.dataset", {"digits": _digits_of, "folder": _folder_of, "tensor": _tensor_of,
                                             "given": _given})


def _need_path(cfg):
    if not cfg.path:
        raise ValueError(f"dataset {cfg.dataset!r} needs data.path")
    return cfg.path


class DrawnTarget:
    """A target given as a function drawing fresh samples: ``draw(n)`` or ``draw(n, generator)``
    -> [n, ...] (an unbounded distribution, e.g. a toy density). With the two-argument form it
    draws from the trainer's random stream, so a resumed run replays the same batches; the
    one-argument form uses torch's global generator."""

    def __init__(self, draw):
        self.draw = draw
        params = [p for p in inspect.signature(draw).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.takes_generator = len(params) >= 2

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.draw(n, generator) if self.takes_generator else self.draw(n)
        x = torch.as_tensor(x).float()
        if x.shape[0] != n:
            raise ValueError(f"the target function returned {x.shape[0]} samples when asked for {n}")
        return x


def make_target(target, n_example: int = 512):
    """(what the trainer draws real batches from, a tensor of real samples to size and score with)."""
    if callable(target) and not torch.is_tensor(target):
        drawn = DrawnTarget(target)
        return drawn, drawn(n_example, torch.Generator().manual_seed(0))
    data = torch.as_tensor(target).float()
    if data.ndim < 2 or len(data) == 0:
        raise ValueError(f"the target data must be a non-empty tensor [N, ...], got shape {tuple(data.shape)}")
    return data, data


class DeviceSampler:
    """Draws random minibatches from a data tensor kept on the training device (or from a
    :class:`DrawnTarget`)."""

    def __init__(self, data, device, channels_last: bool = False):
        self.device = torch.device(device)
        self.drawn = data if isinstance(data, DrawnTarget) else None
        self.data = None if self.drawn else data.to(device)
        self.channels_last = channels_last
        if channels_last and torch.is_tensor(self.data) and self.data.ndim == 4:  # not fusion's PseudoRealData
            self.data = self.data.contiguous(memory_format=torch.channels_last)

    def batch(self, n: int, generator: torch.Generator) -> torch.Tensor:
        if self.drawn is not None:
            x = self.drawn(n, generator).to(self.device)
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x
        idx = torch.randint(len(self.data), (n,), generator=generator, device=self.data.device)
        return self.data[idx]

    def preview(self, n: int) -> torch.Tensor:
        """Up to n real samples (fixed ones) to show beside generated vectors."""
        if self.drawn is not None:
            return self.drawn(n, torch.Generator().manual_seed(0))
        return self.data[:n]
