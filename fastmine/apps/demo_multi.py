"""``fastmine demo --multi``: the two-generator digits task (MineGAN++ §3.3 / §4.2, Table 4), offline.

Two WGAN-GP sources are pretrained on the built-in digits at 16 px (cached like the single
demo's source): A on digits {0,1,2,3,4}, B on {5,6,7,8,9}. The target holds 100 images
mixing one digit of A's domain and one of B's (2 and 6 unless ``digits`` says otherwise) at
a known share of the first.

* For three shares (0.25 / 0.5 / 0.75) multi-generator mining runs with both selection
  rules (``permute``, ``max``) and the report puts the selector π next to the true ratio
  (the bottom rows of the paper's Table 4).
* For share 0.5 it compares FID / KMMD / MV / target share (fraction of samples the digits
  classifier calls one of the two target digits) of: MineGAN(multi) with each rule (the
  same runs as above), fusion + mining, MineGAN++ on source A alone and TransferGAN from A
  and from B (the single-generator baselines), all with the same budget of generator-side
  updates.

``OUT/report_multi.md`` holds both tables; every run keeps its folder under ``OUT/``.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..api import fuse, mine_multi, train
from ..data import load_digits
from ..evaluation import Scorer, evaluate_sampler
from ..files import load_generator
from ..images import save_grid
from ..metrics.scores import extract
from .demo import pretrained_source
from .pictures import selector_picture, selector_rows
from .presets import DIGITS
from .report import versions_line

GROUP_A = (0, 1, 2, 3, 4)
GROUP_B = (5, 6, 7, 8, 9)
RATIOS = (0.25, 0.5, 0.75)
METRIC_RATIO = 0.5
RULES = ("permute", "max")
TARGET_SIZE = 100
SOURCE_SEED = 0


@dataclass
class MultiSettings:
    source_steps: int   # pretraining of each source (cached)
    steps: int          # generator-side updates per method (the shared budget)
    fuse_steps: int     # fusion training before fusion + mining is mined for ``steps``
    batch_size: int
    repeats: int        # final evaluation: sample draws averaged (paper protocol each)
    share_n: int        # samples classified for the realised share of digits[0] of each run


# CPU (one torch thread, 16 px, width 32, n_critic 5): ~0.2 s per single-generator update,
# ~2x for two generators, so a 600-step source is ~2 min and the full set ~15 min of one core.
FULL = MultiSettings(source_steps=600, steps=200, fuse_steps=400, batch_size=64, repeats=5, share_n=500)
QUICK = MultiSettings(source_steps=20, steps=6, fuse_steps=6, batch_size=16, repeats=1, share_n=100)


# --------------------------------------------------------------------------- data
def mixed_target(share_a: float, n: int = TARGET_SIZE, size: int = 16, seed: int = 0, digits=DIGITS):
    """n digits: round(n·share_a) of digits[0] and the rest digits[1] (chosen at random with ``seed``)."""
    n_a = int(round(n * share_a))
    parts = []
    for digit, k in ((digits[0], n_a), (digits[1], n - n_a)):
        if k:
            parts.append(load_digits(labels=[digit], limit=k, size=size, seed=seed))
    x = torch.cat(parts)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[perm]


def _source_overrides(group):
    return [f"data.labels=[{','.join(str(d) for d in group)}]", "model.width=32", "device=cpu",
            "log.progress=false", "log.sample_every=100000", "log.checkpoint_every=100000"]


def _pretrain_one(task):
    torch.set_num_threads(1)
    return task["name"], str(pretrained_source(task["steps"], SOURCE_SEED, overrides=task["overrides"], threads=1))


# --------------------------------------------------------------------------- scoring
class MixScorer(Scorer):
    """FID / KMMD / MV against one target set, plus the classifier's shares of the two digits
    (``target_share``: either digit; ``share_a``: the first among those)."""

    def __init__(self, target, digits=DIGITS):
        super().__init__(target, "digits")
        self.digits = tuple(digits)

    def classes(self, fake):
        _, logits = extract(self.net, fake, with_logits=True)
        pred = logits.argmax(1)
        na, nb = (float((pred == d).sum()) for d in self.digits)
        return {"target_share": (na + nb) / len(pred), "share_a": na / max(na + nb, 1.0)}

    def score(self, fake, real_feats=None):
        return {**super().score(fake, real_feats), **self.classes(fake)}


# --------------------------------------------------------------------------- runs
def _train_kwargs(s: MultiSettings, steps=None):
    steps = steps or s.steps
    return dict(steps=steps, batch_size=s.batch_size, log_every=max(1, min(25, steps)), sample_every=10 ** 6,
                checkpoint_every=10 ** 6, keep_checkpoints=1, progress=False, threads=1)


def _run_task(task: dict) -> dict:
    """One run (in a worker process): train, score, return a small JSON-able dict."""
    torch.set_num_threads(1)
    s = MultiSettings(**task["settings"])
    kind, ratio, out = task["kind"], task["ratio"], Path(task["out"])
    src = task["sources"]
    digits = tuple(task.get("digits", DIGITS))
    target = mixed_target(ratio, digits=digits)
    run_dir = out / task["name"]
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    res = {"name": task["name"], "kind": kind, "ratio": ratio, "rule": task.get("rule")}
    if kind == "multi":
        r = mine_multi([src["A"], src["B"]], target, rule=task["rule"], run_dir=run_dir, seed=task["seed"],
                       device="cpu", **_train_kwargs(s))
        res["pi"] = r.selector_probs
    elif kind == "fusion":
        fused = fuse([src["A"], src["B"]], run_dir=run_dir / "fuse", seed=task["seed"], device="cpu",
                     **_train_kwargs(s, s.fuse_steps))
        r = train(load_generator(fused.model_path), target, method="minegan_noft", run_dir=run_dir / "mine",
                  seed=task["seed"], device="cpu", **_train_kwargs(s))
    else:  # single-generator methods from one source
        path = src[task["source"]]
        r = train(str(path), target, method=kind, critic=str(path), run_dir=run_dir, seed=task["seed"],
                  device="cpu", **_train_kwargs(s))
    sampler = r.sampler
    res["train_s"] = time.perf_counter() - t0
    sampler.eval()
    scorer = MixScorer(target, digits)
    if task["score"]:
        res["metrics"] = evaluate_sampler(sampler, None, repeats=s.repeats, scorer=scorer)
    res["sample_share_a"] = scorer.classes(sampler.sample(s.share_n, seed=7))["share_a"]
    if task.get("save_samples"):
        save_grid(sampler.sample(64, seed=0), out / f"samples_{task['name']}.png")
    (run_dir / "demo_result.json").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "demo_result.json").write_text(json.dumps(res, indent=1))
    print(f"[demo-multi] {task['name']:<24} ({res['train_s']:.0f} s)"
          + (f" pi={[round(p, 3) for p in res['pi']]}" if "pi" in res else "")
          + (f" FID {res['metrics']['fid']:.2f}" if "metrics" in res else ""), flush=True)
    return res


LABELS = {"multi_permute": "MineGAN(multi), permute", "multi_max": "MineGAN(multi), max",
          "fusion": "MineGAN(fusion): fusion + mining", "minegan_pp_A": "MineGAN++ (source A only)",
          "transfergan_A": "TransferGAN (source A)", "transfergan_B": "TransferGAN (source B)"}


def tasks_for(settings: MultiSettings, sources: dict, out: Path, seed=0, digits=DIGITS, ratios=RATIOS,
              baselines=True) -> list[dict]:
    base = dict(settings=asdict(settings), sources={k: str(v) for k, v in sources.items()}, out=str(out), seed=seed,
                digits=list(digits))
    tasks = []
    for ratio in ratios:
        for rule in RULES:
            tasks.append({**base, "kind": "multi", "rule": rule, "ratio": ratio, "name": f"multi_{rule}_r{ratio:g}",
                          "score": ratio == METRIC_RATIO, "save_samples": ratio == METRIC_RATIO})
    others = (("fusion", "fusion", None), ("minegan_pp_A", "minegan_pp", "A"),
              ("transfergan_A", "transfergan", "A"), ("transfergan_B", "transfergan", "B"))
    for name, kind, source in others if baselines else ():
        tasks.append({**base, "kind": kind, "source": source, "ratio": METRIC_RATIO, "name": name, "score": True,
                      "save_samples": True})
    # longest first, so two workers finish together
    order = {"fusion": 0, "multi": 1}
    return sorted(tasks, key=lambda t: order.get(t["kind"], 2))


def _pool_map(fn, tasks, jobs):
    if jobs > 1 and len(tasks) > 1:
        # spawn, not fork: a forked child inherits torch's thread pools in an unsafe state
        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=mp.get_context("spawn")) as pool:
            return list(pool.map(fn, tasks))
    return [fn(t) for t in tasks]


def run_demo_multi(out="runs/demo_multi", quick=False, seed=0, jobs=1, steps=None, source_steps=None, digits=DIGITS,
                   ratios=RATIOS, baselines=True):
    """Run the two-generator comparison and write ``OUT/report_multi.md``.

    ``digits``: (one of A's digits 0-4, one of B's 5-9) mixed in the target; ``ratios``: the
    shares of the first for which π is measured; ``baselines=False`` skips the single-generator
    and fusion runs (the π table alone)."""
    if len(digits) != 2 or digits[0] not in GROUP_A or digits[1] not in GROUP_B:
        raise ValueError(f"digits must be one of A's {list(GROUP_A)} and one of B's {list(GROUP_B)}, got {digits}")
    torch.set_num_threads(1)
    s = QUICK if quick else FULL
    s = MultiSettings(**{**asdict(s), **({"steps": steps} if steps else {}),
                         **({"source_steps": source_steps} if source_steps else {})})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pre = [{"name": n, "steps": s.source_steps, "overrides": _source_overrides(g)}
           for n, g in (("A", GROUP_A), ("B", GROUP_B))]
    sources = dict(_pool_map(_pretrain_one, pre, jobs))
    source_s = time.perf_counter() - t_start
    results = _pool_map(_run_task, tasks_for(s, sources, out, seed, digits, ratios, baselines), jobs)
    timing = {"total_s": time.perf_counter() - t_start, "source_s": source_s, "jobs": jobs}
    report = write_report(out, results, s, sources, timing, seed, digits, ratios)
    print(f"wrote {report}")
    return {"report": report, "results": results, "timing": timing}


# --------------------------------------------------------------------------- report
def _f(x, spec=".2f"):
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def selector_over_training(out: Path, multi: dict, digits=DIGITS, ratios=RATIOS) -> Path | None:
    """OUT/selector_over_training.png: π of every multi-generator run over its logged steps, a
    row of panels per rule, a column per true share (None when no run logged π)."""
    panels = []
    for rule in RULES:
        for ratio in ratios:
            r = multi.get((rule, ratio))
            rows = selector_rows(out / r["name"]) if r is not None else []
            if rows:
                panels.append({"rows": rows, "truth": [ratio, 1 - ratio],
                               "title": f"{rule}, true share of {digits[0]}: {ratio:.2f}"})
    if not panels:
        return None
    names = [f"A (digits {GROUP_A[0]}-{GROUP_A[-1]})", f"B (digits {GROUP_B[0]}-{GROUP_B[-1]})"]
    return selector_picture(panels, out / "selector_over_training.png", names=names)


def write_report(out, results, s: MultiSettings, sources, timing, seed=0, digits=DIGITS, ratios=RATIOS) -> Path:
    out = Path(out)
    multi = {(r["rule"], r["ratio"]): r for r in results if r["kind"] == "multi"}
    da, db = digits
    lines = [f"# fastmine demo --multi: two digits generators → a {da}/{db} mixture", "",
             f"Source A: WGAN-GP on digits {list(GROUP_A)}; source B: on {list(GROUP_B)} (16 px, width 32, "
             f"{s.source_steps} steps each, cached: `{sources['A']}`, `{sources['B']}`). "
             f"Target: {TARGET_SIZE} images of digit {digits[0]} (A's domain) and {digits[1]} (B's) at a known "
             f"share of {digits[0]}s. Budget: {s.steps} generator-side updates per method (batch {s.batch_size}, "
             f"n_critic 5); fusion trains {s.fuse_steps} updates first, then mines for {s.steps}. Seed {seed}.", "",
             "## Selector π vs the true ratio (cf. MineGAN++ Table 4, bottom rows)", "",
             "π = fraction of critic-argmax wins over the last `multi.window` (1000) minibatches. "
             f"'sampled share of {da}' = of the samples (π-drawn) the digits classifier calls {da} or {db}, the "
             f"fraction called {da} ({s.share_n} samples).", "",
             f"| true share of {da} : {db} | rule | π_A | π_B | sampled share of {da} |", "|---|---|---|---|---|"]
    for ratio in ratios:
        for rule in RULES:
            r = multi.get((rule, ratio))
            if r is None:
                continue
            lines.append(f"| {ratio:.2f} : {1 - ratio:.2f} | {rule} | {_f(r['pi'][0])} | {_f(r['pi'][1])} | "
                         f"{_f(r['sample_share_a'])} |")
    picture = selector_over_training(out, multi, digits, ratios)
    if picture is not None:
        lines += ["", f"![selector π over training]({picture.name})", "",
                  "π over training as logged in each run's metrics.jsonl (one panel per run; dashed: the true shares).",
                  ""]
    lines += ["", f"## Metrics at share {METRIC_RATIO:g} (cf. Table 4, top rows)", "",
              f"Paper protocol against the {TARGET_SIZE}-image target ({TARGET_SIZE} samples per draw, mean of "
              f"{s.repeats} draws; digits-classifier features). Target share = fraction of samples classified as "
              f"{da} or {db}; share of {da} = the fraction of those called {da} (true: {METRIC_RATIO:g}).", "",
              f"| method | FID ↓ | (draw std) | KMMD ↓ | MV ↑ | target share ↑ | share of {da} | train s |",
              "|---|---|---|---|---|---|---|---|"]
    scored = [r for r in results if r.get("metrics")]
    order = ["multi_permute", "multi_max", "fusion", "minegan_pp_A", "transfergan_A", "transfergan_B"]

    def key(r):
        name = f"multi_{r['rule']}" if r["kind"] == "multi" else r["name"]
        return order.index(name) if name in order else 99, name

    for r in sorted(scored, key=key):
        m = r["metrics"]
        label = LABELS.get(key(r)[1], r["name"])
        lines.append(f"| {label} | {_f(m['fid'])} | {_f(m['fid_draw_std'])} | {_f(m['kmmd'], '.4f')} | "
                     f"{_f(m['mv'], '.3f')} | {_f(m['target_share'])} | {_f(m['share_a'])} | {r['train_s']:.0f} |")
    singles = [r for r in scored if r["kind"] == "transfergan"]
    if singles:
        best = min(singles, key=lambda r: r["metrics"]["fid"])
        lines += ["", f"Best single-generator baseline by FID: {LABELS.get(best['name'], best['name'])}."]
    lines += ["", f"Wall time {timing['total_s']:.0f} s ({timing['jobs']} process(es); "
                  f"sources {timing['source_s']:.0f} s).", "", versions_line(), ""]
    path = out / "report_multi.md"
    path.write_text("\n".join(lines))
    (out / "results_multi.json").write_text(json.dumps({"settings": asdict(s), "results": results, "timing": timing},
                                                       indent=1, default=str))
    return path
