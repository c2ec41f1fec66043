"""Train the StackNN colorizer on colour faces or photos against their BT.601 gray versions.

Two kinds of data (``data``):

* a face archive (``lfw_64.npz``): whole 64x64 faces; a tail of its train split, cut between
  people, is held out for validation;
* a photo folder (``../shared/data/photos``) with ``train/`` and ``val/`` subfolders of colour
  images of any size: each training sample is a random crop (60-100 % of each side) resized
  to ``model_size`` x ``model_size`` (bilinear, antialiased), the same squash the stage applies
  to a whole input; validation is the whole ``val/`` photos squashed the same way. ``test/``
  is never read.

For both, the input is the 8-bit rounded BT.601 gray of each training image (what a gray PNG of
it holds) plus Gaussian noise (the StackNN regulariser); the target is its (Cb, Cr) chroma.
Images are flipped left-right at random. The checkpoint with the lowest validation loss is
kept, and the annealed-mean temperature of the ``classify`` head is then chosen on the same
held-out images (the most colourful setting within ``temperature_psnr_slack`` dB of the best
PSNR). The test split is never read. Everything random derives from ``seed``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from aepipe.data.faces import split_by_person

STAGE_NAME = "colorizer"


class TrainConfig(BaseModel):
    """Settings of one training run (all recorded in the weights' config.json)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(
        description="colour face archive (lfw_64.npz; train split only) or photo folder "
        "(train/ and val/ subfolders; test/ is never read)"
    )
    model_size: int = Field(64, ge=16, le=512, description="training and stage input side")
    head: Literal["classify", "regress"] = "regress"
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64, 128])
    bin_step: float = Field(1.0 / 24.0, gt=0.0, le=0.5, description="chroma bin spacing")
    min_bin_count: int = Field(1, ge=1, description="bins seen fewer times are dropped")
    rebalance: float = Field(0.5, ge=0.0, le=1.0, description="uniform mix of class weights")
    noise_std: float = Field(0.02, ge=0.0, le=0.5, description="Gaussian noise on the gray input")
    w_color: float = Field(1.0, ge=0.0, description="colour reconstruction weight")
    w_class: float = Field(1.0, ge=0.0, description="chroma classification weight (classify)")
    w_luma: float = Field(1.0, ge=0.0, description="luminance-consistency weight")
    train_temperature: float = Field(0.38, gt=0.0, le=2.0)
    val_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    batch_size: int = Field(32, ge=1, le=1024)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    max_steps: int = Field(3000, ge=1)
    val_every: int = Field(150, ge=1)
    patience: int = Field(8, ge=1, description="validations without improvement before stopping")
    temperature_psnr_slack: float = Field(0.5, ge=0.0, le=10.0)
    seed: int = 0
    threads: int = Field(1, ge=1, le=64)
    command: str | None = Field(None, description="the command line, recorded in config.json")
    max_minutes: float | None = Field(
        None,
        gt=0.0,
        description="wall-clock cap (a safety net; runs cut by it are not bit-reproducible)",
    )


