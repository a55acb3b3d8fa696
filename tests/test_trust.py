"""The user's files are safe (issue 23), table-driven: --restart / --resume touch only a folder
fastmine made, no code comes from a stored run, every allocation a file asks for is bounded
by the file, and a refused command changes nothing. Each refusal row checks the exit code, the
one line (no traceback), that no code ran (a marker file) and that the whole working folder —
the user's files and the run folder — is byte-identical afterwards."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import fastmine as fm
from fastmine.checkpoints import check_finite
from fastmine.cli import main
from fastmine.files import call_factory

TINY = ["data.limit=32", "train.batch_size=8", "model.width=8", "model.latent_dim=8", "log.progress=false",
        "log.sample_every=1000", "device=cpu"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A fastmine run folder with checkpoints at steps 1 and 2 (copied by each test)."""
    base, cwd = tmp_path_factory.mktemp("base"), os.getcwd()
    os.chdir(base)  # out_dir=runs name=run, as the copies are
    try:
        assert main(["pretrain", "out_dir=runs", "name=run", *TINY, "train.steps=2", "log.checkpoint_every=1"]) == 0
    finally:
        os.chdir(cwd)
    return base / "runs" / "run"


@pytest.fixture
def work(tmp_path, base_run, monkeypatch):
    """tmp_path as the working folder: runs/run (a copy of the base run), a user's Documents
    folder, a package whose import and call write the marker ran.txt."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(base_run, tmp_path / "runs" / "run", symlinks=True)
    docs = tmp_path / "runs" / "Documents"
    (docs / "thesis").mkdir(parents=True)
    (docs / "thesis" / "ch1.tex").write_text("\\chapter{One}")
    (docs / ".notes.tmp-123").write_text("mine")  # looks like a fastmine temporary, is the user's
    pkg = tmp_path / "pkgs"
    pkg.mkdir()
    (pkg / "evil_mod.py").write_text(textwrap.dedent("""
        import pathlib
        pathlib.Path("ran.txt").write_text("imported")

        def make(**kwargs):
            pathlib.Path("ran.txt").write_text("called")
            return "not a module"
    """))
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop("evil_mod", None)
    return tmp_path


def snapshot(root):
    """Every entry under root: file bytes, 'dir', or a link's target (links are not followed)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(folder, name)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = "link->" + os.readlink(p)
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                with open(p, "rb") as f:
                    out[rel] = f.read()
    return out


def _trust_in_stored_run(w):
    """The run's config.yaml edited (as a shared or downloaded folder may be) to let code run."""
    path = w / "runs" / "run" / "config.yaml"
    text = path.read_text()
    assert "  trust_code: false\n" in text and "  module: null\n" in text
    path.write_text(text.replace("  trust_code: false\n", "  trust_code: true\n")
                    .replace("  module: null\n", "  module: evil_mod:make\n"))


def _lock_link(w):
    (w / "secret.txt").write_text("keep me")
    lock = w / "runs" / "run" / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(w / "secret.txt")


def _yaml(name, text):
    def setup(w):
        (w / name).write_text(text)
    return setup


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
         "augment:\n  kind: none\n  policy: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
DEEP = "train:\n  betas: " + "[" * 40 + "]" * 40 + "\n"

