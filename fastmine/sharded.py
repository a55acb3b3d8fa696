"""A frozen generator that never exists whole on one process: built on the meta device,
sharded, then materialised shard by shard from its file; written back tensor by tensor.

Why: building the whole generator on every rank and sharding it afterwards costs each rank
the full model at set-up — more than one unsharded process — which is exactly the case
sharding exists for (``benchmarks/RESULTS.md``, "Large generators").

How each phase stays near P/W per rank (P the generator's bytes, W the ranks):

- **construction**: the module is built under ``torch.device("meta")``: shapes only, no storage.
- **sharding**: FSDP2's ``fully_shard`` per block on the meta module, then ``to_empty``:
  each rank allocates only its own rows of every parameter (``Shard(0)``: rank r owns rows
  ``r*ceil(n/W) ..`` of an n-row parameter). Under ZeRO-3 the module is built inside
  ``deepspeed.zero.Init``, which partitions each parameter as it is created (one parameter
  whole at a time, never the model).
- **loading**, by input format:

  - a fastmine safetensors file (``pretrain``'s, a mined file, ``fastmine convert``'s output):
    every rank reads only the rows it owns (safetensors' lazy slices);
  - anything else (an NVIDIA pickle, a rosinality or torch checkpoint, a foreign safetensors
    file with ``source.arch``): rank 0 reads the file as data and sends each tensor's slices to
    their owners one tensor at a time (a scatter), dropping the tensor once sent, so rank 0
    holds one copy of the weights, never two.

  Buffers (StyleGAN's ``w_avg``, filters, noise constants) are small and replicated: read whole.
  To shard a large pickle or checkpoint cheaply, ``fastmine convert`` it once.
- **export**: :func:`fastmine.files.atomic_save_safetensors` writes tensor by tensor; each rank
  sends its part of a sharded tensor to rank 0 in turn, which appends it to the file
  (:func:`fastmine.distributed.deferred_state`): rank 0 holds its shard plus one other part.

What is sharded is each block of :func:`fastmine.distributed.blocks_of` (FSDP2 gathers one
block for its forward, then frees it), so the largest block, gathered whole, bounds what
sharding saves.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from . import distributed, files
from .samplers import GeneratorAdapter
from .zoo import StyleGANSource


# --------------------------------------------------------------------------- the recipe
def _recipe(source, src_cfg) -> tuple:
    """(build, latent_spec, lazy reader or None, state dict or None, calibrate) of ``source``.

    A fastmine file: from its header, with a lazy reader (every rank). Any other file: read
    whole as data (call on rank 0 only)."""
    options = {k: getattr(src_cfg, k, None) for k in ("latent", "truncation_psi", "truncation_cutoff", "noise_mode",
                                                      "noise")}
    options = {k: v for k, v in options.items() if v is not None}
    info = files.read_info(source)
    if info is not None:
        if "generator" not in info:
            raise ValueError(f"{str(source)!r} is a fastmine file without a generator (kind {info.get('kind')!r}); "
                             "dist.shard loads a single-generator model file")
        g = info["generator"]
        build, latent_spec = g["build"], g["latent_spec"]
        if options and "family" in build.get("arch", {}):  # a StyleGAN source mined in another space
            build, latent_spec = {"arch": {**build["arch"], **options}}, None
        return build, latent_spec, files.LazyTensors(source, "generator"), None, False
    weights = files.read_weights(source, "generator", getattr(src_cfg, "key", None))
    if weights.family is not None:  # a StyleGAN network: its weights live under .net, w_std is measured
        with torch.device("meta"):  # only to validate the options and write its arch dict
            arch = StyleGANSource(weights.family, weights.kwargs, **options).arch()
        state = {f"net.{k}": v for k, v in weights.state.items()}
        return {"arch": arch}, None, None, state, True
    arch = getattr(src_cfg, "arch", None)
    if arch is None or isinstance(arch, nn.Module):
        raise ValueError(f"{str(source)!r} is a plain state dict: dist.shard builds the generator from a "
                         "description, so pass source.arch (an arch dict or a 'package.module:function' factory)")
    build = {"factory": files.register_factory(arch), "kwargs": {}} if isinstance(arch, str) else {"arch": dict(arch)}
    return build, getattr(src_cfg, "latent_spec", None), None, dict(weights.state), False


# --------------------------------------------------------------------------- loading
def load_generator(source, src_cfg, shard: str, device, ds_config: dict | None = None,
                   on_phase=None) -> GeneratorAdapter:
    """The frozen generator of ``source`` (any file :func:`fastmine.files.load_generator` reads),
    built on the meta device, sharded with ``shard`` ("fsdp2" | "zero3") over all ranks and
    loaded shard by shard (module docstring). A collective: every rank calls it.
    ``on_phase(name)``: called after "construction" and after "loading" (the benchmark's
    memory per phase)."""
    if not distributed.is_initialized():
        raise ValueError(f"dist.shard={shard} needs a process group: launch with torchrun or accelerate launch "
                         "(launch/README.md)")
    world, rank = distributed.world_size(), distributed.rank()
    recipe = failure = None
    if rank == 0 or files.read_info(source) is not None:
        try:
            recipe = _recipe(source, src_cfg)
        except (ValueError, FileNotFoundError) as e:  # every rank must hear of it, not wait in the broadcast
            failure = e
    shared = [failure if recipe is None else (recipe[0], recipe[1], recipe[4], recipe[2] is not None)]
    torch.distributed.broadcast_object_list(shared, src=0)
    if isinstance(shared[0], Exception):
        raise failure or shared[0]
    build, latent_spec, calibrate, lazy = shared[0]
    reader, state = (recipe[2], recipe[3]) if recipe is not None else (None, None)
    trust = bool(getattr(src_cfg, "trust_code", False))
    device = torch.device(device)
    if shard == "fsdp2":
        with torch.device("meta"):  # shapes only: no rank allocates the model
            module = files.build_module(build, "generator", source, trust)
        distributed.fsdp2_shard(module, device)
        module.to_empty(device=device)  # each rank allocates its own rows of every parameter
    elif shard == "zero3":
        deepspeed = distributed.import_deepspeed(device)
        config = distributed.zero3_config(ds_config)
        with deepspeed.zero.Init(config_dict_or_path=config):
            module = files.build_module(build, "generator", source, trust)
    else:
        raise ValueError(f"sharded loading needs dist.shard fsdp2 or zero3, got {shard!r}")
    if on_phase is not None:
        on_phase("construction")
    targets = _targets(module)
    names = sorted(targets)
    available = reader.names if lazy else (list(state) if state is not None else None)
    problem = [None]
    if available is not None:  # lazy: every rank checks its own reader; otherwise rank 0 checks
        missing = sorted(set(names) - set(available) - ({"w_std"} if calibrate else set()))
        unexpected = sorted(set(available) - set(names))
        if missing or unexpected:
            problem = [f"the generator weights in {str(source)!r} do not fit the architecture: missing "
                       f"{missing[:5]}, unexpected {unexpected[:5]}"]
    if not lazy:
        torch.distributed.broadcast_object_list(problem, src=0)
    if problem[0]:
        raise ValueError(problem[0])
    with torch.no_grad():
        for name in names:
            if calibrate and name == "w_std":
                continue
            if lazy:
                _read_own(targets[name], name, reader, rank, world)
            else:
                _receive_own(targets[name], name, state, rank, world)
    if reader is not None:
        reader.close()
    if on_phase is not None:
        on_phase("loading")
    adapter = GeneratorAdapter(module, files.latent_spec_of(module, latent_spec), build=build, frozen=True)
    if shard == "zero3":
        distributed.zero3_initialize(adapter, ds_config, device)
    module._fastmine_shard = shard
    if calibrate:  # every rank runs the (sharded) mapping network on the same samples
        with torch.no_grad():  # FSDP2 initialises its hooks from the root's first forward, not the mapping's
            adapter({k: torch.zeros(1, *v.shape, device=device) for k, v in adapter.latent_spec.items()})
        module.calibrate()
    return adapter


def _targets(module: nn.Module) -> dict:
    """name -> the tensor of this rank to fill (a parameter's local shard or a buffer)."""
    out = dict(module.named_buffers())
    out.update(module.named_parameters())
    return out


def owned_rows(n: int, rank: int, world: int) -> tuple:
    """Rows of an n-row parameter that FSDP2's ``Shard(0)`` gives ``rank``: torch.chunk's split."""
    per = math.ceil(n / world) if n else 0
    start = min(rank * per, n)
    return start, min(start + per, n)


def _zero3_range(p, rank: int) -> tuple:
    """Flat elements of a ZeRO-3 parameter this rank stores (its partition, padding excluded)."""
    per = p.ds_tensor.numel()
    start = min(rank * per, p.ds_numel)
    return start, min(start + per, p.ds_numel)


def _read_own(target, name, reader: files.LazyTensors, rank: int, world: int):
    if hasattr(target, "to_local"):  # FSDP2: this rank's rows
        local = target.to_local()
        start, stop = owned_rows(target.shape[0], rank, world)
        if stop > start:
            local.copy_(reader.rows(name, start, stop))
    elif hasattr(target, "ds_tensor"):  # ZeRO-3: a flat range, read through the rows that hold it
        start, stop = _zero3_range(target, rank)
        if stop > start:
            shape = reader.shape(name)
            row = math.prod(shape[1:]) if len(shape) > 1 else 1
            first, last = start // row, -(-stop // row)
            flat = (reader.rows(name, first, last) if shape else reader.get(name)).reshape(-1)
            target.ds_tensor.data[:stop - start].copy_(flat[start - first * row:stop - first * row])
    else:
        target.copy_(reader.get(name))


def _receive_own(target, name, state, rank: int, world: int):
    """Rank 0 sends each rank its part of ``state[name]`` (then drops it); the others receive."""
    whole = state.pop(name) if rank == 0 else None
    if hasattr(target, "to_local"):
        n = target.shape[0]
        per = math.ceil(n / world)
        local = target.to_local()
        buf = torch.empty((per, *target.shape[1:]), dtype=target.dtype, device=local.device)
        parts = None
        if rank == 0:
            padded = torch.zeros((per * world, *target.shape[1:]), dtype=target.dtype)
            padded[:n] = whole
            parts = list(padded.to(local.device).chunk(world))
        torch.distributed.scatter(buf, parts, src=0)
        local.copy_(buf[:local.shape[0]])
    elif hasattr(target, "ds_tensor"):
        per = target.ds_tensor.numel()
        buf = torch.empty(per, dtype=target.dtype, device=target.ds_tensor.device)
        parts = None
        if rank == 0:
            padded = torch.zeros(per * world, dtype=target.dtype)
            padded[:target.ds_numel] = whole.reshape(-1)
            parts = list(padded.to(buf.device).chunk(world))
        torch.distributed.scatter(buf, parts, src=0)
        target.ds_tensor.data.copy_(buf[:target.ds_tensor.numel()])
    else:
        buf = whole.to(target.device, target.dtype) if rank == 0 else torch.empty_like(target)
        torch.distributed.broadcast(buf, src=0)
        target.copy_(buf)


def wants_sharded_load(source) -> bool:
    """Whether ``source`` names a file (not a module or folder) that :func:`load_generator` builds."""
    return isinstance(source, (str, Path)) and Path(source).is_file()
