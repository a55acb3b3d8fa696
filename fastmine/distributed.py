"""Placement across processes: process groups, sharded frozen generators, collectives.

Distribution is placement only: the trainer and the methods are the same
with one process or many. This module decides

- whether a run is distributed (launched by torchrun / ``accelerate launch``: ``WORLD_SIZE`` >
  1) and builds the :class:`accelerate.Accelerator` that owns the process group, with the
  collective timeout and back end from the config (``dist.timeout_s``, ``dist.backend``);
- where a frozen generator's weights live: replicated (``dist.shard: none``), sharded per
  block with FSDP2 (``fully_shard`` on a device mesh over all ranks) or partitioned with
  DeepSpeed ZeRO-3. Miners and critic stay replicated: the critic needs double backward
  (the gradient penalty), which neither back end's hooks cover (pytorch#172543 for FSDP2);
- what a checkpoint holds under sharding (the frozen generator is left out: it loads from
  its own file, as DeepSpeed does for frozen weights, deepspeed#3090), and how the mined
  result is gathered into one ordinary file.

Random streams. Randomness is a function of (seed, stream index), not of the rank: the
global batch is split into ``dist.streams`` shards (default: one per rank), shard ``s`` drawn
from the stream seeded ``seed * 1_000_003 + s``, and rank ``r`` of ``W`` draws shards
``r*S/W .. (r+1)*S/W - 1`` and concatenates them. So with a fixed number of streams, one
process with batch ``S*b`` draws exactly the union of what ``S`` processes with batch ``b``
draw, and a checkpoint resumes at another world size on the same numbers. With one process
and the default (one stream) this is the single stream ``seed * 1_000_003`` the trainer
always used.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import sys
from pathlib import Path

import torch
from torch import nn

from .config import register_choices
from .files import Deferred
from .samplers import GeneratorAdapter, Sampler

SHARD_KINDS = ("none", "fsdp2", "zero3")
register_choices("dist.shard", (*SHARD_KINDS, "auto"))  # auto: from the accelerate YAML
register_choices("dist.backend", ("auto", "gloo", "nccl"))
STREAM_STRIDE = 1_000_003


# --------------------------------------------------------------------------- process group
def launched_world_size() -> int:
    """The number of processes the launcher started (1 outside torchrun / accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_initialized() else 0


def setup(dist_cfg=None, device="auto"):
    """An :class:`accelerate.Accelerator` when launched with several processes, else None.

    ``device`` "cpu" (or no CUDA) gives DDP-style process groups over gloo; on GPUs NCCL.
    The collective timeout is ``dist.timeout_s``: a collective that waits longer (a peer
    died without closing its sockets) raises instead of hanging.
    """
    if launched_world_size() <= 1 and not is_initialized():
        return None
    timeout_s = float(getattr(dist_cfg, "timeout_s", 600) or 600)
    backend = getattr(dist_cfg, "backend", "auto") or "auto"
    cpu = device == "cpu" or not torch.cuda.is_available()
    kwargs = {"timeout": datetime.timedelta(seconds=timeout_s)}
    if backend != "auto":
        kwargs["backend"] = backend
    elif cpu:
        kwargs["backend"] = "gloo"
    # Accelerate (a while to import) only for a launched multi-process run
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    acc = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(**kwargs)])
    install_failure_messages()
    return acc


def resolve_shard(shard: str | None, accelerator=None) -> str:
    """The config's ``dist.shard``; ``auto`` follows the Accelerate launch config (an FSDP
    YAML -> fsdp2, a DeepSpeed ZeRO-3 YAML -> zero3, otherwise none)."""
    shard = shard or "none"
    if shard == "auto":
        shard = "none"
        state = getattr(accelerator, "state", None)
        ds = getattr(state, "deepspeed_plugin", None) if state is not None else None
        if ds is not None and int(getattr(ds, "zero_stage", 0) or 0) == 3:
            shard = "zero3"
        elif state is not None and getattr(state, "fsdp_plugin", None) is not None:
            shard = "fsdp2"
    if shard not in SHARD_KINDS:
        raise ValueError(f"dist.shard must be one of {', '.join(SHARD_KINDS + ('auto',))}, got {shard!r}")
    return shard


_current_rank_for_messages = None


