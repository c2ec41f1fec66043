"""Train the impulse (salt-and-pepper) denoiser, or the tutorial AE baseline, on Fashion-MNIST.

Every batch is corrupted afresh with imgaug salt-and-pepper noise of a density drawn per image
uniformly from ``density_range``; a fraction ``binary_fraction`` of the images gets classic
0/255 noise and the rest imgaug's ``SaltAndPepper`` (Beta-distributed values), so one model
serves light and heavy noise of both kinds. ``val_size`` training images are held out, corrupted
once with a fixed seed, and the checkpoint with the best validation PSNR is kept (early stopping
after ``patience`` epochs without improvement). Everything random derives from ``seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from aepipe.data.idx import load_mnist_like
from aepipe.data.noise import random_salt_pepper
from aepipe.train.loop import Check, LoopSettings, Run, RunFields, checkpoint_path, cosine, fit

STAGE_NAME = "impulse-denoiser"


class TrainConfig(RunFields):
    """Settings of one training run (all recorded in the weights' config.json)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="MNIST-layout folder (Fashion-MNIST) with the train split")
    arch: Literal["impulse", "tutorial"] = "impulse"
    channels: int = Field(32, ge=4, le=256, description="ImpulseDenoiser width")
    dilations: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [1, 2, 4, 8, 4, 2],
        min_length=1,
        description="dilation of each residual block (one block per entry)",
    )
    density_lo: float = Field(0.02, ge=0.0, le=1.0)
    density_hi: float = Field(0.5, ge=0.0, le=1.0)
    binary_fraction: float = Field(0.7, ge=0.0, le=1.0)
    val_size: int = Field(5000, ge=10, le=30000)
    val_eval: int = Field(2000, ge=10, le=30000, description="held-out images scored per epoch")
    batch_size: int = Field(32, ge=1, le=1024)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    epoch_samples: int = Field(10000, ge=1)
    max_epochs: int = Field(18, ge=1, le=1000)
    patience: int = Field(4, ge=1, le=1000)
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many steps in all (keeps a checkpoint)"
    )

    @model_validator(mode="after")
    def _ranges_in_order(self) -> TrainConfig:
        # Checked here, before the data loads: the noise maker would refuse it only then.
        if self.density_lo > self.density_hi:
            raise ValueError(
                f"--density-lo ({self.density_lo}) must be at most --density-hi ({self.density_hi})"
            )
        if self.val_eval > self.val_size:
            raise ValueError(
                f"--val-eval ({self.val_eval}) must be at most --val-size ({self.val_size}): "
                "only held-out images are scored"
            )
        return self


def psnr_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image, both in [0, 1].

    Args:
        pred: float (N, ...) images.
        target: float (N, ...) images.

    Returns:
        float (N,) PSNR, capped at 100 dB for identical images.
    """
    diff = (pred.astype(np.float64) - target.astype(np.float64)).reshape(len(pred), -1)
    mse = np.maximum((diff**2).mean(axis=1), 1e-10)
    return 10.0 * np.log10(1.0 / mse)


def build_model(cfg: TrainConfig):
    """The untrained model that ``cfg.arch`` names."""
    if cfg.arch == "tutorial":
        from aepipe.models.classic import TutorialAE

        return TutorialAE()
    from aepipe.models.impulse import ImpulseDenoiser

    return ImpulseDenoiser(channels=cfg.channels, dilations=tuple(cfg.dilations), flags=True)


def _model_out(model, x):
    # The impulse model is trained on its unclamped output so the gradient never vanishes.
    if hasattr(model, "forward_parts"):
        return model.forward_parts(x)[0]
    return model(x)


def denoise_array(model, noisy: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Run a 1-channel model over uint8 (N, H, W) images; returns float32 (N, H, W) in [0, 1]."""
    import torch

    outs = []
    # channels_last lets oneDNN pick faster CPU convolution kernels (~1.5x here).
    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for i in range(0, len(noisy), batch_size):
            x = torch.from_numpy(noisy[i : i + batch_size].astype(np.float32) / 255.0)[:, None]
            y = model(x.contiguous(memory_format=torch.channels_last)).clamp(0, 1)
            outs.append(y[:, 0].contiguous().numpy())
    return np.concatenate(outs) if outs else np.zeros(noisy.shape, np.float32)