def load_color_faces(
    path: Path, split: Literal["train", "test"] = "train"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour faces of one split of a face archive, and their file names (or None).

    :func:`aepipe.data.faces.load_faces` returns gray only; the colorizer needs the colour.

    Returns:
        ``(images, files)``: uint8 (N, H, W, 3) and (N,) names or None.
    """
    key = {"train": "images", "test": "test_images"}[split]
    with np.load(path, allow_pickle=False) as data:
        images = data[key]
        fkey = {"train": "train_files", "test": "test_files"}[split]
        files = data.get(fkey)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: {key} has shape {images.shape}; expected colour (N, H, W, 3)")
    return images, files


def gray_and_chroma(rgb_u8: np.ndarray):
    """Model input and target of uint8 (N, H, W, 3) faces.

    Returns:
        ``(gray, cbcr, rgb)`` tensors: (N, 1, H, W) 8-bit rounded BT.601 gray, (N, 2, H, W)
        chroma, (N, 3, H, W) RGB, all float32.
    """
    import torch

    rgb = torch.from_numpy(np.ascontiguousarray(rgb_u8)).permute(0, 3, 1, 2).float() / 255.0
    return _split_gray(rgb)


def chroma_bins(cbcr, step: float, min_count: int, rebalance: float):
    """Occupied chroma bins of the training set and their rebalancing weights.

    Args:
        cbcr: (N, 2, H, W) training chroma.
        step: bin spacing.
        min_count: minimum pixel count of a kept bin.
        rebalance: lambda of Zhang et al.: weights ~ 1 / ((1 - lambda) p + lambda / Q).

    Returns:
        ``(centers (Q, 2), weights (Q,))`` with weights normalised to mean 1 under p.
    """
    import torch

    from aepipe.models.colorizer import chroma_grid

    grid = chroma_grid(step)
    n = round(len(grid) ** 0.5)
    # The grid is square and regular, so a pixel's bin is plain arithmetic (row-major, Cb first).
    ij = ((cbcr + n * step / 2) / step).floor().clamp(0, n - 1).long()
    counts = torch.bincount((ij[:, 0] * n + ij[:, 1]).flatten(), minlength=len(grid)).float()
    keep = counts >= min_count
    centers, counts = grid[keep], counts[keep]
    p = counts / counts.sum()
    w = 1.0 / ((1.0 - rebalance) * p + rebalance / len(p))
    w = w / (p * w).sum()
    return centers, w


def evaluate(model, gray, cbcr, rgb, temperature: float, batch: int = 200) -> dict[str, float]:
    """Validation scores: PSNR (dB, 8-bit RGB), colorfulness, and loss parts.

    Args:
        model: the colorizer (eval mode is set here).
        gray: (N, 1, H, W) input gray.
        cbcr: (N, 2, H, W) true chroma.
        rgb: (N, 3, H, W) true RGB.
        temperature: annealed-mean temperature.
        batch: faces per forward pass.
    """
    import torch

    from aepipe.models.colorizer import gamut_fit

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(gray), batch):
            g = gray[i : i + batch]
            outs.append(gamut_fit(g, model.chroma(g, temperature)))
    pred = torch.cat(outs)
    to_u8 = lambda t: (t.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # noqa: E731
    p8, r8 = to_u8(pred), to_u8(rgb)
    return {"psnr": _psnr(r8, p8), "colorfulness": _colorfulness(p8)}


# The package cannot import benchmarks/metrics.py (not installed with it); these two repeat its
# definitions for validation only, and the benchmark reports the test figures with the real ones.
def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b) ** 2).reshape(len(a), -1).mean(1)
    return float((10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))).mean())


def _colorfulness(rgb: np.ndarray) -> float:
    x = rgb.astype(np.float64)
    rg = (x[..., 0] - x[..., 1]).reshape(len(x), -1)
    yb = (0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]).reshape(len(x), -1)
    sigma = np.sqrt(rg.std(1) ** 2 + yb.std(1) ** 2)
    return float((sigma + 0.3 * np.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)).mean())


def _flip(g, c, gen):
    """Flip each image of a batch left-right with probability 1/2 (gray and chroma alike)."""
    import torch

    flip = (torch.rand(len(g), generator=gen) < 0.5)[:, None, None, None]
    # Cb/Cr are not mirrored quantities, so the chroma flips with the pixels.
    return torch.where(flip, g.flip(-1), g), torch.where(flip, c.flip(-1), c)


def face_data(cfg: TrainConfig, gen):
    """Batches and validation set of a face archive (see :func:`photo_data` for the returns)."""
    import torch

    images, files = load_color_faces(cfg.data, "train")
    cut = split_by_person(files, len(images), cfg.val_fraction)
    gray, cbcr, _ = gray_and_chroma(images[:cut])
    perm, pos = torch.randperm(len(gray), generator=gen), 0

    def sample():
        nonlocal perm, pos
        if pos + cfg.batch_size > len(perm):
            perm, pos = torch.randperm(len(gray), generator=gen), 0
        idx = perm[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        return _flip(gray[idx], cbcr[idx], gen)

    return sample, cbcr, len(gray), gray_and_chroma(images[cut:])


def load_photos(folder: Path) -> list:
    """Every image of a folder (sorted by name) as float RGB (3, H, W) tensors in [0, 1]."""
    from aepipe.io import is_image_path, read_image

    files = sorted(p for p in folder.iterdir() if is_image_path(p))
    if not files:
        raise ValueError(f"{folder}: no images")
    return [read_image(f).images[0].expand(3, -1, -1).contiguous() for f in files]


def _squash(rgb, size: int):
    """Resize (3, H, W) to (1, 3, size, size): bilinear, antialiased (what the stage does)."""
    from torch.nn import functional as F

    return F.interpolate(
        rgb[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0.0, 1.0)


def _split_gray(rgb):
    """(gray rounded to 8 bits, chroma, rgb) of float RGB (N, 3, H, W)."""
    from aepipe.models.colorizer import rgb_to_ycbcr

    y, cbcr = rgb_to_ycbcr(rgb)
    return (y * 255.0).round() / 255.0, cbcr, rgb


def photo_data(cfg: TrainConfig, gen):
    """Batches and validation set of a photo folder (``train/``, ``val/``).

    Returns:
        ``(sample, cbcr, n_train, (vgray, vcbcr, vrgb))``: ``sample()`` gives one training
        batch ``(gray, chroma)``; ``cbcr`` is the chroma of every training pixel (for the bins);
        the validation tensors are (N, 1 / 2 / 3, S, S) with S = ``model_size``.
    """
    import torch

    photos = load_photos(cfg.data / "train")
    val = torch.cat([_squash(p, cfg.model_size) for p in load_photos(cfg.data / "val")])
    cbcr = torch.cat([_split_gray(p[None])[1].flatten(2) for p in photos], dim=2)[..., None]

    def sample():
        crops = []
        for i in torch.randint(len(photos), (cfg.batch_size,), generator=gen).tolist():
            _, h, w = photos[i].shape
            ch, cw = (
                int(side * (0.6 + 0.4 * float(torch.rand((), generator=gen)))) for side in (h, w)
            )
            y0 = int(torch.randint(h - ch + 1, (), generator=gen))
            x0 = int(torch.randint(w - cw + 1, (), generator=gen))
            crops.append(_squash(photos[i][:, y0 : y0 + ch, x0 : x0 + cw], cfg.model_size))
        g, c, _ = _split_gray(torch.cat(crops))
        return _flip(g, c, gen)

    return sample, cbcr, len(photos), _split_gray(val)


def train(cfg: TrainConfig, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Train a colorizer and write its weights folder.

    Args:
        cfg: the run's settings.
        out: weights folder to write (``config.json``, ``model.safetensors``, ``MODEL_CARD.md``).
        progress: optional callback for one-line progress messages.

    Returns:
        ``out``.
    """
    import torch

    from aepipe.models.colorizer import StackNNColorizer, colorizer_loss
    from aepipe.weights import save_model

    say = progress or (lambda _msg: None)
    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)

    if cfg.data.is_dir():
        sample, cbcr, n_train, (vgray, vcbcr, vrgb) = photo_data(cfg, gen)
        say(f"train {n_train} photos, validation {len(vgray)} photos (val/ folder)")
    else:
        sample, cbcr, n_train, (vgray, vcbcr, vrgb) = face_data(cfg, gen)
        say(f"train {n_train} faces, validation {len(vgray)} faces (split between people)")

    if cfg.head == "classify":
        centers, class_w = chroma_bins(cbcr, cfg.bin_step, cfg.min_bin_count, cfg.rebalance)
        n_bins = len(centers)
    else:
        centers, class_w, n_bins = None, None, 1
    model = StackNNColorizer(cfg.channels, head=cfg.head, n_bins=n_bins, bin_step=cfg.bin_step)
    if centers is not None:
        model.bin_centers.copy_(centers)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"StackNNColorizer {cfg.head}: {n_params} parameters, {n_bins} chroma bins")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.max_steps, pct_start=0.1
    )
    loss_kw: dict[str, Any] = dict(
        class_weights=class_w,
        w_color=cfg.w_color,
        w_class=cfg.w_class,
        w_luma=cfg.w_luma,
        temperature=cfg.train_temperature,
    )

    def val_loss() -> dict[str, float]:
        model.eval()
        tot: dict[str, float] = {}
        with torch.no_grad():
            for i in range(0, len(vgray), 200):
                g, c = vgray[i : i + 200], vcbcr[i : i + 200]
                parts = colorizer_loss(model, model(g), g, c, **loss_kw)
                for k, v in parts.items():
                    tot[k] = tot.get(k, 0.0) + float(v) * len(g)
        return {k: v / len(vgray) for k, v in tot.items()}

    best = (math.inf, None, 0)
    history = []
    stale = 0
    step = 0
    stopped = "max_steps"
    t_loop = time.time()
    while step < cfg.max_steps:
        model.train()
        g, c = sample()
        noisy = g + cfg.noise_std * torch.randn(g.shape, generator=gen)
        parts = colorizer_loss(model, model(noisy), g, c, **loss_kw)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        sched.step()
        step += 1
        out_of_time = cfg.max_minutes is not None and time.time() - t_start > 60 * cfg.max_minutes
        if step % cfg.val_every == 0 or step == cfg.max_steps or out_of_time:
            v = val_loss()
            rate = step * cfg.batch_size / (time.time() - t_loop)
            q = evaluate(model, vgray, vcbcr, vrgb, cfg.train_temperature)
            history.append(
                {"step": step, **{k: round(x, 5) for k, x in v.items()}}
                | {f"val_{k}": round(x, 3) for k, x in q.items()}
            )
            mark = ""
            if v["loss"] < best[0]:
                best = (v["loss"], copy.deepcopy(model.state_dict()), step)
                stale, mark = 0, " *"
            else:
                stale += 1
            say(
                f"step {step}/{cfg.max_steps} train {parts['loss'].item():.4f} "
                f"val {v['loss']:.4f} (color {v['color']:.4f} luma {v['luma']:.5f}"
                + (f" class {v['class']:.3f}" if "class" in v else "")
                + f") PSNR {q['psnr']:.2f} colorfulness {q['colorfulness']:.1f}"
                + f" {rate:.1f} img/s{mark}"
            )
            if stale >= cfg.patience:
                stopped = "early_stopping"
                break
        if out_of_time:
            stopped = "max_minutes"
            break

    model.load_state_dict(best[1])
    model.eval()
    sweep = []
    temps = [0.2, 0.25, 0.3, 0.38, 0.5, 0.7, 1.0] if cfg.head == "classify" else [1.0]
    for t in temps:
        s = evaluate(model, vgray, vcbcr, vrgb, t)
        sweep.append({"temperature": t, **{k: round(x, 4) for k, x in s.items()}})
        say(f"T={t}: val PSNR {s['psnr']:.2f} dB, colorfulness {s['colorfulness']:.1f}")
    top = max(s["psnr"] for s in sweep)
    ok = [s for s in sweep if s["psnr"] >= top - cfg.temperature_psnr_slack]
    chosen = max(ok, key=lambda s: s["colorfulness"])
    real_cf = evaluate_real_colorfulness(vrgb)
    wall = time.time() - t_start
    say(f"chose T={chosen['temperature']} (real validation colorfulness {real_cf:.1f})")

    training = {
        "command": cfg.command,
        "config": cfg.model_dump(mode="json"),
        "data": str(cfg.data),
        "train_images": n_train,
        "val_images": len(vgray),
        "best_step": best[2],
        "steps": step,
        "stopped": stopped,
        "wall_time_s": round(wall, 1),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "history": history,
    }
    metrics = {
        "val_psnr_db": chosen["psnr"],
        "val_colorfulness": chosen["colorfulness"],
        "val_real_colorfulness": round(real_cf, 3),
        "val_loss": round(best[0], 5),
        "temperature_sweep": sweep,
        "parameters": n_params,
    }
    stage_config = {
        "projection": True,
        "model_size": cfg.model_size,
        "temperature": chosen["temperature"],
    }
    save_model(
        model,
        out,
        stage=STAGE_NAME,
        model_kwargs=dict(model.hparams),
        stage_config=stage_config,
        training=training,
        metrics=metrics,
        card=model_card(cfg, training, metrics, stage_config, n_params),
    )
    return out


