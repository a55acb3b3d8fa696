import atexit
import contextlib
import os
import shutil
import tempfile

import pytest

# Triton's interpreter must be chosen before triton is first imported: with no CUDA device
# the kernel tests run the very same @triton.jit kernels on the CPU.
try:
    import torch

    _has_cuda = torch.cuda.is_available()
except Exception:  # pragma: no cover - torch missing is a broken install, let pytest say so
    _has_cuda = False
if not _has_cuda:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
# the tests never reach the internet nor a user's cache: files a test fetches come from its own
# local server (tests/test_hub.py) into a cache of this session
os.environ["FASTMINE_OFFLINE"] = "1"
os.environ["FASTMINE_CACHE"] = tempfile.mkdtemp(prefix="fastmine-test-cache-")
atexit.register(shutil.rmtree, os.environ["FASTMINE_CACHE"], ignore_errors=True)
os.environ.pop("FASTMINE_MIRROR", None)


@contextlib.contextmanager
def single_thread():
    """Tiny networks run faster on one thread than on two competing ones (measured), and far
    faster when other processes share the two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def digits_source(tmp_path_factory):
    """A small WGAN-GP source trained on digits 0-8 at 8 px, shared by the tests that mine it."""
    import fastmine as fm
    from fastmine.config import ModelConfig

    run_dir = tmp_path_factory.mktemp("source") / "run"
    data = fm.load_digits(labels=range(9), size=8)
    with single_thread():
        result = fm.train(None, data, method="scratch", steps=400, lr=2e-4, critic_lr=2e-4, betas=[0.5, 0.9],
                          run_dir=run_dir, progress=False, checkpoint_every=10_000, sample_every=10_000,
                          model_cfg=ModelConfig(latent_dim=32, width=32))
    return result.model_path


@pytest.fixture
def kernel_device():
    """Kernel tests allocate on CUDA when there is one (compiled kernels), else on the CPU
    (Triton's interpreter)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        yield device


@pytest.fixture
def one_thread():
    with single_thread():
        yield
