"""Selection among N candidates per row of a K×N score matrix: row-wise argmax, an optional
random reassignment of the winners to rows, win counts folded into a ring buffer of recent
counts on the device, and the gather of the chosen candidates."""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._impl import empty, next_pow2, resolve_impl, row_tile, tl, triton

RULES = ("max", "permute")
MAX_COLUMNS = 64  # the fused kernel keeps a row of scores in registers
_TILE = 4096  # score elements per loop step of the one-program select kernel
SELECT_WARPS = 8  # one CTA: more warps, more loads in flight
GATHER_WARPS = 4


class SelectResult(NamedTuple):
    chosen: torch.Tensor  # [K] int64: column used for row j
    winners: torch.Tensor  # [K] int64: argmax of row j (first maximum on ties)
    counts: torch.Tensor  # [N] int64: how many rows each column won in this call
    selector_probs: torch.Tensor | None  # [N] float32: window.sum(0) / window.sum()
    gathered: torch.Tensor | None  # [K, ...]: candidates[j, chosen[j]]


@triton.jit
def _select_kernel(
    scores_ptr,
    stride_k,
    stride_n,
    perm_ptr,
    winners_ptr,
    chosen_ptr,
    counts_ptr,
    window_ptr,
    window_pos_ptr,
    probs_ptr,
    n_rows,
    n_cols,
    window_len,
    PERMUTE: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    # A single program: the counts, the permutation's gather of winners and the window
    # update all need every row, and one CTA needs neither atomics nor a second launch.
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    counts = tl.zeros([BLOCK_N], dtype=tl.int32)
    for k0 in range(0, n_rows, BLOCK_K):
        rows = k0 + tl.arange(0, BLOCK_K)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        s = tl.load(
            scores_ptr + rows[:, None].to(tl.int64) * stride_k + cols[None, :] * stride_n,
            mask=mask,
            other=float("-inf"),
        ).to(tl.float32)
        s = tl.where(s != s, float("inf"), s)  # NaN wins, as in torch.argmax
        s = tl.where(mask, s, float("-inf"))
        win = tl.argmax(s, axis=1, tie_break_left=True)
        tl.store(winners_ptr + rows, win.to(tl.int64), mask=row_ok)
        if not PERMUTE:
            tl.store(chosen_ptr + rows, win.to(tl.int64), mask=row_ok)
        hit = (win[:, None] == cols[None, :]) & row_ok[:, None]
        counts += tl.sum(hit.to(tl.int32), axis=0)
    tl.store(counts_ptr + cols, counts.to(tl.int64), mask=col_ok)
    if PERMUTE:
        tl.debug_barrier()  # the winners just stored come from other threads of this CTA
        for k0 in range(0, n_rows, BLOCK_K * BLOCK_N):
            rows = k0 + tl.arange(0, BLOCK_K * BLOCK_N)
            row_ok = rows < n_rows
            src = tl.load(perm_ptr + rows, mask=row_ok, other=0)
            tl.store(chosen_ptr + rows, tl.load(winners_ptr + src, mask=row_ok, other=0), mask=row_ok)
    if HAS_WINDOW:
        pos = tl.load(window_pos_ptr)
        slot = (pos % window_len).to(tl.int32)
        counts_f = counts.to(tl.float32)
        tl.store(window_ptr + slot * n_cols + cols, counts_f, mask=col_ok)
        col_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
        for w0 in range(0, window_len, BLOCK_W):
            wrows = w0 + tl.arange(0, BLOCK_W)
            wmask = (wrows < window_len)[:, None] & col_ok[None, :]
            past = tl.load(window_ptr + wrows[:, None] * n_cols + cols[None, :], mask=wmask, other=0.0)
            # this call's row from registers: reading back the store above would race
            past = tl.where((wrows == slot)[:, None], counts_f[None, :], past)
            col_sum += tl.sum(tl.where(wmask, past, 0.0), axis=0)
        tl.store(probs_ptr + cols, col_sum / tl.sum(col_sum, axis=0), mask=col_ok)
        tl.debug_barrier()  # every thread has read the old position before it moves on
        tl.store(window_pos_ptr, pos + 1)


@triton.jit
def _gather_kernel(
    cand_ptr,
    stride_k,
    stride_n,
    chosen_ptr,
    out_ptr,
    n_rows,
    row_len,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_r * ROWS + tl.arange(0, ROWS)
    cols = pid_c * BLOCK + tl.arange(0, BLOCK)
    row_ok = rows < n_rows
    pick = tl.load(chosen_ptr + rows, mask=row_ok, other=0)
    src = rows.to(tl.int64) * stride_k + pick * stride_n
    mask = row_ok[:, None] & (cols < row_len)[None, :]
    x = tl.load(cand_ptr + src[:, None] + cols[None, :], mask=mask)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * row_len + cols[None, :], x, mask=mask)


def _check(scores, rule, window, window_pos, perm, candidates):
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid values are {', '.join(map(repr, RULES))}")
    if scores.dim() != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty [K, N] matrix, got shape {tuple(scores.shape)}")
    n_rows, n_cols = scores.shape
    if (window is None) != (window_pos is None):
        raise ValueError("window and window_pos go together")
    if window is not None:
        if window.dim() != 2 or window.shape[1] != n_cols or window.dtype != torch.float32:
            raise ValueError(f"window must be float32 [W, {n_cols}], got {window.dtype} {tuple(window.shape)}")
        if not window.is_contiguous():
            raise ValueError("window must be contiguous (it is updated in place)")
        if window_pos.numel() != 1 or window_pos.dtype != torch.int64:
            raise ValueError("window_pos must be a 1-element int64 tensor")
    if perm is not None and (perm.shape != (n_rows,) or perm.dtype != torch.int64):
        raise ValueError(f"perm must be an int64 permutation of shape [{n_rows}]")
    if candidates is not None and tuple(candidates.shape[:2]) != (n_rows, n_cols):
        raise ValueError(
            f"candidates must have shape [K, N, ...] = [{n_rows}, {n_cols}, ...], got {tuple(candidates.shape)}"
        )


def supersample_select_reference(
    scores, rule="permute", window=None, window_pos=None, perm=None, generator=None, candidates=None
) -> SelectResult:
    """Eager PyTorch reference of :func:`supersample_select` (same arguments, same effects)."""
    _check(scores, rule, window, window_pos, perm, candidates)
    n_rows, n_cols = scores.shape
    winners = scores.argmax(dim=1)
    counts = torch.bincount(winners, minlength=n_cols)
    if rule == "permute":
        if perm is None:
            perm = torch.randperm(n_rows, generator=generator, device=scores.device)
        chosen = winners[perm]
    else:
        chosen = winners
    selector_probs = None
    if window is not None:
        slot = window_pos.reshape(1) % window.shape[0]  # stays on the device: no host sync
        window.index_copy_(0, slot, counts.to(torch.float32)[None])
        window_pos.add_(1)
        selector_probs = window.sum(0) / window.sum()
    gathered = None
    if candidates is not None:
        gathered = candidates[torch.arange(n_rows, device=candidates.device), chosen]
    return SelectResult(chosen, winners, counts, selector_probs, gathered)


def _inner_contiguous(t: torch.Tensor) -> bool:
    expected = 1
    for size, stride in zip(reversed(t.shape[2:]), reversed(t.stride()[2:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def supersample_select(
    scores: torch.Tensor,
    rule: str = "permute",
    window: torch.Tensor | None = None,
    window_pos: torch.Tensor | None = None,
    perm: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    candidates: torch.Tensor | None = None,
    impl: str = "auto",
) -> SelectResult:
    """Pick one of N candidates for each of K rows from the scores [K, N].

    winners[j] = argmax_i scores[j, i] (the first maximum on ties, NaN counting as the
    largest, like torch.argmax); counts[i] = #{j : winners[j] = i}.

    rule "max": chosen = winners (MineGAN++ eq. 5-8). rule "permute" (eq. 9-10):
    chosen[j] = winners[perm[j]] with perm a random permutation of 0..K-1 (given, or
    ``torch.randperm(K, generator=generator)`` on the scores' device). The paper's formula
    read literally only reorders a sum; its stated intent (each column's share of outputs
    kept, rows whose own argmax lost still receive updates) is this reading: the multiset of
    chosen columns equals that of the winners, their pairing with rows is shuffled.

    window: optional float32 [W, N] ring buffer of per-call counts, updated in place: row
    ``window_pos % W`` is overwritten with this call's counts and `window_pos` (a 1-element
    int64 tensor on the device) is incremented in place, without any host synchronisation.
    selector_probs = window.sum(0) / window.sum() (rows never written must hold zeros).

    candidates: optional [K, N, ...] tensor (images, seeds, ...; any dtype; each
    candidates[j, i] a dense C-order block, strides of the first two dims arbitrary, e.g. a
    transposed [N, K, ...] stack); gathered[j] = candidates[j, chosen[j]], shape [K, ...].

    Bytes moved (Triton): the select kernel (one program) reads K·N scores (+ K perm and K
    winners for "permute", + W·N window floats) and writes 2·K int64 + N counts (+ N window
    and N probs floats); the gather kernel reads and writes K·D candidate elements
    (D = elements per candidate). Two launches, plus torch.randperm when perm is drawn.
    """
    _check(scores, rule, window, window_pos, perm, candidates)
    if resolve_impl(impl, scores, window, window_pos, perm, candidates) == "torch":
        return supersample_select_reference(scores, rule, window, window_pos, perm, generator, candidates)
    n_rows, n_cols = scores.shape
    if n_cols > MAX_COLUMNS:
        raise ValueError(f"the Triton select kernel handles at most {MAX_COLUMNS} columns, got {n_cols}")
    device = scores.device
    permute = rule == "permute"
    if permute and perm is None:
        perm = torch.randperm(n_rows, generator=generator, device=device)
    winners = empty(n_rows, dtype=torch.int64, device=device)
    chosen = empty(n_rows, dtype=torch.int64, device=device) if permute else winners
    counts = empty(n_cols, dtype=torch.int64, device=device)
    has_window = window is not None
    selector_probs = empty(n_cols, dtype=torch.float32, device=device) if has_window else None
    block_n = max(2, next_pow2(n_cols))
    block_k = max(16, min(1024, _TILE // block_n))
    _select_kernel[(1,)](
        scores, scores.stride(0), scores.stride(1),
        perm if permute else winners,
        winners, chosen, counts,
        window if has_window else scores,
        window_pos if has_window else winners,
        selector_probs if has_window else scores,
        n_rows, n_cols, window.shape[0] if has_window else 1,
        PERMUTE=permute, HAS_WINDOW=has_window, BLOCK_K=block_k, BLOCK_N=block_n, BLOCK_W=block_k,
        num_warps=SELECT_WARPS,
    )
    gathered = None
    if candidates is not None:
        if not _inner_contiguous(candidates):
            candidates = candidates.contiguous()  # explicit copy for unusual strides
        item_shape = tuple(candidates.shape[2:])
        row_len = 1
        for size in item_shape:
            row_len *= size
        gathered = empty(n_rows, *item_shape, dtype=candidates.dtype, device=device)
        if row_len > 0:
            rows, block = row_tile(row_len)
            _gather_kernel[(triton.cdiv(n_rows, rows), triton.cdiv(row_len, block))](
                candidates, candidates.stride(0), candidates.stride(1), chosen, gathered,
                n_rows, row_len, ROWS=rows, BLOCK=block, num_warps=GATHER_WARPS,
            )
    return SelectResult(chosen, winners, counts, selector_probs, gathered)