def install_failure_messages():
    """Name this rank in the message of an uncaught exception (a peer's death shows up on
    the survivors as a gloo/NCCL error or a timeout; torchrun names the dead rank)."""
    global _current_rank_for_messages
    if _current_rank_for_messages is not None:
        return
    _current_rank_for_messages = rank()
    previous = sys.excepthook

    def hook(kind, value, tb):
        if world_size() > 1 and not issubclass(kind, KeyboardInterrupt):
            who = f"rank {_current_rank_for_messages} of {world_size()}"
            print(f"fastmine: {who} stopped with {kind.__name__}: {value}. "
                  "A peer that died or hung (dist.timeout_s) shows up here as a failed collective; "
                  "torchrun names the first rank that failed. Resume with --resume.", file=sys.stderr, flush=True)
        previous(kind, value, tb)

    sys.excepthook = hook


def barrier():
    if is_initialized() and world_size() > 1:
        torch.distributed.barrier()


def all_reduce_mean_(tensors):
    """Average a list of same-device tensors over ranks in one flat collective (in place)."""
    if world_size() == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[i:i + n].view_as(t).to(t.dtype))
        i += n
    return tensors


def all_reduce_sum_(tensor):
    if world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


def all_reduce_max_(tensor):
    if world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return tensor


def broadcast_params_(params, src=0):
    """Make replicated parameters identical to rank 0's (what DDP does at construction)."""
    params = [p for p in params if not is_sharded_param(p)]
    if world_size() == 1 or not params:
        return
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        torch.distributed.broadcast(flat, src)
        torch.nn.utils.vector_to_parameters(flat, params)


def all_gather_objects(obj):
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- random streams
def stream_layout(streams: int | None, world: int, rank_: int, batch_size: int):
    """(stream indices of this rank, per-stream batch) for a global batch split into ``streams``."""
    streams = int(streams or world)
    if streams % world:
        raise ValueError(f"dist.streams={streams} must be a multiple of the number of processes ({world})")
    per_rank = streams // world
    if batch_size % per_rank:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of the random streams per process "
                         f"({per_rank} = dist.streams {streams} / {world} processes)")
    return list(range(rank_ * per_rank, (rank_ + 1) * per_rank)), batch_size // per_rank


def make_streams(seed: int, indices, device) -> list:
    return [torch.Generator(device).manual_seed(seed * STREAM_STRIDE + s) for s in indices]


# --------------------------------------------------------------------------- sharding
def is_dtensor(t) -> bool:
    # FSDP2's parameters are DTensors; until something sharded them torch.distributed.tensor is
    # not even imported (it and FSDP take seconds to import), and then nothing is a DTensor
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def is_sharded_param(p) -> bool:
    return is_dtensor(p) or hasattr(p, "ds_tensor")


def blocks_of(module: nn.Module, parts: int = 8):
    """Units to shard one by one (each is gathered whole for its own forward, then freed): the
    children of every ModuleList / Sequential; without those, the module split recursively, a
    child holding more than 1/``parts`` of the parameters split into its own children (a
    StyleGAN: the mapping network, then each synthesis block, the largest ones per layer)."""
    out = []
    for m in module.modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and m is not module:
            for c in m.children():
                if any(True for _ in c.parameters()) and not any(c is o or _is_ancestor(o, c) for o in out):
                    out.append(c)
    if out:
        return out
    total = _numel(module)

    def split(m):
        for c in m.children():
            n = _numel(c)
            if n and n * parts > total and any(_numel(g) for g in c.children()):
                split(c)
            elif n:
                out.append(c)

    split(module)
    return out


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _is_ancestor(a: nn.Module, b: nn.Module) -> bool:
    return any(m is b for m in a.modules())


def shard_generator(adapter, shard: str, device, ds_config: dict | None = None):
    """Shard the frozen generator module of ``adapter`` in place across all ranks.

    Gradients still flow through it to its inputs (the miner); its own weights never get
    gradients or optimizer state. Returns the adapter.
    """
    if shard == "none":
        return adapter
    check_shardable(shard, any(p.requires_grad for p in adapter.module.parameters())
                    or not getattr(adapter, "frozen", True))
    if not is_initialized():
        raise ValueError(f"dist.shard={shard} needs a process group: launch with torchrun or accelerate launch "
                         "(launch/README.md)")
    module = adapter.module
    if shard == "fsdp2":
        # reshard after forward and after backward (the default): only the block being run is
        # whole. set_reshard_after_backward(False) (pytorch#172543) is needed only for double
        # backward through the sharded module; fastmine never does that (the gradient penalty
        # differentiates the critic, on detached fakes), and keeping it would hold the whole
        # generator unsharded after every sampler step.
        fsdp2_shard(module, device)
    elif shard == "zero3":
        zero3_initialize(adapter, ds_config, device)
    else:
        raise ValueError(f"unknown shard kind {shard!r}")
    module._fastmine_shard = shard
    return adapter


