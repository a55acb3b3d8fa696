"""GAN inversion: latents whose images reconstruct given images, and a miner fitted to them.

Three ways (the inversion lecture notes, §"optimization / learning / hybrid"):

- ``init="prior"`` — optimisation-based: latents start at draws from the generator's prior and
  Adam minimises, per image, ``pixel_weight · mean((G(z) − x)²) + feature_weight ·
  mean((F(G(z)) − F(x))²) + prior_weight · R(z)``. F is a feature network (the shipped
  digits classifier's penultimate layer for 1-channel images; LPIPS (AlexNet) for 3-channel
  images, its weights fetched on first use, :mod:`fastmine.metrics.lpips`, the term then being the
  LPIPS distance itself; pixels only otherwise, or pass your own). R is the prior's negative
  log-density up to a constant: ½·mean(z²) for a normal prior (it keeps z in the region the
  generator was trained on), the squared distance outside [0, 1] for a uniform one; latents
  with prior "none" (a class embedding) start at zero and are not regularised.
- ``init="encoder"`` with ``steps=0`` — learning-based: a small encoder is trained on the
  generator's own samples (z from the prior, x = G(z), loss ‖E(x) − z‖²) and predicts z.
- ``init="encoder"`` with ``steps>0`` — hybrid: the encoder's prediction starts the optimisation
  (the default).

Defaults (``invert`` section), measured once (seed 0) on the digits 0-8 source at 16 px with a
32-d latent: inverting 32 of its own samples, whose mean pixel MSE to images of random latents
is 0.358, optimisation alone from the prior (300 steps) reached 0.0027 with pixels only and
0.0083 with feature_weight 0.1; the encoder alone 0.030; the hybrid (100 steps) 0.0006 with
pixels only and 0.0015 with feature_weight 0.1. A feature weight of 1 cost 8x in pixel error
(0.049 from the prior). On 32 real 9s (not the source's data) the hybrid reached 0.024 with
feature weight 0.1, optimisation from the prior 0.029.

:func:`fit_miner` then fits a miner so that M(u) matches the inverted latents' first two
moments (mean and covariance), a few hundred steps with no generator in the loop: the
``miner.init=inversion`` start of mining.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import InvertConfig, register_choices
from .latent import LatentSpec, draw
from .metrics.features import load_digits_feature_net
from .metrics.lpips import find_lpips
from .nets import DCGANCritic
from .samplers import GeneratorAdapter

INITS = register_choices("invert.init", ("prior", "encoder"))


@dataclass
class Inversion:
    """latents: name -> [N, ...] (CPU); images: G(latents); errors per image."""
    latents: dict
    images: torch.Tensor
    pixel_error: torch.Tensor      # mean squared error per image, in [-1, 1] units
    feature_error: torch.Tensor | None
    baseline_error: torch.Tensor   # the same for one random latent per image: what "far below" means

    def summary(self) -> str:
        feat = "" if self.feature_error is None else f", feature MSE {self.feature_error.mean():.4f}"
        return (f"inverted {len(self.images)} images: pixel MSE {self.pixel_error.mean():.4f} "
                f"(random latents: {self.baseline_error.mean():.4f}){feat}")

    def flat(self, spec: LatentSpec) -> torch.Tensor:
        """The latents with a prior as one [N, d] matrix (what a miner is fitted to). A latent the
        generator normalises (``sphere``) is put at radius sqrt(numel): the inversion's prior
        penalty shrinks its free length (to ~1/3 of that on a 32-d ProGAN), and a miner fitted to
        such short, tight latents lands far off their directions (issue #26)."""
        def one(name, lat):
            x = self.latents[name].flatten(1)
            return x * (lat.numel ** 0.5 / x.norm(dim=1, keepdim=True).clamp_min(1e-12)) if lat.sphere else x
        return torch.cat([one(n, lat) for n, lat in spec.items() if lat.prior != "none"], 1)


def default_features(images: torch.Tensor, device):
    """The shipped digits net's features for 1-channel images; LPIPS for 3-channel ones (its
    weights fetched on first use, :mod:`fastmine.metrics.lpips`), scaled so that the feature term's mean
    over dimensions is the LPIPS distance itself; None otherwise (pixels only)."""
    if images.ndim == 4 and images.shape[1] == 1:
        net = load_digits_feature_net(device)
        return net.features
    lpips = find_lpips(device) if images.ndim == 4 and images.shape[1] == 3 else None
    if lpips is not None:
        def features(x):
            e = lpips.embed(x)
            return e * e.shape[1] ** 0.5
        return features
    return None


def prior_penalty(latent, z: torch.Tensor) -> torch.Tensor:
    """R(z) per sample: the prior's negative log-density up to a constant (module docstring)."""
    flat = z.flatten(1)
    if latent.prior == "normal":
        return 0.5 * flat.pow(2).mean(1)
    if latent.prior == "uniform":
        return (torch.relu(-flat).pow(2) + torch.relu(flat - 1).pow(2)).mean(1)
    return torch.zeros(len(z), device=z.device)


class LatentEncoder(nn.Module):
    """x -> every latent of a spec: the critic's conv stack for images, an MLP for vectors."""

    def __init__(self, example: torch.Tensor, spec: LatentSpec, width: int = 32):
        super().__init__()
        self.spec = spec
        out = sum(lat.numel for lat in spec.values())
        if example.ndim == 4:
            convs = DCGANCritic(int(example.shape[-1]), int(example.shape[1]), width)
            c_last = convs.blocks[-1][1].in_features
            self.body = nn.Sequential(*convs.blocks[:-1], nn.Flatten(), nn.Linear(c_last, out))
        else:
            d = int(example.shape[1])
            self.body = nn.Sequential(nn.Linear(d, 4 * width), nn.LeakyReLU(0.2), nn.Linear(4 * width, 4 * width),
                                      nn.LeakyReLU(0.2), nn.Linear(4 * width, out))

    def forward(self, x) -> dict:
        flat, out, i = self.body(x), {}, 0
        for name, lat in self.spec.items():
            out[name] = flat[:, i:i + lat.numel].view(len(x), *lat.shape)
            i += lat.numel
        return out


def train_encoder(adapter: GeneratorAdapter, example: torch.Tensor, steps: int, batch_size: int, lr: float,
                  generator: torch.Generator, device, progress=False) -> LatentEncoder:
    """An encoder fitted on the generator's own samples (latents with prior "none" are drawn N(0, I))."""
    spec = adapter.latent_spec
    encoder = LatentEncoder(example, spec).to(device)
    opt = torch.optim.Adam(encoder.parameters(), lr=lr)
    for _ in tqdm(range(steps), desc="encoder", disable=not progress):
        z = {n: (torch.randn if lat.prior in ("normal", "none") else torch.rand)(
            (batch_size, *lat.shape), generator=generator, device=device) for n, lat in spec.items()}
        with torch.no_grad():
            x = adapter(z)
        pred = encoder(x)
        loss = sum((pred[n] - z[n]).pow(2).mean() for n in spec)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return encoder.eval()


def invert(generator, images, cfg: InvertConfig | None = None, *, features="auto", seed=0, device="cpu",
           progress=True) -> Inversion:
    """Latents of ``generator`` (a :class:`GeneratorAdapter` or a sampler holding one) that
    reconstruct ``images`` [N, ...] in [-1, 1]; settings from ``cfg`` (``invert`` section).

    features: "auto" (module docstring), None (pixels only) or a callable x -> features."""
    cfg = cfg or InvertConfig()
    adapter = getattr(generator, "generator", generator)
    if not isinstance(adapter, GeneratorAdapter):
        raise TypeError(f"invert needs a GeneratorAdapter or a sampler holding one, got {type(generator).__name__}")
    if cfg.init not in INITS:
        raise ValueError(f"invert.init must be one of {', '.join(INITS)}, got {cfg.init!r}")
    adapter = adapter.to(device).freeze(True)
    images = torch.as_tensor(images).float().to(device)
    spec, gen = adapter.latent_spec, torch.Generator(device).manual_seed(seed)
    if features == "auto":
        features = default_features(images, device) if cfg.feature_weight > 0 else None
    encoder = None
    if cfg.init == "encoder":
        encoder = train_encoder(adapter, images[:1], cfg.encoder_steps, cfg.batch_size, cfg.encoder_lr, gen, device,
                                progress)
    latents, outs, pixel, feature, baseline = {n: [] for n in spec}, [], [], [], []
    batches = range(0, len(images), cfg.batch_size)
    bar = tqdm(total=len(batches) * cfg.steps, desc="invert", disable=not progress)
    for start in batches:
        x = images[start:start + cfg.batch_size]
        with torch.no_grad():
            target_feats = features(x) if features is not None else None
            random = adapter({n: draw(lat.prior if lat.prior != "none" else "normal", (len(x), *lat.shape), gen, device)
                              for n, lat in spec.items()})
            baseline.append((random - x).pow(2).flatten(1).mean(1).cpu())
            if encoder is not None:
                z0 = encoder(x)
            else:
                z0 = {n: (draw(lat.prior, (len(x), *lat.shape), gen, device) if lat.prior != "none" else
                          torch.zeros((len(x), *lat.shape), device=device)) for n, lat in spec.items()}
        z = {n: v.detach().clone().requires_grad_(True) for n, v in z0.items()}
        opt = torch.optim.Adam(list(z.values()), lr=cfg.lr)
        for _ in range(cfg.steps):
            loss = per_image_loss(adapter, z, x, features, target_feats, cfg)[0].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
        with torch.no_grad():
            _, pix, feat, out = per_image_loss(adapter, z, x, features, target_feats, cfg)
        for n in spec:
            latents[n].append(z[n].detach().cpu())
        outs.append(out.cpu())
        pixel.append(pix.cpu())
        if feat is not None:
            feature.append(feat.cpu())
    bar.close()
    return Inversion({n: torch.cat(v) for n, v in latents.items()}, torch.cat(outs), torch.cat(pixel),
                     torch.cat(feature) if feature else None, torch.cat(baseline))


def per_image_loss(adapter, z, x, features, target_feats, cfg):
    """(total, pixel MSE, feature MSE or None, reconstruction) per image."""
    out = adapter(z)
    pixel = (out - x).pow(2).flatten(1).mean(1)
    total = cfg.pixel_weight * pixel
    feat = None
    if features is not None:
        feat = (features(out) - target_feats).pow(2).flatten(1).mean(1)
        total = total + cfg.feature_weight * feat
    if cfg.prior_weight:
        total = total + cfg.prior_weight * sum(prior_penalty(lat, z[n]) for n, lat in adapter.latent_spec.items())
    return total, pixel, feat, out


def fit_miner(miner: nn.Module, sampler, target_latents: torch.Tensor, steps: int = 300, lr: float = 1e-3,
              batch_size: int = 256, seed: int = 0) -> list:
    """Fit ``miner`` (inside ``sampler``) so that its latents' mean and covariance match those of
    ``target_latents`` [N, d] (the latents with a prior, flattened as :meth:`Inversion.flat`).
    No generator in the loop. Returns the loss per step."""
    spec = sampler.generator.latent_spec
    device = next(miner.parameters()).device
    target = target_latents.to(device)
    mean_t, centred_t = target.mean(0), target - target.mean(0)
    opt = torch.optim.Adam(miner.parameters(), lr=lr)
    gen = torch.Generator(device).manual_seed(seed)
    losses = []
    for _ in range(steps):
        out = sampler.latents(sampler.draw_seeds(batch_size, gen, device))
        flat = torch.cat([out[n].flatten(1) for n, lat in spec.items() if lat.prior != "none"], 1)
        loss = (flat.mean(0) - mean_t).pow(2).sum() + covariance_distance(flat - flat.mean(0), centred_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def covariance_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖cov(x) − cov(y)‖²_F of centred samples x [B, d], y [N, d], without a d×d matrix.

    With C_x = XᵀX/(B−1): ‖C_x − C_y‖² = ‖XXᵀ‖²/(B−1)² + ‖YYᵀ‖²/(N−1)² − 2‖XYᵀ‖²/((B−1)(N−1))
    (tr(XᵀX YᵀY) = ‖XYᵀ‖²): O((B+N)²d) instead of O(Bd²) and d² memory, so a StyleGAN's w+
    (d = 14 × 512 = 7,168 at 256 px) fits as easily as a 64-d latent. When d < B + N the d×d
    matrices are the smaller ones (a 4-d toy fitted on 2,048 samples) and are used instead."""
    b, n = len(x) - 1, len(y) - 1
    if x.shape[1] < len(x) + len(y):
        return (x.T @ x / b - y.T @ y / n).pow(2).sum()
    return ((x @ x.T).pow(2).sum() / b ** 2 + (y @ y.T).pow(2).sum() / n ** 2
            - 2 * (x @ y.T).pow(2).sum() / (b * n))
