"""Training-step throughput: fastmine against the eager reference (``reference.py``).

    fastmine bench [--device cpu|cuda] [--configs single-b64 multi-n8 ...]
    fastmine bench my_run.yaml train.batch_size=128        # your own config
    python -m fastmine_benchmarks.bench_step ...            # the same

Per configuration: ms per generator-side update (n_critic critic steps + one sampler step)
of the reference and of fastmine, the speed-up, the peak memory of each and their ratio,
and a numerics check — both sides start from the same weights and replay the same random
numbers for 20 updates in fp32 and 8 in float64; the largest difference of any logged loss,
relative to that loss's largest magnitude over those updates, is reported (``--bf16-check`` adds
fastmine in bf16 autocast against the fp32 reference over 200 updates, compared as curves
smoothed over 20 updates). The reference mines (miners in front of frozen generators):
fusion (fuse-n2) and conditional pretraining (conditional-b64) train a generator and are
timed without it — fastmine's time and peak memory only.

Time: reference and fastmine are built in one process and their timed blocks alternate, so
a slow spell of a shared machine hits both alike (``--reps`` blocks of ``--steps`` updates
after ``--warmup`` each; the median block; a sharded fastmine runs under torchrun and is
timed apart). Memory, what the training steps add once models and data are in place: on
CUDA ``max_memory_allocated`` less what was allocated before; on the CPU the peak RSS
(VmHWM, reset through /proc/self/clear_refs) less the RSS before, each side in its own
untimed process whose glibc mmap threshold is fixed at 64 KiB so that freed activations
leave the RSS. ``--variant loss.gp_every=4`` (repeatable) times fastmine once more with
those overrides, each variant on its own against the reference.

Sizes: on the CPU the built-in configurations shrink the DCGAN-64 (128-d latent) to 32 px
and width 16 so that a run takes minutes; on CUDA they are DCGAN-64 at width 64.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastmine_benchmarks.common import RESULTS_DIR, child_result, device_info, run_child, write_result
from fastmine_benchmarks.step_configs import CONFIGS, check_spec, has_reference, is_builtin, processes, size_of
from fastmine_benchmarks.step_profile import SIDES, profile_sides, profile_text, rates
from fastmine_benchmarks.step_replay import bf16_check, numerics_check
from fastmine_benchmarks.step_timing import MIN_BLOCKS, describe_speedup, measure_side, speedup, time_pair

NAN = float("nan")


# --------------------------------------------------------------------------- one measurement, in a child
def child_main(payload):
    job = json.loads(payload)
    spec, device, threads = job["spec"], job["device"], job["threads"]
    if job["what"] == "profile":
        res = profile_sides(spec, job["variant"], device, sides=job["sides"], threads=threads)
    elif job["what"] == "pair":
        res = time_pair(spec, job["variant"], device, job["warmup"], job["steps"], job["reps"], threads)
    elif job["what"] in ("time", "memory"):
        res = measure_side(spec, job["side"], job["variant"], device, job["warmup"], job["steps"], job["reps"],
                           threads)
    elif job["what"] == "check":
        res = numerics_check(spec, device, dtype=job["dtype"])
    else:
        res = bf16_check(spec, device)
    child_result(job, res)


def measure(job, env):
    """One measurement in a fresh process (two under torchrun for a sharded fastmine side);
    with several processes: the slowest rank's time and the largest rank's peak."""
    procs = processes(job["spec"]) if job.get("side") == "fastmine" else 1
    try:
        # torchrun over loopback: one retry for a transient failure
        results = run_child("fastmine_benchmarks.bench_step", job, env, processes=procs, retries=int(procs > 1))
    except RuntimeError as e:
        raise RuntimeError(f"{job['what']} {job.get('side', '')}: {e}") from None
    if procs == 1:
        return results[0]
    slowest = max(results, key=lambda r: r["ms_per_step"])
    return dict(slowest, peak_bytes=max(r["peak_bytes"] for r in results), processes=procs, per_rank=results)


# --------------------------------------------------------------------------- the whole bench
def plan(spec, variants, on_cpu, check, bf16, profile) -> list:
    """The measurements of one configuration (jobs for :func:`child_main`)."""
    reference, sharded = has_reference(spec), processes(spec) > 1
    jobs = []
    if reference and not sharded:
        jobs += [{"what": "pair", "variant": v} for v in variants]
    else:
        jobs += [{"what": "time", "side": "reference", "variant": []}] if reference else []
        jobs += [{"what": "time", "side": "fastmine", "variant": v} for v in variants]
    if on_cpu:
        jobs += [{"what": "memory", "side": "reference", "variant": [], "steps": 1, "reps": 1}] if reference else []
        jobs += [{"what": "memory", "side": "fastmine", "variant": v, "steps": 1, "reps": 1} for v in variants]
    if check and reference and not sharded:  # a sharded run against one process: tests/test_distributed.py
        jobs += [{"what": "check", "dtype": d} for d in ("float32", "float64")]
    if bf16 and reference:
        jobs.append({"what": "bf16"})
    if profile and not sharded:
        jobs.append({"what": "profile", "variant": [], "sides": list(SIDES) if reference else ["fastmine"]})
    return jobs


def key(spec, job) -> str:
    return " ".join(" ".join([spec["label"], job["what"], job.get("side", ""), job.get("dtype", "")]
                             + job.get("variant", [])).split())


def run_bench(specs, device, variants=(), warmup=2, steps=5, reps=MIN_BLOCKS, threads=1, check=True, bf16=False,
              progress=True, profile=False):
    """Every spec × (fastmine, fastmine + each variant), each against the reference where
    the configuration has one. Time: both sides in one child, blocks alternating (a sharded
    fastmine runs under torchrun, so it and its reference are timed in separate children).
    Memory on the CPU: each side in its own child, where the RSS is that side's alone."""
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS=str(threads))
    # CPU memory runs apart from the timed ones: with a fixed mmap threshold glibc maps every
    # large block (activations) on its own and unmaps it when freed, so the RSS follows the
    # live tensors instead of a grown heap (it also slows the steps, hence not while timing)
    mem_env = dict(env, MALLOC_MMAP_THRESHOLD_="65536")
    on_cpu = not device.startswith("cuda")
    all_variants = [[]] + [list(v) for v in variants]
    jobs = [(spec, job) for spec in specs for job in plan(spec, all_variants, on_cpu, check, bf16, profile)]
    results = {}
    bar = tqdm(jobs, desc="bench", unit="run", disable=not progress)
    for spec, job in bar:
        bar.set_postfix_str(key(spec, job))
        full = {"device": device, "warmup": warmup, "steps": steps, "reps": reps, "threads": threads, **job,
                "spec": spec}
        try:
            results[key(spec, job)] = measure(full, mem_env if job["what"] == "memory" else env)
        except RuntimeError as e:  # one failed measurement is reported, the others still run
            results[key(spec, job)] = {"error": str(e)[-2000:]}
            print(f"\n{key(spec, job)} failed:\n{str(e)[-1500:]}", file=sys.stderr)
    return [row(spec, v, results, on_cpu, check, bf16, profile) for spec in specs for v in all_variants]


