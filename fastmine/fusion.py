"""Fusing N unconditional generators into one conditioned through its prior (MineGAN++ §4.2).

Generator i owns the region N(μ_i, σ²I) of the fused generator G_F's latent space, with
μ_i = spacing · e_i (distinct coordinate axes, so the regions are equally far apart). G_F
starts as a copy of one source and is trained adversarially against *pseudo-real* data:
samples of the frozen sources G_i (eq. 15-16), never their training data. The two sides
are balanced: each minibatch holds as many fakes as pseudo-real samples, and row r of
both comes from region / source r mod N (every source equally often).

Eq. 15 as written shows the critic images only; then nothing ties region i to source i
(G_F could learn region 1 → source 2, or each region → the mixture). With
``label_critic=True`` (the default) the critic also sees the index: N one-hot channels
(planes for images, extra features for vectors) are appended to both the pseudo-real
sample of source i and the fake from region i. Real and fake row r carry the same index,
so the gradient penalty's interpolates keep exact one-hot labels. ``label_critic=False``
is eq. 15 literally.

The fused generator is then a plain generator (latent ``z`` of the source's size) and is
mined like any other; its file records the region means and σ, and sampling it without a
miner draws z from the mixture of regions.

All of this runs in the one :class:`fastmine.trainer.Trainer`: the sampler is
:class:`FusedSampler`, the "real data" is :class:`PseudoRealData`, which the trainer
indexes like a tensor (fresh source samples per minibatch, from a fixed pool of latent
codes so that a resumed run replays the same batches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .samplers import GeneratorAdapter, Sampler


def region_means(n: int, dim: int, spacing: float = 4.0) -> torch.Tensor:
    """μ_i = spacing · e_i, i < n: [n, dim]."""
    if n > dim:
        raise ValueError(f"fusing {n} generators needs a latent of at least {n} dimensions (one axis per region); "
                         f"the fused generator's latent has {dim}")
    return spacing * torch.eye(n, dim)


def attach_labels(x: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """Append one-hot channels (images) or features (vectors) for ``labels`` in 0..n-1."""
    onehot = F.one_hot(labels.long(), n).to(x.dtype)
    if x.ndim == 2:
        return torch.cat([x, onehot], 1)
    planes = onehot.view(x.shape[0], n, *([1] * (x.ndim - 2))).expand(-1, -1, *x.shape[2:])
    return torch.cat([x, planes], 1)


def single_latent(adapter: GeneratorAdapter):
    if len(adapter.latent_spec) != 1:
        raise ValueError(f"fusion needs generators with a single latent input; got {list(adapter.latent_spec)}")
    name, latent = next(iter(adapter.latent_spec.items()))
    if len(latent.shape) != 1 or latent.prior == "none":
        raise ValueError(f"fusion needs a vector latent with a prior; {name!r} is {latent}")
    return name, latent.shape[0]


class FusedSampler(Sampler):
    """G_F(z), z ~ N(μ_i, σ²I), region i = row mod N (balanced), optionally labelled for the critic."""

    def __init__(self, generator: GeneratorAdapter, means: torch.Tensor, sigma: float = 1.0,
                 label_channels: bool = False):
        super().__init__(generator)
        self.latent_name, dim = single_latent(generator)
        means = torch.as_tensor(means, dtype=torch.float32)
        if means.ndim != 2 or means.shape[1] != dim:
            raise ValueError(f"region means must be [N, {dim}], got {tuple(means.shape)}")
        self.register_buffer("region_means", means)
        self.sigma = float(sigma)
        self.label_channels = label_channels

    @property
    def num_regions(self):
        return self.region_means.shape[0]

    def draw_seeds(self, n: int, generator: torch.Generator | None = None, device=None):
        device = device or self.region_means.device
        region = torch.arange(n, device=device) % self.num_regions
        noise = torch.randn((n, self.region_means.shape[1]), generator=generator, device=device)
        return {"z": self.region_means.to(device)[region] + self.sigma * noise, "region": region}

    def region_seeds(self, region: int, n: int, generator=None, device=None):
        """n latents from region ``region`` alone (to inspect what G_F makes there)."""
        device = device or self.region_means.device
        noise = torch.randn((n, self.region_means.shape[1]), generator=generator, device=device)
        return {"z": self.region_means[region].to(device) + self.sigma * noise,
                "region": torch.full((n,), region, device=device, dtype=torch.long)}

    def visible(self, x: torch.Tensor) -> torch.Tensor:
        """The samples without the label channels the critic sees (for pictures)."""
        return x[:, : x.shape[1] - self.num_regions] if self.label_channels else x

    def forward(self, seeds):
        if torch.is_tensor(seeds):
            if self.label_channels:
                raise ValueError("a labelled fused sampler needs seeds from draw_seeds (with their regions)")
            return self.generator({self.latent_name: seeds})
        x = self.generator({self.latent_name: seeds["z"]})
        return attach_labels(x, seeds["region"], self.num_regions) if self.label_channels else x


class PseudoRealData:
    """The sources' samples as the trainer's "real" data (eq. 15's Σ_i E[D(G_i(z))]).

    Indexed like the data tensor the trainer samples from: ``data[idx]`` returns len(idx)
    fresh samples, row r from source r mod N (balanced), its latent picked by idx from a
    fixed pool per source (pool·N ≫ any number of minibatches' worth of distinct codes).
    """

    def __init__(self, sources, pool: int = 20000, seed: int = 0, label_channels: bool = True):
        self.sources = list(sources)
        self.pool = int(pool)
        self.label_channels = label_channels
        gen = torch.Generator().manual_seed(seed)
        self.banks = [s.latent_spec.sample(self.pool, gen) for s in self.sources]
        self.device = torch.device("cpu")

    def __len__(self):
        return len(self.sources) * self.pool

    def to(self, device):
        self.device = torch.device(device)
        self.sources = [s.to(self.device) for s in self.sources]
        self.banks = [{k: v.to(self.device) for k, v in b.items()} for b in self.banks]
        return self

    @torch.no_grad()
    def __getitem__(self, idx):
        if isinstance(idx, slice):
            idx = torch.arange(len(self), device=self.device)[idx]
        idx = torch.as_tensor(idx, device=self.device).reshape(-1)
        n, N = len(idx), len(self.sources)
        out = None
        for i, (src, bank) in enumerate(zip(self.sources, self.banks)):
            rows = torch.arange(i, n, N, device=self.device)
            if len(rows) == 0:
                continue
            x = src({k: v[idx[rows] % self.pool] for k, v in bank.items()})
            if out is None:
                out = x.new_empty((n, *x.shape[1:]))
            out[rows] = x
        if self.label_channels:
            out = attach_labels(out, torch.arange(n, device=self.device) % N, N)
        return out
