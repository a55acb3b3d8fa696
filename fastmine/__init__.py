"""fastmine: mine and reprogram frozen pretrained GAN generators for small target domains."""
from .api import Result, finetune, mine, new_generator, reprogram, run_config, train
from .config import RunConfig, load_config
from .data import load_digits, load_image_folder, load_tensor_file
from .latent import Latent, LatentSpec
from .losses import check_critic_for_penalty, gradient_penalty
from .miner import Miner
from .models import GeneratorAdapter, Sampler, load_critic, load_generator, load_sampler, save_sampler
from .trainer import NonFiniteLossError, ParamGroup, Trainer

__version__ = "0.1.0"
__all__ = [
    "Result", "finetune", "mine", "new_generator", "reprogram", "run_config", "train", "RunConfig", "load_config",
    "load_digits", "load_image_folder", "load_tensor_file", "Latent", "LatentSpec", "check_critic_for_penalty",
    "gradient_penalty", "Miner", "GeneratorAdapter", "Sampler", "load_critic", "load_generator", "load_sampler",
    "save_sampler", "NonFiniteLossError", "ParamGroup", "Trainer",
]
