"""fastmine: mine and reprogram frozen pretrained GAN generators for small target domains.

The public face: the methods (``mine``, ``reprogram``, ``finetune``, ``train``, ``mine_multi``,
``fuse``, ``pretrain_conditional``, ``run`` for a config), loading and saving models, data,
evaluation. Everything else is importable from its module but not promised.

The names load on first use (PEP 562): ``import fastmine`` alone imports neither torch nor
any other part of the library, so ``fastmine --help`` and argument errors answer at once;
``fastmine.mine`` or ``from fastmine import mine`` import the module that defines it.
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it (one entry per name; adding a name is one line)
_EXPORTS = {
    "finetune": "api", "fuse": "api", "invert": "api", "make_config": "api", "mine": "api",
    "mine_multi": "api", "prepare": "api", "pretrain_conditional": "api", "reprogram": "api", "run": "api",
    "train": "api",
    "ConfigError": "config", "RunConfig": "config", "load_config": "config",
    "load_digits": "data", "load_image_folder": "data", "load_tensor_file": "data",
    "Scorer": "evaluation", "evaluate_run": "evaluation", "evaluate_sampler": "evaluation",
    "UntrustedCodeError": "files", "load_any": "files", "load_critic": "files", "load_generator": "files",
    "load_sampler": "files", "register_factory": "files", "save_sampler": "files",
    "Inversion": "inversion",
    "Latent": "latent", "LatentSpec": "latent",
    "Miner": "miner",
    "MultiSampler": "multi",
    "Result": "runs", "Run": "runs", "new_generator": "runs",
    "GeneratorAdapter": "samplers", "Sampler": "samplers",
    "NonFiniteLossError": "trainer",
    "RunFolderError": "runfolder", "RunFolderExists": "runfolder",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fastmine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
