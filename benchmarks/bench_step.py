"""Training-step throughput: fastmine against the eager reference (``reference.py``).

    fastmine bench [--device cpu|cuda] [--configs single-b64 multi-n8 ...]
    fastmine bench my_run.yaml train.batch_size=128        # your own mining config
    python benchmarks/bench_step.py ...                     # the same

Per configuration: ms per generator-side update (n_critic critic steps + one sampler step)
of the reference and of fastmine, the speed-up, the peak memory of each and their ratio,
and a numerics check — both sides start from the same weights and replay the same random
numbers for 20 updates in fp32 and 8 in float64; the largest difference of any logged loss,
relative to that loss's largest magnitude over those updates, is reported (``--bf16-check`` adds
fastmine in bf16 autocast against the fp32 reference over 200 updates, compared as curves
smoothed over 20 updates).

Time: reference and fastmine are built in one process and their timed blocks alternate, so
a slow spell of a shared machine hits both alike (``--reps`` blocks of ``--steps`` updates
after ``--warmup`` each; the median block; a sharded fastmine runs under torchrun and is
timed apart). Memory, what the training steps add once models and data are in place: on
CUDA ``max_memory_allocated`` less what was allocated before; on the CPU the peak RSS
(VmHWM, reset through /proc/self/clear_refs) less the RSS before, each side in its own
untimed process whose glibc mmap threshold is fixed at 64 KiB so that freed activations
leave the RSS. ``--variant train.gp_every=4`` (repeatable) times fastmine once more with
those overrides, each variant on its own against the reference.

Sizes: on the CPU the built-in configurations shrink the DCGAN-64 (128-d latent) to 32 px
and width 16 so that a run takes minutes; on CUDA they are DCGAN-64 at width 64.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

# name -> (generators, batch / supersamples K, fastmine's processes); all: DCGAN, 128-d
# latent, n_critic 5, λ 10. "sharded-b64": the frozen generator split by FSDP2 over two
# processes (torchrun on 127.0.0.1), each drawing half of the same global batch
# (train.streams=2), against the one-process reference.
CONFIGS = {
    "single-b64": (1, 64, 1),
    "single-b256": (1, 256, 1),
    "multi-n4": (4, 64, 1),
    "multi-n8": (8, 64, 1),
    "sharded-b64": (1, 64, 2),
}
SIZES = {"cpu": {"image_size": 32, "width": 16}, "cuda": {"image_size": 64, "width": 64}}
LATENT = 128
CHECK_STEPS = {"float32": 20, "float64": 8}  # float64 convolutions are slow on the CPU
BF16_STEPS = 200


# --------------------------------------------------------------------------- building
def _builtin_run(spec, device, overrides=()):
    """A fastmine Run (not trained) for a built-in configuration: random frozen DCGAN
    generators with fresh miners, a fresh DCGAN critic, 1024 random target images
    (``spec`` may shrink the networks with ``image_size`` / ``width``, as the tests do)."""
    import torch

    from fastmine.api import prepare
    from fastmine.config import ModelConfig, TrainConfig, parse_overrides
    from fastmine.models import GeneratorAdapter
    from fastmine.multi import prepare_multi
    from fastmine.nets import build_generator

    n_gen, batch, procs = CONFIGS[spec["name"]]
    size = SIZES["cuda" if str(device).startswith("cuda") else "cpu"]
    size = {k: spec.get(k, v) for k, v in size.items()}
    arch = {"type": "dcgan", "latent_dim": LATENT, "image_size": size["image_size"], "channels": 3,
            "width": size["width"], "norm": "batch"}
    gens = []
    for i in range(n_gen):
        torch.manual_seed(100 + i)
        gens.append(GeneratorAdapter(build_generator(arch), {"z": ((LATENT,), "normal")}, build={"arch": arch}))
    target = torch.rand(1024, 3, size["image_size"], size["image_size"], generator=torch.Generator().manual_seed(1)) * 2 - 1
    train = dict(parse_overrides(overrides).get("train", {}))
    unknown = set(parse_overrides(overrides)) - {"train"}
    if unknown:
        raise ValueError(f"variants of the built-in configurations take train.* overrides only, got {sorted(unknown)}")
    tcfg = dataclasses.replace(TrainConfig(), **{"batch_size": batch, "progress": False, "steps": 10**6, **train})
    common = dict(device=device, seed=0, train_cfg=tcfg, model_cfg=ModelConfig(width=size["width"]))
    if procs > 1:
        from fastmine import distributed
        from fastmine.config import DistConfig

        world = distributed.launched_world_size()
        if world not in (1, procs):
            raise ValueError(f"{spec['name']} runs on {procs} processes, not {world}")
        common["train_cfg"] = dataclasses.replace(tcfg, streams=procs, batch_size=batch // world)
        acc = distributed.setup(DistConfig(), device)
        return prepare(gens[0], target, method="minegan_noft", accelerator=acc,
                       dist_cfg={"shard": "fsdp2" if world > 1 else "none"}, **common)
    if n_gen == 1:
        return prepare(gens[0], target, method="minegan_noft", **common)
    return prepare_multi(gens, target, **common)


def check_config(config, overrides):
    """The user's config, validated before any process starts: known keys, a mining method."""
    from fastmine.cli import COMMAND_DEFAULTS
    from fastmine.config import load_config
    from fastmine.methods import get_method

    cfg = load_config(config, list(overrides), defaults=COMMAND_DEFAULTS["mine"])
    m = get_method(cfg.method)
    if not m.uses_miner or m.generator_trains == "always":
        raise ValueError(f"`fastmine bench` times mining steps (miners in front of frozen generators); method "
                         f"{cfg.method!r} trains the generator. Use minegan_noft, reprogram, minegan_multi "
                         "(or minegan / minegan_pp, timed in their mining phase)")
    return cfg


