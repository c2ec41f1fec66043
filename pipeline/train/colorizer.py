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

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from aepipe.data.faces import split_by_person
from aepipe.errors import ConfigError
from aepipe.train.loop import (
    Check,
    LoopSettings,
    Precision,
    Run,
    RunFields,
    checkpoint_path,
    fit,
    precision_field,
)

STAGE_NAME = "colorizer"
#: The weights folder of the frozen trunk that ``context="inception"`` models read.
CONTEXT_WEIGHTS = "inception-v3-mixed6e"


class TrainConfig(RunFields):
    """Settings of one training run (all recorded in the weights' config.json)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(
        description="colour face archive (lfw_64.npz; train split only) or photo folder "
        "(train/ and val/ subfolders; test/ is never read)"
    )
    model_size: int = Field(64, ge=16, le=512, description="training and stage input side")
    head: Literal["classify", "regress"] = "regress"
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [16, 32, 64, 128],
        min_length=2,
        description="widths of the encoder levels (full, 1/2, 1/4 ... resolution), at least two",
    )
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
    max_steps: int = Field(3000, ge=1, description="stop after this many steps in all")
    schedule_steps: int | None = Field(
        None,
        ge=1,
        description="length of the one-cycle schedule (default max_steps): a run stopped at "
        "max_steps < schedule_steps keeps a checkpoint and resumes exactly",
    )
    val_every: int = Field(150, ge=1)
    patience: int = Field(8, ge=1, description="validations without improvement before stopping")
    temperature_psnr_slack: float = Field(0.5, ge=0.0, le=10.0)
    precision: Precision = precision_field()
    context: Literal["none", "inception"] = Field(
        "none",
        description="'inception': the decoder also reads frozen ImageNet features of each "
        "image (photo folders only; the trunk is the inception-v3-mixed6e weights folder)",
    )
    context_crops: int = Field(
        6,
        ge=1,
        le=64,
        description="with context: crops per training photo (the first is the whole photo) "
        "whose trunk features are computed once before training",
    )
    context_channels: int = Field(64, ge=1, le=512, description="width of each context projection")
    context_dropout: float = Field(
        0.2, ge=0.0, lt=1.0, description="dropout on the projected context features"
    )
    ema: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description="decay of an exponential moving average of the weights, which validation "
        "and the written weights then use (default: none, the last weights)",
    )

    @model_validator(mode="after")
    def _schedule_covers_the_steps(self) -> TrainConfig:
        # The one-cycle schedule cannot run past its end: the run would stop there, silently.
        if self.schedule_steps is not None and self.schedule_steps < self.max_steps:
            raise ValueError(
                f"--schedule-steps ({self.schedule_steps}) must be at least --max-steps "
                f"({self.max_steps}): the one-cycle schedule ends the run"
            )
        return self


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


def evaluate(
    model, gray, cbcr, rgb, temperature: float, batch: int = 200, features=None
) -> dict[str, float]:
    """Validation scores: PSNR (dB, 8-bit RGB), colorfulness, and loss parts.

    Args:
        model: the colorizer (eval mode is set here).
        gray: (N, 1, H, W) input gray.
        cbcr: (N, 2, H, W) true chroma.
        rgb: (N, 3, H, W) true RGB.
        temperature: annealed-mean temperature.
        batch: faces per forward pass.
        features: (N, 768, 17, 17) context features of the images (context models only).
    """
    import torch

    from aepipe.models.colorizer import gamut_fit

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(gray), batch):
            g = gray[i : i + batch]
            f = None if features is None else features[i : i + batch]
            outs.append(gamut_fit(g, model.chroma(g, temperature, f)))
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


def _flip(g, c, gen, f=None):
    """Flip each image of a batch left-right with probability 1/2 (gray, chroma, features).

    Returns:
        ``(gray, chroma, features)``; features stay None without context.
    """
    import torch

    flip = (torch.rand(len(g), generator=gen) < 0.5)[:, None, None, None]
    # Cb/Cr are not mirrored quantities, so the chroma flips with the pixels. The context map
    # of a mirrored image is close to the mirrored map (the trunk is nearly symmetric).
    g, c = torch.where(flip, g.flip(-1), g), torch.where(flip, c.flip(-1), c)
    return g, c, None if f is None else torch.where(flip, f.flip(-1), f)


class _FaceBatches:
    """Training batches of whole faces: an endless seeded permutation, flipped at random."""

    def __init__(self, gray, cbcr, batch_size: int, gen) -> None:
        import torch

        self.gray, self.cbcr, self.batch_size, self.gen = gray, cbcr, batch_size, gen
        self.perm, self.pos = torch.randperm(len(gray), generator=gen), 0

    def __call__(self):
        import torch

        if self.pos + self.batch_size > len(self.perm):
            self.perm, self.pos = torch.randperm(len(self.gray), generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return _flip(self.gray[idx], self.cbcr[idx], self.gen)

    def state(self) -> dict[str, Any]:
        """The permutation and the position in it (the generator is saved by the spec)."""
        return {"perm": self.perm, "pos": self.pos}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.perm, self.pos = state["perm"], int(state["pos"])


def face_data(cfg: TrainConfig, gen):
    """Batches and validation set of a face archive (see :func:`photo_data` for the returns)."""
    images, files = load_color_faces(cfg.data, "train")
    cut = split_by_person(files, len(images), cfg.val_fraction)
    gray, cbcr, _ = gray_and_chroma(images[:cut])
    sample = _FaceBatches(gray, cbcr, cfg.batch_size, gen)
    return sample, cbcr, len(gray), gray_and_chroma(images[cut:]), None


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


def _random_crop(photo, gen):
    """A random crop of 60-100 % of each side of a (3, H, W) photo, drawn from ``gen``."""
    import torch

    _, h, w = photo.shape
    ch, cw = (int(side * (0.6 + 0.4 * float(torch.rand((), generator=gen)))) for side in (h, w))
    y0 = int(torch.randint(h - ch + 1, (), generator=gen))
    x0 = int(torch.randint(w - cw + 1, (), generator=gen))
    return photo[:, y0 : y0 + ch, x0 : x0 + cw]


def context_features(trunk, photos: list, precision: str, say, what: str):
    """Context-trunk features of each photo's 8-bit gray, seen at 299x299 like the stage does.

    Args:
        trunk: :class:`aepipe.models.inception.InceptionTrunk`.
        photos: float RGB (3, H, W) images of any sizes.
        precision: ``"bfloat16"`` runs the trunk under autocast.
        say: progress callback.
        what: name of the images in progress messages.

    Returns:
        (N, 768, 17, 17) bfloat16 (half the memory; the trunk's own output precision at
        inference on most CPUs).
    """
    import time

    import torch

    from aepipe.models.inception import to_input_size
    from aepipe.stage import precision_autocast

    out, t0 = [], time.monotonic()
    with torch.inference_mode(), precision_autocast(precision, "cpu"):
        for i in range(0, len(photos), 16):
            gray = [_split_gray(p[None])[0] for p in photos[i : i + 16]]
            x = torch.cat([to_input_size(g) for g in gray])
            out.append(trunk(x).to(torch.bfloat16))
            if (i // 16) % 20 == 19 or i + 16 >= len(photos):
                n = min(i + 16, len(photos))
                say(f"context features: {n}/{len(photos)} {what} ({time.monotonic() - t0:.0f} s)")
    return torch.cat(out)


def photo_data(cfg: TrainConfig, gen, say=lambda _msg: None, trunk=None):
    """Batches and validation set of a photo folder (``train/``, ``val/``).

    Without context every batch is fresh random crops. With context the crops are a fixed
    bank, ``context_crops`` per photo (the whole photo first), whose trunk features are
    computed once here: the trunk would cost far more than the colorizer at every step.

    Returns:
        ``(sample, cbcr, n_train, (vgray, vcbcr, vrgb), vfeatures)``: ``sample()`` gives one
        training batch ``(gray, chroma, features)``; ``cbcr`` is the chroma of every training
        pixel (for the bins); the validation tensors are (N, 1 / 2 / 3, S, S) with
        S = ``model_size``; the features are None without context (``trunk`` None).
    """
    import torch

    photos = load_photos(cfg.data / "train")
    val_photos = load_photos(cfg.data / "val")
    val = torch.cat([_squash(p, cfg.model_size) for p in val_photos])
    cbcr = torch.cat([_split_gray(p[None])[1].flatten(2) for p in photos], dim=2)[..., None]
    if trunk is not None:
        bank = [[p] + [_random_crop(p, gen) for _ in range(cfg.context_crops - 1)] for p in photos]
        crops = [c for group in bank for c in group]
        feats = context_features(trunk, crops, cfg.precision, say, "training crops")
        vfeats = context_features(trunk, val_photos, cfg.precision, say, "val photos")
        g_all, c_all, _ = _split_gray(torch.cat([_squash(c, cfg.model_size) for c in crops]))

        def sample():
            idx = torch.randint(len(crops), (cfg.batch_size,), generator=gen)
            return _flip(g_all[idx], c_all[idx], gen, feats[idx])

    else:
        vfeats = None

        def sample():
            crops = [
                _squash(_random_crop(photos[i], gen), cfg.model_size)
                for i in torch.randint(len(photos), (cfg.batch_size,), generator=gen).tolist()
            ]
            g, c, _ = _split_gray(torch.cat(crops))
            return _flip(g, c, gen)

    # Crops draw from ``gen`` only, which the spec checkpoints: nothing else to keep.
    sample.state = dict  # type: ignore[attr-defined]
    sample.set_state = lambda _state: None  # type: ignore[attr-defined]
    return sample, cbcr, len(photos), _split_gray(val), vfeats


class _ColorizerSpec:
    """The colorizer as the training loop sees it (see :mod:`aepipe.train.loop`)."""

    def __init__(self, cfg: TrainConfig, out: Path, say: Callable[[str], None]) -> None:
        import torch

        from aepipe.models.colorizer import StackNNColorizer
        from aepipe.weights import load_model

        self.cfg, self.out, self.say = cfg, out, say
        self.gen = torch.Generator().manual_seed(cfg.seed)
        kind = "photos" if cfg.data.is_dir() else "faces"
        if cfg.context != "none" and kind == "faces":
            raise ConfigError("context: 'inception' needs a photo folder, not a face archive")
        # The shipped frozen trunk: it computes the crop bank's features, then joins the model.
        trunk = load_model(CONTEXT_WEIGHTS)[0] if cfg.context != "none" else None
        data = (
            photo_data(cfg, self.gen, say, trunk) if kind == "photos" else face_data(cfg, self.gen)
        )
        self.sample, cbcr, self.n_train, self.val, self.val_features = data
        split = "val/ folder" if kind == "photos" else "split between people"
        say(f"train {self.n_train} {kind}, validation {len(self.val[0])} {kind} ({split})")
        centers, class_w, n_bins = None, None, 1
        if cfg.head == "classify":
            centers, class_w = chroma_bins(cbcr, cfg.bin_step, cfg.min_bin_count, cfg.rebalance)
            n_bins = len(centers)
        self.model = StackNNColorizer(
            cfg.channels,
            head=cfg.head,
            n_bins=n_bins,
            bin_step=cfg.bin_step,
            context=cfg.context,
            context_channels=cfg.context_channels,
            context_dropout=cfg.context_dropout,
        )
        if centers is not None:
            self.model.bin_centers.copy_(centers)
        if trunk is not None:
            self.model.context = trunk
        self.n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        say(f"StackNNColorizer {cfg.head}: {self.n_params} parameters, {n_bins} chroma bins")
        self.loss_kw: dict[str, Any] = dict(
            class_weights=class_w,
            w_color=cfg.w_color,
            w_class=cfg.w_class,
            w_luma=cfg.w_luma,
            temperature=cfg.train_temperature,
        )
        self.last_loss = math.nan

    def draw(self, step: int) -> tuple[Any, Any]:
        """A batch ``(noisy gray, gray, chroma)``; the noise is the StackNN regulariser."""
        import torch

        g, c, f = self.sample()
        return g + self.cfg.noise_std * torch.randn(g.shape, generator=self.gen), g, c, f

    def loss(self, model: Any, batch: tuple[Any, ...], step: int) -> tuple[Any, dict]:
        """The colorizer loss of the batch (its parts are reported at validation)."""
        from aepipe.models.colorizer import colorizer_loss

        noisy, g, c, f = batch
        parts = colorizer_loss(model, model(noisy, f), g, c, **self.loss_kw)
        self.last_loss = parts["loss"].item()
        return parts["loss"], {}

    def validate(self, model: Any, run: Run) -> Check:
        """Validation loss (the score, lower is better) and PSNR / colorfulness."""
        v = self.val_loss(model)
        rate = run.step * self.cfg.batch_size / max(run.minutes() * 60, 1e-9)
        q = evaluate(model, *self.val, self.cfg.train_temperature, features=self.val_features)
        row = {"step": run.step, **{k: round(x, 5) for k, x in v.items()}} | {
            f"val_{k}": round(x, 3) for k, x in q.items()
        }
        line = (
            f"step {run.step}/{self.cfg.max_steps} train {self.last_loss:.4f} "
            f"val {v['loss']:.4f} (color {v['color']:.4f} luma {v['luma']:.5f}"
            + (f" class {v['class']:.3f}" if "class" in v else "")
            + f") PSNR {q['psnr']:.2f} colorfulness {q['colorfulness']:.1f}"
            + f" {rate:.1f} img/s{' *' if run.improves(v['loss'], False) else ''}"
        )
        return Check(row, v["loss"], line, {"val_loss": round(v["loss"], 5)})

    def val_loss(self, model: Any) -> dict[str, float]:
        """Mean loss parts over the validation images (no input noise)."""
        import torch

        from aepipe.models.colorizer import colorizer_loss

        vgray, vcbcr, _ = self.val
        vf = self.val_features
        tot: dict[str, float] = {}
        with torch.no_grad():
            for i in range(0, len(vgray), 200):
                g, c = vgray[i : i + 200], vcbcr[i : i + 200]
                f = None if vf is None else vf[i : i + 200]
                parts = colorizer_loss(model, model(g, f), g, c, **self.loss_kw)
                for k, v in parts.items():
                    tot[k] = tot.get(k, 0.0) + float(v) * len(g)
        return {k: v / len(vgray) for k, v in tot.items()}

    def rng_state(self) -> dict[str, Any]:
        """The generator (order, crops, flips, noise) and the face permutation."""
        return {"gen": self.gen.get_state(), "data": self.sample.state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rng_state`."""
        self.gen.set_state(state["gen"])
        self.sample.set_state(state["data"])

    def write(self, model: Any, run: Run, final: bool) -> Path:
        """Choose the temperature on the validation images and write the weights folder."""
        return _write(self, model, run)


