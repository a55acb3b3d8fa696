"""Nothing executes from a model file: a factory named in a file's metadata runs only when it
is fastmine's own, registered in code, or the caller passed trust_code for that file."""
import sys
import textwrap

import pytest
import torch
from torch import nn

import fastmine as fm
from fastmine.cli import main
from fastmine.files import save_sampler
from fastmine.samplers import GeneratorAdapter, Sampler


@pytest.fixture
def evil(tmp_path, monkeypatch):
    """A module whose import writes a marker file, and a model file naming its factory."""
    marker = tmp_path / "ran.txt"
    pkg = tmp_path / "pkgs"
    pkg.mkdir()
    (pkg / "evil_factory.py").write_text(textwrap.dedent(f"""
        import pathlib
        from torch import nn
        pathlib.Path({str(marker)!r}).write_text("imported")

        def make(width=4):
            pathlib.Path({str(marker)!r}).write_text("called")
            return nn.Linear(2, width)
    """))
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop("evil_factory", None)
    adapter = GeneratorAdapter(nn.Linear(2, 4), {"z": ((2,), "normal")}, build={"factory": "evil_factory:make",
                                                                                "kwargs": {"width": 4}})
    path = tmp_path / "model.safetensors"
    critic = nn.Linear(4, 1)
    save_sampler(path, Sampler(adapter), critic=critic, critic_build={"factory": "evil_factory:make",
                                                                      "kwargs": {"width": 1}})
    assert not marker.exists()
    yield path, marker
    sys.modules.pop("evil_factory", None)


def _refused(call, marker):
    with pytest.raises(fm.UntrustedCodeError) as info:
        call()
    message = str(info.value)
    assert "evil_factory:make" in message and "trust_code=True" in message and "nothing was run" in message
    assert not marker.exists() and "evil_factory" not in sys.modules  # not even imported
    return message


def test_every_loader_refuses_a_factory_named_by_a_file(evil):
    path, marker = evil
    msg = _refused(lambda: fm.load_generator(str(path)), marker)
    assert "generator" in msg and "{'width': 4}" in msg  # says what would have run
    _refused(lambda: fm.load_sampler(path), marker)
    _refused(lambda: fm.load_any(path), marker)
    assert "critic" in _refused(lambda: fm.load_critic(path), marker)


def test_allow_pickle_does_not_open_the_door(evil):
    path, marker = evil
    _refused(lambda: fm.load_generator(str(path), allow_pickle=True), marker)


def test_trust_code_or_registration_runs_the_factory(evil):
    path, marker = evil
    G = fm.load_generator(str(path), trust_code=True)
    assert marker.read_text() == "called" and isinstance(G.module, nn.Linear)
    marker.unlink()
    sys.modules.pop("evil_factory", None)
    fm.register_factory("evil_factory:make")
    try:
        again = fm.load_sampler(path)
        torch.testing.assert_close(again.generator.module.weight, G.module.weight)
    finally:
        fm.files._TRUSTED_FACTORIES.discard("evil_factory:make")


def test_cli_refuses_in_one_line_and_writes_nothing(evil, tmp_path, capsys, monkeypatch):
    path, marker = evil
    monkeypatch.chdir(tmp_path)
    assert main(["sample", str(path), "--out", "grid.png"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "fastmine sample: error:" in err and "trust_code" in err
    assert not (tmp_path / "grid.png").exists() and not marker.exists()

    assert main(["mine", f"source.generator={path}", "train.steps=1", "out_dir=runs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "evil_factory:make" in err
    assert not (tmp_path / "runs").exists() and not marker.exists()


def test_fastmines_own_factories_need_no_opt_in(tmp_path):
    images, labels = fm.load_digits(labels=[0, 1], size=8, limit=20, return_labels=True)
    result = fm.pretrain_conditional(images, labels, steps=1, batch_size=8, latent_dim=4, embed_dim=2, width=8,
                                     progress=False, run_dir=tmp_path / "cond")
    G = fm.load_generator(str(tmp_path / "cond" / "model.safetensors"))
    assert type(G.module).__name__ == "ConditionalDCGAN"
    assert G.module.embedding.weight.shape == result.sampler.generator.module.embedding.weight.shape