def fsdp2_shard(module: nn.Module, device):
    """``fully_shard`` each block of :func:`blocks_of`, then the root, over all ranks. Scalar
    parameters (StyleGAN2's noise strengths), which FSDP2 cannot shard, stay replicated."""
    # imported here, on the sharding path only: FSDP takes seconds to import
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(device).type, (world_size(),))
    scalars = {p for p in module.parameters() if p.ndim == 0} or None
    for block in blocks_of(module):
        fully_shard(block, mesh=mesh, reshard_after_forward=True, ignored_params=scalars)
    fully_shard(module, mesh=mesh, reshard_after_forward=True, ignored_params=scalars)
    return module


def check_shardable(shard: str, generator_trains: bool):
    if generator_trains:
        raise ValueError(f"dist.shard={shard} shards frozen generators only; this method trains the generator "
                         "(use dist.shard=none, or a method that keeps it frozen such as minegan_noft / reprogram)")


def read_ds_config(dist_cfg) -> dict | None:
    path = getattr(dist_cfg, "deepspeed_config", None)
    if not path:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"dist.deepspeed_config {str(path)!r} does not exist")
    return json.loads(Path(path).read_text())


def import_deepspeed(device="cpu"):
    """DeepSpeed, an optional extra (only reached under dist.shard=zero3), with its process group."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if torch.device(device).type == "cpu" else "cuda")
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError("dist.shard=zero3 needs DeepSpeed: pip install 'fastmine[deepspeed]'") from e
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)
    return deepspeed


def zero3_config(ds_config: dict | None) -> dict:
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_prefetch_bucket_size": 0, "stage3_max_live_parameters": 1e9},
        "zero_allow_untested_optimizer": True,
    }
    config.update(ds_config or {})
    if int(config.get("zero_optimization", {}).get("stage", 0)) != 3:
        raise ValueError("dist.shard=zero3 needs a DeepSpeed config with zero_optimization.stage 3")
    return config


def zero3_initialize(adapter, ds_config, device="cpu"):
    """Hand the generator to DeepSpeed without an optimizer: it partitions the (frozen) weights,
    unless ``deepspeed.zero.Init`` already did, and installs the hooks that gather each
    submodule's weights for its forward and backward (ZeRO-Inference). Its post-backward
    release needs inputs that require grad (deepspeed#5524): the miner's output does in the
    sampler step; the critic step runs the generator without autograd."""
    deepspeed = import_deepspeed(device)
    engine, *_ = deepspeed.initialize(model=adapter.module, config=zero3_config(ds_config))
    adapter._fastmine_ds_engine = [engine]  # a list: not registered as a submodule


def local_param_count(module: nn.Module) -> int:
    """Elements of ``module``'s parameters stored on this rank (its shard when sharded)."""
    n = 0
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            n += p.ds_tensor.numel()
        elif hasattr(p, "to_local"):
            n += p.to_local().numel()
        else:
            n += p.numel()
    return n


def full_param_count(module: nn.Module) -> int:
    n = 0
    for p in module.parameters():
        n += p.ds_numel if hasattr(p, "ds_numel") else p.numel()
    return n


def sharded_kind(module: nn.Module) -> str:
    return getattr(module, "_fastmine_shard", "none")


def sharded_prefixes(root: nn.Module) -> list:
    """State-dict prefixes of the sharded submodules of ``root`` ("generator.module.")."""
    return [f"{name}." if name else "" for name, m in root.named_modules() if sharded_kind(m) != "none"]


def checkpoint_state(root: nn.Module) -> dict:
    """``root.state_dict()`` without the sharded (frozen) generator's weights."""
    prefixes = sharded_prefixes(root)
    sd = root.state_dict()
    return {k: v for k, v in sd.items() if not any(k.startswith(p) for p in prefixes)}


def load_checkpoint_state(root: nn.Module, state: dict, omitted_prefix: str | None = None):
    """Load what :func:`checkpoint_state` wrote, whatever the sharding then and now.

    A sharded module never takes weights from a checkpoint (it is frozen and loaded from its
    own file); an unsharded one may miss them when the checkpoint was written sharded."""
    prefixes = sharded_prefixes(root)
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in prefixes)}
    missing, unexpected = root.load_state_dict(state, strict=False)
    allowed = tuple(prefixes) + ((omitted_prefix,) if omitted_prefix else ())
    bad = [k for k in missing if not (allowed and k.startswith(allowed))]
    if bad or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")


