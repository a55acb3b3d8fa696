"""Markdown reports with plots: one run (``fastmine eval``) or a comparison (``fastmine demo``)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .. import __version__
from ..config import load_config
from ..data import load_data
from ..evaluation import mean_std
from ..files import load_any, load_latents
from ..methods import METHODS
from ..metrics.scores import PR_K
from ..multi import MultiSampler
from . import pictures

# the few-shot metrics come after MineGAN++'s, so the paper's columns keep their places
# the unbiased MMD estimators subtract the within-set terms, so equal distributions give ±noise around 0
NEGATIVE_NOTE = ("Unbiased estimates (KMMD, KID) can fall slightly below 0 when the two sets are as close as their "
                 "sampling noise allows; read a negative value as 0.")
COLUMNS = (("fid", "FID ↓", "{:.2f}"), ("kmmd", "KMMD ↓", "{:.4f}"), ("mv", "MV", "{:.3f}"),
           ("target_share", "target share ↑", "{:.2f}"), ("kid", "KID ↓", "{:.4g}"),
           ("precision", "precision ↑", "{:.2f}"), ("recall", "recall ↑", "{:.2f}"),
           ("intra_cluster", "intra-cluster ↑", "{:.3g}"))


def versions() -> dict:
    return {"fastmine": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu cores": os.cpu_count(), "torch threads": torch.get_num_threads()}


def fmt(values, spec):
    m, s = mean_std(values)
    if m is None:
        return "–"
    return spec.format(m) + (f" ± {spec.format(s)}" if s is not None else "")


def metrics_table(rows: dict[str, list[dict]], columns=COLUMNS) -> str:
    """rows: label -> list of metric dicts (one per seed); mean ± std (n-1) when several."""
    cols = [c for c in columns if any(c[0] in d for ds in rows.values() for d in ds)]
    lines = ["| method | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, dicts in rows.items():
        cells = [fmt([d.get(key) for d in dicts], spec) for key, _, spec in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def few_shot_metrics_note(m: dict, whose: str = "") -> str:
    """The paragraph that says how KID, precision/recall and intra-cluster diversity were
    computed, with the numbers of ``m`` (one evaluate_sampler result)."""
    whose = f" {whose}" if whose else ""
    size = f"min(1000, n_real, n_fake) = {m['kid_subset_size']}"
    if m["kid_subsets"] == 1:
        subsets = f"on the whole sets (subset size {size})"
    else:
        subsets = (f"mean over {m['kid_subsets']} random subsets of {size} per set (std over subsets{whose} ± "
                   f"{m['kid_std']:.3g})")
    counted = f"{m['intra_cluster_clusters']:.3g} clusters counted{whose} (mean over draws)"
    if m["intra_cluster_features"] == "lpips-alex":
        distance = "LPIPS (AlexNet), as CDC"
    else:
        distance = (f"Euclidean distances of the `{m['intra_cluster_features']}` features, not LPIPS (LPIPS scores "
                    "3-channel images, and only when its weights could be had)")
    return ("KID: unbiased squared MMD with the cubic polynomial kernel (xᵀy/d + 1)³ (Bińkowski et al. 2018), "
            f"{subsets}. Precision / recall: share of generated samples inside the real set's k-NN manifold / of real "
            f"samples inside the generated set's, k = {PR_K} (Kynkäänniemi et al. 2019). Intra-cluster: each generated "
            "sample joins its nearest target image, mean pairwise distance within each cluster of at least 2 members, "
            f"averaged over those clusters (CDC, Ojha et al. 2021) — with {distance}; clusters of one sample are left "
            f"out; {counted}. The other scores are on the same features as FID.")


def plot_curves(curves: dict[str, list[list[tuple[int, float]]]], path, ylabel="FID (digits features)",
                title=None, hline: tuple[str, float] | None = None):
    """One line per label: the mean over its runs at the steps they share, ± std shaded."""
    # a Figure of its own, not pyplot: no global figure state and no GUI backend to choose
    fig = pictures.figure((6.4, 4.2), dpi=100)
    ax = fig.subplots()
    for label, runs in curves.items():
        runs = [dict(r) for r in runs if r]
        if not runs:
            continue
        steps = sorted(set.intersection(*(set(r) for r in runs)))
        if not steps:
            continue
        stats = [mean_std([r[s] for r in runs]) for s in steps]
        (line,) = ax.plot(steps, [m for m, _ in stats], marker="o", ms=3, label=label)
        if len(runs) > 1:
            ax.fill_between(steps, [m - sd for m, sd in stats], [m + sd for m, sd in stats], color=line.get_color(),
                            alpha=0.15)
    if hline is not None:
        ax.axhline(hline[1], color="gray", ls="--", lw=1, label=hline[0])
    ax.set_xlabel("generator updates")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return Path(path)


def write_run_report(run_dir, result: dict, with_pictures: bool = True, inverted=None, target=None,
                     seed: int = 0) -> Path:
    """RUN_DIR/report.md from :func:`fastmine.evaluation.evaluate_run`'s result; with
    ``with_pictures``, the pictures of what was mined too (:func:`mined_pictures`, into
    RUN_DIR/pictures/)."""
    run_dir = Path(run_dir)
    m = result["metrics"]
    lines = [f"# Evaluation of `{run_dir.name}`", "",
             f"Method `{result['method']}`, {result['steps']} generator updates. Scored with the "
             f"`{m['extractor']}` features, the paper's protocol: {m['n_fake']} generated vs {m['n_real']} real images "
             f"(as many as the real set, capped at 10,000), averaged over {m['repeats']} sample draws "
             f"(FID spread across draws: ± {m['fid_draw_std']:.2f}).", "",
             metrics_table({result["method"]: [m]}), ""]
    if result.get("target_class") is not None:
        lines += [f"Target share: fraction of samples the digits classifier labels {result['target_class']}.", ""]
    lines += ["KMMD: unbiased squared MMD, Gaussian kernel, bandwidth = median pairwise feature distance "
              f"(σ = {m['kmmd_sigma']:.3g}). MV: mean over feature dimensions of the variance across samples.", "",
              NEGATIVE_NOTE, "",
              few_shot_metrics_note(m), ""]
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    if grids:
        lines += [f"## Samples (step {int(grids[-1].stem.split('_')[1])})", "",
                  f"![samples]({grids[-1].relative_to(run_dir).as_posix()})", ""]
    lines += ["## FID over training", ""]
    if result["curve"]:
        plot = plot_curves({result["method"]: [result["curve"]]}, run_dir / "fid_over_steps.png",
                           title=f"{run_dir.name}: FID over generator updates")
        lines += [f"From the {result['curve_source']}.", "", f"![FID over steps]({plot.name})", ""]
    else:
        lines += ["No FID was logged during training and no checkpoints are left on disk, so there is no curve "
                  "(train with the demo's `fid_callback` to log one).", ""]
    if with_pictures:
        lines += mined_pictures(run_dir, inverted=inverted, target=target, seed=seed)
    lines += ["## Versions", "", versions_line(), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def mined_pictures(run_dir, inverted=None, target=None, seed: int = 0) -> list[str]:
    """Markdown of the pictures of a finished run folder, written into RUN_DIR/pictures/: the
    mined latents against the prior, an interpolation strip, nearest training images, π over
    training and S³'s trainable critic layers; one line saying why for each that does not apply.

    ``inverted``: the latents the target was inverted to, if any (see
    :func:`fastmine.apps.pictures.latent_picture`). ``target``: the target images, when the
    run's config.yaml does not describe them (a tensor given to the Python API)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    if inverted is None and (run_dir / "inverted_latents.safetensors").is_file():  # miner.init=inversion wrote them
        inverted = load_latents(run_dir / "inverted_latents.safetensors")
    with pictures.keep_global_random_state():
        sampler = load_any(run_dir / "model.safetensors")
    out = run_dir / "pictures"
    lines = ["## What was mined", ""]

    def picture(title, draw, caption):
        # a picture that does not fit this run's sampler or data says why instead of failing the report
        try:
            path = draw()
        except ValueError as e:
            return [f"### {title}", "", f"Skipped: {e}.", ""]
        return [f"### {title}", "", f"![{title}]({path.relative_to(run_dir).as_posix()})", "", caption, ""]

    mined = pictures.mined_samplers(sampler)
    multi = isinstance(sampler, MultiSampler)
    if mined:
        spec = mined[0].generator.latent_spec
        name = next((n for n, latent in spec.items() if latent.prior != "none"), None)  # None: the picture says why
        first = " (the first with a prior)" if len(spec) > 1 else ""
        red = "; the target's inverted latents as red crosses" if inverted is not None else ""
        lines += picture("Mined latents against the prior",
                         lambda: pictures.latent_picture(sampler, out / "latents.png", inverted=inverted, seed=seed),
                         f"M(u) of 1000 seeds (blue) against 1000 samples of the prior (gray), latent `{name}`{first}: "
                         "(a) the first two coordinates (as Lee et al., Fig. 4), (b) a PCA of the whole latent fit on "
                         f"both sets{red}" + ("; one row per generator." if multi else "."))
        lines += picture("Interpolation in the seed space",
                         lambda: pictures.interpolation_picture(sampler, out / "interpolation.png", seed=seed),
                         "Each row: 8 samples along the straight line between two seeds u_a and u_b of the miner's "
                         f"`{mined[0].seed_dist}` seed distribution, decoded in eval mode"
                         + (" (one generator per row: u_a's generator pick)." if multi else "."))
    else:
        no_miner = f"Skipped: method `{cfg.method}` has no miner, so there are no mined latents and no seed space."
        lines += ["### Mined latents against the prior", "", no_miner, "",
                  "### Interpolation in the seed space", "", no_miner, ""]

    lines += ["### Nearest training images (memorisation)", ""]
    if METHODS[cfg.method].kind == "fuse":
        lines += ["Skipped: a fusion run trains against its sources' samples, not target images.", ""]
    else:
        try:
            real = target if target is not None else load_data(cfg.data)
            check = pictures.memorisation_check(sampler, real, seed=seed)
        except ValueError as e:
            lines += [f"Skipped: {e}.", ""]
        else:
            path = pictures.nearest_pairs_picture(check, out / "nearest.png")
            lines += [f"![nearest training images]({path.relative_to(run_dir).as_posix()})", "",
                      f"Generated samples beside their nearest target image "
                      f"({pictures.SPACE_CAPTIONS[check['space']]}), with the distance. **Nearest-distance ratio: "
                      f"{check['ratio']:.3f}** — the mean distance of {check['n_fake']} generated samples to their "
                      f"nearest of {check['n_real']} target images ({check['fake_mean']:.3g}) over the mean distance "
                      f"of each of those target images to its nearest other one ({check['real_mean']:.3g}, "
                      "leave-one-out). Well below 1: the samples sit closer to training images than these do to each "
                      "other (copies); about 1: as close as a new image of the target would; well above 1: far from "
                      "every training image.", ""]

    rows = pictures.selector_rows(run_dir)
    if rows:
        names = pictures.generator_names(run_dir, len(rows[-1]["selector_probs"]))
        lines += picture("Selector π over training",
                         lambda: pictures.selector_picture([{"rows": rows, "title": f"{run_dir.name}: π"}],
                                                           out / "selector.png", names=names),
                         "π: each generator's share of critic-argmax wins over the last `multi.window` minibatches, "
                         "as logged in metrics.jsonl.")
    else:
        lines += ["### Selector π over training", "",
                  "Skipped: no π in metrics.jsonl (only a multi-generator run has a selector).", ""]

    masks = run_dir / "s3_masks.json"
    if masks.is_file():
        lines += picture("S³: trainable critic layers", lambda: pictures.s3_picture(masks, out / "s3_layers.png"),
                         "The fraction of each critic layer's filters S³ left trainable (MineGAN++ Fig. 11b); "
                         "trainable / all filters above each bar.")
    else:
        lines += ["### S³: trainable critic layers", "",
                  f"Skipped: no s3_masks.json (method `{cfg.method}` selects no sparse critic subnetwork).", ""]
    return lines


