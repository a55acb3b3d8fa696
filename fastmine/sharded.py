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

from . import distributed, files, zoo
from .samplers import GeneratorAdapter


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
        build, latent_spec = files.stored_generator(info, options)
        return build, latent_spec, files.LazyTensors(source, "generator"), None, False
    weights = files.read_weights(source, "generator", getattr(src_cfg, "key", None))
    if weights.family is not None:  # a zoo network: its weights live under .net; a StyleGAN's w_std is measured
        with torch.device("meta"):  # only to validate the options and write its arch dict
            arch = zoo.build_source({"family": weights.family, "kwargs": weights.kwargs, **options}).arch()
        state = {f"net.{k}": v for k, v in weights.state.items()}
        return {"arch": arch}, None, None, state, weights.family in zoo.STYLEGAN_FAMILIES
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


def _read_own(target, name, reader: files.LazyTensors, rank: int, world: int):
    """This rank's part of ``name`` (a parameter's shard, read through the rows that hold it), or
    the whole tensor (a buffer, a replicated parameter)."""
    part = distributed.shard_part(target)
    if part is None:
        target.copy_(reader.get(name))
        return
    local, per = part
    shape = reader.shape(name)
    start, stop = distributed.part_range(math.prod(shape), per, rank)
    if stop > start:
        row = math.prod(shape[1:])  # 1 for a 1-d tensor; FSDP2's parts are whole rows, ZeRO-3's need not be
        first, last = start // row, -(-stop // row)
        flat = (reader.rows(name, first, last) if shape else reader.get(name)).reshape(-1)
        local[:stop - start].copy_(flat[start - first * row:stop - first * row])


def _receive_own(target, name, state, rank: int, world: int):
    """Rank 0 sends each rank its part of ``state[name]`` (then drops it); the others receive."""
    whole = state.pop(name) if rank == 0 else None
    part = distributed.shard_part(target)
    if part is None:
        buf = whole.to(target.device, target.dtype) if rank == 0 else torch.empty_like(target)
        torch.distributed.broadcast(buf, src=0)
        target.copy_(buf)
        return
    local, per = part
    buf = torch.empty(per, dtype=local.dtype, device=local.device)
    parts = None
    if rank == 0:
        flat = whole.to(local.device, local.dtype).reshape(-1)
        parts = list(distributed.padded_part(flat, per * world).chunk(world))
    torch.distributed.scatter(buf, parts, src=0)
    start, stop = distributed.part_range(math.prod(target.ds_shape if hasattr(target, "ds_shape") else target.shape),
                                         per, rank)
    local[:stop - start].copy_(buf[:stop - start])


def wants_sharded_load(source) -> bool:
    """Whether ``source`` names a file (not a module or folder) that :func:`load_generator` builds."""
    return isinstance(source, (str, Path)) and Path(source).is_file()
