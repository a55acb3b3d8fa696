"""Run configs: dataclasses in sections, loaded from YAML and overridden with ``key=value``.

A run's settings are one :class:`RunConfig` made of sections, each a small dataclass:
``data``, ``model``, ``source``, ``miner``, ``train`` (the optimisation), ``loss`` (the
adversarial objective and its penalty), ``perf`` (speed switches), ``log`` (cadence),
``multi`` (several generators), ``s3`` (sparse critic), ``fusion`` and ``dist``.

Values are coerced to their field's type (YAML reads ``1e-4`` as a string: it becomes a
float here), an unknown key is an error that lists the valid keys of its section, and a key
of the old flat layout (``train.gp_weight``) is an error naming its new place
(``loss.gp_weight``). ``None`` fields are filled from the chosen method's defaults
(:mod:`fastmine.methods`), so the papers' settings live in one place; :func:`validate` then
checks every range and every rule between fields, before anything is written.

Keys that import and run code, and so must only name code you trust: ``source.generator``
or ``source.arch`` given as ``"package.module:function"`` and ``miner.module``. A model
*file* never runs code unless ``source.trust_code=true`` (:mod:`fastmine.files`).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml


@dataclass
class DataConfig:
    dataset: str = "digits"          # digits | folder | tensor | given (a tensor or function passed in code)
    path: Optional[str] = None       # folder or .pt/.npz file
    key: Optional[str] = None        # tensor name inside a .pt/.npz holding several
    labels: Optional[list] = None    # digits: keep these classes
    limit: Optional[int] = None      # keep this many (random, chosen with `seed`)
    size: int = 16                   # image side in pixels (digits, folders)
    seed: int = 0                    # chooses the `limit` subset
    channels: Optional[str] = None   # folders: gray | rgb (default: gray when every image is gray)
    fit: str = "crop"                # folders, non-square images: crop (centre) | pad (black) | stretch
    alpha: str = "white"             # folders, transparency: composited over white | black, or refuse


@dataclass
class ModelConfig:
    """Architecture of networks fastmine builds itself (pretrain, scratch, a new critic)."""
    arch: str = "dcgan"              # dcgan | mlp
    latent_dim: int = 64
    width: int = 32
    depth: int = 3                   # mlp only
    norm: str = "batch"              # dcgan generator: batch | none
    channels: Optional[int] = None   # default: from the data
    out_dim: Optional[int] = None    # mlp: default from the data
    embed_dim: int = 16              # conditional pretraining: class embedding size
    num_classes: Optional[int] = None  # conditional pretraining: default from the labels


@dataclass
class SourceConfig:
    generator: Optional[str] = None  # fastmine file | weights file (+ arch) | "package.module:function" (runs it)
    critic: Optional[str] = None     # default: the critic stored with the generator, if any
    arch: Optional[str] = None       # "package.module:function" building the generator for a plain state dict (runs it)
    latent_spec: Optional[dict] = None  # {"z": {"shape": [128], "prior": "normal"}} when not self-described
    allow_pickle: bool = False       # allow pickled checkpoints (unpickling runs code from the file)
    trust_code: bool = False         # let a model file's metadata name a factory to run (fastmine.files)
    generators: Optional[list] = None  # mine-multi / fuse: several generator files
    # which object of a checkpoint holding several: an NVIDIA pickle's G_ema (default) or G; a torch
    # checkpoint's state dict key (found automatically among the well-known ones; "a.b" for nested)
    key: Optional[str] = None
    # StyleGAN sources (fastmine.zoo): the latent space mined (z | w | w+), truncation toward w_avg
    # (1: none), noise inputs (const: the network's fixed noise | random | none); null: a converted
    # file's stored choice, else z, 1, const
    latent: Optional[str] = None
    truncation_psi: Optional[float] = None
    truncation_cutoff: Optional[int] = None
    noise_mode: Optional[str] = None
    # StyleGAN2: mine the noise inputs up to this resolution too (latents noise_*; 0: none; MineGAN's
    # Appendix A mines a 32x32 map beside z)
    noise: Optional[int] = None


@dataclass
class MinerConfig:
    seed_dim: Optional[int] = None   # default: the latent size
    seed_dist: Optional[str] = None  # normal | uniform (default per method)
    hidden: Optional[int] = None     # default: max(latent size, seed_dim)
    layers: int = 2                  # the paper's MNIST miner: two FC layers of |z|
    # normal (paper's N(0, 0.01)) | residual (starts at the prior) | inversion (fitted to the target's
    # inverted latents, invert section) | given (a miner you pass keeps its weights: the default
    # then); default per method
    init: Optional[str] = None
    module: Optional[str] = None     # "package.module:function" returning your own miner module (runs it)


@dataclass
class TrainConfig:
    """The optimisation: what every method sets (defaults per method, fastmine.methods)."""
    steps: int = 1000                # sampler (generator-side) updates in total
    mine_steps: Optional[int] = None  # minegan: updates before the generator unfreezes (default steps // 2)
    batch_size: Optional[int] = None
    n_critic: Optional[int] = None   # critic steps per generator update
    lr: Optional[float] = None       # sampler side (miner / generator)
    critic_lr: Optional[float] = None
    betas: Optional[list] = None
    freeze_critic_blocks: Optional[int] = None  # FreezeD: leading critic blocks kept frozen (default: half)


@dataclass
class LossConfig:
    """The adversarial objective: WGAN with a gradient penalty (the papers') or another (fastmine.losses)."""
    objective: str = "wgan_gp"       # wgan_gp | logistic (non-saturating + R1) | hinge | minimax | lsgan | wgan_clip
    gp_weight: Optional[float] = None  # λ of WGAN-GP (0 turns the penalty off)
    gp_center: float = 1.0
    gp_one_sided: bool = False       # WGAN-LP: penalise only norms above gp_center
    gp_every: int = 1                # lazy regularisation: penalty every k-th critic step, scaled by k
    r1_gamma: float = 10.0           # logistic: γ of R1 = γ/2·E‖∇_x D(x)‖² on real images (0: off)
    r1_every: int = 16               # lazy R1 (StyleGAN2 §B): every k-th critic step, scaled by k
    reg_step: str = "joined"         # lazy penalty added to that step's loss, lr and betas as set (measured
                                     # best on the demo, benchmarks/RESULTS.md) | separate (its own optimizer
                                     # step, lr·k/(k+1), betas^(k/(k+1)): StyleGAN2's Dreg phase)
    clip: float = 0.01               # wgan_clip: critic weights clipped to [-clip, clip] after each step
    spectral_norm: bool = False      # spectral normalisation of the critic's weights (SNGAN)


@dataclass
class AugmentConfig:
    """Differentiable augmentation of every critic input, real and fake alike (fastmine.augment)."""
    kind: str = "none"               # none | diffaugment | ada
    policy: list = field(default_factory=lambda: ["color", "translation", "cutout"])  # DiffAugment's
    ada_target: float = 0.6          # ADA: the overfitting heuristic r_t = E[sign(D(x_real))] is steered to this
    ada_images: int = 500_000        # ADA: real images over which p may move from 0 to 1 (adjustment speed)
    ada_interval: int = 4            # ADA: p is adjusted every this many critic steps
    ada_p: float = 0.0               # ADA: the initial augmentation probability


@dataclass
class RegularizeConfig:
    """Extra loss terms that hold the adapting generator near its source (fastmine.regularizers)."""
    ewc: float = 0.0                 # λ of EWC (Li et al. 2020): Fisher-weighted pull toward the source weights
    ewc_samples: int = 256           # source samples the Fisher information is estimated on
    cdc: float = 0.0                 # λ of CDC's cross-domain distance consistency (Ojha et al. 2021)
    cdc_layers: Optional[list] = None  # generator modules whose features CDC compares (null: one per resolution)


@dataclass
class EmaConfig:
    """A moving average of the trained sampler-side weights (stylegan2-ada's G_ema, fastmine.ema):
    samples, evaluations and the written model come from it; checkpoints keep the raw weights too."""
    kimg: Optional[float] = None     # half-life in thousands of images (0: off); default per method
    rampup: Optional[float] = None   # half-life at most this fraction of the images seen so far (0: no ramp-up)


@dataclass
class PerfConfig:
    """Speed switches; each is measured on its own in benchmarks/RESULTS.md."""
    impl: str = "auto"               # kernels: auto (Triton on CUDA) | triton | torch
    threads: Optional[int] = None    # torch CPU threads; None: the CPUs this process may use (affinity mask
                                     # ∩ cgroup quota) or OMP_NUM_THREADS when set (fastmine.threads)
    amp: str = "none"                # none | bf16 (generator and the critic's loss passes; the penalty's stays fp32)
    channels_last: Optional[bool] = None  # None: on for the CPU (measured faster there), off on CUDA (not yet measured)
    fused_adam: bool = False
    compile: str = "none"            # none | sampler | first_order (sampler and the critic's loss passes)
    fp16_layers: str = "auto"        # StyleGAN float16 layers (num_fp16_res): auto (float16 on CUDA, as NVIDIA's
                                     # code) | on (float16 on any device) | off (float32 everywhere)
    joint_critic: str = "auto"       # real and fake in one critic pass: auto (CUDA, critics with independent
                                     # rows) | on (refused for a batch-mixing critic) | off


@dataclass
class LogConfig:
    log_every: int = 10              # metrics.jsonl row every k generator updates
    sample_every: int = 250          # sample grid every k updates
    checkpoint_every: int = 50       # early and often: a run that dies is resumable from its last 50 updates
    keep_checkpoints: int = 2
    grid_size: int = 64              # samples per grid
    progress: bool = True
    trackers: Optional[list] = None  # Accelerate trackers by name; None: tensorboard when installed (fastmine.trackers)


@dataclass
class MultiConfig:
    """Several generators (MineGAN++ §3.3)."""
    rule: str = "permute"            # permute (eq. 9-10) | max (eq. 5-8)
    # the selector π averages argmax wins over the last `window` minibatches of supersamples:
    # every minibatch the critic scores counts, n_critic + 1 per generator update (the paper's
    # "last 1000 minibatches"; 1000 ≈ 167 updates at n_critic=5)
    window: int = 1000
    path: str = "fast"               # fast (score without autograd, re-run the chosen) | naive


@dataclass
class S3Config:
    """Sparse subnetwork selection (§3.4.2), methods minegan_pp / transfergan_pp."""
    p: float = 0.3                   # θ_w: score at the top-p quantile of all critic weights
    theta_f: int = 6                 # θ_f: a filter trains when ≥ θ_f of its weights score ≥ θ_w
    samples: int = 512               # target images the scores are computed on (at most)


@dataclass
class FusionConfig:
    """Fusion (§4.2): region i of the fused prior is N(spacing·e_i, sigma²·I)."""
    spacing: float = 4.0
    sigma: float = 1.0
    label_critic: bool = True        # the critic sees the region index (see fastmine.fusion)
    init_from: int = 0               # the fused generator starts as a copy of this source
    pool: int = 20000                # latent codes per source for the pseudo-real data


@dataclass
class InvertConfig:
    """GAN inversion (`fastmine invert`, and miner.init=inversion): fastmine.inversion."""
    # defaults measured on the digits source at 16 px, 32 of its own samples and 32 real 9s
    # (fastmine.inversion's docstring has the numbers)
    init: str = "encoder"            # prior (optimisation from prior draws) | encoder (learned, then refined)
    steps: int = 200                 # Adam steps per batch of images (0 with init=encoder: the encoder alone)
    lr: float = 0.05
    batch_size: int = 64
    pixel_weight: float = 1.0        # mean squared pixel error, images in [-1, 1]
    feature_weight: float = 0.1      # mean squared feature error (the digits net on 1-channel images)
    prior_weight: float = 0.01       # the prior's negative log-density, per latent dimension
    encoder_steps: int = 500         # init=encoder: training steps on the generator's own samples
    encoder_lr: float = 1e-3
    fit_steps: int = 300             # miner.init=inversion: steps fitting M(u)'s mean and covariance
    # miner.init=inversion inverts a random subset (chosen with `seed`) of at most this many target
    # samples: a mean and a covariance need a few hundred latents, not the whole target
    max_images: int = 512
    fit_lr: float = 1e-3


@dataclass
class DistConfig:
    """Placement across processes (launch/README.md); one process ignores it but `shard`."""
    # the frozen generator: none (replicated) | fsdp2 | zero3 | auto (from the accelerate YAML)
    shard: str = "none"
    backend: str = "auto"            # auto (gloo on CPU, nccl on GPU) | gloo | nccl
    timeout_s: float = 600.0         # a collective waiting longer raises (a peer died) instead of hanging
    deepspeed_config: Optional[str] = None  # shard=zero3: a DeepSpeed JSON (launch/deepspeed/zero3.json)
    # random streams the global batch is split into (default: one per process); fix it to
    # get the same numbers at any world size (fastmine.distributed)
    streams: Optional[int] = None


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"
    method: str = "minegan_noft"
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    miner: MinerConfig = field(default_factory=MinerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    log: LogConfig = field(default_factory=LogConfig)
    multi: MultiConfig = field(default_factory=MultiConfig)
    s3: S3Config = field(default_factory=S3Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    invert: InvertConfig = field(default_factory=InvertConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(f.default_factory))

# keys of the flat layout before the config had sections -> their place now
MOVED = {
    **{f"train.{k}": f"loss.{k}" for k in ("gp_weight", "gp_center", "gp_one_sided", "gp_every")},
    **{f"train.{k}": f"perf.{k}" for k in ("impl", "amp", "channels_last", "fused_adam", "compile")},
    **{f"train.{k}": f"log.{k}" for k in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints",
                                          "grid_size", "progress")},
    "train.selector_rule": "multi.rule", "train.selector_window": "multi.window", "train.selection_path": "multi.path",
    "train.s3_p": "s3.p", "train.s3_theta_f": "s3.theta_f", "train.s3_samples": "s3.samples",
    "train.fusion_spacing": "fusion.spacing", "train.fusion_sigma": "fusion.sigma",
    "train.fusion_label_critic": "fusion.label_critic", "train.streams": "dist.streams",
}


# what `--resume` may change: how long the run goes on, where (device, processes, sharding: the
# per-process batch with them, as long as the global batch stays, which the trainer checks) and
# how it reports
RESUMABLE = ("train.steps", "device", "log.*", "source.trust_code", "source.allow_pickle", "train.batch_size",
             "dist.shard", "dist.deepspeed_config", "dist.backend", "dist.timeout_s")


class ConfigError(ValueError):
    pass


# Allowed values of a key are the keys of the registry that owns them (losses.OBJECTIVES,
# augment.AUGMENTS, ...). config imports nothing of fastmine (the parts import it), so each
# owning module registers its table here by reference: a row added to the table is valid at
# once, with no edit to this file (stylegan2-ada's metric_main.register_metric / is_valid_metric).
CHOICES: dict = {}


def register_choices(key: str, table, optional: bool = False):
    """Make ``table`` (a mapping or sequence, kept by reference) the allowed values of ``key``
    ("section.name"); ``optional``: null is allowed too. Returns ``table``."""
    CHOICES[key] = (table, optional)
    return table


def choice_row(key: str, value):
    """The registry row ``value`` names for ``key`` (None when the table is not a mapping)."""
    table, _ = CHOICES[key]
    return table.get(value) if isinstance(table, dict) else None
# the top-level key of a config.yaml fastmine wrote into a run folder: only a folder whose
# config.yaml carries it is one fastmine resumes or restarts (fastmine.runfolder); reading a
# config drops it
RUN_MARK = {"fastmine": {"run_folder": 1}}
# YAML mappings and lists nested deeper than this are refused (a run config nests three levels)
MAX_YAML_DEPTH = 16
_DEVICE = re.compile(r"(auto|cpu|meta|mps|cuda|xpu)(:\d+)?")
# the type of each list's elements
LIST_ITEMS = {"data.labels": int, "source.generators": str, "train.betas": float, "augment.policy": str,
              "regularize.cdc_layers": str, "log.trackers": str}
# keys whose value makes code run (`package.module:function` strings import and call it, the two
# switches let files run theirs): they count only when given in this invocation, never taken
# from a stored run (fastmine.runs.prepare); the value is how to give each one again in Python
TRUST_KEYS = {"source.trust_code": "trust_code=True", "source.allow_pickle": "allow_pickle=True",
              "source.generator": "the generator argument", "source.arch": "arch=...",
              "source.generators": "the generators argument", "miner.module": "miner=your module"}


def trust_settings(cfg: "RunConfig") -> dict:
    """{key: value} of the :data:`TRUST_KEYS` that let code run in ``cfg``: the switches when on,
    the others when they name code (``package.module:function``)."""
    out = {}
    for key in TRUST_KEYS:
        value = _get(cfg, key)
        if key in ("source.trust_code", "source.allow_pickle"):
            if value:
                out[key] = value
        elif isinstance(value, list):
            if any(_names_code(v) for v in value):
                out[key] = value
        elif _names_code(value):
            out[key] = value
    return out


def _names_code(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", value) is not None \
        and not Path(value).exists()


def without_trust(data: dict) -> dict:
    """A config dict with the :data:`TRUST_KEYS` removed (a stored run's, used as a base)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key in TRUST_KEYS:
        section, name = key.split(".")
        if isinstance(out.get(section), dict):
            out[section].pop(name, None)
    return out


def check_trust_on_resume(stored: "RunConfig", cfg: "RunConfig"):
    """Refuse to continue a run whose stored settings let code run unless this invocation gives
    them again (a run folder may have been copied, shared or downloaded)."""
    had, given = trust_settings(stored), trust_settings(cfg)
    missing = {k: v for k, v in had.items() if given.get(k) != v}
    if missing:
        listed = " ".join(f"{k}={_yaml_value(v)}" for k, v in missing.items())
        python = ", ".join(TRUST_KEYS[k] for k in missing)
        raise ConfigError(f"the run was configured with settings that run code ({listed}); a stored run's folder "
                          "never turns them on: give them again if you trust them, on the command line ("
                          f"{listed}) or in Python ({python}) — nothing was changed")


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


class ConfigLoader(yaml.SafeLoader):
    """YAML as configs need it: plain values, no anchors or aliases (``&a`` / ``*a`` repeat a
    value, and nested they grow a few hundred bytes into gigabytes), nesting at most
    :data:`MAX_YAML_DEPTH` deep."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1
            raise ConfigError(f"YAML anchors and aliases (&name, *name, at line {line}) are not read in configs: "
                              "write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH + 1:
                raise ConfigError(f"YAML nested more than {MAX_YAML_DEPTH} levels deep (line "
                                  f"{event.start_mark.line + 1}); a config is a few sections of settings")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text):
    """``text`` parsed with :class:`ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)


def resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".*") and key.startswith(r[:-1])) for r in RESUMABLE)


def leaves(d: dict, prefix: str = ""):
    """(dotted key, value) of every non-mapping value of a nested dict."""
    for k, v in d.items():
        key = _join(prefix, k)
        if isinstance(v, dict) and k in SECTIONS:
            yield from leaves(v, key)
        else:
            yield key, v


def reconcile_resume(stored: "RunConfig", cfg: "RunConfig") -> tuple:
    """(the config a resumed run continues with, {key: [old, new]} of what changed).

    The run's own settings are the base: a key ``cfg`` leaves unset (None) keeps the stored
    value; a key set to another value is refused unless :data:`RESUMABLE` lists it."""
    old, new = to_dict(stored), to_dict(cfg)
    merged, changed, refused = {}, {}, []
    for (key, old_v), (_, new_v) in zip(leaves(old), leaves(new)):
        value = old_v if new_v is None else new_v
        if value != old_v:
            if resumable(key):
                changed[key] = [old_v, value]
            else:
                refused.append(f"{key} was {old_v!r}, now {value!r}")
        section, _, name = key.rpartition(".")
        (merged.setdefault(section, {}) if section else merged)[name] = value
    if refused:
        raise ConfigError("--resume continues a run as it was configured; only " + ", ".join(RESUMABLE) +
                          " may change, but " + "; ".join(refused) + ". Start a new run (another name=...) "
                          "to change the rest")
    return from_dict(RunConfig, merged), changed


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a nested dict: unknown keys refused, values coerced."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"config key '{where}' is a section; give a mapping, got {data!r}")
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        moved = [f"'{_join(where, k)}' is now '{MOVED[_join(where, k)]}'" for k in unknown if _join(where, k) in MOVED]
        if moved:
            raise ConfigError("the config has sections now: " + "; ".join(moved))
        section = f" in '{where}'" if where else ""
        raise ConfigError(
            f"unknown config key {', '.join(repr(_join(where, k)) for k in unknown)}; "
            f"valid keys{section}: {', '.join(fields)}"
        )
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        key = _join(where, name)
        sub = hints[name] if dataclasses.is_dataclass(hints[name]) else None
        if sub is not None:
            kwargs[name] = value if isinstance(value, sub) else from_dict(sub, value, key)
        else:
            kwargs[name] = coerce(value, hints[name], key)
    return cls(**kwargs)


def coerce(value, hint, key: str):
    """``value`` as type ``hint`` (int, float, bool, str, list, dict, Optional[...]) or a one-line error."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value) or abs(value) > 1e300:
                raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
            return float(value)
    elif hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if abs(value) >= 2**63:
                raise ConfigError(f"config key '{key}' must be an integer below 2**63, got {value!r}")
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is list:
        if isinstance(value, (list, tuple)):
            item = LIST_ITEMS.get(key)
            return list(value) if item is None else [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif hint is dict:
        if isinstance(value, dict):
            return value
    elif isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    optional = " or null" if type(None) in args else ""
    raise ConfigError(f"config key '{key}' must be {_ARTICLE.get(name, 'a ' + name)}{optional}, got {value!r}")


_ARTICLE = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list",
            "dict": "a mapping"}


def _join(where, name):
    return f"{where}.{name}" if where else name


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(overrides) -> dict:
    """``["train.lr=1e-4", "data.labels=[9]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=500)")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} sets a key inside {p!r}, which was given a value")
        node[parts[-1]] = value
    return out


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        loaded = load_yaml(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {_yaml_problem(e)}") from None
    except ConfigError as e:
        raise ConfigError(f"config file {str(p)!r}: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
    if loaded.get("fastmine") == RUN_MARK["fastmine"]:
        del loaded["fastmine"]
    return loaded


def has_run_mark(path) -> bool:
    """Whether ``path`` is a config.yaml fastmine wrote into a run folder (a regular file, not a
    link, carrying :data:`RUN_MARK`)."""
    p = Path(path)
    if p.is_symlink() or not p.is_file():
        return False
    try:
        loaded = load_yaml(p.read_text())
    except (yaml.YAMLError, ConfigError, UnicodeDecodeError, OSError):
        return False
    return isinstance(loaded, dict) and loaded.get("fastmine") == RUN_MARK["fastmine"]


def _yaml_problem(e) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}"


def load_config(path=None, overrides=None, defaults: dict | None = None) -> RunConfig:
    """defaults <- YAML file <- key=value overrides, coerced into a :class:`RunConfig`."""
    data = dict(defaults or {})
    if path is not None:
        data = merge(data, read_yaml(path))
    data = merge(data, parse_overrides(overrides))
    return from_dict(RunConfig, data)


def config_text(cfg) -> str:
    """The YAML of a run's config.yaml: fastmine's mark (:data:`RUN_MARK`), then the settings."""
    return yaml.safe_dump({**RUN_MARK, **to_dict(cfg)}, sort_keys=False)


def dump_config(cfg, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(config_text(cfg))


def fill_defaults(cfg: RunConfig, method) -> RunConfig:
    """Fill the ``None`` fields of ``cfg`` from ``method.defaults`` ({section: {key: value}})."""
    for section, values in method.defaults.items():
        sec = getattr(cfg, section)
        for key, value in values.items():
            if getattr(sec, key) is None:
                setattr(sec, key, list(value) if isinstance(value, list) else value)
    # when the generator unfreezes: only MineGAN's two stages have a choice (default half way)
    if method.generator_trains == "never":
        cfg.train.mine_steps = cfg.train.steps
    elif method.generator_trains == "always":
        cfg.train.mine_steps = 0
    elif cfg.train.mine_steps is None:
        cfg.train.mine_steps = cfg.train.steps // 2
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """Every range and every rule between fields, each failure one line naming the key."""
    t, loss = cfg.train, cfg.loss
    if not cfg.name or cfg.name in (".", "..") or any(c in cfg.name for c in "/\\"):
        raise ConfigError(f"name must be a plain folder name inside out_dir (no '/', '..'), got {cfg.name!r}")
    if not _DEVICE.fullmatch(cfg.device):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N, mps, xpu or meta, got {cfg.device!r}")
    _positive(cfg, "train.steps", "train.batch_size", "train.n_critic", "train.lr", "train.critic_lr",
              "loss.gp_every", "log.log_every", "log.sample_every", "log.checkpoint_every", "log.keep_checkpoints",
              "log.grid_size", "multi.window", "s3.samples", "s3.theta_f", "fusion.sigma", "fusion.pool",
              "dist.timeout_s", "data.size", "model.latent_dim", "model.width", "model.depth", "model.embed_dim",
              "model.num_classes", "fusion.spacing")
    if t.mine_steps is not None and not 0 <= t.mine_steps <= t.steps:
        raise ConfigError(f"train.mine_steps must be in 0..train.steps ({t.steps}), got {t.mine_steps}")
    if t.betas is not None and (len(t.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1
                                                             for b in t.betas)):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), e.g. [0.5, 0.999], got {t.betas!r}")
    if loss.gp_weight is not None and loss.gp_weight < 0:
        raise ConfigError(f"loss.gp_weight must be >= 0 (0 turns the penalty off), got {loss.gp_weight}")
    for key, (table, optional) in CHOICES.items():
        _choice(cfg, key, (*table, None) if optional else tuple(table))
    if loss.r1_gamma < 0:
        raise ConfigError(f"loss.r1_gamma must be >= 0 (0 turns R1 off), got {loss.r1_gamma}")
    _positive(cfg, "loss.r1_every", "loss.clip")
    objective = choice_row("loss.objective", loss.objective)
    if loss.spectral_norm and getattr(objective, "clip", False):
        raise ConfigError(f"loss.spectral_norm and loss.objective={loss.objective} (weight clipping) both bound the "
                          "critic's weights; choose one (spectral_norm with hinge is SNGAN's)")
    augment = choice_row("augment.kind", cfg.augment.kind)
    policies = getattr(augment, "policies", ())
    if policies:
        bad = [p for p in cfg.augment.policy if p not in policies]
        if bad:
            raise ConfigError(f"augment.policy: unknown {bad}; {cfg.augment.kind} has {', '.join(policies)}")
    if getattr(augment, "needs_signed_scores", False) and not getattr(objective, "signed_scores", False):
        signed = [name for name, row in CHOICES["loss.objective"][0].items() if getattr(row, "signed_scores", False)]
        raise ConfigError(f"augment.kind={cfg.augment.kind} steers p by the sign of the critic's scores on real "
                          f"images, which loss.objective={loss.objective} does not give a meaning (its scores have an "
                          f"arbitrary offset); use loss.objective={' | '.join(signed)} (logistic is StyleGAN2-ADA's), "
                          "or an augmentation without adaptive p (augment.kind=diffaugment)")
    if not 0 <= cfg.augment.ada_p < 1 or not 0 < cfg.augment.ada_target < 1:
        raise ConfigError(f"augment.ada_p must be in [0, 1) and augment.ada_target in (0, 1), got "
                          f"{cfg.augment.ada_p} and {cfg.augment.ada_target}")
    _positive(cfg, "augment.ada_images", "augment.ada_interval", "regularize.ewc_samples")
    for key, zero in (("ema.kimg", "turns the average off"), ("ema.rampup", "no ramp-up")):
        if _get(cfg, key) is not None and _get(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0 (0: {zero}), got {_get(cfg, key)}")
    for key in ("regularize.ewc", "regularize.cdc"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0 (0 turns it off), got {_get(cfg, key)}")
    if not 0 < cfg.s3.p <= 1:
        raise ConfigError(f"s3.p must be in (0, 1], got {cfg.s3.p}")
    if cfg.data.limit is not None and cfg.data.limit < 1:
        raise ConfigError(f"data.limit must be at least 1 (or null for all), got {cfg.data.limit}")
    if cfg.dist.streams is not None and cfg.dist.streams < 1:
        raise ConfigError(f"dist.streams must be at least 1 (or null), got {cfg.dist.streams}")
    _positive(cfg, "perf.threads")
    if cfg.log.trackers:
        # Accelerate imports torch, which reading and checking a config must not (the CLI)
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS
        unknown = [n for n in cfg.log.trackers if n not in LOGGER_TYPE_TO_CLASS]
        if unknown:
            raise ConfigError(f"log.trackers: unknown tracker(s) {unknown}; Accelerate knows "
                              f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
    psi = cfg.source.truncation_psi
    if psi is not None and not 0 <= psi <= 1:
        raise ConfigError(f"source.truncation_psi must be in [0, 1] (1: no truncation), got {psi}")
    _positive(cfg, "source.truncation_cutoff")
    if cfg.source.noise is not None and cfg.source.noise < 0:
        raise ConfigError(f"source.noise must be >= 0 (a resolution in px; 0: no noise inputs mined), got "
                          f"{cfg.source.noise}")
    _positive(cfg, "invert.lr", "invert.batch_size", "invert.encoder_lr", "invert.fit_lr", "invert.max_images")
    for key in ("invert.steps", "invert.encoder_steps", "invert.fit_steps", "invert.pixel_weight",
                "invert.feature_weight", "invert.prior_weight"):
        if _get(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {_get(cfg, key)}")
    return cfg


def _get(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def _positive(cfg, *keys):
    for key in keys:
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")


def _choice(cfg, key, allowed):
    value = _get(cfg, key)
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(f"config key '{key}' must be one of {shown}, got {value!r}")
