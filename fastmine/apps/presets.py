"""What each `fastmine` training command runs when the user says nothing else: its run name,
its method, its data (the built-in digits: a 0-8 source, a 100-image target of 9s) and steps.

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
