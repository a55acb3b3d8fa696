"""Does the reference train the same thing? Both sides start from the same weights and replay
the same random numbers; their logged losses are compared update by update.

In fp32 two correct implementations drift apart through rounding; in float64 they agree to
~1e-15 relative, so a real difference in the math — a missing term, another ε, an optimizer
that skips a parameter — shows up there (tests/test_bench.py holds it below 1e-9).
"""
from __future__ import annotations

import torch

from fastmine import distributed
from fastmine.multi import MultiSampler
from fastmine_benchmarks.step_configs import build_fastmine, build_reference

TERMS = ("loss_critic", "loss_sampler", "penalty", "wasserstein")
CHECK_STEPS = {"float32": 20, "float64": 8}  # float64 convolutions are slow on the CPU
BF16_STEPS = 200


class ReplayDraws:
    """fastmine's random numbers in fastmine's order, for the reference."""

    def __init__(self, trainer):
        if len(trainer.rngs) != 1:
            raise ValueError("the numerics check replays one random stream (dist.streams = 1)")
        self.g = distributed.make_streams(trainer.seed, trainer.streams, trainer.device)[0]
        self.data, self.sampler, self.device = trainer.data, trainer.sampler, trainer.device
        self.multi = isinstance(trainer.sampler, MultiSampler)
        # the permute rule's stream: MultiSampler seeds it with the run's seed
        self.perm_gen = torch.Generator().manual_seed(trainer.seed)

    def real(self, n):
        return self.data.batch(n, self.g)  # the trainer's own sampler, on the replayed stream

    def seeds(self, n):
        s = self.sampler.draw_seeds(n, self.g, self.device)
        return s[:, : self.sampler.seed_dim] if self.multi else s  # the multi sampler's extra column picks at sampling

    def eps(self, n):
        return torch.rand(n, generator=self.g, device=self.device)

    def perm(self, k):
        return torch.randperm(k, generator=self.perm_gen).to(self.device)


def to_dtype(trainer, dtype):
    """Parameters, floating buffers (not the selector's counts) and the target in ``dtype``."""
    for module in (trainer.sampler, trainer.critic):
        for p in module.parameters():
            p.data = p.data.to(dtype)
        for name, b in module.named_buffers():
            if b.is_floating_point() and "selector_" not in name:
                b.data = b.data.to(dtype)
    trainer.data.data = trainer.data.data.to(dtype)


def curves(spec, device, steps, variant=(), dtype="float32"):
    """(fastmine rows, reference rows) over ``steps`` updates from the same state and draws."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # seeds, ε and the loss accumulators follow it
    try:
        trainer = build_fastmine(spec, device, list(variant) + ["log.log_every=1"])
        to_dtype(trainer, getattr(torch, dtype))  # before the reference copies the parts
        ref = build_reference(trainer, ReplayDraws(trainer))
        fm_rows, ref_rows = [], []
        for i in range(steps):
            trainer.train_step(i)
            fm_rows.append(trainer.log_row(i + 1, 0.0))
            ref_rows.append(ref.step())
    finally:
        torch.set_default_dtype(before)
    return fm_rows, ref_rows


def numerics_check(spec, device, steps=None, dtype="float32", variant=()):
    """Same state, same draws: max over terms of max|Δ| / max|reference| over the updates.

    In fp32 the runs drift apart through rounding (on CUDA one critic pass over [real, fake]
    against two, re-run candidates against gathered ones), and with several generators a
    near-tie between two candidates can flip the argmax and send the runs apart; in float64
    neither happens, so that check shows the two compute the same thing."""
    steps = steps or CHECK_STEPS[dtype]
    fm_rows, ref_rows = curves(spec, device, steps, variant=variant, dtype=dtype)
    worst = {}
    for t in TERMS:
        a = [r[t] for r in fm_rows]
        b = [r[t] for r in ref_rows]
        scale = max(max(abs(x) for x in b), 1e-12)
        worst[t] = max(abs(x - y) for x, y in zip(a, b)) / scale
    return {"steps": steps, "dtype": dtype, "rel_diff": worst, "max_rel_diff": max(worst.values())}


def bf16_check(spec, device, steps=BF16_STEPS, window=20):
    """fastmine in bf16 autocast vs the fp32 reference: curves smoothed over ``window`` updates,
    ‖smooth(bf16) − smooth(fp32)‖₂ / ‖smooth(fp32)‖₂ per term."""
    fm_rows, ref_rows = curves(spec, device, steps, variant=["perf.amp=bf16"])

    def smooth(xs):
        return [sum(xs[i:i + window]) / window for i in range(0, len(xs) - window + 1)]

    out = {}
    for t in ("loss_critic", "loss_sampler", "wasserstein"):
        a, b = smooth([r[t] for r in fm_rows]), smooth([r[t] for r in ref_rows])
        num = sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5
        out[t] = num / max(sum(y * y for y in b) ** 0.5, 1e-12)
    return {"steps": steps, "window": window, "rel_l2": out, "max_rel_l2": max(out.values())}
