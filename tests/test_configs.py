from pathlib import Path

import pytest

from fastmine.config import load_config
from fastmine.methods import METHODS, fill_defaults

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    cfg = fill_defaults(load_config(path))
    assert cfg.method in METHODS
    assert cfg.train.batch_size and cfg.train.n_critic and cfg.train.gp_weight is not None


def test_method_defaults_follow_the_papers():
    mine = fill_defaults(load_config(None, ["method=minegan_noft"]))
    assert (mine.train.lr, mine.train.betas, mine.train.batch_size, mine.train.gp_weight, mine.train.n_critic) == (
        4e-4, [0.5, 0.999], 64, 10.0, 5)
    rep = fill_defaults(load_config(None, ["method=reprogram"]))
    assert (rep.train.lr, rep.train.betas, rep.train.batch_size, rep.train.gp_weight, rep.train.n_critic,
            rep.miner.seed_dist) == (1e-4, [0.0, 0.9], 32, 1.0, 10, "uniform")
    # miner init per method, as measured on the digits demo (README "Miner initialisation")
    assert (mine.miner.init, rep.miner.init) == ("normal", "residual")
    assert fill_defaults(load_config(None, ["method=reprogram", "miner.init=normal"])).miner.init == "normal"
    over = fill_defaults(load_config(None, ["method=reprogram", "train.gp_weight=5"]))
    assert over.train.gp_weight == 5
    mg = fill_defaults(load_config(None, ["method=minegan", "train.steps=100"]))
    assert mg.train.mine_steps == 50
