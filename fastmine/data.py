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

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def load_digits(labels=None, limit=None, size=8, seed=0, split=None, return_labels=False):
    """scikit-learn's 8x8 digits as [N, 1, size, size] floats in [-1, 1].

    ``labels`` keeps only those classes (``[9]`` or ``range(9)``); ``limit`` keeps that many
    images chosen at random with ``seed`` (``labels=[9], limit=100`` is the MineGAN target).
    ``split`` = "train" / "test" uses a fixed stratified 75/25 split (random_state=0).
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    images = torch.from_numpy(bunch.images.astype(np.float32)) / 16.0 * 2.0 - 1.0
    targets = torch.from_numpy(bunch.target.astype(np.int64))
    index = np.arange(len(targets))
    if split is not None:
        from sklearn.model_selection import train_test_split

        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
        train, test = train_test_split(index, test_size=0.25, random_state=0, stratify=bunch.target)
        index = np.sort(train if split == "train" else test)
    if labels is not None:
        keep = set(int(l) for l in labels)
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


def load_image_folder(path, size=64, channels=None, limit=None):
    """All PNG/JPEG images under ``path`` (recursively), resized to size x size, in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        others = sorted(p.name for p in root.rglob("*") if p.is_file())[:5]
        raise ValueError(
            f"no PNG/JPEG images in {str(root)!r} (found {len(others)} other files, e.g. {others}); "
            "point data.path at a folder of .png/.jpg/.jpeg images"
        )
    if limit is not None:
        files = files[:limit]
    mode = {1: "L", 3: "RGB", None: None}[channels]
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode or ("L" if im.mode in ("L", "1", "I;16") else "RGB"))
                if mode is None:
                    mode = im.mode
                im = im.resize((size, size), Image.BICUBIC)
                arrays.append(np.asarray(im, dtype=np.float32))
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {str(f)!r}: {e}; remove or replace the file") from e
    x = torch.from_numpy(np.stack(arrays)) / 127.5 - 1.0
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


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


def load_data(cfg) -> torch.Tensor:
    """The tensor described by a :class:`fastmine.config.DataConfig`."""
    if cfg.dataset == "digits":
        x = load_digits(labels=cfg.labels, limit=cfg.limit, size=cfg.size, seed=cfg.seed)
    elif cfg.dataset == "folder":
        x = load_image_folder(_need_path(cfg), size=cfg.size, limit=cfg.limit)
    elif cfg.dataset == "tensor":
        x = load_tensor_file(_need_path(cfg), key=cfg.key)
        if cfg.limit is not None:
            x = x[: cfg.limit]
    else:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; use 'digits', 'folder' or 'tensor'")
    if len(x) == 0:
        raise ValueError(f"dataset {cfg.dataset!r} is empty after filtering (labels={cfg.labels}, limit={cfg.limit})")
    return x


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