def shard_part(t) -> tuple | None:
    """(this rank's part of a sharded tensor as a flat view, elements per rank), or None when
    ``t`` is not sharded. Both back ends split a tensor into equal flat parts: FSDP2's Shard(0)
    gives rank r rows r·⌈n/W⌉.. (torch.chunk's split; the local tensor has no padding), ZeRO-3 a
    padded flat partition. Rank r's part covers :func:`part_range` of the flattened tensor."""
    if is_dtensor(t):
        local = t.to_local()
        return local.reshape(-1), -(-t.shape[0] // world_size()) * math.prod(t.shape[1:])
    if hasattr(t, "ds_tensor"):
        return t.ds_tensor.data.reshape(-1), t.ds_tensor.numel()
    return None


def part_range(total: int, per: int, rank_: int) -> tuple:
    """The elements [start, stop) of a flat tensor of ``total`` elements that part ``rank_`` of
    ``per`` elements holds (padding excluded: the last parts may be short or empty)."""
    start = min(rank_ * per, total)
    return start, min(start + per, total)


def deferred_state(module: nn.Module) -> dict:
    """``module.state_dict()`` with each sharded tensor as a :class:`fastmine.files.Deferred`:
    sent to rank 0 part by part only when its turn comes to be written (a collective: every
    rank writes the same file layout, rank 0 alone to disk), so exporting holds one other
    rank's part of one tensor on rank 0 and nothing more than its shard on the others."""
    if sharded_kind(module) == "none":
        return module.state_dict()
    params = dict(module.named_parameters())
    out = {}
    for k, v in module.state_dict().items():
        p = params.get(k, v)  # ZeRO-3's state dict holds placeholders: its parameters know the shape
        part = shard_part(p)
        shape = tuple(getattr(p, "ds_shape", p.shape))
        out[k] = v if part is None else Deferred(p.dtype, shape, lambda part=part, shape=shape: _gathered_on_rank0(
            *part, shape))
    return out


@contextlib.contextmanager
def _gathered_on_rank0(local: torch.Tensor, per: int, shape):
    """Rank 0: the whole tensor of ``shape`` as its parts in order, every rank's flat part
    (``per`` elements, the last ones possibly fewer, padding dropped): its own without a copy,
    the others received one at a time into one buffer, for as long as the caller writes each.
    Other ranks: send their part, yield nothing. No rank holds more than its part plus one other."""
    total, world = math.prod(shape), world_size()
    if rank() != 0:
        torch.distributed.send(padded_part(local, per), dst=0)
        yield []
        return

    def parts():
        yield local[:min(per, total)]
        buf = torch.empty(per, dtype=local.dtype, device=local.device)
        for r in range(1, world):
            torch.distributed.recv(buf, src=r)
            a, b = part_range(total, per, r)
            yield buf[:b - a]

    yield parts()


def padded_part(flat: torch.Tensor, per: int) -> torch.Tensor:
    """``flat`` zero-padded to ``per`` elements (collectives move equal-sized parts)."""
    return flat.contiguous() if flat.numel() == per else torch.cat([flat, flat.new_zeros(per - flat.numel())])


class _FrozenState(nn.Module):
    """Stands in for a sharded generator module when exporting: only its (deferred) weights."""

    def __init__(self, state):
        super().__init__()
        self._state = state

    def state_dict(self, *args, **kwargs):
        return dict(self._state)


def exportable_sampler(sampler):
    """A sampler for :func:`fastmine.files.save_sampler` whose sharded generator weights are
    gathered one tensor at a time as the file is written (:func:`deferred_state`; every rank
    saves, rank 0 with ``write=True``). Samplers of several generators are never sharded (mining
    them shards nothing) and pass as they are."""
    if not isinstance(sampler, Sampler):
        return sampler
    adapter = sampler.generator
    if sharded_kind(adapter.module) == "none":
        return sampler
    stand_in = GeneratorAdapter(_FrozenState(deferred_state(adapter.module)), adapter.latent_spec.to_dict(),
                                build=adapter.build, frozen=True)
    if sampler.miner is None:
        return Sampler(stand_in)
    return Sampler(stand_in, sampler.miner, seed_dim=sampler.seed_dim, seed_dist=sampler.seed_dist)
