"""``fastmine demo``: the single-generator comparison on the built-in digits, offline.

Pretrain a WGAN-GP source on digits 0-8 (cached by its settings, so a second run reuses
it), take 100 images of digit 9 at 16 px as the target (the MineGAN++ off-manifold MNIST
setting), and train from scratch, TransferGAN, FreezeD, MineGAN w/o FT, MineGAN and GAN
reprogramming with the same budget of generator updates. Every run logs FID / KMMD /
target share every ``eval_every`` steps (``fastmine.evaluation.fid_callback``); at the end
each is scored with the paper's protocol and ``OUT/report.md`` compares them.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import hub
from ..api import run
from ..config import MOVED, DataConfig, load_config
from ..data import load_data
from ..evaluation import Scorer, evaluate_sampler, fid_callback, logged_curve
from ..files import load_latents, load_sampler
from ..images import save_grid
from ..methods import METHODS
from .pictures import interpolation_picture, keep_global_random_state, latent_picture
from .presets import COMMAND_DEFAULTS, DEMO_METHODS, ROWS
from .report import write_demo_report, write_run_report

LABELS = {"scratch": "from scratch", "transfergan": "TransferGAN", "freezed": "FreezeD",
          "minegan_noft": "MineGAN w/o FT", "minegan": "MineGAN", "reprogram": "GAN reprogramming",
          "transfergan_diffaugment": "TransferGAN + DiffAugment", "transfergan_ada": "TransferGAN + ADA",
          "ewc": "EWC (TransferGAN + EWC)", "cdc": "CDC (TransferGAN + CDC)",
          "minegan_diffaugment": "MineGAN + DiffAugment"}
TARGET_CLASS = 9
SOURCE_SEED = 0  # one fixed pretrained source; the seeds vary the adaptation runs


@dataclass
class DemoSettings:
    source_steps: int      # source WGAN-GP pretraining (cached)
    steps: int             # generator updates per method (the shared budget)
    eval_every: int        # logged FID every k steps
    eval_n: int            # samples per logged FID
    log_every: int
    repeats: int           # final evaluation: sample draws averaged (paper protocol each)


# Measured CPU time (one torch thread): ~0.2 s per generator update with n_critic=5 at
# 16 px, ~65 s per 300-update run incl. the logged evaluations, so the six methods are
# ~6.5 min of one core (~3.5 min with --jobs 2 on an idle 2-core machine) and the
# 800-update source ~3 min once (then cached). Wall times on a shared machine are longer.
FULL = DemoSettings(source_steps=800, steps=300, eval_every=50, eval_n=500, log_every=25, repeats=5)
QUICK = DemoSettings(source_steps=40, steps=16, eval_every=8, eval_n=200, log_every=8, repeats=2)


def cache_dir() -> Path:
    return hub.cache_dir()  # the demo's sources live beside the downloaded files, in sources/


def pretrained_source(steps: int, seed: int = 0, overrides=(), threads=None) -> Path:
    """Path of a digits 0-8 source GAN, trained once per distinct setting and cached (``threads``:
    perf.threads of the training, not part of the setting)."""
    over = [f"train.steps={steps}", f"seed={seed}", *overrides]
    cfg = load_config(None, over, defaults=COMMAND_DEFAULTS["pretrain"])
    cfg.perf.threads = threads
    final = _source_path(over)
    final.parent.mkdir(parents=True, exist_ok=True)
    # one trainer per cached source: a second demo started meanwhile waits here, then reuses it
    with open(final.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():
            print(f"using the cached source generator {final}")
            return final
        work = final.with_name(final.stem.replace("digits0-8-", "run-"))
        shutil.rmtree(work, ignore_errors=True)  # a half-finished earlier attempt
        cfg.out_dir, cfg.name = str(work.parent), work.name
        print(f"pretraining the source WGAN-GP on digits 0-8 ({steps} steps); cached for next time at {final}")
        result = run(cfg)
        os.replace(result.model_path, final)
        shutil.rmtree(work, ignore_errors=True)
        return final


def run_demo(out="runs/demo", quick=False, seed=0, seeds=1, methods=DEMO_METHODS, threads=1, steps=None,
             source_steps=None, overrides=(), jobs=1):
    """Run the comparison and write ``OUT/report.md``; returns {"report", "results", ...}.

    ``threads``: torch CPU threads. One is the default: these networks are tiny, and on a
    2-core machine shared with other work two threads ran 3-6x *slower* per step
    (measured), as the threads wait on each other. ``overrides``: extra ``key=value``
    settings applied to every method's run (e.g. ``miner.init=normal``). ``jobs``: runs
    trained in parallel processes (each with ``threads`` threads); results are identical.
    """
    unknown = [m for m in methods if m not in ROWS]
    if unknown:
        raise ValueError(f"unknown demo method(s) {unknown}; choose from {', '.join(ROWS)}")
    s = QUICK if quick else FULL
    s = DemoSettings(**{**asdict(s), **({"steps": steps} if steps else {}),
                        **({"source_steps": source_steps} if source_steps else {})})
    out = Path(out)
    load_start, t_start = _loadavg(), time.perf_counter()

    t0 = time.perf_counter()
    cached = _cached_source_exists(s.source_steps)
    source = pretrained_source(steps=s.source_steps, seed=SOURCE_SEED, threads=threads or None)
    source_s = time.perf_counter() - t0
    # the source itself, before any adaptation: where every method starts from
    source_scores = score_model(load_sampler(source), s.repeats, _scorers())

    seed_list = list(range(seed, seed + seeds))
    tasks = [dict(method=m, run_seed=rs, source=str(source), out=str(out), settings=asdict(s),
                  overrides=list(overrides), save_samples=rs == seed_list[0], threads=threads)
             for rs in seed_list for m in methods]
    results = {m: [] for m in methods}
    if jobs > 1:
        # spawn, not fork: a forked child inherits torch's thread pools in an unsafe state
        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_run_one, tasks))
    else:
        done = [_run_one(t) for t in tasks]
    for r in done:
        results[r["method"]].append(r)
    save_grid(load_sampler(source).sample(64, seed=0), out / "samples_source.png")
    t0 = time.perf_counter()
    mined = mined_pictures(out, results)
    timing = {"total_s": time.perf_counter() - t_start, "source_s": source_s, "source_cached": cached,
              "load_start": load_start, "load_end": _loadavg(), "jobs": jobs, "pictures_s": time.perf_counter() - t0}
    report = write_demo_report(out, results, source_scores, settings=s, seeds=seed_list, timing=timing, quick=quick,
                               source=source, overrides=list(overrides), labels=LABELS, mined=mined)
    print(f"wrote {report}")
    return {"report": report, "results": results, "source_metrics": source_scores["metrics"], "timing": timing}


def mined_pictures(out: Path, results: dict, method: str = "minegan_noft") -> dict | None:
    """The latent picture and interpolation strip of ``method``'s first-seed run, in OUT (None
    when it did not run). Drawn after every run, from their own generators."""
    if not results.get(method):
        return None
    run_dir = Path(results[method][0]["run_dir"])
    with keep_global_random_state():
        sampler = load_sampler(run_dir / "model.safetensors")
    inverted_file = run_dir / "inverted_latents.safetensors"  # written by the inversion start, as eval shows it
    inverted = load_latents(inverted_file) if inverted_file.is_file() else None
    return {"method": method, "seed": results[method][0]["seed"], "inverted": inverted is not None,
            "latents": latent_picture(sampler, out / f"latents_{method}.png", inverted=inverted).name,
            "interpolation": interpolation_picture(sampler, out / f"interpolation_{method}.png").name,
            "seed_dist": sampler.seed_dist}


def target_data():
    """The demo's target: the `fastmine mine` command's default, 100 images of digit 9 at 16 px."""
    return load_data(DataConfig(**COMMAND_DEFAULTS["mine"]["data"]))


def heldout_target():
    """The digit-9 images of scikit-learn's digits that are *not* in the 100-image target set
    (80 of 180). FID against the training images rewards memorising them; these do not."""
    target = target_data()
    every = load_data(DataConfig(**{**COMMAND_DEFAULTS["mine"]["data"], "limit": None}))
    in_target = (every.flatten(1)[:, None, :] == target.flatten(1)[None, :, :]).all(-1).any(1)
    return every[~in_target]


def score_model(sampler, repeats, scorers) -> dict:
    """{"metrics": paper protocol vs the target set, "heldout": the same vs the held-out 9s}."""
    return {name: evaluate_sampler(sampler, None, repeats=repeats, seed=0, scorer=sc) for name, sc in scorers.items()}


def _scorers():
    return {"metrics": Scorer(target_data(), "digits", target_class=TARGET_CLASS),
            "heldout": Scorer(heldout_target(), "digits", target_class=TARGET_CLASS)}


def _run_one(task: dict) -> dict:
    """Train one (method, seed) run with logged FID, score it, write its report.md."""
    s = DemoSettings(**task["settings"])
    row, run_seed, out = task["method"], task["run_seed"], Path(task["out"])
    method, row_overrides = ROWS[row]
    run_dir = out / f"seed{run_seed}" / row
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo re-runs from its cached source each time
    over = [f"source.generator={task['source']}", f"method={method}", f"seed={run_seed}",
            f"out_dir={run_dir.parent}", f"name={row}", f"train.steps={s.steps}",
            f"log.log_every={s.log_every}", f"log.sample_every={s.steps}",
            f"log.checkpoint_every={s.steps}", "log.keep_checkpoints=1", "device=cpu", *row_overrides,
            *([f"perf.threads={task['threads']}"] if task["threads"] else []), *task["overrides"]]
    cfg = load_config(None, over, defaults=COMMAND_DEFAULTS[METHODS[method].commands[0]])
    t0 = time.perf_counter()
    callback = fid_callback(target_data(), every=s.eval_every, n=s.eval_n, target_class=TARGET_CLASS)
    result = run(cfg, callbacks=[callback])
    train_s = time.perf_counter() - t0
    scores = score_model(result.sampler, s.repeats, _scorers())
    metrics = scores["metrics"]
    (run_dir / "eval.json").write_text(json.dumps({**scores, "train_s": train_s}))
    curve = logged_curve(run_dir)
    write_run_report(run_dir, {"metrics": metrics, "curve": curve, "method": method, "steps": s.steps,
                               "curve_source": "logged evaluations in metrics.jsonl", "target_class": TARGET_CLASS})
    if task["save_samples"]:
        save_grid(result.sampler.sample(64, seed=0), out / f"samples_{row}.png")
    print(f"[demo] seed {run_seed} {LABELS[row]:<18} FID {metrics['fid']:7.2f}  KID {metrics['kid']:.4g}  "
          f"precision {metrics['precision']:.2f}  recall {metrics['recall']:.2f}  "
          f"target share {metrics['target_share']:.2f}  ({train_s:.0f} s)", flush=True)
    return {"method": row, "seed": run_seed, "metrics": metrics, "heldout": scores["heldout"], "curve": curve,
            "train_s": train_s, "config": cfg, "run_dir": run_dir}


SOURCE_CACHE_VERSION = 1  # bump when the source's training changes in a way the settings below do not show

# the key spells a moved config key as before the config had sections, so the sources cached
# then (the same settings) stay valid
_KEY_SPELLING = {new: old for old, new in MOVED.items()}


def _source_path(over) -> Path:
    # keyed on the settings that are given (the pretrain command's defaults and the
    # overrides), not on the whole resolved config: a config field added elsewhere in the
    # project must not invalidate every cached source
    spelled = []
    for item in over:
        key, sep, value = item.partition("=")
        spelled.append(_KEY_SPELLING.get(key, key) + sep + value)
    key = json.dumps({"version": SOURCE_CACHE_VERSION, "defaults": COMMAND_DEFAULTS["pretrain"], "overrides": spelled},
                     sort_keys=True)
    return cache_dir() / "sources" / f"digits0-8-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"


def _cached_source_exists(steps):
    return _source_path([f"train.steps={steps}", f"seed={SOURCE_SEED}"]).is_file()


def _loadavg():
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return None
