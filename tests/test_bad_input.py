"""Bad input, table-driven: each case is one line naming the problem (exit code 2, no
traceback) and leaves every file in the working folder exactly as it was."""
import pytest

from fastmine.cli import main

SRC = "{src}"  # the shared digits source (8 px, 32-d latent)
TARGET = ["data.size=8", "train.steps=1", "log.progress=false"]

CASES = [
    # (argv, text the one line must contain)
    (["mine", "train.lr=abc"], "config key 'train.lr' must be a number"),
    (["mine", "train.steps=2.5"], "config key 'train.steps' must be an integer"),
    (["mine", "train.steps=abc"], "config key 'train.steps' must be an integer"),
    (["mine", "train.steps=-5"], "config key 'train.steps' must be positive"),
    (["mine", "train.betas=[0.5]"], "train.betas must be two numbers"),
    (["mine", "log.checkpoint_every=0"], "config key 'log.checkpoint_every' must be positive"),
    (["mine", "data.size=0"], "config key 'data.size' must be positive"),
    (["mine", "train.batch_size=-3"], "config key 'train.batch_size' must be positive"),
    (["mine", "train=5"], "config key 'train' is a section"),
    (["mine", "train.n_critic=0"], "config key 'train.n_critic' must be positive"),
    (["mine", "loss.gp_weight=-1"], "loss.gp_weight must be >= 0"),
    (["mine", "train.gp_weight=5"], "'train.gp_weight' is now 'loss.gp_weight'"),
    (["mine", "name=../escape"], "name must be a plain folder name"),
    (["mine", f"source.generator={SRC}", "device=cuda", *TARGET], "sees no CUDA device"),
    (["mine", "source.generator=models/g:v2.safetensors", *TARGET], "does not exist"),
    (["mine", "bad.yaml"], "is not valid YAML"),
    (["mine", f"source.generator={SRC}", "source.latent_spec={z: {shape: [7]}}", *TARGET],
     "the sampler fails on two seeds"),
    (["mine", f"source.generator={SRC}", *TARGET[1:]], "set data.size=8"),
    (["mine", f"source.generator={SRC}", "method=fuse", *TARGET], "runs method minegan_noft or minegan"),
    (["sample", SRC, "--n", "0"], "must be at least 1"),
    (["demo", "--seeds", "0"], "must be at least 1"),
    (["sample", "no/such/model.safetensors"], "does not exist"),
    (["mine", f"source.generator={SRC}", "out_dir=runs/keep.txt", *TARGET], "Not a directory"),  # an OSError
]


def _snapshot(root):
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(argv, expected, digits_source, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("train:\n  steps: [1, 2\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "keep.txt").write_text("an existing file")
    before = _snapshot(tmp_path)
    argv = [a.replace(SRC, str(digits_source)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors (usage line + message)
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    if lines[0].startswith("usage:"):  # argparse prints its usage above the one line
        lines = [line for line in lines if line.startswith("fastmine")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert _snapshot(tmp_path) == before
