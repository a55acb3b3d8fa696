"""Per-sample interpolation x̂ = ε·a + (1−ε)·b, one ε per sample (first dimension).

One pass over memory in each direction; ε is either given or drawn inside the kernel
from a seed (Philox, `tl.rand`)."""
from __future__ import annotations

import torch

from ._impl import (
    MAX_GRID_Y,
    as_row_slab,
    empty,
    empty_like,
    flat_view,
    memory_format_of,
    resolve_impl,
    row_tile,
    same_layout,
    tl,
    triton,
)

NUM_WARPS = 4

# Largest float32 below 1: keeps ε in [0, 1) whatever the float rounding of the sampler.
_ONE_MINUS_ULP = 0.99999994


@triton.jit
def _interpolate_fwd_kernel(
    real_ptr,
    fake_ptr,
    out_ptr,
    eps_ptr,
    seed,
    n_rows,
    row_len,
    DRAW_EPS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    cols = pid_c * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    if DRAW_EPS:
        # every program of a row draws the same ε (same seed and offset); one of them stores it
        eps = tl.minimum(tl.rand(seed, rows), 0.99999994)
        if pid_c == 0:
            tl.store(eps_ptr + rows, eps, mask=row_ok)
    else:
        eps = tl.load(eps_ptr + rows, mask=row_ok, other=0.0)
    offs = rows[:, None].to(tl.int64) * row_len + cols[None, :]
    mask = row_ok[:, None] & (cols < row_len)[None, :]
    real = tl.load(real_ptr + offs, mask=mask).to(tl.float32)
    fake = tl.load(fake_ptr + offs, mask=mask).to(tl.float32)
    e = eps[:, None]
    x_hat = e * real + (1.0 - e) * fake
    tl.store(out_ptr + offs, x_hat.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _interpolate_bwd_kernel(
    grad_ptr,
    eps_ptr,
    grad_real_ptr,
    grad_fake_ptr,
    n_rows,
    row_len,
    WANT_REAL: tl.constexpr,
    WANT_FAKE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    cols = pid_c * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    e = tl.load(eps_ptr + rows, mask=row_ok, other=0.0)[:, None]
    offs = rows[:, None].to(tl.int64) * row_len + cols[None, :]
    mask = row_ok[:, None] & (cols < row_len)[None, :]
    g = tl.load(grad_ptr + offs, mask=mask).to(tl.float32)
    if WANT_REAL:
        tl.store(grad_real_ptr + offs, (e * g).to(grad_real_ptr.dtype.element_ty), mask=mask)
    if WANT_FAKE:
        tl.store(grad_fake_ptr + offs, ((1.0 - e) * g).to(grad_fake_ptr.dtype.element_ty), mask=mask)


def _grid(n_rows: int, row_len: int):
    rows, block = row_tile(row_len)
    n_col_blocks = triton.cdiv(row_len, block)
    if n_col_blocks > MAX_GRID_Y:
        raise ValueError(f"rows of {row_len} elements are too long for one launch")
    return (triton.cdiv(n_rows, rows), n_col_blocks), rows, block


class _InterpolateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, real, fake, eps, seed, draw_eps):
        n_rows = real.shape[0]
        row_len = real.numel() // max(n_rows, 1)
        out = empty_like(real)
        if real.numel() > 0:
            grid, rows, block = _grid(n_rows, row_len)
            _interpolate_fwd_kernel[grid](
                flat_view(real), flat_view(fake), flat_view(out), eps, seed, n_rows, row_len,
                DRAW_EPS=draw_eps, ROWS=rows, BLOCK=block, num_warps=NUM_WARPS,
            )
        ctx.save_for_backward(eps)
        ctx.row_shape = (n_rows, row_len)
        ctx.memory_format = memory_format_of(real)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (eps,) = ctx.saved_tensors
        want_real, want_fake = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (want_real or want_fake):
            return None, None, None, None, None
        # x̂ and the inputs share one layout; autograd may hand back another one
        grad_out = grad_out.contiguous(memory_format=ctx.memory_format)
        grad_real = empty_like(grad_out) if want_real else None
        grad_fake = empty_like(grad_out) if want_fake else None
        n_rows, row_len = ctx.row_shape
        if grad_out.numel() > 0:
            grid, rows, block = _grid(n_rows, row_len)
            g = flat_view(grad_out)
            _interpolate_bwd_kernel[grid](
                g, eps,
                flat_view(grad_real) if want_real else g,
                flat_view(grad_fake) if want_fake else g,
                n_rows, row_len,
                WANT_REAL=want_real, WANT_FAKE=want_fake, ROWS=rows, BLOCK=block, num_warps=NUM_WARPS,
            )
        return grad_real, grad_fake, None, None, None


def _prepare_eps(eps: torch.Tensor, n_rows: int, device) -> torch.Tensor:
    if eps.numel() != n_rows:
        raise ValueError(f"eps must hold one value per sample ({n_rows}), got shape {tuple(eps.shape)}")
    return eps.detach().reshape(n_rows).to(device=device, dtype=torch.float32).contiguous()


def _draw_seed() -> int:
    # from torch's global CPU generator, so torch.manual_seed makes it reproducible
    return int(torch.randint(0, 2**31 - 1, (1,), device="cpu"))


def interpolate_reference(
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor | None = None,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager PyTorch reference of :func:`interpolate`. With ``eps=None`` it draws
    ``torch.rand(N, generator=torch.Generator().manual_seed(seed))`` (on the CPU, then moved),
    which is *not* the stream the Triton kernel draws for the same seed."""
    if real.shape != fake.shape:
        raise ValueError(f"real and fake differ in shape: {tuple(real.shape)} vs {tuple(fake.shape)}")
    n_rows = real.shape[0]
    if eps is None:
        seed = _draw_seed() if seed is None else int(seed)
        eps = torch.rand(n_rows, generator=torch.Generator().manual_seed(seed), device="cpu")
    eps = _prepare_eps(eps, n_rows, real.device)
    e = eps.view(n_rows, *([1] * (real.dim() - 1))).to(real.dtype)
    return e * real + (1 - e) * fake, eps


def interpolate(
    real: torch.Tensor,
    fake: torch.Tensor,
    eps: torch.Tensor | None = None,
    seed: int | None = None,
    impl: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """x̂ = ε·real + (1−ε)·fake with one ε per sample (first dimension).

    Args:
        real, fake: tensors of one shape [N, ...] (images NCHW or channels_last, vectors
            [N, d], ...) and dtype; computed in float32, stored in their dtype.
        eps: optional [N] (or any shape with N elements) per-sample weights. When None, ε is
            drawn uniformly in [0, 1): inside the kernel by Philox from `seed` (Triton), or
            by ``torch.rand`` with a CPU generator seeded with `seed` (torch). The two
            implementations thus draw *different* ε for one seed; each is reproducible.
            `seed=None` takes a seed from torch's global generator.
        impl: "auto" | "triton" | "torch" (see :func:`resolve_impl`).

    Returns:
        (x_hat, eps): x_hat in the layout of `real` (channels_last stays channels_last, no
        copy), eps as float32 [N]. Differentiable w.r.t. real and fake (not eps): backward
        gives ε·g and (1−ε)·g, in one fused pass when both are needed.

    Bytes moved (Triton), D = elements per sample: forward reads 2·N·D and writes N·D
    elements (+ N floats of ε); backward reads N·D and writes N·D per input needing grad.
    """
    if real.shape != fake.shape:
        raise ValueError(f"real and fake differ in shape: {tuple(real.shape)} vs {tuple(fake.shape)}")
    if real.dtype != fake.dtype:
        raise ValueError(f"real and fake differ in dtype: {real.dtype} vs {fake.dtype}")
    if real.dim() == 0:
        raise ValueError("interpolate needs a batch dimension")
    if resolve_impl(impl, real, fake, eps) == "torch":
        return interpolate_reference(real, fake, eps, seed)
    n_rows = real.shape[0]
    real = as_row_slab(real)
    fake = same_layout(fake, real)
    if eps is None:
        seed = _draw_seed() if seed is None else int(seed)
        eps_buf = empty(n_rows, dtype=torch.float32, device=real.device)
        draw = True
    else:
        eps_buf, seed, draw = _prepare_eps(eps, n_rows, real.device), 0, False
    x_hat = _InterpolateFunction.apply(real, fake, eps_buf, seed, draw)
    return x_hat, eps_buf