def row(spec, v, results, on_cpu, check, bf16, profile) -> dict:
    """The table row of ``spec`` with variant ``v`` from the measurements' ``results``."""
    reference, sharded = has_reference(spec), processes(spec) > 1
    get = lambda **job: results[key(spec, {"variant": [], **job})]
    none = {}
    if reference and not sharded:
        pair = get(what="pair", variant=v)
        t = pair if "error" not in pair else {"reference": pair, "fastmine": pair}
    else:
        t = {"reference": get(what="time", side="reference") if reference else none,
             "fastmine": get(what="time", side="fastmine", variant=v)}
    m = t if not on_cpu else {"reference": get(what="memory", side="reference") if reference else none,
                              "fastmine": get(what="memory", side="fastmine", variant=v)}
    ref_ms, ms = (t[k].get("ms_per_step", NAN) for k in SIDES)
    ref_peak, peak = (m[k].get("peak_bytes") or NAN for k in SIDES)
    out = {"config": spec["label"], "variant": " ".join(v) or "default", "reference": reference,
           "fastmine_processes": t["fastmine"].get("processes", 1), "paired": reference and not sharded,
           "reference_ms": ref_ms, "fastmine_ms": ms,
           **(_speedup(t, paired=not sharded) if reference and not any("error" in t[k] for k in SIDES)
              else {"speedup": NAN}),
           "reference_peak_bytes": ref_peak, "fastmine_peak_bytes": peak, "peak_ratio": peak / ref_peak,
           "reference_blocks_ms": t["reference"].get("ms_blocks"), "fastmine_blocks_ms": t["fastmine"].get("ms_blocks")}
    errors = [d.get("error") for d in (*t.values(), *m.values())]
    if any(errors):
        out["error"] = next(e for e in errors if e)
    if not v and check and reference and not sharded:
        out["numerics"] = {d: get(what="check", dtype=d) for d in ("float32", "float64")}
    if not v and bf16 and reference:
        out["bf16"] = get(what="bf16")
    if not v and profile and not sharded:
        prof = out["profile"] = get(what="profile")
        for side in (s for s in SIDES if s in prof):
            prof[side]["timed_ms"] = out[f"{side}_ms"]
            prof[side]["rates"] = rates(prof[side], out[f"{side}_ms"], prof["device"])
    return out


def _speedup(t, paired) -> dict:
    """speedup (the ratio of medians), its bootstrap interval and verdict under the row's keys."""
    s = speedup(t["reference"]["ms_blocks"], t["fastmine"]["ms_blocks"], paired=paired)
    return {"speedup": s["speedup"], "speedup_ci": [s["ci_low"], s["ci_high"]], "speedup_verdict": s["verdict"],
            "speedup_text": describe_speedup(s)}