def _temperature_sweep(spec: _ColorizerSpec, model: Any) -> tuple[list[dict], dict]:
    """Validation scores per annealed-mean temperature, and the chosen one.

    The chosen one is the most colourful within ``temperature_psnr_slack`` dB of the best PSNR.
    """
    cfg, sweep = spec.cfg, []
    temps = [0.2, 0.25, 0.3, 0.38, 0.5, 0.7, 1.0] if cfg.head == "classify" else [1.0]
    for t in temps:
        s = evaluate(model, *spec.val, t, features=spec.val_features)
        sweep.append({"temperature": t, **{k: round(x, 4) for k, x in s.items()}})
        spec.say(f"T={t}: val PSNR {s['psnr']:.2f} dB, colorfulness {s['colorfulness']:.1f}")
    top = max(s["psnr"] for s in sweep)
    ok = [s for s in sweep if s["psnr"] >= top - cfg.temperature_psnr_slack]
    return sweep, max(ok, key=lambda s: s["colorfulness"])


def _write(spec: _ColorizerSpec, model: Any, run: Run) -> Path:
    """The colorizer weights folder of a finished run (``model`` holds the best weights)."""
    import torch

    from aepipe.weights import save_model

    cfg = spec.cfg
    sweep, chosen = _temperature_sweep(spec, model)
    real_cf = evaluate_real_colorfulness(spec.val[2])
    spec.say(f"chose T={chosen['temperature']} (real validation colorfulness {real_cf:.1f})")
    stopped = "max_steps" if run.stopped_by == "max_epochs" else run.stopped_by
    training = {
        "command": cfg.command,
        "config": cfg.model_dump(mode="json"),
        "data": str(cfg.data),
        "train_images": spec.n_train,
        "val_images": len(spec.val[0]),
        "best_step": run.best_step,
        "steps": run.step,
        "stopped": stopped,
        "wall_time_s": round(run.minutes() * 60, 1),
        "threads": cfg.threads,
        "torch": torch.__version__,
        "history": run.history,
    }
    metrics = {
        "val_psnr_db": chosen["psnr"],
        "val_colorfulness": chosen["colorfulness"],
        "val_real_colorfulness": round(real_cf, 3),
        "val_loss": run.best_metrics.get("val_loss"),
        "temperature_sweep": sweep,
        "parameters": spec.n_params,
    }
    stage_config = {
        "projection": True,
        "model_size": cfg.model_size,
        "temperature": chosen["temperature"],
    }
    card = model_card(cfg, training, metrics, stage_config, spec.n_params)
    return save_model(
        model,
        spec.out,
        stage=STAGE_NAME,
        model_kwargs=dict(model.hparams),
        stage_config=stage_config,
        training=training,
        metrics=metrics,
        card=card,
        parts={"context": CONTEXT_WEIGHTS} if model.context is not None else None,
    )


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

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = _ColorizerSpec(cfg, Path(out), progress or (lambda _msg: None))
    total = cfg.schedule_steps or cfg.max_steps
    settings = LoopSettings(
        lr=cfg.lr,
        steps_per_epoch=total,
        max_epochs=1,
        optimizer=lambda params: torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4),
        scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=total, pct_start=0.1
        ),
        val_every=cfg.val_every,
        maximize=False,
        patience=cfg.patience,
        max_minutes=cfg.max_minutes,
        minutes_checked="step",
        max_steps=cfg.max_steps if cfg.max_steps < total else None,
        checkpoint=checkpoint_path(Path(out)),
        resume=cfg.resume,
        precision=cfg.precision,
        ema=cfg.ema,
    )
    fit(spec, settings, spec.say)
    return Path(out)


