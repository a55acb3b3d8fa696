"""Pictures of what was mined: the mined latents against the prior, the selector π over
training, S³'s trainable fraction per critic layer, nearest training images (a memorisation
check) and interpolation strips in the miner's seed space.

Every picture is a PNG of a :class:`matplotlib.figure.Figure` of its own (no pyplot: no
global figure state, no GUI backend to choose) at a fixed size in inches × ``DPI``, so its
pixel size is known in advance. Nothing here draws from a random stream a run uses: each
picture takes a ``seed`` for a ``torch.Generator`` of its own, and samplers are decoded in
eval mode without gradients (batch-norm statistics do not move).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..evaluation import read_metrics
from ..images import make_grid
from ..latent import draw
from ..metrics.features import get_feature_extractor
from ..metrics.scores import extract
from ..multi import MultiSampler
from ..samplers import Sampler

DPI = 100
# figure sizes in inches; a picture's pixel size is its size × DPI
LATENT_ROW = (8.0, 4.0)        # one row (two panels) per generator
SELECTOR_PANEL = (4.0, 3.0)    # one panel per run, at most SELECTOR_COLUMNS to a row
SELECTOR_COLUMNS = 3
S3_SIZE = (6.4, 4.0)
NEAREST_SIZE = (8.0, 5.0)
STRIP_SIZE = (8.0, 4.5)

NEAREST_CAP = 1000  # target images (and generated samples) the memorisation ratio compares at most
SPACES = ("auto", "pixels", "digits")
SPACE_SHORT = {"pixels": "L2 in pixel space", "digits": "L2 between digits-classifier features"}
SPACE_CAPTIONS = {"pixels": "L2 distance in pixel space (every pixel value in [-1, 1])",
                  "digits": "L2 distance between the shipped digits classifier's features, its 64-d penultimate layer"}


def latent_picture_size(num_generators: int = 1) -> tuple[int, int]:
    return round(LATENT_ROW[0] * DPI), round(LATENT_ROW[1] * num_generators * DPI)


def selector_picture_size(num_panels: int = 1) -> tuple[int, int]:
    cols = min(SELECTOR_COLUMNS, num_panels)
    rows = math.ceil(num_panels / cols)
    return round(SELECTOR_PANEL[0] * cols * DPI), round(SELECTOR_PANEL[1] * rows * DPI)


def keep_global_random_state():
    """Restores torch's global CPU random state on exit: building a module (loading a model file,
    the digits feature net) initialises weights from it, and a picture drawn between two runs
    in one process must not change what the second run draws."""
    return torch.random.fork_rng(devices=[])


def figure(figsize, dpi=DPI):
    """A Figure of its own; matplotlib (a while to import) loads with the first picture."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)  # no bbox_inches="tight": the pixel size stays figsize × dpi
    return path


# --------------------------------------------------------------------------- mined latents
def mined_samplers(sampler) -> list[Sampler]:
    """The samplers with a miner whose latents a picture can show (one per generator)."""
    if isinstance(sampler, MultiSampler):
        return list(sampler.samplers)
    if isinstance(sampler, Sampler) and sampler.miner is not None:
        return [sampler]
    return []


def prior_latent(sampler: Sampler):
    """(name, Latent) of the generator's first latent with a prior (a class embedding's prior
    is 'none': nothing to compare the mined one with)."""
    for name, latent in sampler.generator.latent_spec.items():
        if latent.prior != "none":
            return name, latent
    raise ValueError(f"no latent of {list(sampler.generator.latent_spec)} has a prior to compare the mined one with")


@torch.no_grad()
def mined_and_prior(sampler: Sampler, n: int = 1000, seed: int = 0) -> tuple[str, torch.Tensor, torch.Tensor]:
    """(latent name, M(u) [n, d], prior samples [n, d]) for n seeds of the sampler's own
    seed distribution, flattened per sample; drawn from a generator of its own."""
    name, latent = prior_latent(sampler)
    device = _device_of(sampler)
    gen = torch.Generator(device).manual_seed(seed)
    was_training = sampler.training
    sampler.eval()
    try:
        mined = sampler.latents(sampler.draw_seeds(n, gen, device))[name]
    finally:
        sampler.train(was_training)
    prior = draw(latent.prior, (n, *latent.shape), gen, device)
    return name, mined.reshape(n, -1).float().cpu(), prior.reshape(n, -1).float().cpu()


