"""fastmine: mine and reprogram frozen pretrained GAN generators for small target domains.

The public face: the methods (``mine``, ``reprogram``, ``finetune``, ``train``, ``mine_multi``,
``fuse``, ``pretrain_conditional``, ``run`` for a config), loading and saving models, data,
evaluation. Everything else is importable from its module but not promised.
"""
from .api import (
                  finetune,
                  fuse,
                  invert,
                  make_config,
                  mine,
                  mine_multi,
                  prepare,
                  pretrain_conditional,
                  reprogram,
                  run,
                  train,
)
from .config import ConfigError, RunConfig, load_config
from .data import load_digits, load_image_folder, load_tensor_file
from .evaluation import Scorer, evaluate_run, evaluate_sampler
from .files import (
                  UntrustedCodeError,
                  load_any,
                  load_critic,
                  load_generator,
                  load_sampler,
                  register_factory,
                  save_sampler,
)
from .inversion import Inversion
from .latent import Latent, LatentSpec
from .miner import Miner
from .multi import MultiSampler
from .runfolder import RunFolderError, RunFolderExists
from .runs import Result, Run, new_generator
from .samplers import GeneratorAdapter, Sampler
from .trainer import NonFiniteLossError

__version__ = "0.1.0"
__all__ = [
    "finetune", "fuse", "invert", "Inversion", "make_config", "mine", "mine_multi", "prepare",
    "pretrain_conditional", "reprogram", "run", "train", "ConfigError", "RunConfig", "load_config",
    "load_digits", "load_image_folder", "load_tensor_file", "Scorer", "evaluate_run", "evaluate_sampler",
    "UntrustedCodeError", "load_any", "load_critic", "load_generator", "load_sampler", "register_factory",
    "save_sampler", "Latent", "LatentSpec", "Miner", "MultiSampler", "Result", "Run", "new_generator",
    "GeneratorAdapter", "Sampler", "NonFiniteLossError", "RunFolderError", "RunFolderExists",
]
