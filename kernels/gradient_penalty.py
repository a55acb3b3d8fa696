"""Penalty on per-row L2 norms: weight · mean((‖g_i‖₂ − center)²), or its one-sided form
weight · mean(max(0, ‖g_i‖₂ − center)²), with a fused backward w.r.t. g.

The backward is an ordinary tensor built from saved tensors, so when g itself came from
``torch.autograd.grad(..., create_graph=True)`` autograd carries the penalty's gradient on
through the graph that produced g (the double backward stays with autograd)."""
from __future__ import annotations

import torch

from ._impl import (
    MAX_GRID_Y,
    as_row_slab,
    empty,
    empty_like,
    flat_view,
    resolve_impl,
    row_tile,
    tl,
    triton,
)

# Forward reduction: long rows are split into CHUNK-element pieces so that a small batch of
# large images still spreads over every SM; a second one-program launch adds the pieces up.
_SUMSQ_BLOCK = 1024
_SUMSQ_CHUNK = 4 * _SUMSQ_BLOCK
_FINAL_BLOCK_R = 256
_FINAL_BLOCK_C = 16
NUM_WARPS = 4


@triton.jit
def _row_sumsq_kernel(
    grad_ptr,
    partial_ptr,
    n_rows,
    row_len,
    n_chunks,
    CHUNK: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_r = tl.program_id(0)
    chunk = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    row_ok = rows < n_rows
    base = rows[:, None].to(tl.int64) * row_len
    start = chunk * CHUNK
    end = tl.minimum(start + CHUNK, row_len)
    acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    for off in range(start, end, BLOCK):
        cols = off + tl.arange(0, BLOCK)
        mask = row_ok[:, None] & (cols < end)[None, :]
        g = tl.load(grad_ptr + base + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        acc += g * g
    tl.store(partial_ptr + rows * n_chunks + chunk, tl.sum(acc, axis=1), mask=row_ok)


@triton.jit
def _penalty_finalize_kernel(
    partial_ptr,
    norm_ptr,
    out_ptr,
    n_rows,
    n_chunks,
    center,
    weight_over_n,
    ONE_SIDED: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # one program: a fixed summation order, so the scalar is bit-reproducible
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        row_ok = rows < n_rows
        sumsq = tl.zeros([BLOCK_R], dtype=tl.float32)
        for c0 in range(0, n_chunks, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = row_ok[:, None] & (cols < n_chunks)[None, :]
            part = tl.load(partial_ptr + rows[:, None] * n_chunks + cols[None, :], mask=mask, other=0.0)
            sumsq += tl.sum(part, axis=1)
        norm = tl.sqrt(sumsq)
        tl.store(norm_ptr + rows, norm, mask=row_ok)
        dev = norm - center
        if ONE_SIDED:
            dev = tl.maximum(dev, 0.0)
        total += tl.where(row_ok, dev * dev, 0.0)
    tl.store(out_ptr, tl.sum(total, axis=0) * weight_over_n)


@triton.jit
def _penalty_bwd_kernel(
    grad_ptr,
    norm_ptr,
    upstream_ptr,
    dgrad_ptr,
    n_rows,
    row_len,
    center,
    two_weight_over_n,
    ONE_SIDED: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    cols = pid_c * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    norm = tl.load(norm_ptr + rows, mask=row_ok, other=1.0)
    upstream = tl.load(upstream_ptr).to(tl.float32)
    dev = norm - center
    if ONE_SIDED:
        dev = tl.maximum(dev, 0.0)
    # d/dg (norm − c)² = 2(norm − c)·g/norm; at norm = 0 take 0 (as torch's norm backward does)
    coef = tl.where(norm > 0.0, upstream * two_weight_over_n * dev / tl.where(norm > 0.0, norm, 1.0), 0.0)
    offs = rows[:, None].to(tl.int64) * row_len + cols[None, :]
    mask = row_ok[:, None] & (cols < row_len)[None, :]
    g = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)
    tl.store(dgrad_ptr + offs, (coef[:, None] * g).to(dgrad_ptr.dtype.element_ty), mask=mask)


def _sumsq_launch(row_len: int):
    """(n_chunks, CHUNK, ROWS, BLOCK) for the forward reduction."""
    if row_len <= _SUMSQ_BLOCK:
        rows, block = row_tile(row_len)
        return 1, block, rows, block
    return triton.cdiv(row_len, _SUMSQ_CHUNK), _SUMSQ_CHUNK, 1, _SUMSQ_BLOCK


class _GradientPenaltyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad, weight, center, one_sided):
        n_rows = grad.shape[0]
        row_len = grad.numel() // n_rows
        n_chunks, chunk, rows, block = _sumsq_launch(row_len)
        if n_chunks > MAX_GRID_Y:
            raise ValueError(f"rows of {row_len} elements are too long for one launch")
        flat = flat_view(grad)
        partial = empty(n_rows, n_chunks, dtype=torch.float32, device=grad.device)
        norms = empty(n_rows, dtype=torch.float32, device=grad.device)
        out = empty((), dtype=torch.float32, device=grad.device)
        _row_sumsq_kernel[(triton.cdiv(n_rows, rows), n_chunks)](
            flat, partial, n_rows, row_len, n_chunks, CHUNK=chunk, ROWS=rows, BLOCK=block, num_warps=NUM_WARPS,
        )
        _penalty_finalize_kernel[(1,)](
            partial, norms, out, n_rows, n_chunks, float(center), float(weight) / n_rows,
            ONE_SIDED=bool(one_sided), BLOCK_R=_FINAL_BLOCK_R, BLOCK_C=_FINAL_BLOCK_C, num_warps=NUM_WARPS,
        )
        ctx.save_for_backward(grad, norms)
        ctx.params = (float(weight), float(center), bool(one_sided))
        ctx.mark_non_differentiable(norms)
        return out, norms

    @staticmethod
    def backward(ctx, upstream, _norms_grad):
        grad, norms = ctx.saved_tensors
        weight, center, one_sided = ctx.params
        n_rows = grad.shape[0]
        row_len = grad.numel() // n_rows
        rows, block = row_tile(row_len)
        dgrad = empty_like(grad)
        upstream = upstream.to(torch.float32)
        _penalty_bwd_kernel[(triton.cdiv(n_rows, rows), triton.cdiv(row_len, block))](
            flat_view(grad), norms, upstream, flat_view(dgrad), n_rows, row_len,
            center, 2.0 * weight / n_rows,
            ONE_SIDED=one_sided, ROWS=rows, BLOCK=block, num_warps=NUM_WARPS,
        )
        return dgrad, None, None, None


def gradient_penalty_from_grad_reference(
    grad: torch.Tensor, weight: float, center: float = 1.0, one_sided: bool = False
) -> torch.Tensor:
    """Eager PyTorch reference of :func:`gradient_penalty_from_grad`."""
    norms = grad.flatten(1).norm(dim=1)
    dev = norms - center
    if one_sided:
        dev = dev.clamp(min=0)
    return weight * dev.pow(2).mean()


def gradient_penalty_from_grad(
    grad: torch.Tensor,
    weight: float,
    center: float = 1.0,
    one_sided: bool = False,
    impl: str = "auto",
    return_norms: bool = False,
):
    """weight · mean_i (‖grad_i‖₂ − center)², the norm taken per row (first dimension) over
    everything else; with `one_sided`, weight · mean_i max(0, ‖grad_i‖₂ − center)².

    `grad` is typically ``torch.autograd.grad(f(x).sum(), x, create_graph=True)[0]``: the
    result is differentiable w.r.t. `grad` and autograd continues from there into the graph
    that produced it. Any layout whose samples are dense slabs (NCHW, channels_last, [N, d])
    is read in place. `weight` and `center` are Python numbers.

    Returns a float32 scalar (and the float32 per-row norms [N] with `return_norms`).

    Bytes moved (Triton), D = elements per row: forward reads N·D elements of grad and
    writes N norms + the scalar (two launches: per-chunk partial sums of squares, then one
    program adding them up in a fixed order); backward reads N·D and writes N·D (one launch).
    """
    if grad.dim() == 0 or grad.shape[0] == 0:
        raise ValueError("gradient_penalty_from_grad needs a non-empty batch dimension")
    if resolve_impl(impl, grad) == "torch":
        penalty = gradient_penalty_from_grad_reference(grad, weight, center, one_sided)
        if return_norms:
            return penalty, grad.detach().flatten(1).norm(dim=1).float()
        return penalty
    grad = as_row_slab(grad)
    penalty, norms = _GradientPenaltyFunction.apply(grad, weight, center, one_sided)
    return (penalty, norms) if return_norms else penalty
