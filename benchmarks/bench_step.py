"""Training-step throughput: fastmine against the eager reference (``reference.py``).

    fastmine bench [--device cpu|cuda] [--configs single-b64 multi-n8 ...]
    fastmine bench my_run.yaml train.batch_size=128        # your own mining config
    python benchmarks/bench_step.py ...                     # the same

Per configuration: ms per generator-side update (n_critic critic steps + one sampler step)
of the reference and of fastmine, the speed-up, the peak memory of each and their ratio,
and a numerics check — both sides start from the same weights and replay the same random
numbers for 20 updates in fp32; the largest difference of any logged loss, relative to
that loss's largest magnitude over the 20 updates, is reported (``--bf16-check`` adds
fastmine in bf16 autocast against the fp32 reference over 200 updates, compared as curves
smoothed over 20 updates).

Every (configuration, side, variant) runs in its own process so that its peak memory is
its own: on CUDA ``max_memory_allocated`` over the warm-up and timed updates, less what was
allocated before them (models, data); on the CPU the same with the peak RSS (VmHWM, reset
through /proc/self/clear_refs once the models are built), measured in a second, untimed
process whose glibc mmap threshold is fixed at 64 KiB so that freed activations leave the RSS. Time: ``--reps`` blocks of ``--steps`` updates after ``--warmup``; the median
block. ``--variant train.gp_every=4`` (repeatable) times fastmine once more with those
overrides, each variant on its own against the same reference.

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
CHECK_STEPS = 20
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
        self.data, self.sampler, self.device = trainer.data.data, trainer.sampler, trainer.device
        self.multi = isinstance(trainer.sampler, MultiSampler)
        # the permute rule's stream: MultiSampler seeds it with the run's seed
        self.perm_gen = torch.Generator().manual_seed(trainer.seed)

    def real(self, n):
        idx = self.torch.randint(len(self.data), (n,), generator=self.g, device=self.data.device)
        return self.data[idx]

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


def measure_side(spec, side, variant, device, warmup, steps, reps, threads):
    """ms per update and peak memory of one side (run in a child process). The peak counts
    from after the models and data are in place: what the training steps add."""
    import torch

    torch.set_num_threads(threads)
    dev = torch.device(device)
    trainer = build_fastmine(spec, device, variant if side == "fastmine" else ())
    step = _stepper(side, trainer)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = _status("VmRSS")
    for _ in range(warmup):
        step()
    sync()
    blocks = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        blocks.append((time.perf_counter() - t0) / steps)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _status("VmHWM")) - base
    return {"ms_per_step": 1000 * statistics.median(blocks), "ms_blocks": [round(1000 * b, 2) for b in blocks],
            "peak_bytes": int(peak)}


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


def numerics_check(spec, device, steps=CHECK_STEPS, dtype="float32", variant=()):
    """Same state, same draws: max over terms of max|Δ| / max|reference| over the updates.

    In fp32 two correct implementations drift apart through rounding (one critic pass over
    [real, fake] against two, re-run candidates against gathered ones), and with several
    generators a near-tie between two candidates can flip the argmax and send the runs
    apart; in float64 neither happens, so that check shows the two compute the same thing."""
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
    if job["what"] in ("time", "memory"):
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
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        results = [json.loads(f.read_text()) for f in sorted(Path(result_dir).glob("rank*.json"))]
    if out.returncode or len(results) != procs:
        raise RuntimeError(f"benchmark child failed ({job['what']} {job.get('side', '')}):\n{out.stderr[-3000:]}")
    if procs == 1:
        return results[0]
    slowest = max(results, key=lambda r: r["ms_per_step"])
    return dict(slowest, peak_bytes=max(r["peak_bytes"] for r in results), processes=procs,
                per_rank=results)


def run_bench(specs, device, variants=(), warmup=2, steps=5, reps=3, threads=1, check=True, bf16=False,
              progress=True):
    """Every spec × (reference, fastmine, fastmine + each variant), each in its own child."""
    from tqdm.auto import tqdm

    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
    # CPU memory runs apart from the timed ones: with a fixed mmap threshold glibc maps every
    # large block (activations) on its own and unmaps it when freed, so the RSS follows the
    # live tensors instead of a grown heap (it also slows the steps, hence not while timing)
    mem_env = dict(env, MALLOC_MMAP_THRESHOLD_="65536")
    on_cpu = not device.startswith("cuda")
    sides = [("reference", [])] + [("fastmine", list(v)) for v in [[]] + list(variants)]

    def checks(spec):  # a sharded run's numbers against one process: tests/test_distributed.py checks them
        return check and CONFIGS.get(spec.get("name"), (0, 0, 1))[2] == 1
    jobs = []
    for spec in specs:
        for side, v in sides:
            jobs.append((spec, {"what": "time", "side": side, "variant": v}))
            if on_cpu:
                jobs.append((spec, {"what": "memory", "side": side, "variant": v, "steps": 1, "reps": 1}))
        if checks(spec):
            jobs += [(spec, {"what": "check", "dtype": d}) for d in ("float32", "float64")]
        if bf16:
            jobs.append((spec, {"what": "bf16"}))

    def key(spec, job):
        return " ".join(" ".join([spec["label"], job["what"], job.get("side", ""), job.get("dtype", "")]
                                 + job.get("variant", [])).split())

    results = {}
    bar = tqdm(jobs, desc="bench", unit="run", disable=not progress)
    for spec, job in bar:
        bar.set_postfix_str(key(spec, job))
        full = {"device": device, "warmup": warmup, "steps": steps, "reps": reps, "threads": threads, **job,
                "spec": spec}
        results[key(spec, job)] = _run_child(full, mem_env if job["what"] == "memory" else env)
    rows = []
    for spec in specs:
        def side_result(side, v):
            t = results[key(spec, {"what": "time", "side": side, "variant": v})]
            m = results[key(spec, {"what": "memory", "side": side, "variant": v})] if on_cpu else t
            return t["ms_per_step"], t["ms_blocks"], m["peak_bytes"], t.get("processes", 1)

        ref_ms, ref_blocks, ref_peak, _ = side_result("reference", [])
        for side, v in sides[1:]:
            ms, blocks, peak, procs = side_result(side, v)
            row = {"config": spec["label"], "variant": " ".join(v) or "default", "fastmine_processes": procs,
                   "reference_ms": ref_ms,
                   "fastmine_ms": ms, "speedup": ref_ms / ms, "reference_peak_bytes": ref_peak,
                   "fastmine_peak_bytes": peak, "peak_ratio": peak / max(ref_peak, 1),
                   "reference_blocks_ms": ref_blocks, "fastmine_blocks_ms": blocks}
            if not v and checks(spec):
                row["numerics"] = {d: results[key(spec, {"what": "check", "dtype": d})] for d in ("float32", "float64")}
            if not v and bf16:
                row["bf16"] = results[key(spec, {"what": "bf16"})]
            rows.append(row)
    return rows


def table(rows) -> str:
    mib = 1 / 2**20
    lines = ["| config | variant | reference ms | fastmine ms | speed-up | reference peak MiB | fastmine peak MiB "
             "| peak ratio | same losses? (max rel. diff over 20 updates) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        chk = ""
        if "numerics" in r:
            chk = f"fp32 {r['numerics']['float32']['max_rel_diff']:.1e}, fp64 {r['numerics']['float64']['max_rel_diff']:.1e}"
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
                     check=not args.no_check, bf16=args.bf16_check)
    meta = _meta(device, args.threads) | {"warmup": args.warmup, "steps_per_block": steps, "reps": args.reps,
                                          "sizes": SIZES["cuda" if device.startswith("cuda") else "cpu"]}
    print(table(rows))
    out = Path(args.out) if args.out else Path("benchmarks/results") / f"bench_step_{device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
