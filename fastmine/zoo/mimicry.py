"""kwotsin/mimicry (torch_mimicry) checkpoints as fastmine's own networks: SNGAN, SSGAN, cGAN-PD.

Mimicry's ``save_checkpoint`` writes ``{"model_state_dict", "optimizer_state_dict", "global_step"}``
to ``LOG_DIR/checkpoints/netG/netG_{step}_steps.pth`` and ``…/netD/netD_{step}_steps.pth``; its
released models are such ``netG.pth`` files. There is no config: each model is a class per
resolution (``SNGANGenerator32`` …), and the tensors tell which one. :func:`read` infers the class
and its constructor keywords (``nz``, ``ngf`` / ``ndf``, ``bottom_width``, ``num_classes``) from the
names and shapes, so a file fastmine does not build is refused naming its tensors.

The networks are SNGAN's ResNets at 32, 48, 64 and 128 px: the generator's blocks upsample
bilinearly (``align_corners=False``), batch norm in eval mode with its running statistics
(class-conditional for cGAN-PD: per-class gain and bias from an embedding); the critic's blocks
use spectral norm (torch's, Mimicry's default, ``eps=1e-12``). SSGAN's critic is SNGAN's plus the
rotation head ``l_y`` (loaded, not scored); cGAN-PD's adds the projection ``l_y`` of the class's
embedding on the features. InfoMax-GAN's generator is SNGAN's and loads as one.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

FAMILY = "mimicry"
# per resolution: the generator's (in, out) widths as right shifts of ngf, the bottom width; the
# critic's (in, out, downsample) as right shifts of ndf (block1, the optimised block, first), the
# name of its last linear layer
G_SHIFTS = {32: [(0, 0)] * 3, 48: [(0, 1), (1, 2), (2, 3)], 64: [(0, 1), (1, 2), (2, 3), (3, 4)],
            128: [(0, 0), (0, 1), (1, 2), (2, 3), (3, 4)]}
BOTTOM = {32: 4, 48: 6, 64: 4, 128: 4}
D_SHIFTS = {32: [(None, 0, True), (0, 0, True), (0, 0, False), (0, 0, False)],
            48: [(None, 4, True), (4, 3, True), (3, 2, True), (2, 1, True), (1, 0, False)],
            64: [(None, 4, True), (4, 3, True), (3, 2, True), (2, 1, True), (1, 0, True)],
            128: [(None, 4, True), (4, 3, True), (3, 2, True), (2, 1, True), (1, 0, True), (0, 0, False)]}
D_LINEAR = {32: "l5", 48: "l5", 64: "l6", 128: "l7"}
ROTATIONS = 4  # SSGAN's rotation classes


def _sn_conv(cin, cout, k, padding):
    return spectral_norm(nn.Conv2d(cin, cout, k, 1, padding))


class MimicrySpectralNorm:
    """Mimicry's own spectral norm (torch_mimicry.modules.spectral_norm), which cGAN-PD's critic heads
    get: the weight as is, ``sn_u`` [1, rows] and ``sn_sigma``; every call does one power iteration
    from ``sn_u`` (kept only in training) and divides the weight by the sigma it gives."""

    def _init_sn(self, rows):
        self.register_buffer("sn_u", torch.randn(1, rows))
        self.register_buffer("sn_sigma", torch.ones(1))

    def sn_weight(self):
        w = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = F.normalize(self.sn_u @ w, eps=1e-12)
            u = F.normalize(v @ w.t(), eps=1e-12)
        sigma = u @ w @ v.t()
        if self.training:
            with torch.no_grad():
                self.sn_sigma[:] = sigma
                self.sn_u[:] = u
        return self.weight / sigma


class MimicrySNLinear(nn.Linear, MimicrySpectralNorm):
    def __init__(self, cin, cout):
        nn.Linear.__init__(self, cin, cout)
        self._init_sn(cout)

    def forward(self, x):
        return F.linear(x, self.sn_weight(), self.bias)


class MimicrySNEmbedding(nn.Embedding, MimicrySpectralNorm):
    def __init__(self, num, dim):
        nn.Embedding.__init__(self, num, dim)
        self._init_sn(num)

    def forward(self, index):
        return F.embedding(index, self.sn_weight())


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without affine, then the class's gain and bias from ``embed`` (one row per class)."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.embed = nn.Embedding(num_classes, 2 * num_features)

    def forward(self, x, c):
        gamma, beta = (c @ self.embed.weight).chunk(2, 1)
        return gamma[:, :, None, None] * self.bn(x) + beta[:, :, None, None]


class GBlock(nn.Module):
    """BN-ReLU-up-conv-BN-ReLU-conv plus an upsampled 1x1 shortcut (bilinear upsampling)."""

    def __init__(self, cin, cout, num_classes=0):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1)
        if num_classes:
            self.b1, self.b2 = ConditionalBatchNorm2d(cin, num_classes), ConditionalBatchNorm2d(cout, num_classes)
        else:
            self.b1, self.b2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.c_sc = nn.Conv2d(cin, cout, 1, 1, 0)

    @staticmethod
    def _up(x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def _bn(self, bn, x, c):
        return bn(x) if c is None else bn(x, c)

    def forward(self, x, c=None):
        h = self.c1(self._up(F.relu(self._bn(self.b1, x, c))))
        h = self.c2(F.relu(self._bn(self.b2, h, c)))
        return h + self.c_sc(self._up(x))


class DBlockOptimized(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.c1, self.c2, self.c_sc = _sn_conv(cin, cout, 3, 1), _sn_conv(cout, cout, 3, 1), _sn_conv(cin, cout, 1, 0)

    def forward(self, x):
        return F.avg_pool2d(self.c2(F.relu(self.c1(x))), 2) + self.c_sc(F.avg_pool2d(x, 2))


class DBlock(nn.Module):
    """ReLU-conv-ReLU-conv(-pool) plus a 1x1 shortcut where the width or size changes; the hidden
    width is the input's."""

    def __init__(self, cin, cout, downsample):
        super().__init__()
        self.downsample = downsample
        self.c1, self.c2 = _sn_conv(cin, cin, 3, 1), _sn_conv(cin, cout, 3, 1)
        self.learnable_sc = cin != cout or downsample
        if self.learnable_sc:
            self.c_sc = _sn_conv(cin, cout, 1, 0)

    def forward(self, x):
        # Mimicry's first ReLU is in place on the block's input: its shortcut starts from ReLU(x) too
        x = F.relu(x)
        h = self.c2(F.relu(self.c1(x)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.learnable_sc:
            x = self.c_sc(x)
            if self.downsample:
                x = F.avg_pool2d(x, 2)
        return h + x


class Generator(nn.Module):
    """Mimicry's SNGAN / SSGAN / cGAN-PD generator at ``resolution`` px; ``forward(z, c)``, c the
    class vector (one-hot: the label) for cGAN-PD (``num_classes`` > 0)."""

    def __init__(self, resolution=32, nz=128, ngf=256, bottom_width=None, num_classes=0):
        super().__init__()
        if resolution not in G_SHIFTS:
            raise ValueError(f"Mimicry builds {', '.join(map(str, G_SHIFTS))} px networks, not {resolution}")
        self.z_dim, self.c_dim = nz, num_classes
        self.bottom_width = bottom_width or BOTTOM[resolution]
        shifts = G_SHIFTS[resolution]
        self.l1 = nn.Linear(nz, self.bottom_width ** 2 * ngf)
        self.blocks = [f"block{i + 2}" for i in range(len(shifts))]
        for name, (a, b) in zip(self.blocks, shifts):
            self.add_module(name, GBlock(ngf >> a, ngf >> b, num_classes))
        n = len(shifts) + 2
        self.final_bn, self.final_conv = f"b{n}", f"c{n}"
        self.add_module(self.final_bn, nn.BatchNorm2d(ngf >> shifts[-1][1]))
        self.add_module(self.final_conv, nn.Conv2d(ngf >> shifts[-1][1], 3, 3, 1, 1))

    def forward(self, z, c=None):
        h = self.l1(z).view(z.shape[0], -1, self.bottom_width, self.bottom_width)
        for name in self.blocks:
            h = getattr(self, name)(h, c)
        h = F.relu(getattr(self, self.final_bn)(h))
        return torch.tanh(getattr(self, self.final_conv)(h))


class Discriminator(nn.Module):
    """Mimicry's SNGAN critic at ``resolution`` px; ``rotations`` adds SSGAN's rotation head, and
    ``num_classes`` > 0 cGAN-PD's projection; ``mimicry_sn``: the heads use
    :class:`MimicrySpectralNorm` (cGAN-PD's do). ``forward(x, c)``: the GAN logit per image."""

    def __init__(self, resolution=32, ndf=128, num_classes=0, rotations=0, mimicry_sn=False):
        super().__init__()
        if resolution not in D_SHIFTS:
            raise ValueError(f"Mimicry builds {', '.join(map(str, D_SHIFTS))} px networks, not {resolution}")
        if num_classes and rotations:
            raise ValueError("a Mimicry critic has a projection (cGAN-PD) or a rotation head (SSGAN), not both")
        self.c_dim = num_classes
        self.blocks = []
        for i, (a, b, down) in enumerate(D_SHIFTS[resolution]):
            name = f"block{i + 1}"
            self.blocks.append(name)
            self.add_module(name, DBlockOptimized(3, ndf >> b) if a is None else DBlock(ndf >> a, ndf >> b, down))
        self.linear = D_LINEAR[resolution]
        linear = MimicrySNLinear if mimicry_sn else (lambda i, o: spectral_norm(nn.Linear(i, o)))
        self.add_module(self.linear, linear(ndf, 1))
        if num_classes:
            embedding = MimicrySNEmbedding if mimicry_sn else (lambda n, d: spectral_norm(nn.Embedding(n, d)))
            self.l_y = embedding(num_classes, ndf)
        elif rotations:
            self.l_y = linear(ndf, rotations)

    def forward(self, x, c=None):
        h = x
        for name in self.blocks:
            h = getattr(self, name)(h)
        h = F.relu(h).sum((2, 3))
        out = getattr(self, self.linear)(h).squeeze(1)
        if self.c_dim:
            table = self.l_y(torch.arange(self.c_dim, device=h.device))  # through the spectral norm's hook
            out = out + ((c @ table) * h).sum(1)
        return out


# --------------------------------------------------------------------------- reading checkpoints
def _state(obj) -> dict | None:
    state = obj.get("model_state_dict") if isinstance(obj, dict) else None
    return state if isinstance(state, dict) else None


def sniff(obj, path) -> bool:
    """A Mimicry checkpoint: ``{"model_state_dict": …}`` of a generator (``l1`` and ``block2``) or a
    critic (``block1.c1``)."""
    state = _state(obj)
    if state is None:
        return False
    return ("l1.weight" in state and any(k.startswith("block2.") for k in state)) or any(
        k.startswith("block1.c1.") for k in state)


def _count(state, prefix="block") -> int:
    return len({k.split(".")[0] for k in state if re.match(rf"{prefix}\d+\.", k)})


def generator_kwargs(state: dict) -> dict:
    ngf = state["block2.c1.weight"].shape[1]
    cells = state["l1.weight"].shape[0] // ngf
    bottom = math.isqrt(cells)
    resolution = bottom * 2 ** _count(state)
    embed = state.get("block2.b1.embed.weight")
    return {"resolution": resolution, "nz": state["l1.weight"].shape[1], "ngf": ngf, "bottom_width": bottom,
            "num_classes": 0 if embed is None else embed.shape[0]}


def discriminator_kwargs(state: dict) -> dict:
    blocks = _count(state)
    linear = next((k.split(".")[0] for k in state if re.match(r"l\d+\.", k)), None)
    resolution = {4: 32, 6: 128}.get(blocks) or {"l5": 48, "l6": 64}.get(linear)
    mimicry_sn = f"{linear}.sn_u" in state
    weight = "weight" if mimicry_sn else "weight_orig"
    key = f"l_y.{weight}"
    ndf = state[f"{linear}.{weight}"].shape[1] if linear else 0
    projection = key in state and "l_y.bias" not in state
    return {"resolution": resolution, "ndf": ndf, "num_classes": state[key].shape[0] if projection else 0,
            "rotations": state[key].shape[0] if key in state and not projection else 0, "mimicry_sn": mimicry_sn}


def _build_check(cls, kwargs_of, state, path):
    """The kwargs inferred, once the tensors are exactly those of the network they describe."""
    try:
        kwargs = kwargs_of(state)
        expected = cls(**kwargs).state_dict()
    except (KeyError, ValueError, TypeError):
        expected, kwargs = {}, None
    if kwargs is None or set(expected) != set(state) or any(
            tuple(expected[k].shape) != tuple(state[k].shape) for k in expected):
        found = ", ".join(sorted({k.split(".")[0] for k in state}))
        raise ValueError(f"{str(path)!r} is a Mimicry checkpoint (layers {found}) whose network fastmine does not "
                         f"build: it builds SNGAN, SSGAN and cGAN-PD at 32, 48, 64 and 128 px")
    return kwargs


def read(obj, path, role, key) -> tuple[str, dict, dict, str]:
    """(family, kwargs, state dict, where) of the generator, or of the critic: the run's
    ``netD/netD_{step}_steps.pth`` beside ``netG/`` (Mimicry's layout) when given the generator."""
    path = Path(path)
    state = _state(obj)
    is_generator = "l1.weight" in state
    if role == "generator":
        if not is_generator:
            raise ValueError(f"{str(path)!r} is Mimicry's discriminator; name the run's netG file as the generator")
        return FAMILY, _build_check(Generator, generator_kwargs, state, path), dict(state), "model_state_dict"
    if is_generator:
        other = path.parent.parent / "netD" / path.name.replace("netG", "netD", 1)
        if not other.is_file():
            raise ValueError(f"{str(path)!r}: no Mimicry discriminator at {str(other)!r}")
        # torch's weights-only unpickler: plain containers and tensors, nothing from the file runs
        state, path = _state(torch.load(other, map_location="cpu", weights_only=True)), other
    return FAMILY, _build_check(Discriminator, discriminator_kwargs, state, path), dict(state), path.name
