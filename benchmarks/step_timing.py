"""Timing one generator-side update (n_critic critic steps + one sampler step) and the peak
memory the steps add, for fastmine and the eager reference.

Each measurement runs in a child process of its own (``bench_step.py`` starts them): both
sides in one process with their timed blocks alternating (:func:`time_pair`), or one side
alone (:func:`measure_side`: a sharded fastmine under torchrun, a configuration without a
reference, and every CPU memory measurement).
"""
from __future__ import annotations

import statistics

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


def speedup(ref_blocks, fm_blocks, paired=True):
    """Median over reps of reference block / fastmine block when the blocks alternated in one
    process (each ratio compares two neighbouring blocks), else ratio of the medians."""
    if paired and ref_blocks and len(ref_blocks) == len(fm_blocks):
        return statistics.median(r / f for r, f in zip(ref_blocks, fm_blocks))
    return statistics.median(ref_blocks) / statistics.median(fm_blocks)