R = ["pretrain", "out_dir=runs"]
REFUSALS = [
    # (id, setup, argv, exit code, text the one line contains)
    ("restart-user-folder", None, [*R, "name=Documents", "--restart"], 2,
     "'runs/Documents' is not a fastmine run folder (no config.yaml written by fastmine); it holds .notes.tmp-123, "
     "thesis/; fastmine will not replace it"),
    ("resume-user-folder", None, [*R, "name=Documents", "--resume"], 2,
     "'runs/Documents' is not a fastmine run folder"),
    ("write-into-user-folder", None, [*R, "name=Documents"], 2, "fastmine will not write into it"),
    ("existing-run", None, [*R, "name=run"], 2,
     "run folder 'runs/run' already exists; pass --resume to continue it, --restart to replace it"),
    ("resume-and-restart", None, [*R, "name=run", "--resume", "--restart"], 2, "not both"),
    ("trust-from-stored-run", _trust_in_stored_run, [*R, "name=run", "--resume"], 2,
     "the run was configured with settings that run code (source.trust_code=true miner.module=evil_mod:make); a "
     "stored run's folder never turns them on: give them again if you trust them, on the command line "
     "(source.trust_code=true miner.module=evil_mod:make) or in Python (trust_code=True, miner=your module)"),
    ("lock-is-a-link", _lock_link, [*R, "name=run", "--resume"], 2,
     "has symbolic links where fastmine writes its own files (.lock)"),
    ("global-batch", None, [*R, "name=run", "--resume", "train.batch_size=4"], 2,
     "the run trained with a global batch of 8 (train.batch_size × processes), this resume would use 4"),
    ("lr-inf", None, [*R, "name=new", "train.lr=.inf"], 2, "config key 'train.lr' must be a finite number, got inf"),
    ("gp-nan", None, [*R, "name=new", "loss.gp_weight=.nan"], 2, "config key 'loss.gp_weight' must be a finite number"),
    ("lr-nan-string", None, [*R, "name=new", "train.lr=nan"], 2, "config key 'train.lr' must be a finite number"),
    ("huge-int", None, [*R, "name=new", f"train.steps={2**70}"], 2, "must be an integer below 2**63"),
    ("device", None, [*R, "name=new", "device=foo"], 2, "device must be auto, cpu, cuda, cuda:N, mps, xpu or meta"),
    ("trackers", None, [*R, "name=new", "log.trackers=[[a]]"], 2, "config key 'log.trackers[0]' must be a string"),
    ("billion-laughs", _yaml("laughs.yaml", LAUGHS), ["pretrain", "laughs.yaml", "out_dir=runs", "name=new"], 2,
     "config file 'laughs.yaml': YAML anchors and aliases (&name, *name, at line 1) are not read in configs"),
    ("alias-override", None, [*R, "name=new", "augment.policy=[&a x, *a]"], 2, "YAML anchors and aliases"),
    ("deep-yaml", _yaml("deep.yaml", DEEP), ["pretrain", "deep.yaml", "out_dir=runs", "name=new"], 2,
     "YAML nested more than 16 levels deep"),
]