def table(rows) -> str:
    mib = 1 / 2**20
    lines = ["| config | variant | reference ms | fastmine ms | speed-up (ratio of medians, 95 % CI) "
             "| reference peak MiB | fastmine peak MiB "
             "| peak ratio | same losses? max rel. diff (fp32: 20 updates, fp64: 8) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if not r["reference"]:
            lines.append(f"| {r['config']} | {r['variant']} | – | {r['fastmine_ms']:.1f} | – | – | "
                         f"{r['fastmine_peak_bytes'] * mib:.1f} | – | no eager reference: fastmine timed alone |")
            continue
        chk = ""
        if "numerics" in r:
            chk = ", ".join(f"{d[:1]}p{d[-2:]} " + (f"{n['max_rel_diff']:.1e}" if "max_rel_diff" in n else "failed")
                            for d, n in r["numerics"].items())
        if "bf16" in r:
            chk += f"; bf16 curves {r['bf16']['max_rel_l2']:.3f}" if "max_rel_l2" in r["bf16"] else "; bf16 failed"
        lines.append(f"| {r['config']} | {r['variant']} | {r['reference_ms']:.1f} | {r['fastmine_ms']:.1f} | "
                     f"{r['speedup_text']} | {r['reference_peak_bytes'] * mib:.1f} | "
                     f"{r['fastmine_peak_bytes'] * mib:.1f} | {r['peak_ratio']:.2f} | {chk} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fastmine bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="[CONFIG.yaml] key=value ...: bench your own config instead "
                    "(a mining method against the reference; fuse or pretrain_conditional timed alone)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--configs", nargs="+", default=None, choices=list(CONFIGS), help="built-in configurations")
    ap.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                    help="fastmine once more with these overrides (space-separated) of the sections train, loss, "
                         "perf, log, multi, miner, s3, fusion, dist, e.g. 'loss.gp_every=4' or "
                         "'perf.channels_last=false perf.fused_adam=true'")
    ap.add_argument("--image-size", type=int, default=None,
                    help="built-in configurations: image side (default 32 CPU, 64 CUDA)")
    ap.add_argument("--width", type=int, default=None,
                    help="built-in configurations: DCGAN width (default 16 CPU, 64 CUDA)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=None, help="updates per timed block (default 5 CPU, 50 CUDA)")
    ap.add_argument("--reps", type=int, default=MIN_BLOCKS,
                    help=f"timed blocks per side, alternating (default {MIN_BLOCKS}, the fewest with a confidence "
                         "interval); the ratio of medians is reported with a bootstrap 95 %% interval")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ap.add_argument("--no-check", action="store_true", help="skip the fp32 and float64 numerics checks")
    ap.add_argument("--bf16-check", action="store_true", help="also compare bf16 loss curves over 200 updates")
    ap.add_argument("--profile", action="store_true",
                    help="also profile 2 updates of each side: top ops/kernels, ops or launches per update, "
                         "FLOPs and bytes per update against this device's measured matmul and copy ceilings")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/bench_step_<device>.json)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap


def specs_of(args, device) -> list:
    """The configurations the command line names, each checked with every variant."""
    overrides = list(args.overrides)
    config = None
    if overrides and overrides[0].endswith((".yaml", ".yml")) and "=" not in overrides[0]:
        config = overrides.pop(0)
    if config or overrides:
        specs = [{"label": Path(config).stem if config else "config", "config": config, "overrides": overrides}]
    else:
        sizes = {k: v for k, v in (("image_size", args.image_size), ("width", args.width)) if v}
        specs = [{"label": n, "name": n, **sizes} for n in (args.configs or CONFIGS)]
    for spec in specs:
        check_spec(spec, device, [[]] + [v.split() for v in args.variant])
    return specs


def main(argv=None):
    args = parser().parse_args(argv)
    if args.child:
        return child_main(args.child)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("fastmine bench: error: --device cuda but no CUDA device is visible")
    steps = args.steps or (50 if device.startswith("cuda") else 5)
    specs = specs_of(args, device)
    variants = [v.split() for v in args.variant]
    rows = run_bench(specs, device, variants, warmup=args.warmup, steps=steps, reps=args.reps, threads=args.threads,
                     check=not args.no_check, bf16=args.bf16_check, profile=args.profile)
    print(table(rows))
    for r in rows:
        if "profile" in r and "error" not in r["profile"]:
            print("\n" + profile_text(r["config"], r["profile"]))
    settings = {"configs": specs, "variants": args.variant, "warmup": args.warmup, "steps_per_block": steps,
                "reps": args.reps, "sizes": {s["label"]: size_of(s, device) for s in specs if is_builtin(s)}}
    out = Path(args.out) if args.out else RESULTS_DIR / f"bench_step_{device.split(':')[0]}.json"
    write_result(out, device=device_info(device, args.threads), config=settings, results=rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
