"""Mining several frozen generators at once (MineGAN++ §3.3, eq. 5-10).

N generators G_i, each with its own miner M_i, form one sampler. A minibatch holds K
*supersamples*: one seed u(j) is fed to every G_i(M_i(·)), the critic scores the N
candidates, and only one of them per supersample enters the losses. The trainer does not
know any of this: it calls the sampler like any other, and the sampler asks the critic it
was bound to (``bind_critic``) which candidate to keep.

Selection rules:

- ``max`` (eq. 5-8): supersample j uses generator m(j) = argmax_i D(G_i(M_i(u(j)))).
- ``permute`` (eq. 9-10, the default): draw a random permutation r of the K supersamples
  and use generator m(r(j)) *on seed u(j)*. Read literally, eq. 9 only reorders a sum;
  the paper's stated intent — "the output ratio of each generator is kept" while seeds
  "that do not directly result in the maximum critic score … can be updated" — is this
  reading: the multiset of chosen generators equals that of the winners, and the pairing
  of generators with seeds is shuffled.

The selector π_i is the fraction of argmax wins of generator i over the last ``window``
(default 1000) minibatches, the paper's unit: every training-mode call of the sampler is one
minibatch of supersamples, so a generator update (n_critic critic steps and one sampler
step) adds n_critic + 1 rows — 1000 rows are about 167 updates at n_critic=5. With several
processes each row sums the wins of all ranks (the trainer binds the all-reduce). At sampling time (eval
mode) generator i is drawn from Categorical(π) per sample.

Seeds carry one extra column: ``draw_seeds`` returns [n, seed_dim + 1], the last column a
U[0,1) number that picks the generator at sampling time (inverse CDF of π). Training
ignores it. This keeps "same seed, same samples" and draws nothing on the host.

Two paths give the same result:

- ``fast`` (default): score all N·K candidates without autograd, select, then re-run only
  the K chosen seeds through their generators with
  autograd. In the critic step (no autograd anyway) the chosen candidates are gathered
  directly, nothing is re-run.
- ``naive``: every candidate with autograd, then index the chosen ones: N times the
  activation memory. Kept as the reference for the tests and the benchmark.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fastmine_kernels.supersample_select import RULES, supersample_select

from .config import register_choices
from .latent import draw
from .samplers import Sampler, seeded_sample

PATHS = register_choices("multi.path", ("fast", "naive"))
register_choices("multi.rule", RULES)


class MultiSampler(nn.Module):
    """N samplers G_i(M_i(u)) sharing one seed per supersample, selected by a critic."""

    def __init__(self, samplers, rule: str = "permute", window: int = 1000, path: str = "fast",
                 impl: str = "auto", seed: int = 0):
        super().__init__()
        samplers = list(samplers)
        if len(samplers) < 1:
            raise ValueError("a multi-generator sampler needs at least one sampler")
        if rule not in RULES:
            raise ValueError(f"unknown selection rule {rule!r}; use one of {', '.join(RULES)}")
        if path not in PATHS:
            raise ValueError(f"unknown selection path {path!r}; use one of {', '.join(PATHS)}")
        if window < 1:
            raise ValueError(f"the selector window must hold at least one minibatch, got {window}")
        for i, s in enumerate(samplers):
            if not isinstance(s, Sampler) or s.miner is None:
                raise ValueError(f"sampler {i} has no miner: multi-generator mining needs one miner per generator")
        dims = {(s.seed_dim, s.seed_dist) for s in samplers}
        if len(dims) != 1:
            raise ValueError(f"every miner must take the same seed (one u per supersample feeds all of them); got "
                             f"(seed_dim, seed_dist) = {sorted(dims)}: set miner.seed_dim to one value")
        self.samplers = nn.ModuleList(samplers)
        self.seed_dim, self.seed_dist = dims.pop()
        self.rule, self.path, self.impl = rule, path, impl
        n = len(samplers)
        # the ring buffer of per-minibatch win counts and its write position: buffers, so
        # the trainer's checkpoints carry them and a resumed run keeps its selector
        self.register_buffer("selector_window", torch.zeros(window, n, dtype=torch.float32))
        self.register_buffer("selector_pos", torch.zeros(1, dtype=torch.long))
        # the permutations of the `permute` rule come from the sampler's own stream, saved
        # with the state dict (get_extra_state), so a resumed run draws the same ones
        self._perm_gen = torch.Generator().manual_seed(int(seed))
        self._critic_ref: tuple = ()
        self._all_reduce: Callable | None = None  # sums a tensor over processes (bound by the trainer)
        self.last_selection = None  # the latest SelectResult (chosen, winners, counts, ...), for inspection

    # ------------------------------------------------------------------ parts
    @property
    def num_generators(self) -> int:
        return len(self.samplers)

    @property
    def window(self) -> int:
        return self.selector_window.shape[0]

    def bind_critic(self, critic: nn.Module, all_reduce: Callable | None = None):
        """The critic that scores candidates (held by reference, not as a submodule) and, with
        several processes, ``all_reduce(tensor)`` summing in place over them (for π's counts)."""
        self._critic_ref = (critic,)
        self._all_reduce = all_reduce

    @property
    def critic(self):
        return self._critic_ref[0] if self._critic_ref else None

    def get_extra_state(self):
        return self._perm_gen.get_state()

    def set_extra_state(self, state):
        if torch.is_tensor(state) and state.dtype == torch.uint8:
            self._perm_gen.set_state(state.cpu())

    @property
    def selector_probs(self) -> torch.Tensor:
        """π: win frequencies over the window (uniform before any minibatch was seen)."""
        wins = self.selector_window.sum(0)
        total = wins.sum()
        uniform = torch.full_like(wins, 1.0 / self.num_generators)
        return torch.where(total > 0, wins / total.clamp_min(1e-12), uniform)

    def draw_seeds(self, n: int, generator: torch.Generator | None = None, device=None):
        u = draw(self.seed_dist, (n, self.seed_dim), generator, device)
        pick = torch.rand((n, 1), generator=generator, device=device)
        return torch.cat([u, pick], 1)

    # ------------------------------------------------------------------ forward
    def forward(self, seeds):
        u, pick = self._split(seeds)
        if not self.training:
            return self.run_chosen(u, self.sample_generators(pick))
        if self.critic is None:
            raise RuntimeError("a training-mode MultiSampler selects with a critic: call bind_critic(critic) first "
                               "(the Trainer does), or switch to eval() to sample from the selector π")
        if self.path == "naive":
            return self._forward_naive(u)
        return self._forward_fast(u)

    def _split(self, seeds):
        if seeds.ndim != 2 or seeds.shape[1] not in (self.seed_dim, self.seed_dim + 1):
            raise ValueError(f"seeds must be [n, {self.seed_dim + 1}] (from draw_seeds) or [n, {self.seed_dim}], "
                             f"got {tuple(seeds.shape)}")
        if seeds.shape[1] == self.seed_dim:  # plain seeds: the generator pick is derived from nothing random
            return seeds, torch.full((seeds.shape[0],), 0.5, device=seeds.device)
        return seeds[:, : self.seed_dim], seeds[:, self.seed_dim]

    def sample_generators(self, pick: torch.Tensor) -> torch.Tensor:
        """i ~ Categorical(π) per sample, by inverse CDF of the given U[0,1) numbers."""
        cdf = self.selector_probs.to(pick.device).cumsum(0)
        idx = torch.searchsorted(cdf, (pick * cdf[-1]).contiguous(), right=True)
        return idx.clamp_(max=self.num_generators - 1)

    def candidates(self, u) -> torch.Tensor:
        """[K, N, ...]: every generator on every seed (with autograd when it is enabled)."""
        outs = [s(u) for s in self.samplers]
        shapes = {tuple(o.shape[1:]) for o in outs}
        if len(shapes) != 1:
            raise ValueError(f"the generators make samples of different shapes {sorted(shapes)}; "
                             "a supersample's candidates must be comparable by one critic")
        return torch.stack(outs, 1)

    def score(self, cands: torch.Tensor) -> torch.Tensor:
        K, N = cands.shape[:2]
        s = self.critic(cands.flatten(0, 1))
        return s.to(torch.promote_types(s.dtype, torch.float32)).reshape(K, N)  # bf16 scores select in fp32

    def _select(self, scores, candidates=None):
        K = scores.shape[0]
        perm = None
        if self.rule == "permute":
            perm = torch.randperm(K, generator=self._perm_gen).to(scores.device, non_blocking=True)
        res = supersample_select(scores, rule=self.rule, window=self.selector_window, window_pos=self.selector_pos,
                                 perm=perm, candidates=candidates, impl=self.impl)
        self._all_reduce_last_counts()
        self.last_selection = res
        return res

    def _all_reduce_last_counts(self):
        # π counts the wins of all ranks together: sum this minibatch's row over ranks
        if self._all_reduce is None:
            return
        slot = (self.selector_pos - 1) % self.window
        row = self.selector_window.index_select(0, slot)
        self._all_reduce(row)
        self.selector_window.index_copy_(0, slot, row)

    def _forward_fast(self, u):
        with torch.no_grad():
            cands = self.candidates(u)
            scores = self.score(cands)
        if not torch.is_grad_enabled():  # critic step: gather the chosen candidates, nothing to re-run
            return self._select(scores, candidates=cands).gathered
        res = self._select(scores)
        del cands
        return self.run_chosen(u, res.chosen, res.counts)

    def _forward_naive(self, u):
        cands = self.candidates(u)
        scores = self.score(cands)
        res = self._select(scores.detach())
        return cands[torch.arange(cands.shape[0], device=cands.device), res.chosen]

    def run_chosen(self, u, chosen, counts=None):
        """Sample j from generator chosen[j] on seed u[j]; each generator runs once on its rows."""
        if counts is None:
            counts = torch.bincount(chosen, minlength=self.num_generators)
        sizes = counts.tolist()  # the one host sync: each generator needs its batch size
        order = torch.argsort(chosen, stable=True)
        parts, start = [], 0
        for i, n in enumerate(sizes):
            if n:
                parts.append(self.samplers[i](u[order[start:start + n]]))
            start += n
        out = torch.cat(parts)
        return out[torch.argsort(order)]  # back to the seeds' order (differentiable gather)

    def sample(self, n: int, seed: int = 0, device=None, batch_size: int = 1024) -> torch.Tensor:
        """n samples from a fixed seed, generators drawn from π (eval mode)."""
        return seeded_sample(self, n, seed, device or self.selector_window.device, batch_size)


def selector_log(trainer, step) -> dict:
    """Trainer callback: π into metrics.jsonl (one number per generator)."""
    sampler = trainer.sampler
    if not isinstance(sampler, MultiSampler):
        return {}
    return {"selector_probs": [round(float(p), 5) for p in sampler.selector_probs.tolist()]}
