"""Methods as data: which sampler, which parameters train from when, and the papers' defaults.

Every method runs in the one :class:`fastmine.trainer.Trainer` (DESIGN.md §1); this
module only says what differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Method:
    name: str
    uses_miner: bool                 # S(u) = G(M(u)) rather than G(z)
    generator_trains: str            # "never" | "always" | "after_mining"
    freeze_critic_blocks: bool = False   # FreezeD
    fresh_generator: bool = False    # from scratch: re-initialise G
    fresh_critic: bool = False       # from scratch: re-initialise D
    sparse_critic: bool = False      # S³ (§3.4.2): critic gradients masked to a sparse set of filters
    kind: str = "single"             # "single" (api.train) | "multi" (fastmine.multi) | "fuse" (fastmine.fusion)
    defaults: dict = field(default_factory=dict)
    summary: str = ""


# MineGAN++ appendix A (MNIST): Adam lr 4e-4, betas (0.5, 0.999), batch 64; WGAN-GP's
# lambda=10 and n_critic=5. Lee et al. (reprogramming) §4: Adam(1e-4, 0, 0.9),
# n_critic=10, m=32, lambda=1, seed ~ U[0,1]^d. Baselines: WGAN-GP's own Adam(1e-4, 0, 0.9).
# Miner init (measured on the digits demo, README "Miner initialisation"): the paper's
# N(0, 0.01) for MineGAN (FID 34.6 vs 51.6 residual); residual for reprogramming, whose small
# lr leaves the N(0, 0.01) start collapsed (FID 146.8, MV 0.006 vs 69.3, MV 2.58).
_MINEGAN = dict(lr=4e-4, critic_lr=4e-4, betas=[0.5, 0.999], batch_size=64, n_critic=5, gp_weight=10.0, seed_dist="normal",
                init="normal")
_WGANGP = dict(lr=1e-4, critic_lr=1e-4, betas=[0.0, 0.9], batch_size=64, n_critic=5, gp_weight=10.0, seed_dist="normal")
_REPROGRAM = dict(lr=1e-4, critic_lr=1e-4, betas=[0.0, 0.9], batch_size=32, n_critic=10, gp_weight=1.0, seed_dist="uniform",
                  init="residual")

METHODS = {
    m.name: m
    for m in [
        Method("minegan_noft", True, "never", defaults=_MINEGAN,
               summary="MineGAN w/o FT: train a miner in front of the frozen generator (eq. 3-4)"),
        Method("minegan", True, "after_mining", defaults=_MINEGAN,
               summary="MineGAN: mine, then finetune miner, generator and critic together (§3.4.1)"),
        Method("finetune", True, "always", defaults=_MINEGAN,
               summary="the finetuning stage alone, starting from a mined file"),
        Method("reprogram", True, "never", defaults=_REPROGRAM,
               summary="GAN reprogramming (Lee et al.): uniform-seed code generator, WGAN-GP lambda=1"),
        Method("transfergan", False, "always", defaults=_WGANGP,
               summary="TransferGAN: finetune the pretrained generator and critic"),
        Method("freezed", False, "always", freeze_critic_blocks=True, defaults=_WGANGP,
               summary="FreezeD: TransferGAN with the critic's leading blocks frozen"),
        Method("scratch", False, "always", fresh_generator=True, fresh_critic=True, defaults=_WGANGP,
               summary="from scratch: a freshly initialised GAN (also what `pretrain` runs)"),
        Method("minegan_pp", True, "after_mining", sparse_critic=True, defaults=_MINEGAN,
               summary="MineGAN++: MineGAN with the critic trained under S³ masks in both stages (§3.4.2)"),
        Method("transfergan_pp", False, "always", sparse_critic=True, defaults=_WGANGP,
               summary="TransferGAN++: TransferGAN with the critic trained under S³ masks"),
        Method("minegan_multi", True, "never", kind="multi", defaults=_MINEGAN,
               summary="MineGAN(multi): one miner per frozen generator, supersamples, selector π (eq. 5-10)"),
        Method("fuse", False, "always", kind="fuse", defaults=_WGANGP,
               summary="fusion: N generators into one conditioned through its prior (eq. 15-16)"),
    ]
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def fill_defaults(cfg):
    """Fill the ``None`` training/miner settings of a RunConfig from its method's defaults."""
    method = get_method(cfg.method)
    for key, value in method.defaults.items():
        if key in ("seed_dist", "init"):
            if getattr(cfg.miner, key) is None:
                setattr(cfg.miner, key, value)
        elif getattr(cfg.train, key) is None:
            setattr(cfg.train, key, list(value) if isinstance(value, list) else value)
    if cfg.train.mine_steps is None:
        cfg.train.mine_steps = cfg.train.steps // 2 if method.generator_trains == "after_mining" else (
            cfg.train.steps if method.generator_trains == "never" else 0)
    return cfg
