"""The one switch between the Triton kernels and their eager PyTorch references, plus
the small helpers every kernel wrapper shares (layout checks, output allocation)."""
from __future__ import annotations

import contextlib
import os
import types

import torch

IMPLS = ("auto", "triton", "torch")

try:  # triton is optional: without it every call takes the eager reference
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on installs without triton
    HAS_TRITON = False
    # Stand-ins so that the kernel modules still import; their @triton.jit bodies never run.
    triton = types.SimpleNamespace(jit=lambda fn: fn, cdiv=lambda a, b: -(-a // b))
    tl = types.SimpleNamespace(constexpr=None)

# `@triton.jit` decides at decoration time (i.e. when the kernel modules are imported)
# whether a kernel is compiled or interpreted; setting TRITON_INTERPRET later has no effect.
INTERPRETED = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(impl: str, *tensors: torch.Tensor) -> str:
    """Return "triton" or "torch" for `impl` in ("auto", "triton", "torch").

    "auto" picks Triton when triton imports and every tensor is on a CUDA device, else the
    eager reference. "triton" with CPU tensors runs the kernels in Triton's interpreter,
    which must have been enabled (TRITON_INTERPRET=1) before this package was imported.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; valid values are {', '.join(map(repr, IMPLS))}")
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if impl == "torch":
        return "torch"
    if impl == "auto":
        return "triton" if HAS_TRITON and on_cuda and not INTERPRETED else "torch"
    if not HAS_TRITON:
        raise ValueError("impl='triton' needs the `triton` package, which is not installed")
    if on_cuda:
        if INTERPRETED:
            raise ValueError(
                "impl='triton' on CUDA tensors, but the kernels were built for Triton's "
                "interpreter (TRITON_INTERPRET was set when fastmine_kernels was imported)"
            )
        return "triton"
    if not INTERPRETED:
        raise ValueError(
            "impl='triton' on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1 "
            "in the environment before fastmine_kernels (or triton) is imported, or use "
            "impl='torch' / impl='auto'"
        )
    return "triton"


# --- output allocation -------------------------------------------------------------------
# Tests set a fill value so that every buffer a kernel is meant to overwrite starts as
# NaN (or another sentinel): an element a kernel forgets to write then shows up.
_debug_fill = None


@contextlib.contextmanager
def debug_fill_outputs(value: float):
    """Within this context, buffers the Triton wrappers allocate start filled with `value`."""
    global _debug_fill
    previous, _debug_fill = _debug_fill, value
    try:
        yield
    finally:
        _debug_fill = previous


def _filled(t: torch.Tensor) -> torch.Tensor:
    if _debug_fill is not None:
        if t.dtype.is_floating_point:
            t.fill_(_debug_fill)
        else:
            t.fill_(-(2**31) if t.dtype != torch.bool else False)
    return t


def empty(*shape, dtype, device) -> torch.Tensor:
    return _filled(torch.empty(*shape, dtype=dtype, device=device))


def empty_like(t: torch.Tensor, dtype=None) -> torch.Tensor:
    # preserve_format keeps channels_last strides for dense tensors
    return _filled(torch.empty_like(t, dtype=dtype))


# --- layouts -------------------------------------------------------------------------------
def is_row_slab(t: torch.Tensor) -> bool:
    """True when each sample t[i] is one dense run of t[0].numel() elements at stride(0)
    and the samples follow each other: plain contiguous tensors and channels_last(_3d) ones.
    Element order inside a slab then differs between layouts, which is harmless for
    elementwise maps between tensors of one layout and for per-row reductions."""
    if t.is_contiguous():
        return True
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return True
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return True
    return False


def as_row_slab(t: torch.Tensor) -> torch.Tensor:
    """`t` itself when it is a row slab, else a contiguous copy (explicit, rare)."""
    return t if is_row_slab(t) else t.contiguous()


def flat_view(t: torch.Tensor) -> torch.Tensor:
    """1-D view of a row-slab tensor's storage in memory order (no copy)."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format of a row-slab tensor (contiguous_format when both apply)."""
    if t.is_contiguous():
        return torch.contiguous_format
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    raise ValueError("not a row-slab tensor")


def same_layout(a: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`a` in the memory layout of the row-slab tensor `like` (a copy only when they differ)."""
    return a.contiguous(memory_format=memory_format_of(like))


# --- launch shapes -------------------------------------------------------------------------
TILE = 2048  # elements per program for the elementwise kernels (fp32: 8 KiB per tensor)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def row_tile(row_len: int) -> tuple[int, int]:
    """(ROWS, BLOCK) for a kernel over [n_rows, row_len] row slabs: long rows are cut into
    BLOCK-wide pieces, short rows (vectors) are packed ROWS to a program."""
    block = min(TILE, max(16, next_pow2(row_len)))
    return max(1, TILE // block), block


MAX_GRID_Y = 65535  # CUDA's limit on grid dimensions 1 and 2