class _ImpulseSpec:
    """The impulse denoiser as the training loop sees it (see :mod:`aepipe.train.loop`)."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        images, _ = load_mnist_like(cfg.data, "train")
        order = np.random.default_rng(cfg.seed).permutation(len(images))
        val_idx, train_idx = order[: cfg.val_size], order[cfg.val_size :]
        val_clean = images[val_idx[: cfg.val_eval]]
        self.val_noisy, _ = random_salt_pepper(
            val_clean, (cfg.density_lo, cfg.density_hi), cfg.binary_fraction, seed=cfg.seed + 1
        )
        self.val_target = val_clean.astype(np.float32) / 255.0
        self.train_imgs = images[train_idx]
        self.model = build_model(cfg)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.steps_per_epoch = math.ceil(cfg.epoch_samples / cfg.batch_size)
        # Cosine decay to 2% of the start rate over the full budget (early stopping may cut it).
        self.lr_factor = cosine(self.steps_per_epoch * cfg.max_epochs, 0.02)
        self.rng = np.random.default_rng(cfg.seed + 2)
        self.stream: list[int] = []

    def draw(self, step: int) -> tuple[Any, Any]:
        """Clean images from an endless shuffled stream, flipped, with fresh noise."""
        import torch

        cfg = self.cfg
        if len(self.stream) < cfg.batch_size:
            self.stream.extend(self.rng.permutation(len(self.train_imgs)).tolist())
        idx, self.stream = self.stream[: cfg.batch_size], self.stream[cfg.batch_size :]
        clean = self.train_imgs[idx]
        flip = self.rng.random(len(idx)) < 0.5
        clean = np.where(flip[:, None, None], clean[:, :, ::-1], clean)
        noisy, _ = random_salt_pepper(
            clean,
            (cfg.density_lo, cfg.density_hi),
            cfg.binary_fraction,
            seed=int(self.rng.integers(0, 2**31 - 1)),
        )
        x = torch.from_numpy(noisy.astype(np.float32) / 255.0)[:, None]
        return x, torch.from_numpy(clean.astype(np.float32) / 255.0)[:, None]

    def loss(self, model: Any, batch: tuple[Any, Any], step: int) -> tuple[Any, dict[str, float]]:
        """MSE of the (unclamped) output against the clean images."""
        import torch

        loss = torch.nn.functional.mse_loss(_model_out(model, batch[0]), batch[1])
        return loss, {"loss": loss.item(), "steps": 1}

    def validate(self, model: Any, run: Run) -> Check:
        """Mean PSNR on the fixed noisy held-out images."""
        pred = denoise_array(model, self.val_noisy)
        val_psnr = float(psnr_per_image(pred, self.val_target).mean())
        row = {
            "epoch": run.epoch,
            "train_mse": round(run.sums["loss"] / run.sums["steps"], 6),
            "val_psnr": round(val_psnr, 3),
            "lr": round(self.cfg.lr * self.lr_factor(run.step), 6),
            "seconds": round(time.time() - run.epoch_started, 1),
        }
        line = (
            f"epoch {run.epoch}/{self.cfg.max_epochs} train_mse {row['train_mse']:.5f} "
            f"val_psnr {val_psnr:.3f} dB{' *' if run.improves(val_psnr) else ''} "
            f"({row['seconds']} s)"
        )
        return Check(row, val_psnr, line, {"val_psnr_mixed_noise": round(val_psnr, 3)})

    def rng_state(self) -> dict[str, Any]:
        """The noise / order generator and the rest of the shuffled stream."""
        return {"rng": self.rng.bit_generator.state, "stream": self.stream}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rng_state`."""
        self.rng.bit_generator.state = state["rng"]
        self.stream = list(state["stream"])

    def write(self, model: Any, run: Run, final: bool) -> Path:
        """Write the ``impulse-denoiser`` weights folder."""
        import torch

        from aepipe.stages.impulse_denoiser import ImpulseDenoiser as ImpulseStage

        cfg = self.cfg
        training = {
            "command": cfg.command,
            "config": cfg.model_dump(mode="json"),
            "data": str(cfg.data),
            "train_images": len(self.train_imgs),
            "val_images_held_out": int(cfg.val_size),
            "seed": cfg.seed,
            "threads": cfg.threads,
            "epochs_run": len(run.history),
            "best_epoch": run.best_epoch,
            "stopped_by": run.stopped_by,
            "samples_seen": run.step * cfg.batch_size,
            "wall_time_s": round(run.minutes() * 60, 1),
            "history": run.history,
            "torch": torch.__version__,
            "n_params": int(self.n_params),
        }
        metrics = run.best_metrics or {"val_psnr_mixed_noise": None}
        card = model_card(cfg, training, metrics)
        return ImpulseStage(model).save_pretrained(
            self.out, training=training, metrics=metrics, card=card
        )


