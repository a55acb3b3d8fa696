"""A user's own modules, importable as "toy_models:..." factories (tests put this folder on sys.path)."""
import torch
from torch import nn


class ShiftGenerator(nn.Module):
    """A fixed 2-D generator: x = A z + b."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0.3], [0.0, 0.8]]))
            self.lin.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, z):
        return self.lin(z)


def make_generator():
    return ShiftGenerator()


class ToyMiner(nn.Sequential):
    """A user's miner: seeds [N, 3] -> the 2-D latent (its own class, so a test can tell it from fastmine's)."""

    def __init__(self):
        super().__init__(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))


def make_miner():
    return ToyMiner()


def make_critic():
    return nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1),
                         nn.Flatten(0))