def _config_run(config, overrides, device):
    from fastmine.api import prepare_config

    cfg = check_config(config, overrides)
    if device:
        cfg.device = device
    cfg.train.progress = False
    cfg.train.steps = max(cfg.train.steps, 10**6)
    cfg.train.mine_steps = 10**6  # the mining phase throughout
    return prepare_config(cfg, write=False)


def build_fastmine(spec, device, variant=()):
    if spec.get("config") is not None or spec.get("overrides"):
        run = _config_run(spec.get("config"), list(spec.get("overrides", [])) + list(variant), device)
    else:
        run = _builtin_run(spec, device, variant)
    if run.trainer.world > 1 and spec.get("name") != "sharded-b64":
        raise ValueError("`fastmine bench` runs your config in one process (the sharded-b64 configuration and "
                         "benchmarks/bench_sharded.py measure sharded generators)")
    return run.trainer


def build_reference(trainer, draws=None):
    """The eager reference over deep copies of a (fresh) fastmine trainer's parts."""
    from fastmine.multi import MultiSampler

    from fastmine_benchmarks.reference import HostDraws, ReferenceMining

    cfg, s = trainer.cfg, trainer.sampler
    multi = isinstance(s, MultiSampler)
    samplers = list(s.samplers) if multi else [s]
    if draws is None:
        draws = HostDraws(trainer.data.data, cfg.batch_size, s.seed_dim, s.seed_dist, trainer.device)
    return ReferenceMining(samplers, trainer.critic, lambda x: x.miner.parameters(), draws,
                           batch_size=cfg.batch_size, n_critic=cfg.n_critic, gp_weight=cfg.gp_weight,
                           gp_center=cfg.gp_center, lr=cfg.lr, critic_lr=cfg.critic_lr, betas=cfg.betas,
                           rule=s.rule if multi else "permute")


