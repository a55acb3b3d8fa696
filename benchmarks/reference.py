"""The yardstick: fastmine's training steps written as eager PyTorch GAN code usually is.

Used only by ``fastmine bench`` (``step_configs.build_reference``): it is what fastmine is
timed against, and the bench checks that it computes the same losses as fastmine from the
same state (``step_replay``).
Written the plain way on purpose — each point is a habit of WGAN-GP / MineGAN-style
codebases, not a strawman:

- real batches come from a host-side ``torch.utils.data.DataLoader`` (sampling with
  replacement, so a target smaller than a batch works) and are copied to the device each
  critic step (``pin_memory`` on CUDA);
- a critic step makes the fakes under ``no_grad``, scores real and fake in two passes and
  adds the eager WGAN-GP penalty every step (interpolate, ``autograd.grad`` with
  ``create_graph``, per-sample norm);
- a sampler step freezes the critic with ``requires_grad_(False)`` (as the WGAN-GP
  reference code does) and backpropagates -E[D(S(u))];
- several generators (MineGAN++ eq. 5-10): every candidate of every supersample runs with
  autograd, the critic scores the stacked N·K candidates, and the chosen scores are
  gathered from that one pass (no re-run); the selector's win counts are kept on the host;
- every loss is read with ``.item()`` every step (a host sync per step on CUDA);
- fp32, no autocast, default memory format, ``torch.optim.Adam`` with default options.

Random numbers come from a ``draws`` object (:class:`HostDraws` for timing); the bench's
numerics check passes one that replays fastmine's random streams, so both sides see the
same batches, seeds, ε and permutations.
"""
from __future__ import annotations

import copy

import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset


class HostDraws:
    """Batches from a host DataLoader, seeds and ε drawn on the device by the global RNG."""

    def __init__(self, data: torch.Tensor, batch_size: int, seed_dim: int, seed_dist: str, device, seed: int = 0):
        self.device = torch.device(device)
        data = data.detach().cpu().contiguous()
        sampler = RandomSampler(data, replacement=True, num_samples=1 << 30,
                                generator=torch.Generator().manual_seed(seed))
        self.loader = DataLoader(TensorDataset(data), batch_size=batch_size, sampler=sampler,
                                 pin_memory=self.device.type == "cuda")
        self._it = iter(self.loader)
        self.seed_dim, self.seed_dist = seed_dim, seed_dist

    def real(self, n):
        (x,) = next(self._it)
        return x.to(self.device, non_blocking=True)

    def seeds(self, n):
        if self.seed_dist == "uniform":
            return torch.rand(n, self.seed_dim, device=self.device)
        return torch.randn(n, self.seed_dim, device=self.device)

    def eps(self, n):
        return torch.rand(n, device=self.device)

    def perm(self, k):
        return torch.randperm(k).to(self.device)


def reference_gradient_penalty(critic, real, fake, eps, center=1.0):
    """mean((‖∇D(x̂)‖₂ − center)²) at x̂ = ε·real + (1−ε)·fake, written out."""
    e = eps.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
    out = critic(x_hat)
    (grad,) = torch.autograd.grad(out, x_hat, grad_outputs=torch.ones_like(out), create_graph=True)
    norm = grad.flatten(1).norm(2, dim=1)
    return ((norm - center) ** 2).mean()


class ReferenceMining:
    """Mining (or any sampler-side training) of one or several samplers against one critic.

    samplers: modules u -> sample (e.g. fastmine Samplers: generator(miner(u))); one means
        single-generator mining, several mean supersamples with the ``rule`` selection.
    params: the sampler-side parameters the optimizer updates (the miners').
    Everything is deep-copied: the reference never touches the caller's modules.
    """

    def __init__(self, samplers, critic, params_of, draws, *, batch_size, n_critic=5, gp_weight=10.0,
                 gp_center=1.0, lr=4e-4, critic_lr=4e-4, betas=(0.5, 0.999), rule="permute"):
        self.samplers = [copy.deepcopy(s) for s in samplers]
        self.critic = copy.deepcopy(critic)
        for p in (p for m in (*self.samplers, self.critic) for p in m.parameters()):
            p.data = p.data.contiguous()  # the default memory format, whatever layout the caller's modules use
        self.params = [p for s in self.samplers for p in params_of(s)]
        self.critic_params = [p for p in self.critic.parameters() if p.requires_grad]
        self.draws = draws
        self.B, self.n_critic, self.rule = batch_size, n_critic, rule
        self.gp_weight, self.gp_center = gp_weight, gp_center
        self.opt_critic = torch.optim.Adam(self.critic_params, lr=critic_lr, betas=tuple(betas))
        self.opt_sampler = torch.optim.Adam(self.params, lr=lr, betas=tuple(betas))
        self.wins = []  # per-minibatch win counts (host lists): the selector π's window

    # ------------------------------------------------------------------ sampling
    def _select(self, scores):
        winners = scores.argmax(1)
        self.wins.append(torch.bincount(winners, minlength=scores.shape[1]).tolist())
        if self.rule == "permute":
            return winners[self.draws.perm(scores.shape[0])]
        return winners

    def _fake(self, u, grad):
        if len(self.samplers) == 1:
            fake = self.samplers[0](u)
            return fake, None
        cands = torch.stack([s(u) for s in self.samplers], 1)  # [K, N, ...], autograd through all of them
        K, N = cands.shape[:2]
        scores = self.critic(cands.flatten(0, 1)).view(K, N)
        chosen = self._select(scores.detach())
        rows = torch.arange(K, device=u.device)
        if grad:  # the sampler's loss needs D of the chosen candidates: gather the scores already computed
            return None, scores[rows, chosen]
        return cands[rows, chosen], None

    # ------------------------------------------------------------------ steps
    def critic_step(self):
        real = self.draws.real(self.B)
        u = self.draws.seeds(self.B)
        with torch.no_grad():
            fake, _ = self._fake(u, grad=False)
        d_real = self.critic(real).mean()
        d_fake = self.critic(fake).mean()
        loss = d_fake - d_real
        gp = torch.zeros(())
        if self.gp_weight > 0:
            gp = self.gp_weight * reference_gradient_penalty(self.critic, real, fake, self.draws.eps(self.B),
                                                             self.gp_center)
            loss = loss + gp
        self.opt_critic.zero_grad()
        loss.backward()
        self.opt_critic.step()
        return {"loss_critic": loss.item(), "penalty": gp.item(), "wasserstein": (d_real - d_fake).item()}

    def sampler_step(self):
        for p in self.critic_params:
            p.requires_grad_(False)
        u = self.draws.seeds(self.B)
        fake, scores = self._fake(u, grad=True)
        loss = -(self.critic(fake) if scores is None else scores).mean()
        self.opt_sampler.zero_grad()
        loss.backward()
        self.opt_sampler.step()
        for p in self.critic_params:
            p.requires_grad_(True)
        return loss.item()

    def step(self):
        """One generator-side update: n_critic critic steps, then one sampler step."""
        rows = [self.critic_step() for _ in range(self.n_critic)]
        out = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        out["loss_sampler"] = self.sampler_step()
        if self.wins:
            recent = torch.tensor(self.wins[-1000:], dtype=torch.float64).sum(0)
            out["selector_probs"] = (recent / recent.sum()).tolist()
        return out
