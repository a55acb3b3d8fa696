"""Regularizers: sampler-side loss terms that hold an adapting generator near its frozen source.

A :class:`Regularizer` is set up once before training (``setup``) and then adds a scalar to the
sampler's loss at every sampler step (``sampler_term``); the trainer does not know which are on.

- :class:`EWC` (Li et al. 2020, "Few-shot image generation with elastic weight consolidation"):
  ``λ Σ_i F_i (θ_i − θ0_i)²`` over the generator's parameters, F the diagonal Fisher information of
  the source generator estimated once at setup.
- :class:`CDC` (Ojha et al. 2021, "Few-shot image generation via cross-domain correspondence"): the
  cross-domain distance consistency term ``λ Σ_layers mean_i KL(p_source_i ‖ p_adapt_i)``. Only this
  term: the paper's other half, the image-level adversarial loss restricted to anchor regions of
  the latent space with a patch-level one elsewhere ("anchor/patch split"), is not implemented.

State (EWC's θ0 and F, CDC's source copy) is in ``state_dict``. ``load_state_dict`` works in
either order: after ``setup`` it replaces what setup computed; before it, the state is kept and
``setup`` uses it instead of recomputing it (a resumed run does not re-estimate the Fisher
information, and CDC's source is the saved one even when the generator has already adapted).
"""
from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.func import functional_call

from .samplers import GeneratorAdapter


