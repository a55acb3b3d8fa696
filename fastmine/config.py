"""Run configs: dataclasses, loaded from YAML and overridden with ``key=value``.

An unknown key is an error that lists the valid keys; ``None`` fields are filled from the
chosen method's defaults (fastmine.methods), so the papers' settings live in one place.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass
class DataConfig:
    dataset: str = "digits"          # digits | folder | tensor
    path: Optional[str] = None       # folder or .pt/.npz file
    key: Optional[str] = None        # tensor name inside a .pt/.npz holding several
    labels: Optional[list] = None    # digits: keep these classes
    limit: Optional[int] = None      # keep this many (random, chosen with `seed`)
    size: int = 16                   # image side in pixels (digits, folders)
    seed: int = 0


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


@dataclass
class SourceConfig:
    generator: Optional[str] = None  # fastmine file | weights file (+ model) | "package.module:function"
    critic: Optional[str] = None     # default: the critic stored with the generator, if any
    arch: Optional[str] = None       # "package.module:function" building the generator for a plain state dict
    latent_spec: Optional[dict] = None  # {"z": {"shape": [128], "prior": "normal"}} when not self-described
    allow_pickle: bool = False       # allow pickled checkpoints (runs code from the file)
    generators: Optional[list] = None  # mine-multi / fuse: several generator files


@dataclass
class MinerConfig:
    seed_dim: Optional[int] = None   # default: the latent size
    seed_dist: Optional[str] = None  # normal | uniform (default per method)
    hidden: Optional[int] = None     # default: max(latent size, seed_dim)
    layers: int = 2                  # the paper's MNIST miner: two FC layers of |z|
    init: Optional[str] = None       # normal (paper's N(0, 0.01)) | residual (starts at the prior); default per method, README
    module: Optional[str] = None     # "package.module:function" returning your own miner module


@dataclass
class TrainConfig:
    steps: int = 1000                # sampler (generator-side) updates in total
    mine_steps: Optional[int] = None # minegan: updates before the generator unfreezes (default steps // 2)
    batch_size: Optional[int] = None
    n_critic: Optional[int] = None
    gp_weight: Optional[float] = None
    gp_center: float = 1.0
    gp_one_sided: bool = False       # WGAN-LP: penalise only norms above gp_center
    gp_every: int = 1                # lazy regularisation: penalty every k-th critic step, scaled by k
    lr: Optional[float] = None       # sampler side (miner / generator)
    critic_lr: Optional[float] = None
    betas: Optional[list] = None
    freeze_critic_blocks: Optional[int] = None  # FreezeD: leading critic blocks kept frozen (default: half)
    impl: str = "auto"               # kernels: auto | triton | torch
    # speed options (benchmarks/RESULTS.md measures each): bf16 autocast of the generator and
    # of the critic's loss passes (the penalty's pass stays fp32), channels_last images and
    # convolutions, Adam's fused implementation, torch.compile of the first-order passes
    amp: str = "none"                # none | bf16
    channels_last: Optional[bool] = None  # None: on for the CPU (measured faster there), off on CUDA (not yet measured)
    fused_adam: bool = False
    compile: str = "none"            # none | sampler | first_order (sampler and the critic's loss passes)
    log_every: int = 10
    sample_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    grid_size: int = 64              # samples per grid
    progress: bool = True
    # multi-generator mining (MineGAN++ §3.3)
    selector_rule: str = "permute"   # permute (eq. 9-10) | max (eq. 5-8)
    selector_window: int = 1000      # minibatches averaged into the selector π
    selection_path: str = "fast"     # fast (score without autograd, re-run the chosen) | naive
    # sparse subnetwork selection S³ (§3.4.2), methods minegan_pp / transfergan_pp
    s3_p: float = 0.3                # θ_w: score at the top-p quantile of all critic weights
    s3_theta_f: int = 6              # θ_f: a filter trains when ≥ θ_f of its weights score ≥ θ_w
    s3_samples: int = 512            # target images the scores are computed on (at most)
    # fusion (§4.2): region i of the fused prior is N(fusion_spacing·e_i, fusion_sigma²·I)
    fusion_spacing: float = 4.0
    fusion_sigma: float = 1.0
    fusion_label_critic: bool = True # the critic sees the region index (see fastmine.fusion)
    # random streams the global batch is split into (default: one per process); fix it to
    # get the same numbers at any world size (fastmine.distributed)
    streams: Optional[int] = None


@dataclass
class DistConfig:
    """Placement across processes (launch/README.md); one process ignores it but `shard`."""
    shard: str = "none"              # frozen generator: none (replicated) | fsdp2 | zero3 | auto (from the accelerate YAML)
    backend: str = "auto"            # auto (gloo on CPU, nccl on GPU) | gloo | nccl
    timeout_s: float = 600.0         # a collective waiting longer raises (a peer died) instead of hanging
    deepspeed_config: Optional[str] = None  # shard=zero3: a DeepSpeed JSON (launch/deepspeed/zero3.json)


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
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


class ConfigError(ValueError):
    pass


def from_dict(cls, data: dict | None, where: str = ""):
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys."""
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        section = f" in '{where}'" if where else ""
        raise ConfigError(
            f"unknown config key {', '.join(repr((where + '.' if where else '') + k) for k in unknown)}; "
            f"valid keys{section}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        sub = _dataclass_type(f)
        if sub is not None:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key '{_join(where, name)}' is a section; give a mapping, got {value!r}")
            kwargs[name] = from_dict(sub, value, _join(where, name))
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _join(where, name):
    return f"{where}.{name}" if where else name


def _dataclass_type(f):
    t = f.type if not isinstance(f.type, str) else globals().get(f.type)
    return t if dataclasses.is_dataclass(t) else None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def parse_overrides(overrides) -> dict:
    """``["train.lr=1e-4", "data.labels=[9]"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=500)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
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


def load_config(path=None, overrides=None, defaults: dict | None = None) -> RunConfig:
    """defaults <- YAML file <- key=value overrides, validated into a :class:`RunConfig`."""
    data = dict(defaults or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
        data = merge(data, loaded)
    data = merge(data, parse_overrides(overrides))
    return from_dict(RunConfig, data)


def dump_config(cfg, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def resolved(cfg: RunConfig, **changes: Any) -> RunConfig:
    return dataclasses.replace(cfg, **changes)
