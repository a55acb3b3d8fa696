"""The shipped configs, the method defaults, and how a config refuses what it cannot use."""
from pathlib import Path

import pytest
import torch.nn.functional as F

from fastmine import augment, data, losses
from fastmine.config import CHOICES, ConfigError, RunConfig, fill_defaults, load_config, validate
from fastmine.methods import METHODS

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "launch" / "configs").glob("*.yaml"))


def _resolved(path=None, overrides=()):
    cfg = load_config(path, list(overrides))
    return validate(fill_defaults(cfg, METHODS[cfg.method]))


def test_there_are_example_configs():
    assert len(CONFIGS) >= 7


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    cfg = _resolved(path)
    assert cfg.method in METHODS
    assert cfg.train.batch_size and cfg.train.n_critic and cfg.loss.gp_weight is not None


def test_method_defaults_follow_the_papers():
    mine = _resolved(overrides=["method=minegan_noft"])
    assert (mine.train.lr, mine.train.betas, mine.train.batch_size, mine.loss.gp_weight, mine.train.n_critic) == (
        4e-4, [0.5, 0.999], 64, 10.0, 5)
    rep = _resolved(overrides=["method=reprogram"])
    assert (rep.train.lr, rep.train.betas, rep.train.batch_size, rep.loss.gp_weight, rep.train.n_critic,
            rep.miner.seed_dist) == (1e-4, [0.0, 0.9], 32, 1.0, 10, "uniform")
    # miner init per method, as measured on digits and MNIST (docs/methods.md, "Miner initialisation"): one
    # generator starts from the inverted target; several keep the paper's N(0, 0.01)
    assert (mine.miner.init, rep.miner.init) == ("inversion", "inversion")
    assert _resolved(overrides=["method=minegan_multi"]).miner.init == "normal"
    assert _resolved(overrides=["method=reprogram", "miner.init=normal"]).miner.init == "normal"
    assert _resolved(overrides=["method=reprogram", "loss.gp_weight=5"]).loss.gp_weight == 5
    assert _resolved(overrides=["method=minegan", "train.steps=100"]).train.mine_steps == 50


def test_the_shipped_mining_config_uses_the_method_default_miner_init():
    # benchmarks/RESULTS.md: the inversion start ends best (final FID 23.2 vs 32.3 normal, 50.5 residual)
    assert _resolved(ROOT / "configs" / "mine_digits9.yaml").miner.init == "inversion"


def test_an_old_flat_key_names_its_new_place():
    with pytest.raises(ConfigError, match=r"'train\.gp_weight' is now 'loss\.gp_weight'"):
        load_config(None, ["train.gp_weight=5"])


def test_a_learning_rate_in_exponent_notation_is_a_float(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as a string, from an override as from a file
    assert load_config(None, ["train.lr=1e-4"]).train.lr == 0.0001
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-4\n")
    lr = load_config(path).train.lr
    assert lr == 0.0001 and type(lr) is float


@pytest.mark.parametrize("override, key", [("train.steps=abc", "train.steps"), ("train.steps=2.5", "train.steps")])
def test_a_value_of_the_wrong_type_names_its_key(override, key):
    with pytest.raises(ConfigError, match=rf"'{key}' must be an integer"):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [("train.batch_size=-3", "train.batch_size"),
                                           ("loss.gp_weight=-1", "loss.gp_weight"),
                                           ("train.betas=[0.5]", "train.betas")])
def test_a_value_out_of_range_names_its_key(override, key):
    with pytest.raises(ConfigError) as e:
        _resolved(overrides=["method=minegan_noft", override])
    assert key in str(e.value)


def test_allowed_values_come_from_the_registries(monkeypatch):
    """A new Objective row is a valid loss.objective with no edit to config.py, and a wrong value's
    error lists the registry's keys, the new row among them; the same for a new augmentation."""
    with pytest.raises(ConfigError, match="'loss.objective' must be one of wgan_gp, logistic, hinge, minimax, lsgan, "
                                          "wgan_clip, got 'softplus_rev'"):
        _resolved(overrides=["loss.objective=softplus_rev"])
    row = losses.Objective(lambda d_fake, d_real: F.softplus(d_fake).mean() + F.softplus(-d_real).mean(),
                           lambda d_fake: F.softplus(-d_fake).mean(), signed_scores=True)
    monkeypatch.setitem(losses.OBJECTIVES, "softplus_rev", row)
    assert _resolved(overrides=["loss.objective=softplus_rev"]).loss.objective == "softplus_rev"
    assert losses.get_objective("softplus_rev") is row
    with pytest.raises(ConfigError, match="must be one of wgan_gp, .*, wgan_clip, softplus_rev, got 'nope'"):
        _resolved(overrides=["loss.objective=nope"])
    # the row's own flags drive the rules between fields: ADA needs scores whose sign means something
    assert _resolved(overrides=["loss.objective=softplus_rev", "augment.kind=ada"]).augment.kind == "ada"
    with pytest.raises(ConfigError, match=r"use loss.objective=logistic \| hinge \| minimax \| softplus_rev"):
        _resolved(overrides=["augment.kind=ada"])
    monkeypatch.setitem(augment.AUGMENTS, "flip", augment.AugmentKind(lambda cfg: None))
    assert _resolved(overrides=["augment.kind=flip"]).augment.kind == "flip"
    with pytest.raises(ConfigError, match="'augment.kind' must be one of none, diffaugment, ada, flip, got 'x'"):
        _resolved(overrides=["augment.kind=x"])


def test_every_choice_key_names_a_config_field():
    """Each registered table checks a real key, and the tables are the registries themselves."""
    cfg = RunConfig()
    for key in CHOICES:
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name), key
    assert CHOICES["loss.objective"][0] is losses.OBJECTIVES and CHOICES["augment.kind"][0] is augment.AUGMENTS
    assert CHOICES["data.dataset"][0] is data.DATASETS
