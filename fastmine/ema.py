"""An exponential moving average of the trained weights (stylegan2-ada's ``G_ema``).

After every sampler update the average moves toward the raw weights with the official rule
(stylegan2-ada-pytorch ``training/training_loop.py``, "Update G_ema")::

    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
    p_ema = lerp(p, p_ema, ema_beta)

``cur_nimg`` counts the images the sampler has been updated on before this update (global
batch × updates), so the first update copies the raw weights (β = 0) and the half-life is
``ema_kimg`` thousand images, or ``ema_rampup`` of those seen so far while that is shorter.
Buffers (batch-norm statistics) are not averaged: the average is used with the raw module's
buffers, as the official loop copies them into ``G_ema``.

The average is a set of buffers beside the raw parameters (checkpointed with the run's other
parts, so a resumed run continues it exactly); :meth:`WeightAverage.swapped` puts it in place
for sample grids and evaluations during training, :meth:`WeightAverage.apply` for good once
training ends (the written model and the returned sampler).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def ema_beta(batch_size: int, cur_nimg: int, kimg: float, rampup: float | None) -> float:
    """The official β of one update (module docstring)."""
    ema_nimg = kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


class WeightAverage(nn.Module):
    """The moving average of ``params`` ({name: parameter}), held as buffers."""

    def __init__(self, params: dict):
        super().__init__()
        self.params = list(params.values())
        self.names = [name.replace(".", "__") for name in params]  # buffer names may not hold dots
        for name, p in zip(self.names, self.params):
            self.register_buffer(name, p.detach().clone())

    def averages(self):
        return [getattr(self, name) for name in self.names]

    @torch.no_grad()
    def update(self, beta: float):
        for avg, p in zip(self.averages(), self.params):
            avg.copy_(p.detach().lerp(avg, beta))

    @torch.no_grad()
    def reset(self):
        """The average restarts at the raw weights."""
        for avg, p in zip(self.averages(), self.params):
            avg.copy_(p)

    @torch.no_grad()
    def apply(self):
        """The average replaces the raw weights (training is over)."""
        for avg, p in zip(self.averages(), self.params):
            p.copy_(avg)

    @contextlib.contextmanager
    def swapped(self):
        """The average in place of the raw weights inside the block; the raw ones, bit for bit, after it."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            self.apply()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)
