"""Generators that never exist whole on one process (fastmine.sharded): built on the meta
device, sharded, each rank loading only its slices; exported tensor by tensor.

2 gloo processes (this file started as a script by ``test_distributed.run_ranks``) against
one process: the same slices, the same outputs, the same exported bytes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_distributed import (
    GEN_ARCH,
    PER_RANK_BATCH,
    assert_same_run,
    has_deepspeed,
    make_problem,
    read_metrics,
    run_ranks,
)
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fastmine as fm
from fastmine.distributed import part_range
from fastmine.files import Deferred, atomic_save_safetensors, convert
from fastmine.nets import build_generator

HERE = Path(__file__).resolve()
FIXTURES = HERE.parent / "fixtures" / "official"
MLP = {"type": "mlp", "latent_dim": 8, "out_dim": 48, "width": 64, "depth": 3}  # largest weight 64 x 64
MINE_STEPS = 3


def _storage(t):
    t = getattr(t, "_local_tensor", t)  # a DTensor: what this rank stores
    return t.untyped_storage()


class LargestAllocation(TorchDispatchMode):
    """Bytes of the largest new storage any op allocates off the meta device (a memory hook).
    Views and in-place ops allocate nothing (their output shares an input's storage); nor does
    ``set_`` adopting a storage made outside torch's ops: safetensors' lazy slice maps the file
    (its pages are read only where the slice is, as the RSS benchmark confirms)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.set_.source_Storage:
            return out
        inputs = {_storage(t).data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)
                  and t.device.type != "meta"}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta" and _storage(t).data_ptr() not in inputs:
                self.largest = max(self.largest, _storage(t).nbytes())
        return out


def write_files(folder: Path) -> dict:
    """The source files of the cases: name -> (file, source settings)."""
    torch.manual_seed(0)
    mlp = fm.GeneratorAdapter(build_generator(MLP), {"z": ((8,), "normal")}, build={"arch": MLP})
    fm.save_sampler(folder / "mlp.safetensors", fm.Sampler(mlp))
    torch.save({"netG_state_dict": build_generator(GEN_ARCH).state_dict()}, folder / "dcgan.pt")
    convert(FIXTURES / "stylegan2_ada_tiny.pkl", folder / "sg2.safetensors", latent="w+")
    return {"mlp": (folder / "mlp.safetensors", {}),
            "dcgan_pt": (folder / "dcgan.pt", {"arch": GEN_ARCH}),
            "sg2_converted": (folder / "sg2.safetensors", {}),
            "sg2_pickle": (FIXTURES / "stylegan2_ada_tiny.pkl", {"latent": "z"})}