def train(cfg: TrainConfig, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Train and write a weights folder for the ``impulse-denoiser`` stage.

    Args:
        cfg: the run settings.
        out: the weights folder to write.
        progress: called with one line per epoch.

    Returns:
        ``out``.
    """
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = _ImpulseSpec(cfg, Path(out))
    settings = LoopSettings(
        lr=cfg.lr,
        steps_per_epoch=spec.steps_per_epoch,
        max_epochs=cfg.max_epochs,
        lr_factor=spec.lr_factor,
        patience=cfg.patience,
        max_minutes=cfg.max_minutes,
        max_steps=cfg.max_steps,
        checkpoint=checkpoint_path(Path(out)),
        resume=cfg.resume,
    )
    fit(spec, settings, progress or (lambda _msg: None))
    return Path(out)


def _cut_note(training: dict[str, Any]) -> str:
    """A paragraph for the card when the run was cut by the wall-clock cap."""
    if training.get("stopped_by") != "max_minutes":
        return ""
    return (
        "The run was cut by `--max-minutes` after epoch "
        f"{training['epochs_run']}, with the validation PSNR still rising (the machine was "
        "shared with other training jobs, so epochs took several times longer than on an idle "
        "CPU). With the same seed a re-run follows the same epochs; where the cap stops it "
        "depends on the machine's speed (pass `--max-epochs` instead of `--max-minutes` for "
        "an exactly defined run).\n\n"
    )


def _db(psnr: float | None) -> str:
    # A run cut by --max-steps before its first validation has no score yet.
    return "none yet (stopped before the first validation)" if psnr is None else f"{psnr:.2f} dB"


def model_card(cfg: TrainConfig, training: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The MODEL_CARD.md text of a trained weights folder."""
    arch = (
        f"ImpulseDenoiser (models/impulse.py): {training['n_params']:,} parameters, width "
        f"{cfg.channels}, residual dilated blocks {cfg.dilations}, flag channels for exact 0/1 "
        "pixels, soft switch output x + sigmoid(s) * (c - x); fully convolutional, any size."
        if cfg.arch == "impulse"
        else f"TutorialAE (models/classic.py): Conv 64-32-16 + max-pool / up-sample, "
        f"{training['n_params']:,} parameters (baseline)."
    )
    return f"""# salt-pepper: impulse-noise denoiser ({cfg.arch})

Stage: `impulse-denoiser`. Removes salt-and-pepper (impulse) noise from gray images of any size.

## Model
{arch}

## Training data and noise
- Fashion-MNIST train split (`{cfg.data}`), {training["train_images"]} images; {cfg.val_size} more
  held out (seeded permutation) for validation / early stopping. The test split was never used.
- Noise regenerated for every batch with imgaug: density per image uniform in
  [{cfg.density_lo}, {cfg.density_hi}]; {cfg.binary_fraction:.0%} of images get classic 0/255
  salt-and-pepper (`iaa.ReplaceElementwise(p, Choice([0, 255]))`), the rest imgaug's
  `iaa.SaltAndPepper(p)` (replacement values Beta(0.5, 0.5) * 255). Random horizontal flips.
- MSE loss, Adam lr {cfg.lr} with cosine decay, batch {cfg.batch_size}, {cfg.epoch_samples} samples
  per epoch, at most {cfg.max_epochs} epochs, patience {cfg.patience}; seed {cfg.seed},
  {cfg.threads} CPU thread(s).
- Ran {training["epochs_run"]} epochs ({training["stopped_by"]}), best epoch
  {training["best_epoch"]}, wall time {training["wall_time_s"] / 60:.1f} min on CPU.

{_cut_note(training)}## Validation
Best validation PSNR on {cfg.val_eval} held-out images with the training noise mix:
{_db(metrics["val_psnr_mixed_noise"])}. Test-set figures (Fashion-MNIST and MNIST, per density,
against median filters) are in `benchmarks/results/salt_pepper.md`.

## Reproduce
```
{training["command"] or "aepipe train salt-pepper --data ../shared/data/fashion-mnist"}
```

## Limits
- Trained on 28x28 Fashion-MNIST only: on natural photographs it still removes impulses, but
  fine textures may be smoothed. Not meant for Gaussian or other non-impulse noise.
- RGB input: each channel is denoised on its own by the stage.
"""