class Regularizer(nn.Module):
    """A loss term on the sampler side. Subclasses build their state in ``_prepare`` (shapes,
    frozen copies) and fill it in ``_compute`` (skipped when a state was loaded before setup)."""

    name = "regularizer"

    def __init__(self, weight: float):
        super().__init__()
        self.weight = float(weight)
        self.ready = False
        self._pending = None  # a state loaded before setup, applied by setup

    def setup(self, sampler, critic, generator: torch.Generator, device):
        """Once, before training, with the source generator in ``sampler`` and the critic as given."""
        adapter = _adapter_of(sampler, self.name)
        self._prepare(adapter, device)
        pending, self._pending = self._pending, None
        self.ready = True
        if pending is None:
            self._compute(adapter, critic, generator, device)
        else:
            self.load_state_dict(pending)

    def sampler_term(self, sampler, seeds) -> torch.Tensor:
        raise NotImplementedError

    def _prepare(self, adapter: GeneratorAdapter, device):
        raise NotImplementedError

    def _compute(self, adapter: GeneratorAdapter, critic, generator, device):
        """Fill the state built by ``_prepare``; nothing more by default (CDC's copy is its state)."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        mine = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not self.ready:  # nothing to load into yet (its shapes come from the generator)
            self._pending = mine
            return
        expected = self.state_dict()
        bad = sorted(k for k in expected.keys() | mine.keys()
                     if k not in expected or k not in mine or expected[k].shape != mine[k].shape)
        if bad:
            raise ValueError(f"the saved {self.name} state does not fit this generator (keys {bad[:4]} missing, "
                             "extra or of another shape): resume with the generator the run started from")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class EWC(Regularizer):
    """``λ Σ_i F_i (θ_i − θ0_i)²`` (Li et al. 2020), θ0 the generator's parameters at setup.

    F is the diagonal empirical Fisher information of the source, ``F_i = mean_n (∂ℓ_n/∂θ_i)²``
    over ``samples`` draws from the generator's prior (:func:`fisher_information`). Li et al. take
    ℓ from the pretrained discriminator's output; with fastmine's WGAN critic ℓ_n = D(G(z_n)), the
    critic's score as the log-likelihood proxy. F is tiny for most weights, so a useful λ is large:
    pick it from the size of ``fisher`` (the term is λ·Σ F (θ − θ0)²; compare it with the adversarial loss).
    """

    name = "ewc"

    def __init__(self, weight: float, samples: int = 256, batch_size: int = 64):
        super().__init__(weight)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"regularize.ewc_samples must be a positive number of source samples, got {samples!r}")
        self.samples, self.batch_size = samples, batch_size
        self.register_buffer("theta0", torch.zeros(0))  # flat, in generator.parameters() order
        self.register_buffer("fisher", torch.zeros(0))

    def _prepare(self, adapter, device):
        n = sum(p.numel() for p in adapter.parameters())
        dtype = next(adapter.parameters()).dtype
        self.theta0 = torch.zeros(n, dtype=dtype, device=device)
        self.fisher = torch.zeros(n, dtype=dtype, device=device)

    def _compute(self, adapter, critic, generator, device):
        self.theta0.copy_(torch.cat([p.detach().flatten() for p in adapter.parameters()]))
        self.fisher.copy_(fisher_information(adapter, critic, self.samples, generator, device, self.batch_size))

    def sampler_term(self, sampler, seeds) -> torch.Tensor:
        params = list(sampler.generator.parameters())
        sizes = [p.numel() for p in params]
        total = sum((f.view_as(p) * (p - t.view_as(p)).square()).sum()
                    for p, t, f in zip(params, self.theta0.split(sizes), self.fisher.split(sizes)))
        return self.weight * total


def fisher_information(adapter: GeneratorAdapter, critic: nn.Module, n: int, generator: torch.Generator | None,
                       device=None, batch_size: int = 64) -> torch.Tensor:
    """Diagonal empirical Fisher ``mean_k (∂ D(G(z_k))/∂θ)²``, flat in ``adapter.parameters()`` order.

    z_k are drawn from the generator's prior in batches of ``batch_size`` from ``generator``; G runs
    in eval mode (a per-sample gradient needs samples that do not share batch statistics). The
    per-sample gradients are taken one sample at a time: on a DCGAN at 16 px (CPU, one thread) 256
    samples took 0.85 s this way and 1.9 s with torch.func's vmap(grad), and the loop works with
    any generator (vmap refuses in-place and random ops inside a forward).
    """
    names, params = zip(*adapter.named_parameters())
    leaves = [p.detach().requires_grad_() for p in params]  # parameters frozen or not, without touching them
    weights = dict(zip(names, leaves))
    total = [torch.zeros_like(p) for p in leaves]
    with _eval(adapter), torch.enable_grad():
        for start in range(0, n, batch_size):
            latents = adapter.latent_spec.sample(min(batch_size, n - start), generator, device)
            for k in range(next(iter(latents.values())).shape[0]):
                image = functional_call(adapter, weights, ({name: z[k:k + 1] for name, z in latents.items()},))
                grads = torch.autograd.grad(critic(image).sum(), leaves, allow_unused=True)
                for acc, g in zip(total, grads):
                    if g is not None:
                        acc += g.square()
    return torch.cat([acc.flatten() for acc in total]) / n


class CDC(Regularizer):
    """Cross-domain distance consistency (Ojha et al. 2021), the distance term alone.

    For a batch of latents ``sampler.latents(seeds)`` (taken without gradient: the term moves the
    generator, not the miner), features f_i of the frozen source copy and of the adapting
    generator at each layer, ``p_i = softmax_{j≠i} cos(f_i, f_j)``, and
    ``λ Σ_layers mean_i KL(p_source_i ‖ p_adapt_i)`` (:func:`cdc_distance`).

    The KL direction is the official code's (``KLDivLoss(log p_adapt, p_source)``); the paper's
    formula writes KL(p_adapt ‖ p_source). That code also reduces with KLDivLoss's elementwise mean,
    i.e. ``mean_i KL / (N − 1)``, and compares one random layer per sample: its λ (kl_wt = 1000 at
    a batch of 4) is λ·(N − 1) here.

    Both generators run in eval mode for this term: each sample's features do not depend on the
    rest of the batch, the adapting generator's batch-norm statistics are not updated a second
    time per step, and the term is exactly zero while the weights equal the source's.

    ``layers``: module names inside the generator (``generator.module.named_modules()``); None
    picks one per spatial resolution (:func:`default_cdc_layers`).
    """

    name = "cdc"

    def __init__(self, weight: float, layers: list | None = None):
        super().__init__(weight)
        if layers is not None and (not isinstance(layers, (list, tuple)) or not layers
                                   or not all(isinstance(n, str) for n in layers)):
            raise ValueError(f"regularize.cdc_layers must be a non-empty list of generator module names or null "
                             f"(one per resolution), got {layers!r}")
        self.requested = None if layers is None else list(layers)
        self.layers = None  # the names used, set by setup
        self.source = None  # the frozen source copy, a GeneratorAdapter set by setup

    def _prepare(self, adapter, device):
        self.source = GeneratorAdapter(copy.deepcopy(adapter.module), adapter.latent_spec, call=adapter.call,
                                       frozen=True).to(device)
        modules = [n for n, _ in self.source.module.named_modules() if n]
        if self.requested is None:
            self.layers = default_cdc_layers(self.source, device)
            return
        unknown = [n for n in self.requested if n not in modules]
        if unknown:
            shown = ", ".join(modules[:12]) + (", ..." if len(modules) > 12 else "")
            raise ValueError(f"unknown regularize.cdc_layers {unknown}: the generator's modules include {shown}; "
                             "name some of them or set cdc_layers to null (one per resolution)")
        outputs = _probe(self.source, device)
        for n in self.requested:
            if n not in outputs:
                raise ValueError(f"regularize.cdc_layers: module {n!r} does not run in the generator's forward; "
                                 "name a module that does")
            if not torch.is_tensor(outputs[n]) or outputs[n].dim() < 2:
                raise ValueError(f"regularize.cdc_layers: module {n!r} returns "
                                 f"{type(outputs[n]).__name__ if not torch.is_tensor(outputs[n]) else 'a 1-D tensor'}"
                                 ", not a batch of features; name a module that returns a tensor [N, ...]")
        self.layers = list(self.requested)

    def sampler_term(self, sampler, seeds) -> torch.Tensor:
        with torch.no_grad():
            latents = sampler.latents(seeds)
            n = (latents if torch.is_tensor(latents) else next(iter(latents.values()))).shape[0]
            if n < 3:
                raise ValueError(f"CDC compares each sample with the others and needs a batch of at least 3, got {n}; "
                                 "raise train.batch_size")
            with _features(self.source.module, self.layers) as source:
                self.source(latents)
        adapter = sampler.generator
        with _eval(adapter), _features(adapter.module, self.layers) as adapted:
            adapter(latents)
        return self.weight * cdc_distance([source[n] for n in self.layers], [adapted[n] for n in self.layers])


def cdc_distance(source_features, adapted_features) -> torch.Tensor:
    """``Σ_layers mean_i KL(p_source_i ‖ p_adapt_i)`` with ``p_i = softmax_{j≠i} cos(f_i, f_j)``.

    Each argument: one tensor [N, ...] per layer (flattened per sample); computed in at least fp32.
    """
    total = 0.0
    for fs, fa in zip(source_features, adapted_features, strict=True):
        log_ps, log_pa = _log_neighbour_probs(fs), _log_neighbour_probs(fa)
        total = total + (log_ps.exp() * (log_ps - log_pa)).sum(1).mean()
    return total


def _log_neighbour_probs(f):
    """log softmax over j≠i of the cosine similarities of sample i to sample j: [N, N − 1]."""
    f = f.flatten(1)
    f = torch.nn.functional.normalize(f.to(torch.promote_types(f.dtype, torch.float32)), dim=1)
    sim = f @ f.T
    n = sim.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=sim.device)
    return sim[off_diagonal].view(n, n - 1).log_softmax(1)


def default_cdc_layers(adapter: GeneratorAdapter, device=None) -> list[str]:
    """One module per distinct spatial size (H, W) of the generator's 4-D activations.

    A probe forward records each submodule's output (tensors only; the root module is left out,
    being the whole generator). For each resolution, in the order they first appear: the module
    with the most channels there, the last to finish among equals — a block's output rather than
    its inner layers (a container finishes after its children), and features rather than an RGB
    branch at the same size. A module that runs several times counts with its last output.
    """
    outputs = _probe(adapter, device)
    best = {}  # (H, W) -> (channels, name); dicts keep first-appearance order
    for name, out in outputs.items():  # in finishing order
        if torch.is_tensor(out) and out.dim() == 4:
            size, channels = tuple(out.shape[2:]), out.shape[1]
            if size not in best or channels >= best[size][0]:
                best[size] = (channels, name)
    if not best:
        raise ValueError("CDC found no 4-D activations in the generator to compare; set regularize.cdc_layers to "
                         "the modules whose outputs it should compare")
    return [name for _, name in best.values()]


def _probe(adapter: GeneratorAdapter, device=None) -> dict:
    """Every submodule's output on a forward of two zero latents (only shapes matter), in
    finishing order; the latents' prior is not sampled, so latents without one work too."""
    modules = [(n, m) for n, m in adapter.module.named_modules() if n]
    outputs = {}

    def record(name):
        def hook(module, inputs, output):
            outputs.pop(name, None)  # a module that runs again moves to its last finish
            outputs[name] = output
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in modules]
    latents = {name: torch.zeros(2, *latent.shape, device=device) for name, latent in adapter.latent_spec.items()}
    try:
        with torch.no_grad(), _eval(adapter):
            adapter(latents)
    finally:
        for h in handles:
            h.remove()
    return outputs


