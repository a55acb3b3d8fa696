import os

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