def pca_2d(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean [d], components [d, 2], explained variance ratio [2]) of ``points`` [n, d], by SVD
    (deterministic: no random stream, unlike ``torch.pca_lowrank``)."""
    x = points.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s ** 2
    return mean, vh[:2].T, var[:2] / var.sum().clamp_min(1e-300)


def latent_picture(sampler, path, inverted=None, n: int = 1000, seed: int = 0) -> Path:
    """The mined latents M(u) of ``n`` seeds against as many prior samples: (a) their first two
    coordinates (Lee et al., Fig. 4), (b) a 2-D PCA of the whole latent fit on both sets.

    ``inverted``: latents the target was inverted to, [N, d] (or a dict holding the pictured
    latent), drawn on the same axes; for a :class:`MultiSampler`, one per generator (a list,
    None entries allowed). One row of panels per generator.
    """
    samplers = mined_samplers(sampler)
    if not samplers:
        raise ValueError("this sampler has no miner: there are no mined latents to picture")
    if inverted is None:
        inverted = [None] * len(samplers)
    elif torch.is_tensor(inverted) or isinstance(inverted, dict):
        if len(samplers) != 1:
            raise ValueError(f"give the inverted latents as a list, one entry per generator ({len(samplers)})")
        inverted = [inverted]
    if len(inverted) != len(samplers):
        raise ValueError(f"got inverted latents for {len(inverted)} generators, the sampler has {len(samplers)}")
    fig = figure((LATENT_ROW[0], LATENT_ROW[1] * len(samplers)))
    axes = fig.subplots(len(samplers), 2, squeeze=False)
    for i, (s, inv) in enumerate(zip(samplers, inverted)):
        name, mined, prior = mined_and_prior(s, n, seed + i)
        inv = _flat_inverted(inv, name, mined.shape[1])
        who = f"generator {i}: " if len(samplers) > 1 else ""
        _latent_panels(axes[i], mined, prior, inv, f"{who}latent '{name}' (d={mined.shape[1]})")
    fig.tight_layout()
    return _save(fig, path)


def _flat_inverted(inv, name, d):
    if inv is None:
        return None
    if isinstance(inv, dict):
        inv = inv[name]
    inv = torch.as_tensor(inv).detach().float().cpu()
    inv = inv.reshape(len(inv), -1)
    if inv.shape[1] != d:
        raise ValueError(f"the inverted latents have {inv.shape[1]} values per sample, latent {name!r} has {d}")
    return inv


def _latent_panels(axes, mined, prior, inverted, title):
    sets = [("prior", prior, dict(s=3, alpha=0.3, color="0.55")),
            ("mined M(u)", mined, dict(s=3, alpha=0.5, color="C0"))]
    if inverted is not None:
        sets.append(("inverted targets", inverted, dict(s=14, alpha=0.9, color="C3", marker="x", lw=0.8)))
    ax_coords, ax_pca = axes
    if mined.shape[1] == 1:  # one coordinate: its histogram, and no second axis for a PCA
        for label, x, style in sets:
            ax_coords.hist(x[:, 0].numpy(), bins=40, alpha=0.5, density=True, color=style["color"], label=label)
        ax_coords.set_xlabel("coordinate 0")
        ax_pca.axis("off")
        ax_pca.text(0.5, 0.5, "a one-dimensional latent:\nno PCA", ha="center", va="center")
    else:
        for label, x, style in sets:
            ax_coords.scatter(x[:, 0].numpy(), x[:, 1].numpy(), label=label, **style)
        ax_coords.set_xlabel("coordinate 0")
        ax_coords.set_ylabel("coordinate 1")
        mean, comps, ratio = pca_2d(torch.cat([prior, mined]))
        for label, x, style in sets:
            p = ((x.double() - mean) @ comps).numpy()
            ax_pca.scatter(p[:, 0], p[:, 1], label=label, **style)
        ax_pca.set_xlabel(f"PC 1 ({100 * float(ratio[0]):.0f} % of the variance)")
        ax_pca.set_ylabel(f"PC 2 ({100 * float(ratio[1]):.0f} %)")
        ax_pca.set_title("(b) PCA of the whole latent", fontsize=9)
        ax_pca.grid(alpha=0.3)
        ax_pca.legend(fontsize=7, markerscale=2, loc="upper right")
    ax_coords.set_title(f"(a) {title}: first two coordinates", fontsize=9)
    ax_coords.grid(alpha=0.3)
    ax_coords.legend(fontsize=7, markerscale=2, loc="upper right")


# --------------------------------------------------------------------------- selector π
def selector_rows(run_dir) -> list[dict]:
    """The metrics.jsonl rows of a run that logged π (``selector_probs``)."""
    return [r for r in read_metrics(run_dir) if "selector_probs" in r]


def generator_names(run_dir, n: int) -> list[str]:
    """Short names of a multi-generator run's generators (file stems from selector.json)."""
    path = Path(run_dir) / "selector.json"
    names = json.loads(path.read_text()).get("generators", []) if path.is_file() else []
    if len(names) != n:
        return [f"G{i}" for i in range(n)]
    return [f"G{i} ({Path(name).stem})" for i, name in enumerate(names)]