@contextlib.contextmanager
def _features(module: nn.Module, names):
    """The outputs of the named submodules during the forwards run inside the block."""
    found = dict(module.named_modules())
    feats = {}
    store = lambda name: lambda m, inputs, output: feats.__setitem__(name, output)
    handles = [found[n].register_forward_hook(store(n)) for n in names]
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _eval(module: nn.Module):
    """Eval mode inside the block; every submodule's own mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


def _adapter_of(sampler, name) -> GeneratorAdapter:
    adapter = getattr(sampler, "generator", None)
    if not isinstance(adapter, GeneratorAdapter) or not hasattr(sampler, "latents"):
        raise ValueError(f"{name} regularizes one generator: it needs a sampler with .generator (a GeneratorAdapter) "
                         f"and .latents, got {type(sampler).__name__}; use a single-generator method")
    return adapter


def build_regularizers(cfg) -> list[Regularizer]:
    """The regularizers that ``cfg`` (a :class:`~fastmine.config.RegularizeConfig`) turns on."""
    for key in ("ewc", "cdc"):
        value = getattr(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"regularize.{key} must be a number >= 0 (0 turns it off), got {value!r}")
    out = []
    if cfg.ewc > 0:
        out.append(EWC(cfg.ewc, cfg.ewc_samples))
    if cfg.cdc > 0:
        out.append(CDC(cfg.cdc, cfg.cdc_layers))
    return out
