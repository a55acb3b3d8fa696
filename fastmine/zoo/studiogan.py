"""POSTECH-CVLab/PyTorch-StudioGAN checkpoints as fastmine's own networks.

StudioGAN saves each network of a run as its own file, ``model=G-{best|current}-weights-step=N.pth``,
``model=G_ema-…`` and ``model=D-…``, each ``{"state_dict": …}`` (plus optimiser state and run
counters), and builds the networks from a YAML config (``src/configs/DATASET/NAME.yaml``) laid over
the defaults of its ``src/config.py``. :func:`read` takes the YAML beside the checkpoint, reads it
with ``yaml.safe_load`` (nothing from it runs) and turns its ``DATA`` / ``MODEL`` keys into the
constructor keywords of :class:`Generator` / :class:`Discriminator`, whose parameter names are
StudioGAN's, so the tensors load strictly.

Built: the backbones ``deep_conv`` (DCGAN), ``resnet`` (SNGAN, SAGAN, ProjGAN, ACGAN-Mod …) and
``big_resnet`` (BigGAN, ContraGAN, ReACGAN …), unconditional (``g_cond_mtd: W/O``) or with
conditional batch norm (``cBN``), with self-attention, spectral norm and each activation the config
offers. The critic's score is StudioGAN's adversarial output ``adv_output`` (with the projection
term for ``d_cond_mtd: PD``); the class heads of AC / 2C / D2DCE / TAC are loaded but not scored.
Refused in one line naming the keys found: the StyleGAN2/3 and BigGAN-deep backbones, InfoGAN
variants (``info_type``), and critics whose score needs the label in other ways (MH, MD, SPD, ADC).

The networks run in eval mode as StudioGAN's evaluation does: batch norm with its running
statistics, spectral norm with its stored singular vectors (torch's ``spectral_norm``, the one
StudioGAN uses, so ``weight_orig`` / ``weight_u`` / ``weight_v`` are its names).

A conditional generator takes ``c``, a vector over the classes in place of the one-hot label
(MineGAN++ §4.1's M^c): every use of the label in these networks is linear in its one-hot code
(the cBN affine input, the ``shared`` class embedding, the critic's projection embedding), so a
one-hot c is exactly StudioGAN's label and any point between classes is a valid input.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.utils import spectral_norm

FAMILY = "studiogan"
BACKBONES = ("deep_conv", "resnet", "big_resnet")
G_CONDITIONS = ("W/O", "cBN")
D_CONDITIONS = ("W/O", "PD", "AC", "2C", "D2DCE")
AUX_CLASSIFIERS = ("W/O", "TAC")
SN_EPS = 1e-6  # StudioGAN's spectral_norm(..., eps=1e-6)
BN_EPS = 1e-4  # its batchnorm_2d and conditional batch norm
# src/config.py's defaults of the keys the networks depend on (a YAML overrides some of them)
DEFAULT_MODEL = {"backbone": "resnet", "g_cond_mtd": "W/O", "d_cond_mtd": "W/O", "aux_cls_type": "W/O",
                 "normalize_d_embed": False, "d_embed_dim": "N/A", "apply_g_sn": False, "apply_d_sn": False,
                 "g_act_fn": "ReLU", "d_act_fn": "ReLU", "apply_attn": False, "attn_g_loc": ["N/A"],
                 "attn_d_loc": ["N/A"], "z_dim": 128, "g_shared_dim": "N/A", "g_conv_dim": 64, "d_conv_dim": 64,
                 "info_type": "N/A"}
DEFAULT_DATA = {"img_size": 32, "num_classes": 10}
G_KEYS = ("backbone", "z_dim", "g_shared_dim", "img_size", "g_conv_dim", "apply_attn", "attn_g_loc", "g_cond_mtd",
          "num_classes", "apply_g_sn", "g_act_fn")
D_KEYS = ("backbone", "img_size", "d_conv_dim", "apply_d_sn", "apply_attn", "attn_d_loc", "d_cond_mtd",
          "aux_cls_type", "d_embed_dim", "normalize_d_embed", "num_classes", "d_act_fn")
FILE_NAME = re.compile(r"^model=(G|G_ema|D)-(.*)\.pth$")
ACTIVATIONS = {"ReLU": nn.ReLU, "Leaky_ReLU": lambda: nn.LeakyReLU(0.1), "ELU": nn.ELU, "GELU": nn.GELU}

# resnet / big_resnet channel tables (multiples of the base width), per image size
G_IN = {32: [4, 4, 4], 64: [16, 8, 4, 2], 128: [16, 16, 8, 4, 2], 256: [16, 16, 8, 8, 4, 2],
        512: [16, 16, 8, 8, 4, 2, 1]}
G_OUT = {32: [4, 4, 4], 64: [8, 4, 2, 1], 128: [16, 8, 4, 2, 1], 256: [16, 8, 8, 4, 2, 1],
         512: [16, 8, 8, 4, 2, 1, 1]}
D_IN = {32: [2, 2, 2], 64: [1, 2, 4, 8], 128: [1, 2, 4, 8, 16], 256: [1, 2, 4, 8, 8, 16],
        512: [1, 1, 2, 4, 8, 8, 16]}  # after the 3 image channels
D_OUT = {32: [2, 2, 2, 2], 64: [1, 2, 4, 8, 16], 128: [1, 2, 4, 8, 16, 16], 256: [1, 2, 4, 8, 8, 16, 16],
         512: [1, 1, 2, 4, 8, 8, 16, 16]}
D_DOWN = {32: [True, True, False, False]}  # larger sizes: every block downsamples but the last
DCGAN_G = ([512, 256, 128], [256, 128, 64])
DCGAN_D = ([3, 64, 128], [64, 128, 256])


def _act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def _sn(module: nn.Module, on: bool) -> nn.Module:
    return spectral_norm(module, eps=SN_EPS) if on else module


def _conv(sn, cin, cout, k, stride=1, padding=0, bias=True):
    return _sn(nn.Conv2d(cin, cout, k, stride, padding, bias=bias), sn)


def _linear(sn, cin, cout, bias=True):
    return _sn(nn.Linear(cin, cout, bias=bias), sn)


def _embedding_matrix(embedding: nn.Module) -> torch.Tensor:
    """The (spectrally normalised) embedding table, through the module's forward so its hook runs."""
    return embedding(torch.arange(embedding.num_embeddings, device=next(embedding.parameters()).device))


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm without affine whose gain (1 + linear) and bias come from the affine input."""

    def __init__(self, in_features, out_features, sn):
        super().__init__()
        self.bn = nn.BatchNorm2d(out_features, eps=BN_EPS, affine=False)
        self.gain = _linear(sn, in_features, out_features, bias=False)
        self.bias = _linear(sn, in_features, out_features, bias=False)

    def forward(self, x, y):
        return self.bn(x) * (1 + self.gain(y))[:, :, None, None] + self.bias(y)[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN's self-attention with max-pooled keys and values, scaled by a learnt ``sigma``."""

    def __init__(self, channels, sn):
        super().__init__()
        self.conv1x1_theta = _conv(sn, channels, channels // 8, 1, bias=False)
        self.conv1x1_phi = _conv(sn, channels, channels // 8, 1, bias=False)
        self.conv1x1_g = _conv(sn, channels, channels // 2, 1, bias=False)
        self.conv1x1_attn = _conv(sn, channels // 2, channels, 1, bias=False)
        self.sigma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        n, ch, h, w = x.shape
        theta = self.conv1x1_theta(x).flatten(2)
        phi = F.max_pool2d(self.conv1x1_phi(x), 2).flatten(2)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, -1)
        g = F.max_pool2d(self.conv1x1_g(x), 2).flatten(2)
        out = (g @ attn.transpose(1, 2)).view(n, ch // 2, h, w)
        return x + self.sigma * self.conv1x1_attn(out)


class GenBlock(nn.Module):
    """resnet / big_resnet: BN-act-up-conv-BN-act-conv plus an upsampled 1x1 shortcut."""

    def __init__(self, cin, cout, sn, act, affine_dim):
        super().__init__()
        if affine_dim:
            self.bn1 = ConditionalBatchNorm2d(affine_dim, cin, sn)
            self.bn2 = ConditionalBatchNorm2d(affine_dim, cout, sn)
        else:
            self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
            self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.activation = _act(act)
        self.conv2d0 = _conv(sn, cin, cout, 1)
        self.conv2d1 = _conv(sn, cin, cout, 3, padding=1)
        self.conv2d2 = _conv(sn, cout, cout, 3, padding=1)

    def _bn(self, bn, x, affine):
        return bn(x) if affine is None else bn(x, affine)

    def forward(self, x, affine):
        h = self.activation(self._bn(self.bn1, x, affine))
        h = self.conv2d1(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv2d2(self.activation(self._bn(self.bn2, h, affine)))
        return h + self.conv2d0(F.interpolate(x, scale_factor=2, mode="nearest"))


class DeconvBlock(nn.Module):
    """deep_conv: a stride-2 transposed convolution, BN, activation."""

    def __init__(self, cin, cout, sn, act, affine_dim):
        super().__init__()
        self.deconv0 = _sn(nn.ConvTranspose2d(cin, cout, 4, 2, 1), sn)
        self.bn0 = ConditionalBatchNorm2d(affine_dim, cout, sn) if affine_dim else nn.BatchNorm2d(cout, eps=BN_EPS)
        self.activation = _act(act)

    def forward(self, x, affine):
        x = self.deconv0(x)
        return self.activation(self.bn0(x) if affine is None else self.bn0(x, affine))


class Generator(nn.Module):
    """StudioGAN's deep_conv / resnet / big_resnet generator (keywords: its Generator's and MODEL's).

    ``forward(z, c)``: z [N, z_dim]; c [N, num_classes], the class vector, for ``g_cond_mtd="cBN"``.
    big_resnet splits z into one chunk for the first layer and one per block (hierarchical z),
    each block's affine input being [shared(c), chunk]."""

    def __init__(self, backbone="resnet", z_dim=128, g_shared_dim="N/A", img_size=32, g_conv_dim=64, apply_attn=False,
                 attn_g_loc=("N/A",), g_cond_mtd="W/O", num_classes=10, apply_g_sn=False, g_act_fn="ReLU"):
        super().__init__()
        _check("backbone", backbone, BACKBONES)
        _check("g_cond_mtd", g_cond_mtd, G_CONDITIONS)
        _check("g_act_fn", g_act_fn, tuple(ACTIVATIONS))
        self.backbone, self.z_dim, self.img_size = backbone, z_dim, img_size
        self.c_dim = num_classes if g_cond_mtd == "cBN" else 0
        sn = apply_g_sn
        if backbone == "deep_conv":
            ins, outs = DCGAN_G
        else:
            _check("img_size", img_size, tuple(G_IN))
            ins = [g_conv_dim * m for m in G_IN[img_size]]
            outs = [g_conv_dim * m for m in G_OUT[img_size]]
        self.in_dims, self.bottom = ins, 4  # every backbone starts at 4x4
        linear_in, affine_dim = z_dim, self.c_dim
        if backbone == "big_resnet":
            if z_dim % (len(ins) + 1):
                raise ValueError(f"big_resnet needs z_dim divisible by {len(ins) + 1} (its blocks + 1), got {z_dim}")
            self.chunk = linear_in = affine_dim = z_dim // (len(ins) + 1)
            if self.c_dim:
                affine_dim += g_shared_dim
                self.shared = nn.Embedding(num_classes, g_shared_dim)
        self.linear0 = _linear(sn, linear_in, ins[0] * self.bottom * self.bottom)
        block = DeconvBlock if backbone == "deep_conv" else GenBlock
        blocks = []
        for i, (cin, cout) in enumerate(zip(ins, outs)):
            blocks.append(nn.ModuleList([block(cin, cout, sn, g_act_fn, affine_dim)]))
            if apply_attn and i + 1 in attn_g_loc:
                blocks.append(nn.ModuleList([SelfAttention(cout, sn)]))
        self.blocks = nn.ModuleList(blocks)
        if backbone == "deep_conv":
            self.conv4 = _conv(sn, outs[-1], 3, 3, padding=1)
        else:
            self.bn4 = nn.BatchNorm2d(outs[-1], eps=BN_EPS)
            self.activation = _act(g_act_fn)
            self.conv2d5 = _conv(sn, outs[-1], 3, 3, padding=1)

    def forward(self, z, c=None):
        if self.backbone == "big_resnet":
            z, *chunks = torch.split(z, self.chunk, 1)
            if self.c_dim:
                shared = c @ _embedding_matrix(self.shared)
                chunks = [torch.cat([shared, chunk], 1) for chunk in chunks]
        else:
            chunks = None
        h = self.linear0(z).view(z.shape[0], self.in_dims[0], self.bottom, self.bottom)
        i = 0
        for (layer,) in self.blocks:
            if isinstance(layer, SelfAttention):
                h = layer(h)
            else:
                h = layer(h, chunks[i] if chunks is not None else c)
                i += 1
        if self.backbone == "deep_conv":
            return torch.tanh(self.conv4(h))
        return torch.tanh(self.conv2d5(self.activation(self.bn4(h))))


class DiscOptBlock(nn.Module):
    """The first resnet critic block: conv-act-conv-pool plus a pooled 1x1 shortcut."""

    def __init__(self, cin, cout, sn, act):
        super().__init__()
        self.apply_d_sn = sn
        self.conv2d0 = _conv(sn, cin, cout, 1)
        self.conv2d1 = _conv(sn, cin, cout, 3, padding=1)
        self.conv2d2 = _conv(sn, cout, cout, 3, padding=1)
        if not sn:
            self.bn0 = nn.BatchNorm2d(cin, eps=BN_EPS)
            self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.activation = _act(act)

    def forward(self, x):
        h = self.conv2d1(x)
        h = self.activation(h if self.apply_d_sn else self.bn1(h))
        h = F.avg_pool2d(self.conv2d2(h), 2)
        x0 = F.avg_pool2d(x, 2)
        return h + self.conv2d0(x0 if self.apply_d_sn else self.bn0(x0))


class DiscBlock(nn.Module):
    """A resnet critic block: (BN-)act-conv-(BN-)act-conv(-pool) plus a 1x1 shortcut where needed."""

    def __init__(self, cin, cout, sn, act, downsample):
        super().__init__()
        self.apply_d_sn, self.downsample = sn, downsample
        self.shortcut = downsample or cin != cout
        if self.shortcut:
            self.conv2d0 = _conv(sn, cin, cout, 1)
            if not sn:
                self.bn0 = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv2d1 = _conv(sn, cin, cout, 3, padding=1)
        self.conv2d2 = _conv(sn, cout, cout, 3, padding=1)
        if not sn:
            self.bn1 = nn.BatchNorm2d(cin, eps=BN_EPS)
            self.bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.activation = _act(act)

    def forward(self, x):
        h = self.activation(x if self.apply_d_sn else self.bn1(x))
        if self.apply_d_sn:
            # StudioGAN's activation is in place and, without batch norm before it, rewrites the
            # block's input: its shortcut then starts from the activated input too
            x = h
        h = self.conv2d1(h)
        h = self.conv2d2(self.activation(h if self.apply_d_sn else self.bn2(h)))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        if self.shortcut:
            x = self.conv2d0(x if self.apply_d_sn else self.bn0(x))
            if self.downsample:
                x = F.avg_pool2d(x, 2)
        return h + x


class DCGANDiscBlock(nn.Module):
    """deep_conv: conv 3x3, act, conv 4x4 stride 2, act (BN after each without spectral norm)."""

    def __init__(self, cin, cout, sn, act):
        super().__init__()
        self.apply_d_sn = sn
        self.conv0 = _conv(sn, cin, cout, 3, padding=1)
        self.conv1 = _conv(sn, cout, cout, 4, 2, 1)
        if not sn:
            self.bn0 = nn.BatchNorm2d(cout, eps=BN_EPS)
            self.bn1 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.activation = _act(act)

    def forward(self, x):
        x = self.conv0(x)
        x = self.activation(x if self.apply_d_sn else self.bn0(x))
        x = self.conv1(x)
        return self.activation(x if self.apply_d_sn else self.bn1(x))


class Discriminator(nn.Module):
    """StudioGAN's deep_conv / resnet / big_resnet discriminator; ``forward(x, c)`` is its
    ``adv_output`` (for ``d_cond_mtd="PD"`` plus the projection of the features on c's embedding)."""

    def __init__(self, backbone="resnet", img_size=32, d_conv_dim=64, apply_d_sn=False, apply_attn=False,
                 attn_d_loc=("N/A",), d_cond_mtd="W/O", aux_cls_type="W/O", d_embed_dim="N/A",
                 normalize_d_embed=False, num_classes=10, d_act_fn="ReLU"):
        super().__init__()
        _check("backbone", backbone, BACKBONES)
        _check("d_cond_mtd", d_cond_mtd, D_CONDITIONS)
        _check("aux_cls_type", aux_cls_type, AUX_CLASSIFIERS)
        _check("d_act_fn", d_act_fn, tuple(ACTIVATIONS))
        if aux_cls_type == "TAC" and d_cond_mtd not in ("AC", "2C", "D2DCE"):
            raise ValueError(f"aux_cls_type TAC goes with d_cond_mtd AC, 2C or D2DCE, not {d_cond_mtd!r}")
        self.backbone, self.apply_d_sn, self.d_cond_mtd = backbone, apply_d_sn, d_cond_mtd
        self.c_dim = num_classes if d_cond_mtd == "PD" else 0
        sn = apply_d_sn
        blocks = []
        if backbone == "deep_conv":
            ins, outs = DCGAN_D
            for i, (cin, cout) in enumerate(zip(ins, outs)):
                blocks.append(DCGANDiscBlock(cin, cout, sn, d_act_fn))
                if apply_attn and i + 1 in attn_d_loc:
                    blocks.append(SelfAttention(cout, sn))
        else:
            _check("img_size", img_size, tuple(D_IN))
            ins = [3] + [d_conv_dim * m for m in D_IN[img_size]]
            outs = [d_conv_dim * m for m in D_OUT[img_size]]
            down = D_DOWN.get(img_size, [True] * (len(outs) - 1) + [False])
            for i, (cin, cout) in enumerate(zip(ins, outs)):
                blocks.append(DiscOptBlock(cin, cout, sn, d_act_fn) if i == 0
                              else DiscBlock(cin, cout, sn, d_act_fn, down[i]))
                if apply_attn and i + 1 in attn_d_loc:
                    blocks.append(SelfAttention(cout, sn))
        self.blocks = nn.ModuleList(nn.ModuleList([b]) for b in blocks)
        self.activation = _act(d_act_fn)
        width = 512 if backbone == "deep_conv" else outs[-1]
        if backbone == "deep_conv":
            self.conv1 = _conv(sn, 256, 512, 3, padding=1)
            if not sn:
                self.bn1 = nn.BatchNorm2d(512, eps=BN_EPS)
        self.linear1 = _linear(sn, width, 1)
        embedding = (lambda n, d: _sn(nn.Embedding(n, d), sn))
        if d_cond_mtd == "AC":
            self.linear2 = _linear(sn, width, num_classes, bias=False)
        elif d_cond_mtd == "PD":
            self.embedding = embedding(num_classes, width)
        elif d_cond_mtd in ("2C", "D2DCE"):
            self.linear2 = _linear(sn, width, d_embed_dim)
            self.embedding = embedding(num_classes, d_embed_dim)
        if aux_cls_type == "TAC":
            if d_cond_mtd == "AC":
                self.linear_mi = _linear(sn, width, num_classes, bias=False)
            else:
                self.linear_mi = _linear(sn, width, d_embed_dim)
                self.embedding_mi = embedding(num_classes, d_embed_dim)

    def forward(self, x, c=None):
        h = x
        for (block,) in self.blocks:
            h = block(h)
        if self.backbone == "deep_conv":
            h = self.conv1(h)
            h = h if self.apply_d_sn else self.bn1(h)
        h = self.activation(h).sum((2, 3))
        out = self.linear1(h).squeeze(1)
        if self.d_cond_mtd == "PD":
            out = out + ((c @ _embedding_matrix(self.embedding)) * h).sum(1)
        return out


def _check(key, value, allowed):
    if value not in allowed:
        raise ValueError(f"StudioGAN {key}={value!r} is not built by fastmine; it builds "
                         f"{', '.join(map(str, allowed))}")


# --------------------------------------------------------------------------- reading checkpoints
def sniff(obj, path) -> bool:
    """A StudioGAN network file: ``{"state_dict": …}`` with its ``blocks.0.0.`` and ``linear0`` /
    ``linear1`` names (the ``model=G-…pth`` file name is not required: files get renamed)."""
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        return False
    return any(k.startswith("blocks.0.0.") for k in state) and any(
        k.startswith(("linear0.", "linear1.")) for k in state)


def config_beside(path: Path) -> Path:
    """The run's YAML config beside the checkpoint: the only one, else the one whose name the run
    folder's name contains (StudioGAN names runs ``DATASET-CONFIG-train-DATE``)."""
    found = sorted(p for p in path.parent.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if len(found) > 1:
        named = [p for p in found if f"-{p.stem}-" in f"-{path.parent.name}-"]
        found = named if len(named) == 1 else found
    if len(found) != 1:
        what = "no YAML config" if not found else f"{len(found)} YAML configs ({', '.join(p.name for p in found)})"
        raise ValueError(f"{str(path)!r} is a StudioGAN checkpoint with {what} beside it; put the run's config "
                         "(StudioGAN's src/configs/DATASET/NAME.yaml) alone in its folder")
    return found[0]


def config_kwargs(config: dict, where: str) -> tuple[dict, dict]:
    """(generator kwargs, discriminator kwargs) from a StudioGAN YAML, over src/config.py's defaults;
    an architecture fastmine does not build is refused naming the keys found."""
    if not isinstance(config, dict):
        raise ValueError(f"{where} is not a StudioGAN config (a YAML mapping with DATA and MODEL)")
    model = {**DEFAULT_MODEL, **(config.get("MODEL") or {})}
    data = {**DEFAULT_DATA, **(config.get("DATA") or {})}
    found = ", ".join(f"{k}={v}" for k, v in sorted((config.get("MODEL") or {}).items())) or "none"
    if model["backbone"] not in BACKBONES or model["g_cond_mtd"] not in G_CONDITIONS or model["info_type"] != "N/A":
        raise ValueError(f"{where}: StudioGAN MODEL keys {found} name an architecture fastmine does not build (it "
                         f"builds backbone {'/'.join(BACKBONES)}, g_cond_mtd {'/'.join(G_CONDITIONS)}, no info_type)")
    merged = {**model, **data}
    return {k: merged[k] for k in G_KEYS}, {k: merged[k] for k in D_KEYS}


def _sibling(path: Path, name: str) -> Path | None:
    """The ``model=NAME-…pth`` file of the same run beside ``path`` (same best/current where possible)."""
    m = FILE_NAME.match(path.name)
    when = m.group(2).split("-")[0] if m else None
    found = sorted(p for p in path.parent.glob(f"model={name}-*.pth") if FILE_NAME.match(p.name))
    same = [p for p in found if when and FILE_NAME.match(p.name).group(2).startswith(when)]
    return (same or found or [None])[0]


def read(obj, path, role, key) -> tuple[str, dict, dict, str]:
    """(family, kwargs, state dict, where) of the generator (``key`` G_ema or G: another file of the
    run) or the critic (the run's ``model=D-…`` file) of a StudioGAN checkpoint."""
    path = Path(path)
    config_path = config_beside(path)
    g_kwargs, d_kwargs = config_kwargs(yaml.safe_load(config_path.read_text()), repr(str(config_path)))
    is_generator = any(k.startswith("linear0.") for k in obj["state_dict"])
    wanted = "D" if role == "critic" else key  # None: this file's generator
    if wanted not in (None, "G", "G_ema", "D"):
        raise ValueError(f"{str(path)!r}: a StudioGAN run has networks G, G_ema and D, not {wanted!r} (source.key)")
    this = FILE_NAME.match(path.name)
    if wanted is None and not is_generator:
        raise ValueError(f"{str(path)!r} is StudioGAN's discriminator; name the run's model=G_ema-… or model=G-… "
                         "file as the generator")
    if wanted is None or (this.group(1) == wanted if this else (wanted == "D") != is_generator):
        state, where = obj["state_dict"], path.name
    else:
        other = _sibling(path, wanted)
        if other is None:
            raise ValueError(f"{str(path)!r}: no StudioGAN model={wanted}-…pth beside it")
        # torch's weights-only unpickler: plain containers and tensors, nothing from the file runs
        state, where = torch.load(other, map_location="cpu", weights_only=True)["state_dict"], other.name
    if role == "critic":
        if d_kwargs["d_cond_mtd"] not in D_CONDITIONS or d_kwargs["aux_cls_type"] not in AUX_CLASSIFIERS:
            raise ValueError(f"{where}: a StudioGAN critic with d_cond_mtd={d_kwargs['d_cond_mtd']}, aux_cls_type="
                             f"{d_kwargs['aux_cls_type']} is not built by fastmine (it scores W/O, PD, AC, 2C, D2DCE "
                             "with TAC or none); pass another critic (source.critic=...)")
        return FAMILY, d_kwargs, dict(state), where
    return FAMILY, g_kwargs, dict(state), where
