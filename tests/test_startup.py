"""Start-up budget (README "Start-up"): `fastmine --help`, every `fastmine COMMAND --help` and
argument errors answer without importing torch, and `import fastmine` with the whole public API
leaves the slow optional packages unloaded. Asserted on the modules loaded, never on timing."""
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastmine
from fastmine import cli
from fastmine.apps import commands
from fastmine.runfolder import RunFolderBusy
from fastmine.trainer import RunInterrupted

README = Path(__file__).resolve().parents[1] / "README.md"

# what `from fastmine import *` must not import (each is imported where it is used); none of
# them is loaded by `import torch` alone (checked below, so the list keeps meaning something)
HEAVY = ("sklearn", "scipy", "matplotlib", "torchmetrics", "torch_fidelity", "torchvision", "accelerate",
         "deepspeed", "tensorboard", "torch.utils.tensorboard", "torch.distributed.fsdp",
         "torch.distributed.tensor", "sympy", "pandas", "pytorch_pretrained_biggan")


def _in_fresh_python(code: str):
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# each case: argv, exit code, what its one error line says (None: help on stdout)
CLI_CASES = [(["--help"], 0, None)] + [([name, "--help"], 0, None) for name in cli.COMMANDS] + [
    (["nosuch"], 2, "argument command: invalid choice: 'nosuch'"),
    (["sample"], 2, "the following arguments are required: model"),
    (["convert", "in.pkl"], 2, "the following arguments are required: out"),
    (["mine", "train.steps"], 2, "override 'train.steps' is not key=value"),
    (["mine", "train.stepz=5"], 2, "unknown config key 'train.stepz'"),
    (["mine", "missing.yaml"], 2, "config file 'missing.yaml' does not exist"),
    (["mine", "method=scratch"], 2, "`fastmine mine` runs method"),
    (["invert", "G.safetensors", "data.labels"], 2, "override 'data.labels' is not key=value"),
    (["convert", "in.pkl", "out.safetensors", "train.steps=3"], 2, "takes source.* settings only, got train"),
    (["sample", "G.safetensors", "--n", "0"], 2, "argument --n: must be at least 1, got 0"),
]

RUN_CASES = f"""
import contextlib, io, json, sys
from fastmine.cli import main
out = []
for argv in {json.dumps([argv for argv, _, _ in CLI_CASES])}:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    out.append([rc, stdout.getvalue(), stderr.getvalue(), "torch" in sys.modules])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def cli_results():
    return _in_fresh_python(RUN_CASES)


def test_help_and_argument_errors_do_not_import_torch(cli_results):
    for (argv, code, message), (rc, stdout, stderr, torch_loaded) in zip(CLI_CASES, cli_results):
        assert not torch_loaded, f"`fastmine {' '.join(argv)}` imported torch"
        assert rc == code, (argv, rc, stderr)
        if message is None:
            assert stdout.startswith("usage: fastmine"), (argv, stdout[:200])
        else:
            assert len(stderr.strip().splitlines()[-1:]) == 1 and message in stderr, (argv, stderr)
            assert "Traceback" not in stderr


def test_a_training_command_help_lists_its_methods_and_the_config_keys(cli_results):
    stdout = cli_results[[argv for argv, _, _ in CLI_CASES].index(["mine", "--help"])][1]
    assert "minegan_noft:" in stdout and "minegan:" in stdout  # the methods `fastmine mine` runs
    assert re.search(r"^\s+train: steps, mine_steps, batch_size", stdout, flags=re.M)


def test_import_fastmine_loads_neither_torch_nor_the_library():
    loaded = _in_fresh_python("import sys, json, fastmine; print(json.dumps(sorted(sys.modules)))")
    assert "torch" not in loaded
    assert [m for m in loaded if m.startswith("fastmine.")] == []


def test_the_api_and_the_cli_commands_leave_the_slow_packages_unloaded():
    """In one fresh process: the README snippet's every `fm.NAME` resolves through the lazy
    names (test_readme.py runs the whole snippet, slowly), then the whole API loads without the
    slow packages."""
    snippet = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[0]
    names = sorted(set(re.findall(r"\bfm\.(\w+)", snippet)))
    assert "mine" in names and "load_generator" in names
    found = _in_fresh_python(
        f"import json, sys\nimport fastmine as fm\nresolved = [callable(getattr(fm, n)) for n in {names!r}]\n"
        "from fastmine import *\nimport fastmine.cli, fastmine.distributed, fastmine.sharded, fastmine.apps.commands\n"
        "print(json.dumps([resolved, sorted(sys.modules)]))")
    resolved, loaded = found[0], set(found[1])
    assert resolved == [True] * len(names)
    assert {"torch", "fastmine.api", "fastmine.runs", "fastmine.evaluation"} <= loaded  # it did load the API
    assert sorted(m for m in HEAVY if m in loaded) == []
    by_torch = set(_in_fresh_python("import sys, json, torch; print(json.dumps(sorted(sys.modules)))"))
    assert sorted(m for m in HEAVY if m in by_torch) == []


def test_the_lazy_names_are_the_api():
    assert set(fastmine.__all__) <= set(dir(fastmine))
    for name in fastmine.__all__:
        value = getattr(fastmine, name)
        assert getattr(value, "__name__", name) == name, name  # the object itself, not a module
    from fastmine import Sampler, mine
    from fastmine.api import mine as api_mine
    from fastmine.samplers import Sampler as samplers_sampler
    assert mine is api_mine and Sampler is samplers_sampler
    with pytest.raises(AttributeError, match="module 'fastmine' has no attribute 'nosuch'"):
        fastmine.nosuch


def test_every_command_runs_a_function_of_its_module():
    for name, command in cli.COMMANDS.items():
        module, function = command.run.split(":")
        run = getattr(importlib.import_module(module), function)
        assert module.startswith("fastmine.apps.") and callable(run), name


def test_the_cache_commands_answer_without_torch(tmp_path):
    # `fastmine models` / `cache` read a YAML file and a folder: nothing there needs torch
    code = ("import sys; from fastmine.cli import main; main(['models']); main(['cache']); "
            "print('torch' in sys.modules)")
    env = {**os.environ, "FASTMINE_CACHE": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stylegan2-ada/ffhq-1024" in done.stdout and done.stdout.strip().endswith("False")


@pytest.mark.parametrize("error, code", [(RunInterrupted("stopped at step 3"), 1),
                                         (RunFolderBusy("runs/x is in use by process 7"), 2),
                                         (FileNotFoundError("no such model"), 2)])
def test_errors_of_a_command_module_are_one_line(monkeypatch, capsys, error, code):
    def raises(args):
        raise error
    monkeypatch.setattr(commands, "sample", raises)
    assert cli.main(["sample", "G.safetensors"]) == code
    assert capsys.readouterr().err == f"fastmine sample: error: {error}\n"


def test_an_unexpected_error_keeps_its_traceback(monkeypatch):
    def raises(args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(commands, "sample", raises)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["sample", "G.safetensors"])