@pytest.mark.parametrize("setup,argv,code,text", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_a_refused_command_says_why_in_one_line_and_changes_nothing(work, capsys, setup, argv, code, text):
    if setup is not None:
        setup(work)
    before = snapshot(work)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert text in err, err
    assert snapshot(work) == before
    assert not (work / "ran.txt").exists()


def test_trust_given_again_resumes_and_a_factory_that_is_no_module_is_one_line(work, capsys):
    _trust_in_stored_run(work)
    run = work / "runs" / "run"
    # given again (pretrain has no miner: miner.module is accepted and never imported)
    assert main([*R, "name=run", "--resume", "source.trust_code=true", "miner.module=evil_mod:make",
                 "train.steps=3"]) == 0
    assert not (work / "ran.txt").exists()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3
    with pytest.raises(ValueError, match=r"^factory 'evil_mod:make' returned a str, not an nn.Module$"):
        call_factory("evil_mod:make", {})
    with pytest.raises(ValueError, match=r"^factory os:getcwd\(\*\*\{'x': 1\}\) failed: .*takes no keyword arguments$"):
        call_factory("os:getcwd", {"x": 1})


def test_restart_of_a_run_keeps_the_users_files_in_it(work):
    run = work / "runs" / "run"
    (run / "notes.md").write_text("mine")
    (run / ".draft.tmp-1").write_text("mine too")  # not one of fastmine's own names
    assert main([*R, "name=run", "--restart", *TINY, "train.steps=1"]) == 0
    assert (run / "notes.md").read_text() == "mine" and (run / ".draft.tmp-1").read_text() == "mine too"
    assert sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.safetensors")) == ["ckpt-0000001.safetensors"]


def test_python_callers_get_python_advice(work):
    with pytest.raises(fm.RunFolderExists) as caught:
        fm.train(None, torch.zeros(4, 1, 8, 8), method="scratch", run_dir=work / "runs" / "run")
    text = str(caught.value)
    assert "pass resume=True to continue it, restart=True to replace it" in text and "--" not in text
    with pytest.raises(fm.RunFolderError, match="is not a fastmine run folder"):
        fm.train(None, torch.zeros(4, 1, 8, 8), method="scratch", run_dir=work / "runs" / "Documents", restart=True)
    assert (work / "runs" / "Documents" / "thesis" / "ch1.tex").is_file()


def _damage_missing(ckpt):
    with safe_open(str(ckpt), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors.pop(sorted(k for k in tensors if k.startswith("critic."))[0])
    save_file(tensors, str(ckpt))


def _damage_shape(ckpt):
    with safe_open(str(ckpt), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(k for k in tensors if k.startswith("critic."))[0]
    tensors[key] = torch.zeros(3, 3)
    save_file(tensors, str(ckpt))


def _damage_step(ckpt):
    shutil.copy(ckpt.with_name("ckpt-0000001.state.pt"), ckpt.with_name("ckpt-0000002.state.pt"))


@pytest.mark.parametrize("damage,reason", [(_damage_missing, "missing ['critic."), (_damage_shape, "other shapes"),
                                           (_damage_step, "its state is of step 1")],
                         ids=["missing-tensor", "wrong-shape", "state-of-another-step"])
def test_a_checkpoint_that_reads_but_is_wrong_falls_back(work, capsys, damage, reason):
    run = work / "runs" / "run"
    damage(run / "checkpoints" / "ckpt-0000002.safetensors")
    assert main([*R, "name=run", "--resume", "train.steps=3"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint step 2 (" in err and reason in err and "resuming from the newest intact one, step 1" in err, err
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 3


# ------------------------------------------------------------------ files asking for memory
CHILD = """
import resource, sys
import fastmine.cli
import fastmine.apps.commands  # the CLI loads it (and torch) only to run a command: before the cap
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + {cap}, vm + {cap}))  # what loading may add
sys.exit(fastmine.cli.main({argv!r}))
"""
CAP = 512 << 20


def _in_child(tmp_path, argv):
    """The command in a process whose address space may grow by CAP at most after imports."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD.format(cap=CAP, argv=argv)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


class _TensorWithState:
    """Pickles as torch's tensor rebuild plus a BUILD state: Tensor.__setstate__ would call set_."""

    def __reduce__(self):
        func, args = torch.zeros(4).__reduce_ex__(2)[:2]
        return func, args, (0, (1 << 28,), (1,), False)


def _bytearray_pickle(path):  # 83 bytes or so: bytearray(3 GiB)
    path.write_bytes(b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\xc0\x00\x85R.")


def _numpy_pickle(path):  # numpy's _reconstruct(ndarray, (2**32,), b"b"): a 4 GiB array
    path.write_bytes(b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                     b"\x8a\x05\x00\x00\x00\x00\x01\x85C\x01b\x87R.")


def _set_pickle(path):
    path.write_bytes(pickle.dumps({"G": _TensorWithState()}, protocol=2))


class _HugeBytearray:
    def __reduce__(self):
        return bytearray, (3 << 30,)


def _torch_bytearray(path, zipped=True):  # a torch.save'd checkpoint whose weights_only pickle asks for 3 GiB
    torch.save({"g_ema": {"w": torch.zeros(2)}, "x": _HugeBytearray()}, path.with_suffix(".pkl"),
               _use_new_zipfile_serialization=zipped)


@pytest.mark.parametrize("write,text", [
    (_bytearray_pickle, "asks for a bytearray of 3221225472 bytes, more than the file's size allows"),
    (_numpy_pickle, "asks for a numpy array of 4294967296 bytes"),
    (_set_pickle, "sets the state of a Tensor (pickle BUILD), which fastmine does not load"),
    (_torch_bytearray, "asks for a bytearray of 3221225472 bytes, more than the file's size"),
    (lambda path: _torch_bytearray(path, zipped=False), "asks for a bytearray of 3221225472 bytes"),
], ids=["bytearray-3GiB", "numpy-4GiB", "build-on-tensor", "torch-zip-bytearray", "torch-legacy-bytearray"])
def test_a_network_pickle_cannot_allocate_or_repoint_memory(tmp_path, write, text):
    write(tmp_path / "evil.pkl")
    before = snapshot(tmp_path)
    code, err = _in_child(tmp_path, ["convert", "evil.pkl", "out.safetensors"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "MemoryError" not in err, err
    assert text in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("arch", [{"width": 10**6}, {"latent_dim": 2**20}])
def test_model_file_metadata_asking_for_a_huge_network_is_refused_before_allocating(work, arch):
    model = work / "runs" / "run" / "model.safetensors"
    with safe_open(str(model), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["fastmine"])
    info["generator"]["build"]["arch"].update(arch)
    save_file(tensors, str(work / "big.safetensors"), {"fastmine": json.dumps(info)})
    before = snapshot(work)
    code, err = _in_child(work, ["sample", "big.safetensors", "--out", "s.png"])
    assert code == 2 and err.count("\n") == 1, err
    assert "do not fit the architecture its metadata describes" in err, err
    assert snapshot(work) == before


def test_non_finite_weights_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"tensor\(s\) w hold NaN or infinite values"):
        check_finite({"w": torch.tensor([1.0, float("inf")]), "b": torch.zeros(2)}, tmp_path / "x.pkl")
