"""What each `fastmine` training command runs when the user says nothing else: its run name,
its method, its data (the built-in digits: a 0-8 source, a 100-image target of 9s) and steps;
the demos' rows. Plain data, no torch: the CLI's help is built from it.

The methods a command may run come from :data:`fastmine.methods.METHODS` (``Method.commands``).
"""
from __future__ import annotations

DIGITS_0_8 = list(range(9))
TARGET_9 = {"dataset": "digits", "labels": [9], "limit": 100, "size": 16}

COMMAND_DEFAULTS = {
    "pretrain": {"name": "source", "method": "scratch",
                 "data": {"dataset": "digits", "labels": DIGITS_0_8, "size": 16},
                 "train": {"steps": 2000, "lr": 2e-4, "critic_lr": 2e-4, "betas": [0.5, 0.9]}},
    "mine": {"name": "mine", "method": "minegan_noft", "data": TARGET_9, "train": {"steps": 300}},
    "finetune": {"name": "finetune", "method": "finetune", "data": TARGET_9, "train": {"steps": 300}},
    "reprogram": {"name": "reprogram", "method": "reprogram", "data": TARGET_9, "train": {"steps": 300}},
    "baseline": {"name": "baseline", "method": "transfergan", "data": TARGET_9, "train": {"steps": 300}},
    "mine-multi": {"name": "mine_multi", "method": "minegan_multi", "data": TARGET_9, "train": {"steps": 300}},
    "fuse": {"name": "fuse", "method": "fuse", "train": {"steps": 2000}},
}

# the order of Table 1 (baselines first)
DEMO_METHODS = ("scratch", "transfergan", "freezed", "minegan_noft", "minegan", "reprogram")
# the few-shot toolkit's rows (`fastmine demo --toolkit`): a method plus an augmentation or a
# regularizer, at the same budget. Changed from the papers to fit the demo: ADA runs with the
# logistic loss + R1 it was made for (its p follows the sign of the critic's real scores, which a
# WGAN critic does not give a meaning) and its p may move by 1 in 20k real images (the paper's 500k
# would let it reach only ~0.2 in the demo's 96k); EWC's λ 50 was chosen on seed 0 from a sweep
# (benchmarks/RESULTS.md: Li et al.'s 5e8, on a Fisher estimated from the WGAN critic's scores,
# freezes the generator); CDC's 333 is Ojha et al.'s 1000 over their batch of 4 (their code
# averages the KL over the N−1 neighbours, ours over the samples only).
TOOLKIT_ROWS = ("transfergan_diffaugment", "transfergan_ada", "ewc", "cdc", "minegan_diffaugment")
ROWS = {**{m: (m, ()) for m in DEMO_METHODS},
        "transfergan_diffaugment": ("transfergan", ("augment.kind=diffaugment",)),
        "transfergan_ada": ("transfergan", ("augment.kind=ada", "augment.ada_images=20000", "loss.objective=logistic")),
        "ewc": ("transfergan", ("regularize.ewc=50",)),
        "cdc": ("transfergan", ("regularize.cdc=333",)),
        "minegan_diffaugment": ("minegan", ("augment.kind=diffaugment",))}
# (one of A's digits, one of B's). Not 1 and 7: source B draws thin 7s a critic takes for 1s,
# so B's miner wins 1-supersamples too and π_A stays near 0.55 at a true share of 0.75
# (benchmarks/RESULTS.md); with 2 and 6 neither source draws the other's digit.
DIGITS = (2, 6)