def evaluate_real_colorfulness(rgb) -> float:
    """Mean colorfulness of real RGB (N, 3, H, W) in [0, 1] after 8-bit rounding."""
    u8 = (rgb.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return _colorfulness(u8)


def _card_method(cfg: TrainConfig) -> tuple[str, str]:
    """The card's (head, loss) descriptions."""
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
    return head, loss


def _card_data(cfg: TrainConfig, training: dict[str, Any], photos: bool) -> str:
    """The card's training-data section: the photo folder or the LFW faces."""
    folder, n_train = training["data"], training["train_images"]
    if photos:
        return f"""- Colour photographs (`{folder}`): all {n_train} images of
  `train/` for training (random crops of 60-100 % of each side, squashed to
  {cfg.model_size}x{cfg.model_size}), the {training["val_images"]} whole photos of `val/`
  (squashed the same way) for checkpoint and temperature choice; `test/` never read.
  Inputs are the 8-bit rounded BT.601 gray plus Gaussian noise (std {cfg.noise_std}); random
  left-right flips.
- The photos come from research benchmark sets (BSDS500, Urban100, Sun-Hays 80, an ImageNet
  sample) without open licences (see the data folder's README); these weights are for
  non-commercial research use. Scenes follow those sets: landscapes, animals, buildings,
  everyday objects; expect plausible, not true, colours."""
    return f"""- Colour LFW faces, 64x64 (`{training["data"]}`), train split only:
  {training["train_images"]} faces for training, {training["val_images"]} held out for
  validation (split between people). Inputs are the 8-bit rounded BT.601 gray of each face
  plus Gaussian noise (std {cfg.noise_std}); random left-right flips.
- LFW is for research use; these weights inherit that. Faces in LFW are mostly of adult
  public figures photographed by the press; skin tones and lighting follow that collection, so
  expect plausible, not true, colours, and worse results on faces or scenes unlike it."""


def _card_context(cfg: TrainConfig) -> str:
    """The card's line on the frozen context trunk (empty without one)."""
    if cfg.context == "none":
        return ""
    return f"""
- Context: frozen ImageNet features (Inception-v3 to Mixed_6e, 17x17x768, from the gray seen
  at 299x299; the `{CONTEXT_WEIGHTS}` weights folder, named under `parts` in config.json
  and loaded with this one) enter every decoder level through two {cfg.context_channels}-wide
  projections: the feature map and its spatial mean. Training used {cfg.context_crops} fixed
  crops per photo (the whole photo first) whose features were computed once."""


def model_card(
    cfg: TrainConfig,
    training: dict[str, Any],
    metrics: dict[str, Any],
    stage_config: dict[str, Any],
    n_params: int,
) -> str:
    """Markdown model card of a trained colorizer."""
    head, loss = _card_method(cfg)
    photos = cfg.data.is_dir()
    what = "photos" if photos else "face images"
    limits = (
        f"Trained on small photos (128 px short side) seen at {cfg.model_size} px: colours "
        "follow\n  large regions (sky, foliage, water, skin); small objects may take their "
        "surroundings' colour."
        if photos
        else "Trained on 64x64 tightly cropped faces; other content gets face-like tones."
    )
    size = stage_config["model_size"]
    autocast = ", bfloat16 autocast" if cfg.precision == "bfloat16" else ""
    if cfg.ema is not None:
        autocast += f"; the weights are an exponential moving average (decay {cfg.ema})"
    return f"""# Colorizer (StackNNColorizer, {cfg.head} head)

Adds colour to gray {what} without changing their gray: the model predicts BT.601
chroma (Cb, Cr) from the gray image resized to {size}x{size};
the stage upsamples the chroma onto the full-resolution input luma (bilinearly, or by a guided
filter that follows the gray's edges: its `upsample` option) and, with
`projection` on (default), scales chroma down per pixel where RGB would clip, so the output's
BT.601 gray equals the input within 8-bit rounding.

## Model
- Fully convolutional encoder-decoder with skip connections, widths {cfg.channels},
  {n_params} trained parameters; {head}.{_card_context(cfg)}
- Stage defaults: {stage_config}.

## Training data
{_card_data(cfg, training, photos)}

## Training
- Loss: {loss}.
- AdamW lr {cfg.lr} (one-cycle), batch {cfg.batch_size}, seed {cfg.seed}, {cfg.threads} CPU
  thread(s){autocast}; {training["steps"]} steps, best at step {training["best_step"]}
  (stopped by {training["stopped"]}), {training["wall_time_s"] / 60:.1f} min wall.
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