def selector_picture(panels, path, names=None) -> Path:
    """π over training, one line per generator with its final value in the legend.

    ``panels``: a list of dicts, one per run: ``rows`` (metrics rows with ``selector_probs``),
    ``title`` and optionally ``truth`` (the true share of each generator's domain, drawn as
    dashed lines). ``names``: one label per generator.
    """
    if not panels or not all(p["rows"] for p in panels):
        raise ValueError("every panel needs metrics rows with selector_probs (a multi-generator run logs them)")
    cols = min(SELECTOR_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = figure((SELECTOR_PANEL[0] * cols, SELECTOR_PANEL[1] * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels):
        steps = [r["step"] for r in panel["rows"]]
        probs = torch.tensor([r["selector_probs"] for r in panel["rows"]], dtype=torch.float64)
        labels = names or [f"G{i}" for i in range(probs.shape[1])]
        for i in range(probs.shape[1]):
            (line,) = ax.plot(steps, probs[:, i].numpy(), marker="o", ms=3,
                              label=f"π {labels[i]} (final {float(probs[-1, i]):.2f})")
            if panel.get("truth") is not None:
                ax.axhline(panel["truth"][i], color=line.get_color(), ls="--", lw=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ax.set_xlabel("generator updates")
        ax.set_ylabel("selector π")
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- S³
def s3_picture(masks_json, path) -> Path:
    """S³'s trainable fraction per critic layer (MineGAN++ Fig. 11b) from RUN_DIR/s3_masks.json
    (:meth:`fastmine.sparse.SubnetworkMasks.save`)."""
    info = json.loads(Path(masks_json).read_text())
    layers = info["layers"]
    if not layers:
        raise ValueError(f"{str(masks_json)!r} lists no critic layers")
    fig = figure(S3_SIZE)
    ax = fig.subplots()
    names = list(layers)
    fractions = [layers[k]["fraction"] for k in names]
    bars = ax.bar(range(len(names)), fractions, color="C2")
    for bar, k in zip(bars, names):
        ax.annotate(f"{layers[k]['trainable_filters']}/{layers[k]['filters']}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.axhline(info["trainable_fraction"], color="0.4", ls="--", lw=1,
               label=f"all weights: {info['trainable_fraction']:.2f} trainable")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.3)  # the band above 1 keeps the legend off the bars and their labels
    ax.set_xlabel("critic layer (input first)")
    ax.set_ylabel("fraction of filters trainable")
    ax.set_title(f"S³: trainable critic filters per layer (p = {info['p']:g}, θ_f = {info['theta_f']})", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- nearest training images
def nearest(queries: torch.Tensor, refs: torch.Tensor, exclude_self: bool = False, chunk: int = 256):
    """(distance, index) of each query's nearest reference, L2 over the flattened values in
    float64. ``exclude_self``: queries are the references themselves (leave-one-out)."""
    q, r = queries.reshape(len(queries), -1).double(), refs.reshape(len(refs), -1).double()
    if exclude_self and len(r) < 2:
        raise ValueError("a leave-one-out nearest neighbour needs at least two references")
    dists, idxs = [], []
    for start in range(0, len(q), chunk):
        d = torch.cdist(q[start:start + chunk], r)
        if exclude_self:
            rows = torch.arange(len(d))
            d[rows, rows + start] = math.inf
        dist, idx = d.min(1)
        dists.append(dist)
        idxs.append(idx)
    return torch.cat(dists), torch.cat(idxs)


def resolve_space(images: torch.Tensor, space: str = "auto") -> str:
    """'digits' for digits-sized images (one channel, at most 32 px: the digits classifier's
    inputs), 'pixels' otherwise, unless ``space`` names one."""
    if space not in SPACES:
        raise ValueError(f"unknown distance space {space!r}; use one of {', '.join(SPACES)}")
    if space != "auto":
        return space
    return "digits" if images.shape[1] == 1 and max(images.shape[-2:]) <= 32 else "pixels"


def embed(images: torch.Tensor, space: str) -> torch.Tensor:
    """What distances are measured on: the flattened pixels or the digits features."""
    if space == "digits":
        with keep_global_random_state():
            net = get_feature_extractor("digits")
        return extract(net, images)
    return images.reshape(len(images), -1).double()


def memorisation(fake: torch.Tensor, real: torch.Tensor, space: str = "pixels") -> dict:
    """Mean nearest-target distance of the generated images over the mean leave-one-out nearest
    distance among the target images: well below 1, the samples sit closer to training images
    than those do to each other (copies); about 1, as close as a new image of the target would;
    well above 1, far from every training image."""
    fake_e, real_e = embed(fake, space), embed(real, space)
    fake_d, fake_i = nearest(fake_e, real_e)
    real_d, _ = nearest(real_e, real_e, exclude_self=True)
    return {"ratio": float(fake_d.mean() / real_d.mean()), "fake_mean": float(fake_d.mean()),
            "real_mean": float(real_d.mean()), "distances": fake_d, "index": fake_i, "space": space,
            "n_fake": len(fake), "n_real": len(real)}


@torch.no_grad()
def memorisation_check(sampler, real: torch.Tensor, space: str = "auto", cap: int = NEAREST_CAP,
                       seed: int = 0) -> dict:
    """:func:`memorisation` for as many samples as target images (both at most ``cap``, the
    target then a random subset of its own generator), plus ``real``: the compared targets."""
    real = torch.as_tensor(real).float()
    if real.ndim != 4:
        raise ValueError("the nearest-training-image check compares images; this target holds vectors")
    if len(real) > cap:
        real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:cap]]
    fake = sampler.sample(len(real), seed=seed).float().cpu()
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples of shape {tuple(fake.shape[1:])} cannot be compared with target images of "
                         f"shape {tuple(real.shape[1:])}")
    out = memorisation(fake, real, resolve_space(real, space))
    return {**out, "fake": fake, "real": real}


