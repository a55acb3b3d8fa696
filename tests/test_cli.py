"""Every CLI command end to end on tiny settings, and the saved result in a fresh process."""
import json
import os
import subprocess
import sys

import torch
import yaml
from PIL import Image

from fastmine.cli import main

TINY = ["data.size=8", "data.limit=20", "train.steps=3", "train.batch_size=8", "train.n_critic=1",
        "train.progress=false", "train.log_every=1", "train.sample_every=2", "train.checkpoint_every=2"]


def _run(tmp_path, *args):
    assert main([*args, f"out_dir={tmp_path}", *TINY]) == 0


def _check_run(run, method):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == method
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("loss_critic", "loss_sampler", "penalty", "wasserstein"))
    grids = sorted((run / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000003.png"]
    assert Image.open(grids[-1]).size[0] > 8
    assert (run / "checkpoints" / "latest.json").is_file()
    assert (run / "model.safetensors").is_file()


def test_pretrain_then_every_training_command(tmp_path):
    _run(tmp_path, "pretrain", "name=src", "data.limit=null", "model.latent_dim=8", "model.width=8")
    source = tmp_path / "src" / "model.safetensors"
    _check_run(tmp_path / "src", "scratch")
    _run(tmp_path, "mine", f"source.generator={source}", "name=m")
    _check_run(tmp_path / "m", "minegan_noft")
    _run(tmp_path, "mine", f"source.generator={source}", "name=mg", "method=minegan")
    _check_run(tmp_path / "mg", "minegan")
    _run(tmp_path, "finetune", f"source.generator={tmp_path / 'm' / 'model.safetensors'}", "name=ft")
    _check_run(tmp_path / "ft", "finetune")
    _run(tmp_path, "reprogram", f"source.generator={source}", "name=rp")
    _check_run(tmp_path / "rp", "reprogram")
    for method in ("transfergan", "freezed", "scratch"):
        _run(tmp_path, "baseline", f"source.generator={source}", f"name={method}", f"method={method}")
        _check_run(tmp_path / method, method)
    # a command refuses a method it does not run
    assert main(["baseline", f"source.generator={source}", "method=minegan", f"out_dir={tmp_path}", *TINY]) == 2

    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "m" / "model.safetensors"), "--n", "16", "--out", str(out)]) == 0
    assert Image.open(out).size == (8 * (4 * 9 + 1), 8 * (4 * 9 + 1))  # 4x4 tiles of 8 px, 1 px gaps, x8


def test_minegan_unfreezes_the_generator_only_after_mining(tmp_path, digits_source):
    import fastmine as fm

    target = fm.load_digits(labels=[9], limit=20, size=8)
    G = fm.load_generator(digits_source)
    before = {k: v.clone() for k, v in G.module.state_dict().items()}
    seen = []

    def watch(trainer, step):
        seen.append((step, any(p.requires_grad for p in trainer.sampler.generator.parameters())))

    result = fm.train(G, target, method="minegan", steps=6, mine_steps=3, log_every=1, batch_size=8,
                      progress=False, callbacks=[watch])
    assert seen == [(1, False), (2, False), (3, False), (4, True), (5, True), (6, True)]
    after = result.sampler.generator.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "finetuning must change the generator"


def test_saved_sampler_reloads_in_a_fresh_process(tmp_path, digits_source):
    import fastmine as fm

    target = fm.load_digits(labels=[9], limit=20, size=8)
    result = fm.mine(digits_source, target, steps=3, batch_size=8, progress=False)
    path = tmp_path / "mined.safetensors"
    fm.save_sampler(path, result.sampler)
    here = result.sampler.sample(16, seed=7)
    torch.save(here, tmp_path / "here.pt")
    code = ("import sys, torch, fastmine as fm; s = fm.load_sampler(sys.argv[1]); "
            "x = s.sample(16, seed=7); ref = torch.load(sys.argv[2]); "
            "assert torch.equal(x, ref), (x - ref).abs().max(); print('same')")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "here.pt")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "same"
