"""Training file (recipe step 3): a small strict config and ``train(cfg, out, progress=None)``.

Fits the decoder so that its images approach a target gray level on the one training loop
(``aepipe.train.loop``), then writes the weights folder with the default sampling temperature
the front ends must use. ``aepipe train tiny-generator`` (``recipe_tiny.cli``) runs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from aepipe.train.loop import Check, LoopSettings, Run, RunFields, checkpoint_path, fit


class TrainConfig(RunFields):
    """How to train the tiny generator.

    ``seed``, ``threads``, ``max_minutes``, ``resume`` and ``command`` come from
    :class:`~aepipe.train.loop.RunFields`, documented there.

    Attributes:
        steps: optimiser steps of the whole run.
        max_steps: stop after this many steps in all (a checkpoint is kept for ``resume``).
        val_every: steps between validations.
        lr: Adam learning rate.
        target: gray level the images should approach.
        temperature: default sampling temperature stored with the weights.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=1, le=10_000)
    max_steps: int | None = Field(None, ge=1)
    val_every: int = Field(10, ge=1, le=10_000)
    lr: float = Field(0.05, gt=0, le=1)
    target: float = Field(0.7, ge=0, le=1)
    temperature: float = Field(0.5, ge=0, le=3)


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
        # A run cut by --max-steps before its first validation has no score yet.
        score = "none yet" if run.best_score is None else f"{run.best_score:.4f}"
        card = f"# tiny-generator\n\nTest weights; validation MSE {score}.\n"
        training = {**self.cfg.model_dump(), "history": run.history, "stopped_by": run.stopped_by}
        return self.stage.save_pretrained(
            self.out, training=training, metrics=run.best_metrics, card=card
        )


def train(cfg: TrainConfig, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Train, then write ``out`` as a weights folder (config.json, safetensors, card).

    Args:
        cfg: the run settings.
        out: the weights folder to write; the checkpoint lies beside it.
        progress: called with one line per validation (the CLI passes stderr).

    Returns:
        ``out``.
    """
    import torch

    torch.set_num_threads(cfg.threads)
    spec = TinySpec(cfg, Path(out))
    settings = LoopSettings(
        lr=cfg.lr,
        steps_per_epoch=cfg.steps,
        max_epochs=1,
        val_every=cfg.val_every,
        maximize=False,
        max_minutes=cfg.max_minutes,
        max_steps=cfg.max_steps,
        checkpoint=checkpoint_path(Path(out)),
        resume=cfg.resume,
    )
    fit(spec, settings, progress or (lambda _line: None))
    return Path(out)
