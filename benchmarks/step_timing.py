"""Timing one generator-side update (n_critic critic steps + one sampler step) and the peak
memory the steps add, for fastmine and the eager reference.

Each measurement runs in a child process of its own (``bench_step.py`` starts them): both
sides in one process with their timed blocks alternating (:func:`time_pair`), or one side
alone (:func:`measure_side`: a sharded fastmine under torchrun, a configuration without a
reference, and every CPU memory measurement).
"""
from __future__ import annotations

import statistics

import numpy as np
import torch

from fastmine_benchmarks.common import Clock, timed
from fastmine_benchmarks.step_configs import build_fastmine, build_reference


def stepper(side, trainer):
    """One update of ``side`` as a function: the reference over copies of ``trainer``'s parts,
    or the trainer itself with its logging (one host sync every ``log.log_every`` updates)."""
    if side == "reference":
        return build_reference(trainer).step
    state = {"step": 0}
    log_every = trainer.cfg.log.log_every

    def step():
        trainer.train_step(state["step"])
        state["step"] += 1
        if state["step"] % log_every == 0:
            trainer.log_row(state["step"], 0.0)

    return step


def summary(blocks, peak=None) -> dict:
    return {"ms_per_step": 1000 * statistics.median(blocks), "ms_blocks": [round(1000 * b, 2) for b in blocks],
            "peak_bytes": None if peak is None else int(peak)}


def measure_side(spec, side, variant, device, warmup, steps, reps, threads):
    """ms per update and peak memory of one side alone. The peak counts from after the
    models and data are in place: what the training steps add."""
    torch.set_num_threads(threads)
    step = stepper(side, build_fastmine(spec, device, variant if side == "fastmine" else ()))
    clock = Clock(device)
    base = clock.start_peak()
    for _ in range(warmup):
        step()
    clock.sync()
    blocks = [timed(step, steps, clock) for _ in range(reps)]
    return summary(blocks, clock.peak() - base)


def time_pair(spec, variant, device, warmup, steps, reps, threads):
    """Reference and fastmine in one process, their timed blocks alternating (the first side
    swaps every rep), so that a slow spell of a shared machine hits both alike. On CUDA each
    block's peak allocation over what was allocated before it is that side's peak memory."""
    torch.set_num_threads(threads)
    steppers = {"reference": stepper("reference", build_fastmine(spec, device)),
                "fastmine": stepper("fastmine", build_fastmine(spec, device, variant))}
    clock = Clock(device)
    blocks, peaks = {k: [] for k in steppers}, {k: 0 for k in steppers}
    for side, step in steppers.items():
        base = clock.start_peak()
        for _ in range(warmup):
            step()
        peaks[side] = clock.peak() - base
    for r in range(reps):
        for side in (("reference", "fastmine") if r % 2 == 0 else ("fastmine", "reference")):
            base = clock.start_peak()
            blocks[side].append(timed(steppers[side], steps, clock))
            peaks[side] = max(peaks[side], clock.peak() - base)
    return {side: summary(b, peaks[side] if clock.cuda else None) for side, b in blocks.items()}


MIN_BLOCKS = 9  # fewer blocks give no confidence interval worth printing (issue #24: a 5-block median pointed
# the wrong way)


def speedup(ref_blocks, fm_blocks, paired=True, resamples=2000, level=0.95, seed=0) -> dict:
    """The speed-up as the ratio of the medians (reference / fastmine) with a percentile bootstrap
    confidence interval: alternating blocks are resampled in pairs (each pair met the same spell of a
    shared machine), separate runs' blocks each on their own. ``verdict``: "faster", "slower",
    "inconclusive" (the interval holds 1) or "too few blocks" (under MIN_BLOCKS: no interval).

    The median of per-pair ratios, reported before, is not the ratio of the medians and can disagree
    with it in sign (blocks 0.86, 0.63, 1.26, 0.96, 0.88: 0.88x against 1.15x)."""
    ref, fm = np.asarray(ref_blocks, dtype=float), np.asarray(fm_blocks, dtype=float)
    ratio = float(np.median(ref) / np.median(fm))
    out = {"speedup": ratio, "ci_low": None, "ci_high": None, "blocks": int(min(len(ref), len(fm)))}
    if out["blocks"] < MIN_BLOCKS:
        return {**out, "verdict": "too few blocks"}
    rng = np.random.default_rng(seed)
    if paired and len(ref) == len(fm):
        idx = rng.integers(0, len(ref), size=(resamples, len(ref)))
        boots = np.median(ref[idx], axis=1) / np.median(fm[idx], axis=1)
    else:
        boots = (np.median(ref[rng.integers(0, len(ref), size=(resamples, len(ref)))], axis=1)
                 / np.median(fm[rng.integers(0, len(fm), size=(resamples, len(fm)))], axis=1))
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    verdict = "inconclusive" if low <= 1 <= high else ("faster" if low > 1 else "slower")
    return {**out, "ci_low": float(low), "ci_high": float(high), "verdict": verdict}


def describe_speedup(s: dict) -> str:
    """``1.15x [0.97, 1.31] inconclusive`` (the 95 % interval), or the ratio and why there is none."""
    if s["ci_low"] is None:
        return f"{s['speedup']:.2f}x ({s['verdict']}: {s['blocks']} < {MIN_BLOCKS})"
    return f"{s['speedup']:.2f}x [{s['ci_low']:.2f}, {s['ci_high']:.2f}]" + (
        " inconclusive" if s["verdict"] == "inconclusive" else "")
