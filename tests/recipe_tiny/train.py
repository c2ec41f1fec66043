"""Training file (recipe step 3): a small strict config and ``train(cfg, out)``.

Fits the decoder so that its images approach a target gray level on the one training loop
(``aepipe.train.loop``), then writes the weights folder with the default sampling temperature
the front ends must use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aepipe.train.loop import Check, LoopSettings, Run, fit


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


class TinySpec:
    """The tiny generator as the training loop sees it (``aepipe.train.loop.TrainSpec``)."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        import torch

        from recipe_tiny.stage import TinyGenerator

        self.cfg, self.out = cfg, out
        self.stage = TinyGenerator.tiny(seed=cfg.seed, temperature=cfg.temperature)
        self.model = self.stage.model
        self.gen = torch.Generator().manual_seed(cfg.seed)
        fixed = torch.Generator().manual_seed(cfg.seed + 1)
        self.val_codes = torch.randn(64, self.model.latent_dim, generator=fixed)

    def draw(self, step: int) -> Any:
        import torch

        return torch.randn(16, self.model.latent_dim, generator=self.gen)

    def loss(self, model: Any, codes: Any, step: int) -> tuple[Any, dict[str, float]]:
        loss = ((model(codes) - self.cfg.target) ** 2).mean()
        return loss, {"loss": loss.item()}

    def validate(self, model: Any, run: Run) -> Check:
        import torch

        with torch.no_grad():
            val = float(((model(self.val_codes) - self.cfg.target) ** 2).mean())
        row = {"step": run.step, "val_mse": val}
        return Check(row, val, f"step {run.step} val_mse {val:.4f}", {"val_mse": round(val, 6)})

    def rng_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])

    def write(self, model: Any, run: Run, final: bool) -> Path:
        card = f"# tiny-generator\n\nTest weights; validation MSE {run.best_score:.4f}.\n"
        training = {**self.cfg.model_dump(), "history": run.history}
        return self.stage.save_pretrained(
            self.out, training=training, metrics=run.best_metrics, card=card
        )


def train(cfg: TrainConfig, out: Path) -> Path:
    """Train, then write ``out`` as a weights folder (config.json, safetensors, card)."""
    spec = TinySpec(cfg, Path(out))
    settings = LoopSettings(
        lr=cfg.lr, steps_per_epoch=cfg.steps, max_epochs=1, val_every=10, maximize=False
    )
    fit(spec, settings, say=lambda _line: None)
    return Path(out)