def probe(adapter, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = {k: torch.randn(3, *v.shape, generator=g) for k, v in adapter.latent_spec.items()}
    with torch.no_grad():
        return adapter(latents)


# --------------------------------------------------------------------------- workers
def worker_load(args):
    from fastmine import distributed, sharded
    from fastmine.config import DistConfig, SourceConfig

    distributed.setup(DistConfig(timeout_s=120), "cpu")
    rank, world = distributed.rank(), distributed.world_size()
    report = {}
    for case in args["cases"]:
        path, kw = args["files"][case["name"]]
        with LargestAllocation() as log:
            adapter = sharded.load_generator(path, SourceConfig(**kw), case["shard"], "cpu", None)
        full = fm.load_generator(path, **kw)  # the whole generator, after the measurement
        full_state = full.module.state_dict()
        slices_equal, local_max, full_max = {}, 0, 0
        for name, p in adapter.module.named_parameters():
            whole = full_state[name]
            full_max = max(full_max, whole.numel() * whole.element_size())
            if hasattr(p, "to_local"):
                local = p.to_local()
                a, b = part_range(whole.shape[0], -(-whole.shape[0] // world), rank)  # rows
                slices_equal[name] = torch.equal(local, whole[a:b])
            elif hasattr(p, "ds_tensor"):
                local = p.ds_tensor
                per = local.numel()
                a, b = min(rank * per, whole.numel()), min((rank + 1) * per, whole.numel())
                slices_equal[name] = torch.equal(local.reshape(-1)[:b - a], whole.reshape(-1)[a:b])
            else:  # replicated (a scalar FSDP2 cannot shard)
                local = p
                slices_equal[name] = torch.equal(p.detach(), whole)
            local_max = max(local_max, local.numel() * local.element_size())
        out = Path(args["out"]) / f"{case['name']}-{case['shard']}.safetensors"
        fm.save_sampler(out, distributed.exportable_sampler(fm.Sampler(adapter)), write=rank == 0)
        report[f"{case['name']}-{case['shard']}"] = {
            "largest_allocation": log.largest, "largest_local_param": local_max, "largest_full_param": full_max,
            "slices_equal": slices_equal, "output_max_diff": float((probe(adapter) - probe(full)).abs().max()),
            "sharded_kind": distributed.sharded_kind(adapter.module)}
    Path(args["out"], f"report-{rank}.json").write_text(json.dumps(report))


def worker_mine(args):
    from fastmine import distributed
    from fastmine.config import DistConfig

    acc = distributed.setup(DistConfig(timeout_s=120), "cpu")
    for shard in args["shards"]:
        mine_from_file(args["source"], Path(args["out"]) / shard, PER_RANK_BATCH, acc, shard)


def mine_from_file(source, run_dir, batch_size, accelerator=None, shard="none"):
    from fastmine.config import ModelConfig

    _, target = make_problem()
    return fm.mine(str(source), target, model_cfg=ModelConfig(width=8), steps=MINE_STEPS, batch_size=batch_size,
                   n_critic=2, log_every=1, progress=False, sample_every=10_000, device="cpu", seed=3,
                   run_dir=run_dir, accelerator=accelerator, dist_cfg={"streams": 2, "shard": shard},
                   miner_cfg={"init": "normal"})  # no inversion: its 700 optimiser steps amplify thread-count noise


# --------------------------------------------------------------------------- tests
def test_streamed_file_is_byte_identical_to_safetensors(tmp_path):
    """The tensor-by-tensor writer against safetensors' own: every dtype, odd names, metadata."""
    g = torch.Generator().manual_seed(0)
    tensors = {f"b{i}.w{'é' if i == 3 else ''}": (torch.randn(3, i + 1, generator=g) * 9).to(d)
               for i, d in enumerate([torch.bool, torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16,
                                      torch.int32, torch.float32, torch.float64, torch.int64])}
    tensors |= {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "a": torch.randn(5, 4, generator=g).t()}
    metadata = {"fastmine": {"kind": "sampler", "note": "ü\n\"x\""}}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "ref.safetensors"),
              metadata={"fastmine": json.dumps(metadata["fastmine"])})
    fetched = []
    deferred = {k: Deferred(v.dtype, tuple(v.shape), lambda k=k, v=v: fetched.append(k) or v) if i % 2 else v
                for i, (k, v) in enumerate(tensors.items())}
    atomic_save_safetensors(deferred, tmp_path / "ours.safetensors", metadata)
    assert (tmp_path / "ours.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert len(fetched) == len(tensors) // 2
    atomic_save_safetensors(deferred, tmp_path / "none.safetensors", metadata, write=False)  # fetches, writes nothing
    assert not (tmp_path / "none.safetensors").exists() and len(fetched) == 2 * (len(tensors) // 2)
    assert not list(tmp_path.glob(".*tmp-*"))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 17])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_parts_of_rows_follow_fsdp2_chunks(n, world):
    chunks = torch.arange(n).chunk(world) if n else []
    for r in range(world):
        a, b = part_range(n, -(-n // world), r)
        expect = chunks[r].tolist() if r < len(chunks) else []
        assert list(range(a, b)) == expect, (n, world, r)


@pytest.fixture(scope="module")
def sharded_loads(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded_load")
    files = {k: (str(p), kw) for k, (p, kw) in write_files(folder).items()}
    cases = [{"name": name, "shard": "fsdp2"} for name in files]
    if has_deepspeed():
        cases += [{"name": "mlp", "shard": "zero3"}, {"name": "dcgan_pt", "shard": "zero3"}]
    run_ranks("load", {"out": str(folder), "files": files, "cases": cases}, timeout=600, script=HERE)
    reports = [json.loads((folder / f"report-{r}.json").read_text()) for r in range(2)]
    return folder, files, cases, reports


@pytest.mark.slow
def test_sharded_load_gives_each_rank_its_slices_and_the_same_outputs(sharded_loads):
    _, _, cases, reports = sharded_loads
    for case in cases:
        key = f"{case['name']}-{case['shard']}"
        for rank, report in enumerate(reports):
            rep = report[key]
            assert rep["sharded_kind"] == case["shard"]
            bad = [k for k, same in rep["slices_equal"].items() if not same]
            assert not bad, (key, rank, bad)
            assert rep["output_max_diff"] == 0.0, (key, rank, rep["output_max_diff"])


@pytest.mark.slow
def test_no_rank_allocates_a_whole_parameter_when_reading_a_fastmine_file(sharded_loads):
    """fsdp2 from a fastmine file: built on the meta device and read as slices, so the largest
    storage any op makes is a local shard (or a small replicated buffer), never the largest
    whole weight. Read from a torch checkpoint, only rank 0 holds whole tensors (the file)."""
    _, _, _, reports = sharded_loads
    for rank, report in enumerate(reports):
        rep = report["mlp-fsdp2"]
        assert rep["largest_allocation"] <= rep["largest_local_param"] < rep["largest_full_param"], (rank, rep)
        conv = report["sg2_converted-fsdp2"]
        assert conv["largest_allocation"] < conv["largest_full_param"], (rank, conv)
    rep = reports[1]["dcgan_pt-fsdp2"]
    assert rep["largest_allocation"] <= rep["largest_local_param"] < rep["largest_full_param"], rep
    if "mlp-zero3" in reports[1]:  # deepspeed.zero.Init makes each parameter whole once, then partitions it
        rep = reports[1]["mlp-zero3"]
        assert rep["largest_allocation"] <= rep["largest_full_param"] and rep["largest_local_param"] < rep[
            "largest_full_param"], rep


@pytest.mark.slow
def test_export_from_shards_is_byte_identical_to_one_process(sharded_loads):
    folder, files, cases, _ = sharded_loads
    for case in cases:
        path, kw = files[case["name"]]
        one = folder / f"{case['name']}-one.safetensors"
        fm.save_sampler(one, fm.Sampler(fm.load_generator(path, **kw)))
        two = folder / f"{case['name']}-{case['shard']}.safetensors"
        assert two.read_bytes() == one.read_bytes(), case


@pytest.mark.slow
def test_mining_from_a_sharded_load_matches_one_process(tmp_path):
    """2 processes loading the generator shard by shard (fsdp2, zero3) against 1 process with the
    same global batch: the same losses, the same exported generator bytes, the trained miner and
    critic equal to float tolerance (their gradients are averaged in another order)."""
    source = tmp_path / "dcgan.safetensors"
    adapter, _ = make_problem()
    fm.save_sampler(source, fm.Sampler(adapter))
    mine_from_file(source, tmp_path / "one", 2 * PER_RANK_BATCH)
    shards = ["fsdp2"] + (["zero3"] if has_deepspeed() else [])
    run_ranks("mine", {"source": str(source), "out": str(tmp_path), "shards": shards}, timeout=600, script=HERE)
    one = tmp_path / "one" / "model.safetensors"
    for shard in shards:
        run = tmp_path / shard
        two = run / "model.safetensors"
        assert_same_run(read_metrics(run), read_metrics(tmp_path / "one"), {}, {})
        with safe_open(str(one), "pt") as a, safe_open(str(two), "pt") as b:
            assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
            for k in a.keys():
                if k.startswith("generator."):
                    assert torch.equal(a.get_tensor(k), b.get_tensor(k)), (shard, k)
                else:
                    torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), rtol=1e-4, atol=1e-6)
        head = lambda p: p.read_bytes()[:8 + int.from_bytes(p.read_bytes()[:8], "little")]
        assert head(one) == head(two)  # the same layout: names, shapes, offsets, metadata


def test_sharded_load_errors_name_the_problem(tmp_path):
    from fastmine.config import SourceConfig
    from fastmine.sharded import load_generator

    with pytest.raises(ValueError, match="needs a process group"):
        load_generator(tmp_path / "x.safetensors", SourceConfig(), "fsdp2", "cpu")


if __name__ == "__main__":
    globals()[f"worker_{sys.argv[1]}"](json.loads(sys.argv[2]))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