def versions_line():
    v = versions()
    return ", ".join(f"{k} {val}" for k, val in v.items())


# the paper's claims (MineGAN++ Table 1 / §5) as (better, worse) pairs in FID
PAPER_ORDERINGS = (("minegan", "transfergan"), ("minegan", "freezed"), ("transfergan", "scratch"),
                   ("freezed", "scratch"), ("minegan_noft", "transfergan"), ("minegan", "minegan_noft"),
                   # what the toolkit's papers claim: each addition improves the method it joins
                   ("transfergan_diffaugment", "transfergan"), ("transfergan_ada", "transfergan"),
                   ("ewc", "transfergan"), ("cdc", "transfergan"), ("minegan_diffaugment", "minegan"))


def orderings(results: dict, labels: dict, key="fid") -> list[str]:
    """One line per paper ordering: holds / does not hold, with the means ± std."""
    out = []
    for better, worse in PAPER_ORDERINGS:
        if better not in results or worse not in results:
            continue
        a = [r["metrics"][key] for r in results[better]]
        b = [r["metrics"][key] for r in results[worse]]
        (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
        verdict = "holds" if ma < mb else "does **not** hold"
        clear = ""
        if sa is not None and sb is not None:
            clear = " (outside one std of each other)" if abs(ma - mb) > max(sa, sb) else " (within one std)"
        out.append(f"- {labels[better]} < {labels[worse]}: {verdict} — {ma:.2f} vs {mb:.2f}{clear}")
    return out


def write_demo_report(out, results: dict, source_scores: dict, settings, seeds, timing: dict, source,
                      overrides=(), labels=None, quick=False, mined: dict | None = None) -> Path:
    """source_scores / each result: "metrics" (vs the target set) and, optionally, "heldout"
    (vs target-class images not in the target set). ``mined``: the pictures of one mining run
    (:func:`fastmine.apps.demo.mined_pictures`)."""
    out = Path(out)
    labels = labels or {m: m for m in results}
    source_metrics = source_scores["metrics"]

    def table(key):
        rows = {"source (no adaptation)": [source_scores[key]]}
        return metrics_table(rows | {labels[m]: [r[key] for r in rs] for m, rs in results.items()})

    curves = {labels[m]: [r["curve"] for r in rs] for m, rs in results.items()}
    plot = plot_curves(curves, out / "fid_over_steps.png", title=f"FID to the target 9s ({settings.eval_n} samples "
                       f"per point; mean over {len(seeds)} seed(s))")
    n = source_metrics["n_real"]
    lines = ["# fastmine demo: adapting a digits 0-8 GAN to 100 images of digit 9", "",
             f"Source: a WGAN-GP pretrained on scikit-learn digits 0-8 at 16 px for {settings.source_steps} "
             f"generator updates (`{Path(source).name}`, "
             f"{'cached' if timing['source_cached'] else 'trained in this run'}). "
             f"Target: 100 images of digit 9 at 16 px (the paper's off-manifold MNIST setting). Every method gets "
             f"the same budget of **{settings.steps} generator updates** (MineGAN: half mining, half finetuning).", "",
             f"Seeds: {', '.join(map(str, seeds))}"
             + (" — mean ± std (n−1) over seeds." if len(seeds) > 1 else
                " — one seed: no spread is shown; run `--seeds 3` for mean ± std."),
             "", *([f"**A `--quick` run: {settings.steps} updates from a {settings.source_steps}-update source "
                    "check that everything runs; its numbers mean nothing and no ordering below is evidence.** "
                    "Run `fastmine demo` for the comparison.", ""] if quick else []),
             "## Results", "",
             f"Paper protocol: {n} generated vs the {n} target images (as many as the real set, capped at 10,000), "
             f"features of the shipped digits classifier (64-d penultimate layer); each run's value is the mean over "
             f"{settings.repeats} sample draws. Target share: fraction of samples the classifier labels 9.", "",
             table("metrics"), ""]
    if "heldout" in source_scores and all("heldout" in r for rs in results.values() for r in rs):
        h = source_scores["heldout"]["n_real"]
        lines += [f"The same against the {h} digit-9 images of the dataset that are **not** in the target set "
                  f"({h} generated): FID against the 100 training images rewards reproducing them, this does not.", "",
                  table("heldout"), ""]
    lines += ["KMMD: unbiased squared MMD, Gaussian kernel, bandwidth = median pairwise distance of the pooled "
              f"features (σ ≈ {source_metrics['kmmd_sigma']:.3g} for the source). MV: mean over feature dimensions of "
              "the variance across generated samples (the real 9s' MV is the reference, higher is not better by "
              "itself).", "", few_shot_metrics_note(source_metrics, "for the source"), "",
              NEGATIVE_NOTE, "",
              "### The paper's orderings (FID, lower is better)", ""]
    if quick:
        lines += ["Not judged in a `--quick` run.", ""]
    else:
        lines += ["Against the target set:", "", *orderings(results, labels), ""]
    if not quick and all("heldout" in r for rs in results.values() for r in rs):
        lines += ["Against the held-out 9s:", "", *orderings({m: [{"metrics": r["heldout"]} for r in rs]
                                                             for m, rs in results.items()}, labels), ""]
    lines += ["## FID over training", "", f"![FID over steps]({plot.name})", "",
              f"Logged every {settings.eval_every} steps with {settings.eval_n} samples against the 100 target images "
              "(a trend line, not the paper protocol: more samples, so lower values than the table).", "",
              "## Samples (first seed, 64 samples, fixed seed)", ""]
    lines += ["| " + " | ".join(["source"] + [labels[m] for m in results]) + " |",
              "|" + "---|" * (len(results) + 1),
              "| " + " | ".join(["![source](samples_source.png)"] +
                                [f"![{labels[m]}](samples_{m}.png)" for m in results]) + " |", ""]
    if mined:
        label = labels[mined["method"]]
        lines += [f"## What {label} mined (seed {mined['seed']})", "",
                  f"![mined latents]({mined['latents']})", "",
                  "M(u) of 1000 seeds (blue) against 1000 samples of the source's prior N(0, I) (gray): (a) the first "
                  "two latent coordinates (as Lee et al., Fig. 4), (b) a PCA of the whole latent fit on both sets: "
                  "where the blue mass sits is the part of the source's latent space the miner chose for the 9s"
                  + ("; the target's inverted latents, where the miner started, as red crosses."
                     if mined.get("inverted") else "."), "",
                  f"![interpolation]({mined['interpolation']})", "",
                  "Each row: 8 samples along the straight line between two seeds u_a and u_b of the miner's "
                  f"`{mined['seed_dist']}` seed distribution, decoded in eval mode.", ""]
    lines += ["## Settings", "", "| method | lr (sampler / critic) | betas | n_critic | batch | λ_GP | mine steps | "
              "seed dist | miner init | augment | regularize |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, rs in results.items():
        c = rs[0]["config"]
        t = c.train
        miner = f"{c.miner.seed_dist} | {c.miner.init}" if METHODS[c.method].uses_miner else "– | –"
        augment = c.augment.kind
        if augment == "ada":
            augment += f" (p moves by 1 in {c.augment.ada_images:,} images)"
        regularize = ", ".join(f"{k} λ={getattr(c.regularize, k):g}" for k in ("ewc", "cdc")
                               if getattr(c.regularize, k)) or "–"
        lines.append(f"| {labels[m]} | {t.lr:g} / {t.critic_lr:g} | {tuple(t.betas)} | {t.n_critic} | {t.batch_size} | "
                     f"{c.loss.gp_weight:g} | {t.mine_steps} | {miner} | {augment} | {regularize} |")
    if overrides:
        lines += ["", "Extra overrides: " + ", ".join(f"`{o}`" for o in overrides)]
    total = (f"Total wall time {timing['total_s'] / 60:.1f} min (source "
             f"{'loaded from cache' if timing['source_cached'] else 'pretraining'}: {timing['source_s']:.0f} s; "
             f"{timing['jobs']} run(s) in parallel).")
    if "pictures_s" in timing:
        total += f" Pictures of what was mined: {timing['pictures_s']:.1f} s."
    lines += ["", "## Timing", "",
              total + " Per run (training, incl. logged evaluations): " +
              ", ".join(f"{labels[m]} {mean_std([r['train_s'] for r in rs])[0]:.0f} s"
                        for m, rs in results.items()) + ".",
              f"Load average (1/5/15 min) at start {timing['load_start']}, at end {timing['load_end']} — "
              "above the core count means other work shared the CPU and the times are inflated.", "",
              "## Versions", "", versions_line(), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
