"""Every CLI command end to end on tiny settings, and the saved result in a fresh process."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from budgets import QUICK_INVERSION, QUICK_INVERSION_ARGS
from PIL import Image

import fastmine as fm
from fastmine.cli import main
from fastmine.config import SECTIONS
from fastmine.files import load_any, load_generator
from fastmine.methods import methods_of

TINY = ["data.size=8", "data.limit=20", "train.steps=3", "train.batch_size=8", "train.n_critic=1",
        "log.progress=false", "log.log_every=1", "log.sample_every=2", "log.checkpoint_every=2",
        *QUICK_INVERSION_ARGS]


def _run(tmp_path, *args):
    assert main([*args, f"out_dir={tmp_path}", *TINY]) == 0


def _check_run(run, method):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == method
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(k in rows[0] for k in ("loss_critic", "loss_sampler", "penalty", "wasserstein"))
    grids = sorted((run / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["step_0000002.png", "step_0000003.png"]
    assert Image.open(grids[-1]).size[0] > 8
    assert (run / "checkpoints" / "latest.json").is_file()
    assert (run / "model.safetensors").is_file()


def test_pretrain_then_every_command(tmp_path):
    _run(tmp_path, "pretrain", "name=src", "data.limit=null", "model.latent_dim=8", "model.width=8")
    source = tmp_path / "src" / "model.safetensors"
    _check_run(tmp_path / "src", "scratch")
    _run(tmp_path, "pretrain", "name=src_b", "data.labels=[5,6,7]", "data.limit=null", "model.latent_dim=8",
         "model.width=8")
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
    sources = f"source.generators=[{source},{tmp_path / 'src_b' / 'model.safetensors'}]"
    _run(tmp_path, "mine-multi", sources, "name=multi")
    _check_run(tmp_path / "multi", "minegan_multi")
    probs = json.loads((tmp_path / "multi" / "selector.json").read_text())["selector_probs"]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-6
    _run(tmp_path, "fuse", sources, "name=fused", "fusion.pool=64")
    _check_run(tmp_path / "fused", "fuse")
    assert load_generator(tmp_path / "fused" / "model.safetensors") is not None  # ready to be mined
    # a command refuses a method it does not run
    assert main(["baseline", f"source.generator={source}", "method=minegan", f"out_dir={tmp_path}", *TINY]) == 2

    for name in ("m", "multi", "fused"):  # a single, a multi-generator and a fused model file
        out = tmp_path / f"grid_{name}.png"
        assert main(["sample", str(tmp_path / name / "model.safetensors"), "--n", "16", "--out", str(out)]) == 0
        assert Image.open(out).size == (8 * (4 * 9 + 1), 8 * (4 * 9 + 1))  # 4x4 tiles of 8 px, 1 px gaps, x8
    out = tmp_path / "samples.pt"
    assert main(["sample", str(tmp_path / "m" / "model.safetensors"), "--n", "5", "--out", str(out)]) == 0
    assert torch.load(out).shape == (5, 1, 8, 8)

    assert main(["eval", str(tmp_path / "m"), "--repeats", "1"]) == 0
    report = (tmp_path / "m" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| minegan_noft |"))
    assert all(math.isfinite(float(cell.split()[0])) for cell in row.strip("|").split("|")[1:])
    assert "labels 9" in report  # the target share of the run's one-digit target


def test_pretrain_conditional_through_the_cli(tmp_path):
    _run(tmp_path, "pretrain", "method=pretrain_conditional", "name=cond", "data.labels=[3,5]", "data.limit=null",
         "model.latent_dim=8", "model.width=8")
    _check_run(tmp_path / "cond", "pretrain_conditional")
    source = tmp_path / "cond" / "model.safetensors"
    assert set(load_generator(source).latent_spec) == {"z", "class_embedding"}
    # conditional mining: the miner learns the noise and the class embedding
    _run(tmp_path, "mine", f"source.generator={source}", "name=cond_mined", "data.labels=[5]")
    _check_run(tmp_path / "cond_mined", "minegan_noft")
    assert load_any(tmp_path / "cond_mined" / "model.safetensors").sample(4, seed=0).shape == (4, 1, 8, 8)


def test_help_of_a_training_command_lists_its_methods_and_the_config_sections(capsys):
    with pytest.raises(SystemExit) as e:
        main(["mine", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for method in methods_of("mine"):
        assert f"  {method}: " in text
    for section in SECTIONS:
        assert f"  {section}: " in text
    assert "gp_weight" in text and "log_every" in text


def test_minegan_unfreezes_the_generator_only_after_mining(tmp_path, digits_source):
    target = fm.load_digits(labels=[9], limit=20, size=8)
    G = fm.load_generator(digits_source)
    before = {k: v.clone() for k, v in G.module.state_dict().items()}
    seen = []

    def watch(trainer, step):
        seen.append((step, any(p.requires_grad for p in trainer.sampler.generator.parameters())))

    result = fm.train(G, target, method="minegan", steps=6, mine_steps=3, log_every=1, batch_size=8,
                      progress=False, callbacks=[watch], invert_cfg=QUICK_INVERSION)
    assert seen == [(1, False), (2, False), (3, False), (4, True), (5, True), (6, True)]
    after = result.sampler.generator.module.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "finetuning must change the generator"


def test_saved_sampler_reloads_in_a_fresh_process(tmp_path, digits_source):
    target = fm.load_digits(labels=[9], limit=20, size=8)
    result = fm.mine(digits_source, target, steps=3, batch_size=8, progress=False, invert_cfg=QUICK_INVERSION)
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
