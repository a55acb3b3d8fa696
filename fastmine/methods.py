"""Methods as data: which sampler, which parameters train from when, and the papers' defaults.

Every method runs in the one :class:`fastmine.trainer.Trainer`; this module only says what
differs. ``kind`` picks the builder of :mod:`fastmine.runs` (single, multi, fuse,
conditional); ``commands`` are the CLI commands that run the method (the one table the CLI
and the demo read).
"""
from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("single", "multi", "fuse", "conditional")


@dataclass(frozen=True)
class Method:
    name: str
    uses_miner: bool                 # S(u) = G(M(u)) rather than G(z)
    generator_trains: str            # "never" | "always" | "after_mining"
    commands: tuple = ()             # `fastmine COMMAND` entries that run it
    freeze_critic_blocks: bool = False   # FreezeD
    fresh_generator: bool = False    # from scratch: re-initialise G
    fresh_critic: bool = False       # from scratch: re-initialise D
    sparse_critic: bool = False      # S³ (§3.4.2): critic gradients masked to a sparse set of filters
    kind: str = "single"             # the builder in fastmine.runs.BUILDERS
    defaults: dict = field(default_factory=dict)  # {section: {key: value}} for the config's None fields
    summary: str = ""


# MineGAN++ appendix A (MNIST): Adam lr 4e-4, betas (0.5, 0.999), batch 64; WGAN-GP's
# lambda=10 and n_critic=5. Lee et al. (reprogramming) §4: Adam(1e-4, 0, 0.9),
# n_critic=10, m=32, lambda=1, seed ~ U[0,1]^d. Baselines: WGAN-GP's own Adam(1e-4, 0, 0.9).
# Miner init (docs/methods.md "Miner initialisation", benchmarks/RESULTS.md): one generator, MineGAN and
# reprogramming start from the target's inverted latents, best at 50, 100 and 300 updates on
# the digits (16 px, 64-d) and MNIST (32 px, 100-d) tasks, seeds 0-2 (MineGAN w/o FT final FID
# 23.2 ± 1.7 vs 32.3 ± 1.7 for the paper's N(0, 0.01) init and 50.5 ± 3.0 residual on digits;
# reprogramming 39.3 ± 3.2 vs 69.7 ± 2.3 residual and a collapsed 133.8 for N(0, 0.01)).
# Several generators keep the paper's init: they do not invert the target.
_MINEGAN = {"train": dict(lr=4e-4, critic_lr=4e-4, betas=[0.5, 0.999], batch_size=64, n_critic=5),
            "loss": dict(gp_weight=10.0), "miner": dict(seed_dist="normal", init="normal")}
_MINEGAN_ONE = {**_MINEGAN, "miner": dict(seed_dist="normal", init="inversion")}
_WGANGP = {"train": dict(lr=1e-4, critic_lr=1e-4, betas=[0.0, 0.9], batch_size=64, n_critic=5),
           "loss": dict(gp_weight=10.0), "miner": dict(seed_dist="normal")}
_REPROGRAM = {"train": dict(lr=1e-4, critic_lr=1e-4, betas=[0.0, 0.9], batch_size=32, n_critic=10),
              "loss": dict(gp_weight=1.0), "miner": dict(seed_dist="uniform", init="inversion")}
# the project's source recipe (`fastmine pretrain`): WGAN-GP with Adam(2e-4, 0.5, 0.9)
_PRETRAIN = {"train": dict(lr=2e-4, critic_lr=2e-4, betas=[0.5, 0.9], batch_size=64, n_critic=5),
             "loss": dict(gp_weight=10.0), "miner": dict(seed_dist="normal")}
# Moving average of the trained weights (fastmine.ema, stylegan2-ada's G_ema). On where a pretrained
# generator is finetuned: MineGAN's StyleGAN code samples and scores its finetuned generator from
# an average (g_running, rosinality's accumulate), and so does the StyleGAN code its TransferGAN and
# FreezeD baselines ran in (FreezeD's own code too). Off where only a miner trains (MineGAN's code
# averages G, not the miner; Lee et al. average nothing) and for WGAN-GP training from scratch (the
# project's source recipe, Gulrajani et al.'s, has none). Half-life: stylegan2's 10 kimg, with
# stylegan2-ada's 5 % ramp-up, which matters here: fastmine's runs see ~20k images, where a fixed
# 10 kimg half-life would keep the average near the start.
_EMA_ON = {"ema": dict(kimg=10.0, rampup=0.05)}
_EMA_OFF = {"ema": dict(kimg=0.0, rampup=0.05)}

METHODS = {
    m.name: m
    for m in [
        Method("minegan_noft", True, "never", ("mine",), defaults=_MINEGAN_ONE | _EMA_OFF,
               summary="MineGAN w/o FT: train a miner in front of the frozen generator (eq. 3-4)"),
        Method("minegan", True, "after_mining", ("mine",), defaults=_MINEGAN_ONE | _EMA_ON,
               summary="MineGAN: mine, then finetune miner, generator and critic together (§3.4.1)"),
        Method("minegan_pp", True, "after_mining", ("mine",), sparse_critic=True, defaults=_MINEGAN_ONE | _EMA_ON,
               summary="MineGAN++: MineGAN with the critic trained under S³ masks in both stages (§3.4.2)"),
        Method("finetune", True, "always", ("finetune",), defaults=_MINEGAN | _EMA_ON,
               summary="the finetuning stage alone, starting from a mined file"),
        Method("reprogram", True, "never", ("reprogram",), defaults=_REPROGRAM | _EMA_OFF,
               summary="GAN reprogramming (Lee et al.): uniform-seed code generator, WGAN-GP lambda=1"),
        Method("transfergan", False, "always", ("baseline",), defaults=_WGANGP | _EMA_ON,
               summary="TransferGAN: finetune the pretrained generator and critic"),
        Method("transfergan_pp", False, "always", ("baseline",), sparse_critic=True, defaults=_WGANGP | _EMA_ON,
               summary="TransferGAN++: TransferGAN with the critic trained under S³ masks"),
        Method("freezed", False, "always", ("baseline",), freeze_critic_blocks=True, defaults=_WGANGP | _EMA_ON,
               summary="FreezeD: TransferGAN with the critic's leading blocks frozen"),
        Method("scratch", False, "always", ("baseline", "pretrain"), fresh_generator=True, fresh_critic=True,
               defaults=_WGANGP | _EMA_OFF,
               summary="from scratch: a freshly initialised GAN (also what `pretrain` runs)"),
        Method("pretrain_conditional", False, "always", ("pretrain",), kind="conditional",
               defaults=_PRETRAIN | _EMA_OFF,
               summary="a class-conditional source GAN on labelled data, ready for conditional mining (§4.1)"),
        Method("minegan_multi", True, "never", ("mine-multi",), kind="multi", defaults=_MINEGAN | _EMA_OFF,
               summary="MineGAN(multi): one miner per frozen generator, supersamples, selector π (eq. 5-10)"),
        Method("fuse", False, "always", ("fuse",), kind="fuse", defaults=_WGANGP | _EMA_OFF,
               summary="fusion: N generators into one conditioned through its prior (eq. 15-16)"),
    ]
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def methods_of(command: str) -> tuple:
    """The methods `fastmine COMMAND` runs, in the table's order."""
    return tuple(m.name for m in METHODS.values() if command in m.commands)
