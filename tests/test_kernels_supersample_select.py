"""supersample_select: the fused Triton select + gather kernels (interpreter on CPU)
against the eager reference and hand-computed expectations."""

import pytest
import torch

import fastmine_kernels as fk
from fastmine_kernels._impl import debug_fill_outputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.usefixtures("kernel_device")

NAN = float("nan")


def _select(*args, **kwargs):
    with debug_fill_outputs(NAN):
        return fk.supersample_select(*args, impl="triton", **kwargs)


@pytest.mark.parametrize("n_rows, n_cols", [(67, 3), (1000, 8), (5, 1), (1, 4), (33, 64), (20, 5)])
@pytest.mark.parametrize("rule", ["max", "permute"])
def test_matches_reference(n_rows, n_cols, rule):
    scores = torch.randn(n_rows, n_cols)
    candidates = torch.randn(n_rows, n_cols, 2, 3)
    perm = torch.randperm(n_rows) if rule == "permute" else None
    got = _select(scores, rule, perm=perm, candidates=candidates)
    want = fk.supersample_select_reference(scores, rule, perm=perm, candidates=candidates)
    assert torch.equal(got.winners, scores.argmax(dim=1))
    assert torch.equal(got.winners, want.winners)
    assert torch.equal(got.chosen, want.chosen)
    assert torch.equal(got.counts, torch.bincount(want.winners, minlength=n_cols))
    assert got.counts.dtype == got.chosen.dtype == got.winners.dtype == torch.int64
    assert got.selector_probs is None
    assert torch.equal(got.gathered, candidates[torch.arange(n_rows), got.chosen])


def test_ties_pick_the_first_maximum():
    # (Triton's interpreter always breaks ties to the left, so on the CPU this checks the
    # wrapper and masking; on a GPU it also checks the kernel's tie_break_left=True)
    scores = torch.tensor(
        [[1.0, 1.0, 1.0], [0.0, 2.0, 2.0], [-1.0, -3.0, -1.0], [5.0, 5.0, 4.0], [-float("inf")] * 3]
    )
    got = _select(scores, "max")
    assert got.winners.tolist() == [0, 1, 0, 0, 0] == scores.argmax(dim=1).tolist()
    assert got.counts.tolist() == [4, 1, 0]
    assert torch.equal(got.chosen, got.winners)


def test_nan_counts_as_largest_like_torch_argmax():
    scores = torch.tensor([[0.0, NAN, 1.0], [3.0, 2.0, NAN]])
    assert _select(scores, "max").winners.tolist() == scores.argmax(dim=1).tolist() == [1, 2]


def test_permute_keeps_the_multiset_of_winners():
    scores = torch.randn(67, 4)
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    got = _select(scores, "permute", generator=gen)
    assert torch.equal(got.chosen.sort().values, got.winners.sort().values)
    assert not torch.equal(got.chosen, got.winners)  # 67 rows: a shuffle that changes nothing is ~impossible
    perm = torch.randperm(67, generator=torch.Generator(device=DEVICE).manual_seed(5))
    assert torch.equal(got.chosen, got.winners[perm])  # randperm with the given generator


def test_fixed_perm_gives_winners_of_perm():
    scores = torch.randn(9, 3)
    perm = torch.tensor([3, 0, 8, 1, 2, 7, 6, 4, 5])
    got = _select(scores, "permute", perm=perm)
    assert torch.equal(got.chosen, scores.argmax(dim=1)[perm])


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_window_over_more_calls_than_its_length(impl):
    n_rows, n_cols, window_len, n_calls = 50, 4, 3, 7
    window = torch.zeros(window_len, n_cols)
    window_pos = torch.zeros(1, dtype=torch.int64)
    history = []
    for call in range(n_calls):
        scores = torch.randn(n_rows, n_cols)
        scores[:, call % n_cols] += 1.5  # counts differ from call to call
        with debug_fill_outputs(NAN):
            got = fk.supersample_select(scores, "max", window=window, window_pos=window_pos, impl=impl)
        history.append(torch.bincount(scores.argmax(dim=1), minlength=n_cols).double())
        last = torch.stack(history[-window_len:])
        by_hand = last.sum(0) / last.sum()
        assert window_pos.tolist() == [call + 1]
        assert torch.equal(window[call % window_len], history[-1].float())
        torch.testing.assert_close(got.selector_probs.double(), by_hand, rtol=1e-6, atol=0)
        assert got.selector_probs.dtype == torch.float32


def test_window_partially_filled_and_position_wraps():
    window = torch.zeros(1000, 2)
    window_pos = torch.tensor([2999], dtype=torch.int64)  # the slot index wraps to 999
    scores = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 0.0]])
    got = _select(scores, "permute", window=window, window_pos=window_pos)
    assert window_pos.item() == 3000
    assert window[999].tolist() == [1.0, 3.0]
    assert window[:999].abs().sum() == 0
    assert got.selector_probs.tolist() == [0.25, 0.75]


def test_gather_from_a_transposed_stack_without_copy():
    # generators usually produce [N, K, ...]; the transposed view is read in place
    per_generator = torch.randn(3, 11, 2, 5, 5)
    candidates = per_generator.transpose(0, 1)
    assert not candidates.is_contiguous()
    scores = torch.randn(11, 3)
    got = _select(scores, "permute", candidates=candidates)
    assert torch.equal(got.gathered, candidates[torch.arange(11), got.chosen])
    seeds = torch.randn(11, 3, 7)  # seeds: short rows, several per program
    got = _select(scores, "max", candidates=seeds)
    assert torch.equal(got.gathered, seeds[torch.arange(11), got.winners])


def test_bad_arguments():
    scores = torch.randn(4, 3)
    with pytest.raises(ValueError, match="'max', 'permute'"):
        fk.supersample_select(scores, "best", impl="triton")
    with pytest.raises(ValueError, match="window"):
        fk.supersample_select(scores, window=torch.zeros(3, 2), window_pos=torch.zeros(1, dtype=torch.int64),
                              impl="triton")
    with pytest.raises(ValueError, match="candidates"):
        fk.supersample_select(scores, candidates=torch.zeros(4, 2, 5), impl="triton")
    with pytest.raises(ValueError, match="at most 64"):
        fk.supersample_select(torch.randn(4, 65), impl="triton")
