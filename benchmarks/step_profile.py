"""Where an update's time goes: torch.profiler's top ops (CUDA: kernels), FLOPs and bytes of
one update, and the device's measured ceilings to set the timed rates against."""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from fastmine_benchmarks.common import Clock, timed
from fastmine_benchmarks.step_configs import build_fastmine
from fastmine_benchmarks.step_timing import stepper

SIDES = ("reference", "fastmine")


def device_ceilings(device, reps=5):
    """What this device reaches, measured here (the best of ``reps``): a large fp32 matmul in
    TFLOP/s (TF32 where torch's matmul precision allows it, as in the steps) and a large copy
    in GB/s (bytes read + written) — the ceilings an update's rates are set against."""
    clock = Clock(device)
    n, m = (8192, 1 << 28) if clock.cuda else (1024, 1 << 24)  # matmul side; copy of 1 GiB / 64 MiB fp32
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    src = torch.empty(m, device=device).uniform_()
    dst = torch.empty_like(src)

    def best(fn):
        fn()
        clock.sync()
        return min(timed(fn, 1, clock) for _ in range(reps))

    return {"matmul_tflops": 2 * n**3 / best(lambda: torch.mm(a, b)) / 1e12, "matmul_size": n,
            "copy_gbps": 2 * m * 4 / best(lambda: dst.copy_(src)) / 1e9, "copy_bytes": 2 * m * 4,
            "allow_tf32": bool(clock.cuda and torch.backends.cuda.matmul.allow_tf32)}


class _Count(TorchDispatchMode):
    """FLOPs and op input/output bytes of what runs under it. A dispatch mode of our own:
    FlopCounterMode's per-module tracking hooks fail inside the penalty's autograd.grad."""

    def __init__(self):
        super().__init__()
        self.totals = {"flops_per_update": 0, "bytes_per_update": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func._overloadpacket in flop_registry:
            self.totals["flops_per_update"] += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
        if not func.is_view:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            # an expanded tensor is read from its storage, not once per broadcast element
            self.totals["bytes_per_update"] += sum(min(t.nbytes, t.untyped_storage().nbytes()) for t in tensors)
        return out


def count_work(step):
    """FLOPs and bytes of one call of ``step``: FLOPs by torch.utils.flop_counter's formulas
    (matmuls and convolutions, forward, backward and double backward); bytes as the inputs and
    outputs of every aten op that is not a view, each counted once per op — an estimate of
    memory traffic: it ignores caches, counts an indexed tensor whole, and misses Triton
    kernels (not aten ops)."""
    with _Count() as count:
        step()
    return count.totals


def profile_sides(spec, variant, device, sides=SIDES, updates=2, top=8, threads=1):
    """Where an update's time goes, per side (torch.profiler over ``updates`` updates after one
    warm-up): the ops (CUDA: kernels) with the most self time, the number of ops or kernel
    launches per update, the host time not covered by device work (CUDA only), and the FLOPs
    and bytes of one update (:func:`count_work`), with this device's ceilings to set them against."""
    torch.set_num_threads(threads)
    clock = Clock(device)
    steppers = {side: stepper(side, build_fastmine(spec, device, variant if side == "fastmine" else ()))
                for side in sides}
    out = {"device": device_ceilings(device)}
    for side, step in steppers.items():
        step()
        work = count_work(step)
        clock.sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if clock.cuda else [])
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(updates):
                step()
            clock.sync()
        wall_us = (time.perf_counter() - t0) * 1e6
        out[side] = _top(prof.key_averages(), clock.cuda, updates, top, wall_us)
        out[side]["wall_ms_per_update"] = wall_us / updates / 1000
        out[side] |= work
    return out


def _top(events, cuda, updates, top, wall_us) -> dict:
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        key = "self_device_time_total" if hasattr(kernels[0] if kernels else None, "self_device_time_total") \
            else "self_cuda_time_total"
        busy = sum(getattr(e, key) for e in kernels)
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                            "cudaLaunchKernelExC"))
        rows = sorted(kernels, key=lambda e: -getattr(e, key))[:top]
        return {"launches_per_update": launches / updates, "device_busy_fraction": busy / wall_us,
                "top": [{"name": e.key[:80], "self_us_per_update": getattr(e, key) / updates,
                         "calls_per_update": e.count / updates} for e in rows]}
    ops = [e for e in events if e.key.startswith("aten::")]
    rows = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:top]
    return {"ops_per_update": sum(e.count for e in ops) / updates,
            "top": [{"name": e.key, "self_us_per_update": e.self_cpu_time_total / updates,
                     "calls_per_update": e.count / updates} for e in rows]}


def rates(work, ms, ceilings) -> dict:
    """An update's FLOP and byte rates at ``ms`` per update, and their fractions of the
    device's measured matmul and copy ceilings."""
    tflops = work["flops_per_update"] / (ms / 1000) / 1e12
    gbps = work["bytes_per_update"] / (ms / 1000) / 1e9
    return {"tflops": tflops, "matmul_fraction": tflops / ceilings["matmul_tflops"],
            "gbps": gbps, "copy_fraction": gbps / ceilings["copy_gbps"]}


def profile_text(label, prof) -> str:
    dev = prof["device"]
    lines = [f"### {label}", "", f"device ceilings, measured: fp32 matmul {dev['matmul_tflops']:.3g} TFLOP/s "
             f"(n={dev['matmul_size']}{', TF32' if dev['allow_tf32'] else ''}), copy {dev['copy_gbps']:.3g} GB/s"]
    for side in (s for s in SIDES if s in prof):
        p = prof[side]
        count = (f"{p['launches_per_update']:.0f} kernel launches, device busy {100 * p['device_busy_fraction']:.0f} %"
                 if "launches_per_update" in p else f"{p['ops_per_update']:.0f} aten ops")
        r = p.get("rates")
        reached = (f"; at the timed {p['timed_ms']:.1f} ms: {r['tflops']:.3g} TFLOP/s = "
                   f"{100 * r['matmul_fraction']:.1f} % of the matmul ceiling, {r['gbps']:.3g} GB/s = "
                   f"{100 * r['copy_fraction']:.1f} % of the copy ceiling"
                   if r else "")
        lines += ["", f"{side}: {p['wall_ms_per_update']:.1f} ms per update under the profiler, {count} per update; "
                  f"{p['flops_per_update'] / 1e9:.3g} GFLOP and {p['bytes_per_update'] / 2**20:.4g} MiB of op "
                  f"inputs + outputs per update{reached}", "",
                  "| op | self ms / update | calls / update |", "|---|---:|---:|"]
        lines += [f"| `{t['name']}` | {t['self_us_per_update'] / 1000:.2f} | {t['calls_per_update']:.0f} |"
                  for t in p["top"]]
    return "\n".join(lines)