def nearest_pairs_picture(check: dict, path, n_pairs: int = 16) -> Path:
    """The first ``n_pairs`` generated samples of a :func:`memorisation_check`, each beside its
    nearest target image, with the distance."""
    n_pairs = min(n_pairs, len(check["fake"]))
    per_row = 4
    rows = math.ceil(n_pairs / per_row)
    fig = figure(NEAREST_SIZE)
    axes = fig.subplots(rows, 2 * per_row, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(n_pairs):
        r, c = divmod(k, per_row)
        gen_ax, near_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
        _show(gen_ax, check["fake"][k])
        _show(near_ax, check["real"][int(check["index"][k])])
        gen_ax.set_title("generated", fontsize=7)
        near_ax.set_title(f"nearest: {float(check['distances'][k]):.2f}", fontsize=7)
    fig.suptitle(f"generated | nearest target image — {SPACE_SHORT[check['space']]} — nearest-distance ratio "
                 f"{check['ratio']:.2f}", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _show(ax, image):
    arr = make_grid(image[None], nrow=1, pad=0)
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")


# --------------------------------------------------------------------------- interpolation
def interpolation_seeds(sampler, rows: int = 4, steps: int = 8, seed: int = 0) -> torch.Tensor:
    """[rows * steps, seed size]: row r goes along the straight line from a seed u_a to a seed
    u_b of the miner's seed distribution (uniform seeds stay in [0,1]^d), ends included
    exactly. A :class:`MultiSampler`'s generator-picking column is u_a's along the whole row,
    so a row is one generator's."""
    if not mined_samplers(sampler):
        raise ValueError("this sampler has no miner: there is no seed space to interpolate in")
    if steps < 2:
        raise ValueError(f"an interpolation needs at least its two ends, got steps={steps}")
    device = _device_of(sampler)
    gen = torch.Generator(device).manual_seed(seed)
    ends = sampler.draw_seeds(2 * rows, gen, device)
    u_a, u_b = ends[:rows], ends[rows:]
    t = (torch.arange(steps, device=device, dtype=ends.dtype) / (steps - 1))[None, :, None]
    line = (1 - t) * u_a[:, None] + t * u_b[:, None]
    if isinstance(sampler, MultiSampler):  # set, not interpolated: (1 - t)·p + t·p need not round to p
        line[:, :, sampler.seed_dim:] = u_a[:, None, sampler.seed_dim:]
    return line.reshape(rows * steps, -1)


@torch.no_grad()
def interpolate(sampler, rows: int = 4, steps: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images [rows * steps, ...], their seeds): the sampler in eval mode along
    :func:`interpolation_seeds`."""
    seeds = interpolation_seeds(sampler, rows, steps, seed)
    was_training = sampler.training
    sampler.eval()
    try:
        images = sampler(seeds)
    finally:
        sampler.train(was_training)
    return images.float().cpu(), seeds


def interpolation_picture(sampler, path, rows: int = 4, steps: int = 8, seed: int = 0) -> Path:
    images, _ = interpolate(sampler, rows, steps, seed)
    if images.ndim != 4:
        raise ValueError("interpolation strips show images; this sampler makes vectors")
    fig = figure(STRIP_SIZE)
    ax = fig.subplots()
    grid = make_grid(images, nrow=steps)
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"{rows} straight lines u_a → u_b in the miner's seed space, {steps} steps each (eval mode)",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _device_of(sampler):
    return next(sampler.parameters()).device  # a generator always has weights
