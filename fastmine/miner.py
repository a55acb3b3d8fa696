"""Miners (MineGAN) / code generators (GAN reprogramming): seed u -> every latent of a spec."""
from __future__ import annotations

import torch
from torch import nn

from .config import register_choices
from .latent import LatentSpec, transport

INITS = ("residual", "normal")
# how a run's miner starts (miner.init): one of Miner's INITS; "inversion", fitted to the target's
# inverted latents after it is built (fastmine.inversion.fit_miner); "given", a miner the user
# passed, kept as it is
STARTS = register_choices("miner.init", (*INITS, "inversion", "given"), optional=True)
SEED_DISTS = register_choices("miner.seed_dist", ("normal", "uniform"), optional=True)


class Miner(nn.Module):
    """One small MLP head per latent, all fed by the same seed u.

    With several latents (a class-conditional generator's ``z`` and class embedding) the
    heads are MineGAN++'s M^z and M^c of §4.1.

    ``init="normal"`` is the paper's: every weight ~ N(0, 0.01), biases 0, so the miner
    starts by mapping every seed near one point. ``init="residual"`` starts *at the source
    prior*: head(u) = T(u) + MLP(u) with the MLP's last layer zero-initialised and T the
    elementwise transport from the seed distribution to the latent's prior (identity for
    normal seeds and a normal prior, the inverse normal CDF for uniform seeds). It needs the
    seed dimension to equal the latent's size; latents with prior 'none' fall back to
    the paper's init.

    The default is the paper's init: on the digits task (MineGAN w/o FT, 300 updates, 3
    seeds) it reached FID 34.6 ± 3.8 against 51.6 ± 3.0 for the residual init, although it
    starts collapsed (FID 370 at 50 updates against 195) — see docs/methods.md, "Miner initialisation".
    """

    def __init__(self, latent_spec, seed_dim=None, seed_dist="normal", hidden=None, layers=2, init="normal"):
        super().__init__()
        self.latent_spec = LatentSpec(latent_spec)
        if init not in INITS:
            raise ValueError(f"unknown miner init {init!r}; use one of {', '.join(INITS)}")
        if seed_dist not in SEED_DISTS:
            raise ValueError(f"seed_dist must be one of {', '.join(SEED_DISTS)}, got {seed_dist!r}")
        if layers < 1:
            raise ValueError(f"a miner needs at least one layer, got layers={layers}")
        sizes = [latent.numel for latent in self.latent_spec.values()]
        self.seed_dim = int(seed_dim or sizes[0])
        self.seed_dist, self.init, self.layers = seed_dist, init, layers
        self.hidden = hidden
        self.heads = nn.ModuleDict()
        self.residual = {}
        for (name, latent), size in zip(self.latent_spec.items(), sizes):
            width = hidden or max(size, self.seed_dim)
            dims = [self.seed_dim] + [width] * (layers - 1) + [size]
            mods = []
            for i in range(layers):
                mods.append(nn.Linear(dims[i], dims[i + 1]))
                if i < layers - 1:
                    mods.append(nn.ReLU())
            head = nn.Sequential(*mods)
            residual = init == "residual" and latent.prior != "none" and size == self.seed_dim
            if init == "residual" and latent.prior != "none" and size != self.seed_dim:
                raise ValueError(
                    f"residual miner init needs seed_dim == size of latent {name!r} "
                    f"({self.seed_dim} != {size}); set miner.seed_dim={size} or miner.init=normal"
                )
            for m in head:
                if isinstance(m, nn.Linear):
                    if not residual:
                        nn.init.normal_(m.weight, 0.0, 0.01)
                        nn.init.zeros_(m.bias)
            if residual:
                nn.init.zeros_(head[-1].weight)
                nn.init.zeros_(head[-1].bias)
            self.heads[name] = head
            self.residual[name] = residual

    def config(self) -> dict:
        return {
            "latent_spec": self.latent_spec.to_dict(), "seed_dim": self.seed_dim,
            "seed_dist": self.seed_dist, "hidden": self.hidden, "layers": self.layers, "init": self.init,
        }

    def forward(self, u: torch.Tensor) -> dict:
        out = {}
        for name, latent in self.latent_spec.items():
            h = self.heads[name](u)
            if self.residual[name]:
                h = h + transport(u, self.seed_dist, latent.prior)
            out[name] = h.view(u.shape[0], *latent.shape)
        return out
