"""Class-conditional generators for conditional mining (MineGAN++ §4.1).

A class-conditional generator declares two latents: ``z`` (prior normal) and
``class_embedding`` (prior "none": it is an embedding vector E(l), not something to draw).
A fastmine :class:`~fastmine.miner.Miner` has one head per latent, so mining it learns
M^z and M^c from one seed u — G(M^z(u), M^c(u)) — with the ordinary eq. 3-4 and an
ordinary (unconditional) critic on the target images.

Two generators ship here:

- :class:`ConditionalDCGAN`, trained by method ``pretrain_conditional`` (builder in
  :mod:`fastmine.runs`): a small class-conditional WGAN-GP recipe on the built-in digits, so
  conditional mining runs offline. The generator concatenates z with the class embedding;
  the critic sees the label as one-hot planes appended to the image (real images with their
  labels, fakes with the labels they were drawn for, :class:`LabelledSampler`), trained in
  the one trainer.
- :func:`biggan` / :func:`load_biggan`: BigGAN(-deep) through the ``pytorch-pretrained-biggan``
  package (``pip install 'fastmine[biggan]'``). Latent spec z (z_dim) + class embedding
  (z_dim); ``truncation`` is a setting: the miner's z is scaled by it (so the latent keeps
  an N(0, I) prior and the residual miner starts at the truncated prior) and it selects
  BigGAN's batch-norm statistics. :func:`load_biggan` reads a local file (``pytorch_model.bin``
  or safetensors, weights only) and its ``config.json``, or a catalogue name
  (``biggan-deep/256``: the package's published files, fetched once by :mod:`fastmine.hub`).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from . import hub
from .files import read_file
from .fusion import attach_labels
from .latent import LatentSpec
from .nets import DCGANGenerator
from .samplers import GeneratorAdapter

FACTORY_DCGAN = "fastmine.conditional:conditional_dcgan"
FACTORY_BIGGAN = "fastmine.conditional:biggan"


class ConditionalDCGAN(nn.Module):
    """G(z, e): a DCGAN generator on [z, e]; ``embedding`` maps labels to e for pretraining."""

    def __init__(self, latent_dim=32, num_classes=10, embed_dim=16, image_size=8, channels=1, width=32, norm="batch"):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.body = DCGANGenerator(latent_dim + embed_dim, image_size, channels, width, norm)
        self.latent_spec = LatentSpec({"z": ((latent_dim,), "normal"), "class_embedding": ((embed_dim,), "none")})

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels.long())

    def forward(self, z, class_embedding):
        return self.body(torch.cat([z.flatten(1), class_embedding.flatten(1)], 1))


def conditional_dcgan(**kwargs) -> ConditionalDCGAN:
    """Factory (``"fastmine.conditional:conditional_dcgan"``) stored in saved files."""
    return ConditionalDCGAN(**kwargs)


def conditional_adapter(module: nn.Module, build: dict | None = None, frozen=True) -> GeneratorAdapter:
    return GeneratorAdapter(module, module.latent_spec, build=build, frozen=frozen)


class LabelledSampler(nn.Module):
    """Pretraining only: G(z, E(l)) for random labels l, with l appended as one-hot planes."""

    def __init__(self, generator: GeneratorAdapter, num_classes: int):
        super().__init__()
        self.generator, self.num_classes = generator, num_classes

    def draw_seeds(self, n, generator=None, device=None):
        z = self.generator.latent_spec["z"]
        return {"z": torch.randn((n, *z.shape), generator=generator, device=device),
                "label": torch.randint(self.num_classes, (n,), generator=generator, device=device)}

    def visible(self, x: torch.Tensor) -> torch.Tensor:
        """The images without the label planes the critic sees (for pictures)."""
        return x[:, : x.shape[1] - self.num_classes]

    def forward(self, seeds):
        emb = self.generator.module.embed(seeds["label"])
        x = self.generator({"z": seeds["z"], "class_embedding": emb})
        return attach_labels(x, seeds["label"], self.num_classes)


# --------------------------------------------------------------------------- BigGAN
class BigGANAdapterModule(nn.Module):
    """BigGAN(-deep) of ``pytorch-pretrained-biggan`` as G(z, class_embedding)."""

    def __init__(self, config=None, truncation: float = 0.4):
        super().__init__()
        try:  # an optional extra: imported where it is needed
            from pytorch_pretrained_biggan import BigGAN, BigGANConfig
        except ImportError as e:  # pragma: no cover - depends on the optional extra
            raise ImportError("the BigGAN adapter needs `pip install 'fastmine[biggan]'` "
                              "(package pytorch-pretrained-biggan)") from e
        if not 0.0 < float(truncation) <= 1.0:
            raise ValueError(f"BigGAN truncation must be in (0, 1], got {truncation}")
        if config is None:
            cfg = BigGANConfig()
        elif isinstance(config, (str, Path)):
            cfg = BigGANConfig.from_json_file(str(config))
        elif isinstance(config, dict):
            cfg = BigGANConfig.from_dict(config)
        else:
            cfg = config
        self.config_dict = json.loads(cfg.to_json_string())
        self.truncation = float(truncation)
        self.model = BigGAN(cfg)
        # the package leaves the unconditional batch norm's affine uninitialised (torch.Tensor(n):
        # whatever was in memory, often zeros, which cuts every input off the output); loaded
        # weights overwrite it, a random model needs the identity
        for m in self.model.modules():
            if getattr(m, "conditional", True) is False and isinstance(getattr(m, "weight", None), nn.Parameter):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        _settle_spectral_norm(self.model)
        self.num_classes = cfg.num_classes
        self.latent_spec = LatentSpec({"z": ((cfg.z_dim,), "normal"), "class_embedding": ((cfg.z_dim,), "none")})

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels.long(), self.num_classes).to(self.model.embeddings.weight.dtype)
        return self.model.embeddings(onehot)

    def forward(self, z, class_embedding):
        cond = torch.cat([self.truncation * z, class_embedding], 1)
        return self.model.generator(cond, self.truncation)


def _settle_spectral_norm(model: nn.Module, iterations: int = 30):
    """Power-iterate every spectral norm's (u, v) of a freshly initialised model.

    torch draws them at random without iterating; in eval mode σ = uᵀWv is then far below
    the true norm and W/σ blows activations up by orders of magnitude per layer. Loaded
    weights bring their own converged (u, v)."""
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    for _ in range(iterations):
                        hook.compute_weight(module, do_power_iteration=True)


def biggan(config=None, truncation: float = 0.4) -> BigGANAdapterModule:
    """Factory (``"fastmine.conditional:biggan"``): a randomly initialised BigGAN of ``config``."""
    return BigGANAdapterModule(config, truncation)


def load_biggan(weights, config=None, truncation: float = 0.4, frozen=True) -> GeneratorAdapter:
    """A frozen BigGAN adapter.

    weights: the folder ``BigGAN.from_pretrained`` would use (``pytorch_model.bin`` +
        ``config.json``), a weights file (.bin/.pt read weights-only, or .safetensors), or a
        catalogue name / URL (fetched once into fastmine's cache).
    config: ``config.json`` path or dict; default the folder's config.json, or ``NAME-config.json``
        beside ``NAME-pytorch_model.bin`` (how the package publishes them), else the 128 px one.
    """
    weights = Path(hub.resolve(weights))
    if weights.is_dir():
        config = config or (weights / "config.json" if (weights / "config.json").is_file() else None)
        weights = weights / "pytorch_model.bin"
    beside = weights.with_name(weights.name.removesuffix("pytorch_model.bin") + "config.json")
    if config is None and weights.name.endswith("-pytorch_model.bin") and beside.is_file():
        config = beside
    if not weights.is_file():
        raise FileNotFoundError(f"BigGAN weights {str(weights)!r} not found: name the folder or file that holds them "
                                "(or a catalogue name such as biggan-deep/256)")
    module = biggan(config, truncation)
    state, _ = read_file(weights)
    missing, unexpected = module.model.load_state_dict(state, strict=False)
    params = {n for n, _ in module.model.named_parameters()}
    if any(m in params for m in missing):
        lacking = sorted(m for m in missing if m in params)[:5]
        raise ValueError(f"{str(weights)!r} lacks BigGAN parameters {lacking}...; "
                         "is the config right for these weights?")
    if unexpected:
        warnings.warn(f"ignored {len(unexpected)} unexpected tensors in {weights}: {unexpected[:3]}")
    build = {"factory": FACTORY_BIGGAN, "kwargs": {"config": module.config_dict, "truncation": module.truncation}}
    return GeneratorAdapter(module, module.latent_spec, build=build, frozen=frozen)
