"""Training file (recipe step 3): a small strict config and ``train(cfg, out)``.

Fits the decoder so that its images approach a target gray level, then writes the weights folder
with the default sampling temperature the front ends must use.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """How to train the tiny generator.

    Attributes:
        steps: optimiser steps.
        lr: Adam learning rate.
        target: gray level the images should approach.
        temperature: default sampling temperature stored with the weights.
        seed: seeds the initial weights and the codes.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=1, le=10_000)
    lr: float = Field(0.05, gt=0, le=1)
    target: float = Field(0.7, ge=0, le=1)
    temperature: float = Field(0.5, ge=0, le=3)
    seed: int = Field(0, ge=0)


def train(cfg: TrainConfig, out: Path) -> Path:
    """Train, then write ``out`` as a weights folder (config.json, safetensors, card)."""
    import torch

    from recipe_tiny.stage import TinyGenerator

    stage = TinyGenerator.tiny(seed=cfg.seed, temperature=cfg.temperature)
    model = stage.model.train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.steps):
        images = model(torch.randn(16, model.latent_dim, generator=gen))
        loss = ((images - cfg.target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    final = float(loss.detach())
    card = f"# tiny-generator\n\nTest weights; final loss {final:.4f}.\n"
    return stage.save_pretrained(
        out, training=cfg.model_dump(), metrics={"loss": round(final, 6)}, card=card
    )