class ReplayDraws:
    """fastmine's random numbers in fastmine's order, for the reference (numerics check)."""

    def __init__(self, trainer):
        import torch

        from fastmine import distributed
        from fastmine.multi import MultiSampler

        if len(trainer.rngs) != 1:
            raise ValueError("the numerics check replays one random stream (train.streams = 1)")
        self.torch = torch
        self.g = distributed.make_streams(trainer.seed, trainer.streams, trainer.device)[0]
        self.data, self.sampler, self.device = trainer.data, trainer.sampler, trainer.device
        self.multi = isinstance(trainer.sampler, MultiSampler)
        # the permute rule's stream: MultiSampler seeds it with the run's seed
        self.perm_gen = torch.Generator().manual_seed(trainer.seed)

    def real(self, n):
        return self.data.batch(n, self.g)  # the trainer's own sampler, on the replayed stream

    def seeds(self, n):
        s = self.sampler.draw_seeds(n, self.g, self.device)
        return s[:, : self.sampler.seed_dim] if self.multi else s

    def eps(self, n):
        return self.torch.rand(n, generator=self.g, device=self.device)

    def perm(self, k):
        return self.torch.randperm(k, generator=self.perm_gen).to(self.device)


# --------------------------------------------------------------------------- one side, timed
def _stepper(side, trainer):
    if side == "reference":
        ref = build_reference(trainer)
        del trainer
        return ref.step
    state = {"step": 0}
    log_every = trainer.cfg.log_every

    def step():
        trainer.train_step(state["step"])
        state["step"] += 1
        if state["step"] % log_every == 0:  # fastmine's logging: one host sync every log_every updates
            trainer._log(state["step"], 0.0)

    return step


def _status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return -1


