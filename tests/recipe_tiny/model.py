"""Model file (recipe step 1): a pure ``nn.Module``; no files, no config parsing, no pipeline."""

from __future__ import annotations

import torch
from torch import nn


class TinyDecoder(nn.Module):
    """Decode a latent code into a small gray image: a linear layer and a sigmoid.

    Args:
        latent_dim: size of the code.
        size: height = width of the images made.
    """

    def __init__(self, latent_dim: int = 4, size: int = 8) -> None:
        super().__init__()
        self.hparams = dict(latent_dim=latent_dim, size=size)
        self.latent_dim, self.size = latent_dim, size
        self.linear = nn.Linear(latent_dim, size * size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_dim) codes -> (N, 1, size, size) images in [0, 1]."""
        return torch.sigmoid(self.linear(z)).view(-1, 1, self.size, self.size)
