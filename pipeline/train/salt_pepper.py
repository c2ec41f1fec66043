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
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.data.idx import load_mnist_like
from pipeline.data.noise import random_salt_pepper

STAGE_NAME = "impulse-denoiser"


class TrainConfig(BaseModel):
    """Settings of one training run (all recorded in the weights' config.json)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="MNIST-layout folder (Fashion-MNIST) with the train split")
    arch: Literal["impulse", "tutorial"] = "impulse"
    channels: int = Field(32, ge=4, le=256, description="ImpulseDenoiser width")
    dilations: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 4, 2])
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
    seed: int = 0
    threads: int = Field(1, ge=1, le=64)
    command: str | None = Field(None, description="the command line, recorded in config.json")
    max_minutes: float | None = Field(
        None,
        gt=0.0,
        description="wall-clock cap (a safety net; runs cut by it are not bit-reproducible)",
    )


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
        from models.classic import TutorialAE

        return TutorialAE()
    from models.impulse import ImpulseDenoiser

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

    from pipeline.stages.impulse_denoiser import ImpulseDenoiser as ImpulseStage

    say = progress or (lambda _msg: None)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.time()

    images, _ = load_mnist_like(cfg.data, "train")
    order = np.random.default_rng(cfg.seed).permutation(len(images))
    val_idx, train_idx = order[: cfg.val_size], order[cfg.val_size :]
    val_clean = images[val_idx[: cfg.val_eval]]
    val_noisy, _ = random_salt_pepper(
        val_clean, (cfg.density_lo, cfg.density_hi), cfg.binary_fraction, seed=cfg.seed + 1
    )
    val_target = val_clean.astype(np.float32) / 255.0
    train_imgs = images[train_idx]

    model = build_model(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(cfg.epoch_samples / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.max_epochs
    # Cosine decay to 2% of the start rate over the full budget (early stopping may cut it).
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)),
    )
    rng = np.random.default_rng(cfg.seed + 2)
    stream: list[int] = []
    best_psnr, best_epoch, best_state = -math.inf, 0, None
    history: list[dict[str, Any]] = []
    stopped = "max_epochs"
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        ep_start, losses = time.time(), []
        for _ in range(steps_per_epoch):
            if len(stream) < cfg.batch_size:
                stream.extend(rng.permutation(len(train_imgs)).tolist())
            idx, stream = stream[: cfg.batch_size], stream[cfg.batch_size :]
            clean = train_imgs[idx]
            flip = rng.random(len(idx)) < 0.5
            clean = np.where(flip[:, None, None], clean[:, :, ::-1], clean)
            noisy, _ = random_salt_pepper(
                clean,
                (cfg.density_lo, cfg.density_hi),
                cfg.binary_fraction,
                seed=int(rng.integers(0, 2**31 - 1)),
            )
            x = torch.from_numpy(noisy.astype(np.float32) / 255.0)[:, None]
            y = torch.from_numpy(clean.astype(np.float32) / 255.0)[:, None]
            loss = torch.nn.functional.mse_loss(_model_out(model, x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        model.eval()
        val_psnr = float(psnr_per_image(denoise_array(model, val_noisy), val_target).mean())
        entry = {
            "epoch": epoch,
            "train_mse": round(float(np.mean(losses)), 6),
            "val_psnr": round(val_psnr, 3),
            "lr": round(sched.get_last_lr()[0], 6),
            "seconds": round(time.time() - ep_start, 1),
        }
        history.append(entry)
        improved = val_psnr > best_psnr
        if improved:
            best_psnr, best_epoch = val_psnr, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        say(
            f"epoch {epoch}/{cfg.max_epochs} train_mse {entry['train_mse']:.5f} "
            f"val_psnr {val_psnr:.3f} dB{' *' if improved else ''} ({entry['seconds']} s)"
        )
        if epoch - best_epoch >= cfg.patience:
            stopped = "early_stopping"
            break
        if cfg.max_minutes is not None and (time.time() - start) / 60 > cfg.max_minutes:
            stopped = "max_minutes"
            break

    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    wall = time.time() - start
    training = {
        "command": cfg.command,
        "config": cfg.model_dump(mode="json"),
        "data": str(cfg.data),
        "train_images": len(train_imgs),
        "val_images_held_out": int(cfg.val_size),
        "seed": cfg.seed,
        "threads": cfg.threads,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "stopped_by": stopped,
        "samples_seen": len(history) * steps_per_epoch * cfg.batch_size,
        "wall_time_s": round(wall, 1),
        "history": history,
        "torch": torch.__version__,
        "n_params": int(n_params),
    }
    metrics = {"val_psnr_mixed_noise": round(best_psnr, 3)}
    stage = ImpulseStage(model)
    card = model_card(cfg, training, metrics)
    return stage.save_pretrained(out, training=training, metrics=metrics, card=card)


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
{metrics["val_psnr_mixed_noise"]:.2f} dB. Test-set figures (Fashion-MNIST and MNIST, per density,
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