class _Clock:
    """Peak memory since the models were built, and CUDA synchronisation, for one process."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, torch.device(device).type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def start_peak(self):
        self.sync()
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        return _status("VmRSS")

    def peak(self):
        return self.torch.cuda.max_memory_allocated() if self.cuda else _status("VmHWM")


def _timed_block(step, steps, clock):
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    clock.sync()
    return (time.perf_counter() - t0) / steps


def measure_side(spec, side, variant, device, warmup, steps, reps, threads):
    """ms per update and peak memory of one side alone (run in a child process). The peak
    counts from after the models and data are in place: what the training steps add."""
    import torch

    torch.set_num_threads(threads)
    trainer = build_fastmine(spec, device, variant if side == "fastmine" else ())
    step = _stepper(side, trainer)
    clock = _Clock(device)
    base = clock.start_peak()
    for _ in range(warmup):
        step()
    clock.sync()
    blocks = [_timed_block(step, steps, clock) for _ in range(reps)]
    return {"ms_per_step": 1000 * statistics.median(blocks), "ms_blocks": [round(1000 * b, 2) for b in blocks],
            "peak_bytes": int(clock.peak() - base)}


def time_pair(spec, variant, device, warmup, steps, reps, threads):
    """Reference and fastmine in one process, their timed blocks alternating (the first side
    swaps every rep), so that a slow spell of a shared machine hits both alike. On CUDA each
    block's peak allocation over what was allocated before it is that side's peak memory."""
    import torch

    torch.set_num_threads(threads)
    ref = build_reference(build_fastmine(spec, device, ()))
    steppers = {"reference": ref.step, "fastmine": _stepper("fastmine", build_fastmine(spec, device, variant))}
    clock = _Clock(device)
    blocks, peaks = {k: [] for k in steppers}, {k: 0 for k in steppers}
    for side, step in steppers.items():
        base = clock.start_peak()
        for _ in range(warmup):
            step()
        clock.sync()
        peaks[side] = clock.peak() - base
    for r in range(reps):
        for side in (("reference", "fastmine") if r % 2 == 0 else ("fastmine", "reference")):
            base = clock.start_peak()
            blocks[side].append(_timed_block(steppers[side], steps, clock))
            peaks[side] = max(peaks[side], clock.peak() - base)
    return {side: {"ms_per_step": 1000 * statistics.median(b), "ms_blocks": [round(1000 * x, 2) for x in b],
                   "peak_bytes": int(peaks[side]) if clock.cuda else None} for side, b in blocks.items()}


def device_ceilings(device, reps=5):
    """What this device reaches, measured here (the best of ``reps``): a large fp32 matmul in
    TFLOP/s (TF32 where torch's matmul precision allows it, as in the steps) and a large copy
    in GB/s (bytes read + written) — the ceilings an update's rates are set against."""
    import torch

    clock = _Clock(device)
    n, m = (8192, 1 << 28) if clock.cuda else (1024, 1 << 24)  # matmul side; copy of 1 GiB / 64 MiB fp32
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    src = torch.empty(m, device=device).uniform_()
    dst = torch.empty_like(src)

    def best(fn):
        fn()
        clock.sync()
        return min(_timed_block(fn, 1, clock) for _ in range(reps))

    return {"matmul_tflops": 2 * n**3 / best(lambda: torch.mm(a, b)) / 1e12, "matmul_size": n,
            "copy_gbps": 2 * m * 4 / best(lambda: dst.copy_(src)) / 1e9, "copy_bytes": 2 * m * 4,
            "allow_tf32": bool(clock.cuda and torch.backends.cuda.matmul.allow_tf32)}


def count_work(step):
    """FLOPs and bytes of one call of ``step``: FLOPs by torch.utils.flop_counter's formulas
    (matmuls and convolutions, forward, backward and double backward); bytes as the inputs and
    outputs of every aten op that is not a view, each counted once per op — an estimate of
    memory traffic: it ignores caches, counts an indexed tensor whole, and misses Triton
    kernels (not aten ops)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import flop_registry

    totals = {"flops_per_update": 0, "bytes_per_update": 0}

    # one dispatch mode of our own: FlopCounterMode's per-module tracking hooks fail inside
    # the penalty's autograd.grad
    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func._overloadpacket in flop_registry:
                totals["flops_per_update"] += flop_registry[func._overloadpacket](*args, **kwargs, out_val=out)
            if not func.is_view:
                tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
                # an expanded tensor is read from its storage, not once per broadcast element
                totals["bytes_per_update"] += sum(min(t.nbytes, t.untyped_storage().nbytes()) for t in tensors)
            return out

    with Count():
        step()
    return totals


def profile_pair(spec, variant, device, updates=2, top=8, threads=1):
    """Where an update's time goes, per side (torch.profiler over ``updates`` updates after one
    warm-up): the ops (CUDA: kernels) with the most self time, the number of ops or kernel
    launches per update, the host time not covered by device work (CUDA only), and the FLOPs
    and bytes of one update (:func:`count_work`), with this device's ceilings to set them against."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    cuda = torch.device(device).type == "cuda"
    ref = build_reference(build_fastmine(spec, device, ()))
    steppers = {"reference": ref.step, "fastmine": _stepper("fastmine", build_fastmine(spec, device, variant))}
    clock = _Clock(device)
    out = {"device": device_ceilings(device)}
    for side, step in steppers.items():
        step()
        work = count_work(step)
        clock.sync()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(updates):
                step()
            clock.sync()
        wall_us = (time.perf_counter() - t0) * 1e6
        events = prof.key_averages()
        if cuda:
            kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
            key = "self_device_time_total" if hasattr(kernels[0] if kernels else None, "self_device_time_total") \
                else "self_cuda_time_total"
            busy = sum(getattr(e, key) for e in kernels)
            launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                                "cudaLaunchKernelExC"))
            rows = sorted(kernels, key=lambda e: -getattr(e, key))[:top]
            out[side] = {"launches_per_update": launches / updates,
                         "device_busy_fraction": busy / wall_us,
                         "top": [{"name": e.key[:80], "self_us_per_update": getattr(e, key) / updates,
                                  "calls_per_update": e.count / updates} for e in rows]}
        else:
            ops = [e for e in events if e.key.startswith("aten::")]
            rows = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:top]
            out[side] = {"ops_per_update": sum(e.count for e in ops) / updates,
                         "top": [{"name": e.key, "self_us_per_update": e.self_cpu_time_total / updates,
                                  "calls_per_update": e.count / updates} for e in rows]}
        out[side]["wall_ms_per_update"] = wall_us / updates / 1000
        out[side] |= work
    return out


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
    for side in ("reference", "fastmine"):
        p = prof[side]
        count = (f"{p['launches_per_update']:.0f} kernel launches, device busy {100 * p['device_busy_fraction']:.0f} %"
                 if "launches_per_update" in p else f"{p['ops_per_update']:.0f} aten ops")
        r = p.get("rates")
        reached = (f"; at the timed {p['timed_ms']:.1f} ms: {r['tflops']:.3g} TFLOP/s = {100 * r['matmul_fraction']:.1f} % "
                   f"of the matmul ceiling, {r['gbps']:.3g} GB/s = {100 * r['copy_fraction']:.1f} % of the copy ceiling"
                   if r else "")
        lines += ["", f"{side}: {p['wall_ms_per_update']:.1f} ms per update under the profiler, {count} per update; "
                  f"{p['flops_per_update'] / 1e9:.3g} GFLOP and {p['bytes_per_update'] / 2**20:.4g} MiB of op "
                  f"inputs + outputs per update{reached}", "",
                  "| op | self ms / update | calls / update |", "|---|---:|---:|"]
        lines += [f"| `{t['name']}` | {t['self_us_per_update'] / 1000:.2f} | {t['calls_per_update']:.0f} |"
                  for t in p["top"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- numerics
TERMS = ("loss_critic", "loss_sampler", "penalty", "wasserstein")


def _to_dtype(trainer, dtype):
    """Parameters, floating buffers (not the selector's counts) and the target in ``dtype``."""
    for module in (trainer.sampler, trainer.critic):
        for p in module.parameters():
            p.data = p.data.to(dtype)
        for name, b in module.named_buffers():
            if b.is_floating_point() and "selector_" not in name:
                b.data = b.data.to(dtype)
    trainer.data.data = trainer.data.data.to(dtype)


def _curves(spec, device, steps, variant=(), dtype="float32"):
    """(fastmine rows, reference rows) over ``steps`` updates from the same state and draws."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # seeds, ε and the loss accumulators follow it
    try:
        trainer = build_fastmine(spec, device, list(variant) + ["train.log_every=1"])
        _to_dtype(trainer, getattr(torch, dtype))  # before the reference copies the parts
        ref = build_reference(trainer, ReplayDraws(trainer))
        fm_rows, ref_rows = [], []
        for i in range(steps):
            trainer.train_step(i)
            fm_rows.append(trainer._log(i + 1, 0.0))
            ref_rows.append(ref.step())
    finally:
        torch.set_default_dtype(before)
    return fm_rows, ref_rows


def numerics_check(spec, device, steps=None, dtype="float32", variant=()):
    """Same state, same draws: max over terms of max|Δ| / max|reference| over the updates.

    In fp32 two correct implementations drift apart through rounding (on CUDA one critic pass over
    [real, fake] against two, re-run candidates against gathered ones), and with several
    generators a near-tie between two candidates can flip the argmax and send the runs
    apart; in float64 neither happens, so that check shows the two compute the same thing."""
    steps = steps or CHECK_STEPS[dtype]
    fm_rows, ref_rows = _curves(spec, device, steps, variant=variant, dtype=dtype)
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
    fm_rows, ref_rows = _curves(spec, device, steps, variant=["train.amp=bf16"])

    def smooth(xs):
        return [sum(xs[i:i + window]) / window for i in range(0, len(xs) - window + 1)]

    out = {}
    for t in ("loss_critic", "loss_sampler", "wasserstein"):
        a, b = smooth([r[t] for r in fm_rows]), smooth([r[t] for r in ref_rows])
        num = sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5
        out[t] = num / max(sum(y * y for y in b) ** 0.5, 1e-12)
    return {"steps": steps, "window": window, "rel_l2": out, "max_rel_l2": max(out.values())}


# --------------------------------------------------------------------------- driver
def _child_main(payload):
    job = json.loads(payload)
    if job["what"] == "profile":
        res = profile_pair(job["spec"], job["variant"], job["device"], threads=job["threads"])
    elif job["what"] == "pair":
        res = time_pair(job["spec"], job["variant"], job["device"], job["warmup"], job["steps"], job["reps"],
                        job["threads"])
    elif job["what"] in ("time", "memory"):
        res = measure_side(job["spec"], job["side"], job["variant"], job["device"], job["warmup"], job["steps"],
                           job["reps"], job["threads"])
    elif job["what"] == "check":
        res = numerics_check(job["spec"], job["device"], dtype=job["dtype"])
    else:
        res = bf16_check(job["spec"], job["device"])
    rank = os.environ.get("RANK", "0")  # one file per process: two ranks' prints would interleave
    Path(job["result_dir"], f"rank{rank}.json").write_text(json.dumps(res))


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_child(job, env):
    """One measurement in a fresh process (two under torchrun for a sharded fastmine side);
    with several processes: the slowest rank's time and the largest rank's peak."""
    import tempfile

    procs = CONFIGS.get(job["spec"].get("name"), (0, 0, 1))[2] if job.get("side") == "fastmine" else 1
    with tempfile.TemporaryDirectory() as result_dir:
        cmd = [sys.executable, "-m", "fastmine_benchmarks.bench_step", "--child",
               json.dumps(dict(job, result_dir=result_dir))]
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--nnodes=1",
                   "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *cmd[1:]]
        for attempt in range(1 + (procs > 1)):  # torchrun over loopback: one retry for a transient failure
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            results = [json.loads(f.read_text()) for f in sorted(Path(result_dir).glob("rank*.json"))]
            if out.returncode == 0 and len(results) == procs:
                break
    if out.returncode or len(results) != procs:
        raise RuntimeError(f"benchmark child failed ({job['what']} {job.get('side', '')}):\n{out.stderr[-3000:]}")
    if procs == 1:
        return results[0]
    slowest = max(results, key=lambda r: r["ms_per_step"])
    return dict(slowest, peak_bytes=max(r["peak_bytes"] for r in results), processes=procs,
                per_rank=results)


def run_bench(specs, device, variants=(), warmup=2, steps=5, reps=3, threads=1, check=True, bf16=False,
              progress=True, profile=False):
    """Every spec × (fastmine, fastmine + each variant), each against the reference.

    Time: both sides in one child, blocks alternating (a sharded fastmine runs under torchrun,
    so it and its reference are timed in separate children). Memory on the CPU: each side in
    its own child, where the RSS is that side's alone."""
    from tqdm.auto import tqdm

    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
    # CPU memory runs apart from the timed ones: with a fixed mmap threshold glibc maps every
    # large block (activations) on its own and unmaps it when freed, so the RSS follows the
    # live tensors instead of a grown heap (it also slows the steps, hence not while timing)
    mem_env = dict(env, MALLOC_MMAP_THRESHOLD_="65536")
    on_cpu = not device.startswith("cuda")
    all_variants = [[]] + [list(v) for v in variants]

    def sharded(spec):
        return CONFIGS.get(spec.get("name"), (0, 0, 1))[2] > 1

    def checks(spec):  # a sharded run's numbers against one process: tests/test_distributed.py checks them
        return check and not sharded(spec)

    jobs = []
    for spec in specs:
        if sharded(spec):
            jobs += [(spec, {"what": "time", "side": "reference", "variant": []})]
            jobs += [(spec, {"what": "time", "side": "fastmine", "variant": v}) for v in all_variants]
        else:
            jobs += [(spec, {"what": "pair", "variant": v}) for v in all_variants]
        if on_cpu:
            jobs += [(spec, {"what": "memory", "side": side, "variant": v, "steps": 1, "reps": 1})
                     for side, v in [("reference", [])] + [("fastmine", v) for v in all_variants]]
        if checks(spec):
            jobs += [(spec, {"what": "check", "dtype": d}) for d in ("float32", "float64")]
        if bf16:
            jobs.append((spec, {"what": "bf16"}))
        if profile and not sharded(spec):
            jobs.append((spec, {"what": "profile", "variant": []}))

    def key(spec, job):
        return " ".join(" ".join([spec["label"], job["what"], job.get("side", ""), job.get("dtype", "")]
                                 + job.get("variant", [])).split())

    results = {}
    bar = tqdm(jobs, desc="bench", unit="run", disable=not progress)
    for spec, job in bar:
        bar.set_postfix_str(key(spec, job))
        full = {"device": device, "warmup": warmup, "steps": steps, "reps": reps, "threads": threads, **job,
                "spec": spec}
        try:
            results[key(spec, job)] = _run_child(full, mem_env if job["what"] == "memory" else env)
        except RuntimeError as e:  # one failed measurement is reported, the others still run
            results[key(spec, job)] = {"error": str(e)[-2000:]}
            print(f"\n{key(spec, job)} failed:\n{str(e)[-1500:]}", file=sys.stderr)
    rows = []
    nan = float("nan")
    for spec in specs:
        for v in all_variants:
            if sharded(spec):
                t = {"reference": results[key(spec, {"what": "time", "side": "reference", "variant": []})],
                     "fastmine": results[key(spec, {"what": "time", "side": "fastmine", "variant": v})]}
            else:
                pair = results[key(spec, {"what": "pair", "variant": v})]
                t = pair if "error" not in pair else {"reference": pair, "fastmine": pair}
            m = t if not on_cpu else {
                "reference": results[key(spec, {"what": "memory", "side": "reference", "variant": []})],
                "fastmine": results[key(spec, {"what": "memory", "side": "fastmine", "variant": v})]}
            ref_ms, ms = (t[k].get("ms_per_step", nan) for k in ("reference", "fastmine"))
            ref_peak, peak = (m[k].get("peak_bytes") or nan for k in ("reference", "fastmine"))
            row = {"config": spec["label"], "variant": " ".join(v) or "default",
                   "fastmine_processes": t["fastmine"].get("processes", 1), "paired": not sharded(spec),
                   "reference_ms": ref_ms, "fastmine_ms": ms,
                   "speedup": speedup(t["reference"].get("ms_blocks"), t["fastmine"].get("ms_blocks"),
                                      paired=not sharded(spec)) if "error" not in t["fastmine"] else nan,
                   "reference_peak_bytes": ref_peak, "fastmine_peak_bytes": peak, "peak_ratio": peak / ref_peak,
                   "reference_blocks_ms": t["reference"].get("ms_blocks"), "fastmine_blocks_ms": t["fastmine"].get("ms_blocks")}
            errors = [d.get("error") for d in (*t.values(), *m.values())]
            if any(errors):
                row["error"] = next(e for e in errors if e)
            if not v and checks(spec):
                row["numerics"] = {d: results[key(spec, {"what": "check", "dtype": d})] for d in ("float32", "float64")}
            if not v and bf16:
                row["bf16"] = results[key(spec, {"what": "bf16"})]
            if not v and profile and not sharded(spec):
                prof = row["profile"] = results[key(spec, {"what": "profile", "variant": []})]
                for side in ("reference", "fastmine") if "error" not in prof else ():
                    prof[side]["timed_ms"] = row[f"{side}_ms"]
                    prof[side]["rates"] = rates(prof[side], row[f"{side}_ms"], prof["device"])
            rows.append(row)
    return rows


def speedup(ref_blocks, fm_blocks, paired=True):
    """Median over reps of reference block / fastmine block when the blocks alternated in one
    process (each ratio compares two neighbouring blocks), else ratio of the medians."""
    if paired and ref_blocks and len(ref_blocks) == len(fm_blocks):
        return statistics.median(r / f for r, f in zip(ref_blocks, fm_blocks))
    return statistics.median(ref_blocks) / statistics.median(fm_blocks)


def table(rows) -> str:
    mib = 1 / 2**20
    lines = ["| config | variant | reference ms | fastmine ms | speed-up | reference peak MiB | fastmine peak MiB "
             "| peak ratio | same losses? max rel. diff (fp32: 20 updates, fp64: 8) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        chk = ""
        if "numerics" in r:
            chk = ", ".join(f"{d[:1]}p{d[-2:]} " + (f"{n['max_rel_diff']:.1e}" if "max_rel_diff" in n else "failed")
                            for d, n in r["numerics"].items())
        if "bf16" in r:
            chk += f"; bf16 curves {r['bf16']['max_rel_l2']:.3f}"
        lines.append(f"| {r['config']} | {r['variant']} | {r['reference_ms']:.1f} | {r['fastmine_ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['reference_peak_bytes'] * mib:.1f} | {r['fastmine_peak_bytes'] * mib:.1f} | "
                     f"{r['peak_ratio']:.2f} | {chk} |")
    return "\n".join(lines)


def _meta(device, threads):
    import torch

    meta = {"date": date.today().isoformat(), "device": device, "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(), "threads": threads}
    if device.startswith("cuda") and torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
    else:
        meta["cpu"] = platform.processor() or platform.machine()
        meta["cores"] = os.cpu_count()
    return meta


def main(argv=None):
    ap = argparse.ArgumentParser(prog="fastmine bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="[CONFIG.yaml] key=value ...: bench your own mining config instead")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--configs", nargs="+", default=None, choices=sorted(CONFIGS), help="built-in configurations")
    ap.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                    help="fastmine once more with these train.* overrides (space-separated), e.g. 'train.gp_every=4'")
    ap.add_argument("--image-size", type=int, default=None, help="built-in configurations: image side (default 32 CPU, 64 CUDA)")
    ap.add_argument("--width", type=int, default=None, help="built-in configurations: DCGAN width (default 16 CPU, 64 CUDA)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="updates per timed block (default 5 CPU, 50 CUDA)")
    ap.add_argument("--reps", type=int, default=3, help="timed blocks; the median is reported")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ap.add_argument("--no-check", action="store_true", help="skip the fp32 numerics check")
    ap.add_argument("--bf16-check", action="store_true", help="also compare bf16 loss curves over 200 updates")
    ap.add_argument("--profile", action="store_true",
                    help="also profile 2 updates of each side: top ops/kernels, ops or launches per update, "
                         "FLOPs and bytes per update against this device's measured matmul and copy ceilings")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/bench_step_<device>.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child_main(args.child)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fastmine bench: error: --device cuda but no CUDA device is visible")
    steps = args.steps or (50 if device.startswith("cuda") else 5)
    overrides = list(args.overrides)
    config = None
    if overrides and overrides[0].endswith((".yaml", ".yml")) and "=" not in overrides[0]:
        config = overrides.pop(0)
    if config or overrides:
        check_config(config, overrides)
        specs = [{"label": Path(config).stem if config else "config", "config": config, "overrides": overrides}]
    else:
        sizes = {k: v for k, v in (("image_size", args.image_size), ("width", args.width)) if v}
        specs = [{"label": n, "name": n, **sizes} for n in (args.configs or CONFIGS)]
    variants = [v.split() for v in args.variant]
    rows = run_bench(specs, device, variants, warmup=args.warmup, steps=steps, reps=args.reps, threads=args.threads,
                     check=not args.no_check, bf16=args.bf16_check, profile=args.profile)
    meta = _meta(device, args.threads) | {"warmup": args.warmup, "steps_per_block": steps, "reps": args.reps,
                                          "sizes": SIZES["cuda" if device.startswith("cuda") else "cpu"]}
    print(table(rows))
    for r in rows:
        if "profile" in r and "error" not in r["profile"]:
            print("\n" + profile_text(r["config"], r["profile"]))
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"bench_step_{device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