def evaluate_real_colorfulness(rgb) -> float:
    """Mean colorfulness of real RGB (N, 3, H, W) in [0, 1] after 8-bit rounding."""
    u8 = (rgb.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return _colorfulness(u8)


def model_card(
    cfg: TrainConfig,
    training: dict[str, Any],
    metrics: dict[str, Any],
    stage_config: dict[str, Any],
    n_params: int,
) -> str:
    """Markdown model card of a trained colorizer."""
    head = (
        "chroma classification over "
        f"{round(1 / cfg.bin_step) ** 2} grid bins (kept: occupied ones), class-rebalanced "
        f"(lambda {cfg.rebalance}), decoded by annealed mean"
        if cfg.head == "classify"
        else "direct (Cb, Cr) regression"
    )
    loss = (
        f"{cfg.w_class} x rebalanced soft cross-entropy + {cfg.w_color} x L1 on annealed-mean "
        f"chroma + {cfg.w_luma} x luminance L1"
        if cfg.head == "classify"
        else f"{cfg.w_color} x MSE on chroma + {cfg.w_luma} x luminance L1"
    )
    photos = cfg.data.is_dir()
    data = (
        f"""- Colour photographs (`{training["data"]}`): all {training["train_images"]} images of
  `train/` for training (random crops of 60-100 % of each side, squashed to
  {cfg.model_size}x{cfg.model_size}), the {training["val_images"]} whole photos of `val/`
  (squashed the same way) for checkpoint and temperature choice; `test/` never read.
  Inputs are the 8-bit rounded BT.601 gray plus Gaussian noise (std {cfg.noise_std}); random
  left-right flips.
- The photos come from research benchmark sets (BSDS500, Urban100, Sun-Hays 80, an ImageNet
  sample) without open licences (see the data folder's README); these weights are for
  non-commercial research use. Scenes follow those sets: landscapes, animals, buildings,
  everyday objects; expect plausible, not true, colours."""
        if photos
        else f"""- Colour LFW faces, 64x64 (`{training["data"]}`), train split only:
  {training["train_images"]} faces for training, {training["val_images"]} held out for
  validation (split between people). Inputs are the 8-bit rounded BT.601 gray of each face
  plus Gaussian noise (std {cfg.noise_std}); random left-right flips.
- LFW is for research use; these weights inherit that. Faces in LFW are mostly of adult
  public figures photographed by the press; skin tones and lighting follow that collection, so
  expect plausible, not true, colours, and worse results on faces or scenes unlike it."""
    )
    what = "photos" if photos else "face images"
    limits = (
        f"Trained on small photos (128 px short side) seen at {cfg.model_size} px: colours "
        "follow\n  large regions (sky, foliage, water, skin); small objects may take their "
        "surroundings' colour."
        if photos
        else "Trained on 64x64 tightly cropped faces; other content gets face-like tones."
    )
    size = stage_config["model_size"]
    return f"""# Colorizer (StackNNColorizer, {cfg.head} head)

Adds colour to gray {what} without changing their gray: the model predicts BT.601
chroma (Cb, Cr) from the gray image resized to {size}x{size};
the stage upsamples the chroma bilinearly onto the full-resolution input luma and, with
`projection` on (default), scales chroma down per pixel where RGB would clip, so the output's
BT.601 gray equals the input within 8-bit rounding.

## Model
- Fully convolutional encoder-decoder with skip connections, widths {cfg.channels},
  {n_params} parameters; {head}.
- Stage defaults: {stage_config}.

## Training data
{data}

## Training
- Loss: {loss}.
- AdamW lr {cfg.lr} (one-cycle), batch {cfg.batch_size}, seed {cfg.seed}, {cfg.threads} CPU
  thread(s); {training["steps"]} steps, best at step {training["best_step"]} (stopped by
  {training["stopped"]}), {training["wall_time_s"] / 60:.1f} min wall.
- Command: `{training["command"]}`

## Validation ({"val/ photos" if photos else "held-out train faces"}, at {size}x{size})
- PSNR {metrics["val_psnr_db"]:.2f} dB, colorfulness {metrics["val_colorfulness"]:.1f}
  (real {metrics["val_real_colorfulness"]:.1f}) at temperature
  {stage_config["temperature"]}.
- Test-split figures: see `benchmarks/results/{"colorizer_photo" if photos else "colorizer"}.md`.

## Limits
- {limits}
- Colours are guesses from gray: clothing, backgrounds and hair colour may be wrong.
"""
