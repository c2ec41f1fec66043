"""Train the scan denoiser (ScanUNet), or the classic two-layer AE baseline, on document pairs.

Training patches come from two sources, mixed per batch item with ``synthetic_fraction``:

* the Denoising Dirty Documents training pairs (``ddd``), minus ``val_groups`` whole pages
  (all 4 noise versions of a page stay on one side, see :mod:`aepipe.data.ddd`);
* synthetic degraded pages from :mod:`aepipe.data.synthetic_pages`, held in a pool of
  ``synthetic_pool`` pages of which one is replaced by a fresh page every
  ``synthetic_refresh`` steps (rendering a page costs 0.1-0.7 s, so it is amortised over many
  patches; all in the training process, one thread).

Both sources are augmented the same way: a random scale (the crop of side ``patch * s`` is
resized to ``patch``, so strokes are seen at several widths as at 150-600 DPI), 90-degree
rotations and flips, and, on the dirty side only, random ink and paper levels (real scans have
grey ink and off-white paper, which the DDD targets never show; without this the model thins
and lightens real ink). The loss is MSE (the DDD metric is RMSE); for nets with the clamped
output (``output="clamp"``) a squared hinge (``margin``) also pushes the unclamped output past
pure paper and pure ink: without it those pixels stop getting any gradient the moment they reach
the clamp, and the net leaves more faint specks on the paper (synthetic validation RMSE, 3,000
fine-tuning steps: 0.0729 without, 0.0705 with margin 0.1, 0.0691 with 0.2).
Weights are averaged with an EMA; validation (full DDD pages of the held-out groups plus fixed
synthetic pages) runs every ``val_every`` steps and the best EMA weights by the sum of the two
RMSEs are kept.
Everything random derives from ``seed``; with ``max_minutes`` unset a run is reproducible.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from aepipe.data.ddd import DDDPair, load_pairs, split_by_group, split_three
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

STAGE_NAME = "scan-denoiser"
# Fixed synthetic validation pages: (seed offset, H, W, dpi). Seeds far from the training
# stream's draws (those come from SeedSequence-derived 62-bit integers).
SYNTH_VAL_PAGES = [(i, 420, 540, 100) for i in range(6)] + [
    (100 + i, 640, 640, 300) for i in range(2)
]
SYNTH_VAL_SEED = 9_000_000


class TrainConfig(RunFields):
    """Settings of one training run (all recorded in the weights' config.json)."""

    model_config = ConfigDict(extra="forbid")

    ddd: Path | None = Field(None, description="DDD folder with train/ and train_cleaned/")
    arch: Literal["scan-unet", "classic"] = "scan-unet"
    base: int = Field(16, ge=4, le=128, description="ScanUNet top-level width")
    levels: int = Field(4, ge=1, le=6)
    convs: int = Field(2, ge=1, le=4)
    fold: int = Field(2, ge=1, le=4)
    output: Literal["sigmoid", "clamp"] = Field("sigmoid", description="ScanUNet output function")
    refine: int = Field(
        0, ge=0, le=64, description="ScanUNet stroke-edge correction width (0: none)"
    )
    freeze_base: bool = Field(
        False, description="train only the correction (--refine) of an --init network"
    )
    margin: float = Field(
        0.0,
        ge=0.0,
        le=0.5,
        description="clamp nets: also push the unclamped output this far past pure white "
        "paper and pure black ink (hinge, squared)",
    )
    init: Path | None = Field(
        None,
        description="weights folder to start from (same network, or the same plus the "
        "stroke-edge correction; the output function may differ, e.g. to move a sigmoid net to "
        "the clamped output)",
    )
    classic_channels: int = Field(64, ge=4, le=256, description="ClassicDenoisingAE width")
    synthetic_fraction: float = Field(0.5, ge=0.0, le=1.0)
    synthetic_pool: int = Field(24, ge=1, le=1000)
    synthetic_refresh: int = Field(4, ge=1, description="steps between new synthetic pages")
    val_groups: int = Field(8, ge=0, le=35, description="DDD pages (x4 versions) held out")
    test_groups: int = Field(
        0,
        ge=0,
        le=34,
        description="of the held-out DDD pages, this many are a test split: never scored in "
        "training (the rest validate)",
    )
    docbin: Path | None = Field(None, description="docbin folder (images/, gt/): real pages")
    docbin_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="share of patches from docbin training pages"
    )
    clean_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of identity patches (a clean page in, the same page out): docbin "
        "ground truth or a clean synthetic page, half each",
    )
    display_prob: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="P(a synthetic page also gets large/bold type, shapes, photos)",
    )
    photos: Path | None = Field(
        None,
        description="folder of photographs (e.g. photos/train) to paste as the photos of "
        "display pages; default: synthetic continuous-tone fields",
    )
    photo_prob: float = Field(0.3, ge=0.0, le=1.0, description="P(a display page has a photo)")
    ink_level: float = Field(
        0.2,
        ge=0.0,
        le=0.6,
        description="bilevel ground truth: ink pixels are pushed below this level (hinge), "
        "paper pixels to white",
    )
    patch: int = Field(128, ge=16, le=1024)
    scale_lo: float = Field(0.6, gt=0.0, le=4.0, description="crop side / patch, low end")
    scale_hi: float = Field(1.6, gt=0.0, le=4.0)
    scale_prob: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="P(a patch is resampled by a random scale); the rest keep the page's own "
        "pixels, whose fine edge and noise structure resampling smooths away",
    )
    level_aug: float = Field(0.5, ge=0.0, le=1.0, description="P(random ink/paper levels)")
    batch_size: int = Field(12, ge=1, le=512)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    max_steps: int = Field(6000, ge=1)
    schedule_steps: int | None = Field(
        None,
        ge=1,
        description="length of the cosine schedule (default max_steps): a run stopped at "
        "max_steps < schedule_steps replays the first steps of the longer run exactly",
    )
    warmup: int = Field(200, ge=0)
    ema: float = Field(0.998, ge=0.0, lt=1.0)
    val_every: int = Field(250, ge=1)
    precision: Precision = precision_field()

    @model_validator(mode="after")
    def _options_fit_together(self) -> TrainConfig:
        if self.margin > 0 and (self.output != "clamp" or self.arch != "scan-unet"):
            raise ValueError("--margin applies to --output clamp ScanUNet nets only")
        if self.refine and self.arch != "scan-unet":
            raise ValueError("--refine applies to ScanUNet nets only")
        if self.docbin_fraction + self.clean_fraction > 1.0:
            raise ValueError("--docbin-fraction plus --clean-fraction must be at most 1")
        if (self.docbin_fraction > 0 or self.clean_fraction > 0) and self.docbin is None:
            raise ValueError("--docbin-fraction and --clean-fraction need --docbin")
        if self.test_groups and self.test_groups >= self.val_groups:
            raise ValueError("--test-groups must be smaller than --val-groups")
        if self.freeze_base and (not self.refine or self.init is None):
            raise ValueError("--freeze-base needs --refine and --init (it trains the correction)")
        if self.scale_lo > self.scale_hi:
            raise ValueError("--scale-lo must be at most --scale-hi")
        return self


# ---- patches --------------------------------------------------------------------------------


def _crop_pair(
    dirty: np.ndarray, clean: np.ndarray, rng: np.random.Generator, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (dirty, clean) float32 (P, P) patch from uint8 pages."""
    p = cfg.patch
    h, w = clean.shape
    # At scale_prob 1 no extra number is drawn: runs from before the option replay exactly.
    rescale = cfg.scale_prob >= 1.0 or rng.random() < cfg.scale_prob
    s = math.exp(rng.uniform(math.log(cfg.scale_lo), math.log(cfg.scale_hi))) if rescale else 1.0
    c = max(8, min(round(p * s), h, w))
    for _ in range(4):
        y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        cc = clean[y : y + c, x : x + c]
        if (cc < 128).mean() > 0.01:
            break
    d = dirty[y : y + c, x : x + c].astype(np.float32) / 255.0
    cc = cc.astype(np.float32) / 255.0
    if c != p:
        import cv2  # the [train] extra: --help and the config need no OpenCV

        interp = cv2.INTER_AREA if c > p else cv2.INTER_LINEAR
        d = cv2.resize(d, (p, p), interpolation=interp)
        cc = cv2.resize(cc, (p, p), interpolation=interp)
    k = int(rng.integers(4))
    d, cc = np.rot90(d, k), np.rot90(cc, k)
    if rng.random() < 0.5:
        d, cc = d[:, ::-1], cc[:, ::-1]
    if rng.random() < cfg.level_aug:
        # Grey ink, off-white paper, a gamma: what real scanners and lighting do.
        ink = rng.uniform(0.0, 0.35)
        paper = rng.uniform(0.7, 1.0)
        gamma = math.exp(rng.uniform(-0.4, 0.4))
        d = ink + (paper - ink) * np.power(np.clip(d, 0.0, 1.0), gamma)
    return np.ascontiguousarray(d), np.ascontiguousarray(cc)


class _SyntheticPool:
    """A rolling pool of synthetic pages; one is replaced on each :meth:`refresh`."""

    def __init__(
        self,
        size: int,
        seed: int,
        display_prob: float = 0.0,
        photos: list[np.ndarray] | None = None,
        photo_prob: float = 0.3,
    ) -> None:
        from aepipe.data.synthetic_pages import SyntheticPages

        self.display_prob = display_prob
        # How display pages are drawn; the recipes (seeds) stay what a checkpoint keeps.
        self.look = dict(photos=photos, photo_prob=photo_prob)
        self.sizes = SyntheticPages.DEFAULT_PAGE_SIZES
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 77]))
        # What each page was rendered from: a checkpoint keeps these, not the pixels.
        self.recipes = [self._recipe() for _ in range(size)]
        self.pages = [_render(r, **self.look) for r in self.recipes]
        self.next = 0

    def _recipe(self) -> tuple[int, int, int, int, bool]:
        h, w, dpi = self.sizes[int(self.rng.integers(len(self.sizes)))]
        # No extra draw when off: the pages of runs from before the option replay exactly.
        display = self.display_prob > 0 and self.rng.random() < self.display_prob
        return int(self.rng.integers(2**62)), int(h), int(w), int(dpi), bool(display)

    def refresh(self) -> None:
        self.recipes[self.next] = self._recipe()
        self.pages[self.next] = _render(self.recipes[self.next], **self.look)
        self.next = (self.next + 1) % len(self.pages)

    def state(self) -> dict[str, Any]:
        """The generator, the page recipes and the next page to replace."""
        return {"rng": self.rng.bit_generator.state, "recipes": self.recipes, "next": self.next}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state`, rendering the pages that differ."""
        self.rng.bit_generator.state = state["rng"]
        recipes = [tuple(r) for r in state["recipes"]]
        for i, recipe in enumerate(recipes):
            if recipe != self.recipes[i]:
                self.pages[i] = _render(recipe, **self.look)
        self.recipes, self.next = recipes, int(state["next"])


def _render(
    recipe: tuple[int, int, int, int, bool],
    photos: list[np.ndarray] | None = None,
    photo_prob: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    from aepipe.data.synthetic_pages import make_pair

    seed, h, w, dpi, display = recipe
    return make_pair(seed, h, w, dpi, display=display, photos=photos, photo_prob=photo_prob)


def synthetic_val_pages() -> list[tuple[np.ndarray, np.ndarray]]:
    """The fixed synthetic validation pages (dirty, clean) uint8, never drawn in training."""
    from aepipe.data.synthetic_pages import make_pair

    return [make_pair(SYNTH_VAL_SEED + s, h, w, dpi) for s, h, w, dpi in SYNTH_VAL_PAGES]


class _RealPages:
    """docbin pages for training (scan and ground truth as uint8, 0 = ink) and validation."""

    def __init__(self, cfg: TrainConfig) -> None:
        from aepipe.data.docbin import load_pages, page_names, split_pages

        split = split_pages(page_names(cfg.docbin))
        self.split = split
        self.train = [
            (p.image, np.where(p.ink, 0, 255).astype(np.uint8))
            for p in load_pages(cfg.docbin, split["train"])
        ]
        self.val = load_pages(cfg.docbin, split["val"])
        # Real pages: their own pixels half the time, else shrunk up to 2x (lower DPI); no
        # level change (the scans' own levels are the point). Identity patches: unchanged.
        self.cfg_real = cfg.model_copy(
            update=dict(scale_prob=0.5, scale_lo=0.8, scale_hi=2.0, level_aug=0.0)
        )
        self.cfg_clean = cfg.model_copy(update=dict(level_aug=0.0))

    def sample(
        self, rng: np.random.Generator, cfg: TrainConfig, pool: _SyntheticPool | None
    ) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """A real patch (labels, True), an identity patch (False), or None: the usual sources."""
        r = rng.random()
        if r < cfg.docbin_fraction:
            image, gt = self.train[int(rng.integers(len(self.train)))]
            return *_crop_pair(image, gt, rng, self.cfg_real), True
        if r < cfg.docbin_fraction + cfg.clean_fraction:
            if pool is None or rng.random() < 0.5:
                page = self.train[int(rng.integers(len(self.train)))][1]
            else:
                page = pool.pages[int(rng.integers(len(pool.pages)))][1]
            return *_crop_pair(page, page, rng, self.cfg_clean), False
        return None

    def val_f(self, model) -> float:
        """Mean F-measure (%) after Otsu of ``model``'s output on the validation pages."""
        import torch

        from aepipe.data.docbin import f_measure, otsu_ink

        scores = []
        with torch.inference_mode():
            for page in self.val:
                x = torch.from_numpy(page.image.astype(np.float32) / 255.0)[None, None]
                scores.append(100.0 * f_measure(otsu_ink(model(x)[0, 0].numpy()), page.ink))
        return float(np.mean(scores))


def bilevel_loss(pred, target, ink_level: float):
    """Per-pixel loss against ink/paper labels (target 1 = paper, 0 = ink; resampled: between).

    Paper is pulled to white; ink only below ``ink_level`` (a squared hinge): bilevel ground
    truth says where ink is, not how dark it should be.
    """
    return (
        target * (1.0 - pred).square() + (1.0 - target) * (pred - ink_level).clamp_min(0.0).square()
    )


# ---- model ----------------------------------------------------------------------------------


def build_model(cfg: TrainConfig):
    """The network named by ``cfg.arch``, initialised from the global torch seed."""
    if cfg.arch == "classic":
        from aepipe.models.classic import ClassicDenoisingAE

        return ClassicDenoisingAE(channels=cfg.classic_channels)
    from aepipe.models.scan_unet import ScanUNet

    model = ScanUNet(
        base=cfg.base,
        levels=cfg.levels,
        convs=cfg.convs,
        fold=cfg.fold,
        output=cfg.output,
        refine=cfg.refine,
    )
    if cfg.init is not None:
        _load_init(model, cfg.init)
    return model


def init_record(folder: Path, val_names: list[str]) -> dict[str, Any]:
    """What a fine-tuning run records about the weights it starts from.

    Recorded rather than referred to: the source may be replaced later, e.g. when the result
    is shipped under the same name.

    Args:
        folder: the ``init`` weights folder.
        val_names: DDD pages this run holds out for validation.

    Raises:
        ConfigError: the source was trained on some of those pages (validation would leak).
    """
    from aepipe.errors import ConfigError
    from aepipe.weights import read_config, resolve

    config = read_config(resolve(folder))
    training = config.get("training", {})
    data = training.get("data", {})
    seen = set(data.get("ddd_train_names", []))
    # A run with a test split records it apart from validation: both were held out of training.
    held = set(data.get("ddd_val_names", [])) | set(data.get("ddd_test_names", []))
    if (seen & set(val_names)) or (held and not set(val_names) <= held):
        raise ConfigError(
            f"--init {folder}: it was trained on DDD pages this run holds out for validation; "
            "use the same --seed and --val-groups as its training run"
        )
    return dict(
        path=str(folder),
        sha256=config["sha256"],
        model_kwargs=config["model_kwargs"],
        command=training.get("command"),
        metrics=config.get("metrics"),
        init=training.get("init"),
    )


def _load_init(model, folder: Path) -> None:
    """Copy the weights of the trained scan denoiser in ``folder`` into ``model``.

    ``model`` may add the stroke-edge correction (``refine``) to the source's network: its new
    layers keep their initialisation, which leaves the output unchanged at the start.

    Raises:
        ConfigError: the two networks differ otherwise.
    """
    from aepipe.errors import ConfigError
    from aepipe.weights import load_model

    source, _ = load_model(folder, device="cpu")
    state, mine = source.state_dict(), model.state_dict()
    shapes = {k: v.shape for k, v in state.items()}
    shared = {k: v.shape for k, v in mine.items() if k in shapes or not model.is_correction(k)}
    if shapes != shared:
        raise ConfigError(
            f"--init {folder}: its network {getattr(source, 'hparams', {})} does not match "
            f"this one {getattr(model, 'hparams', {})}"
        )
    model.load_state_dict(state, strict=False)


def page_rmse(model, pages: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Pixel-pooled RMSE of ``model`` over whole (dirty, clean) uint8 pages (Kaggle's metric)."""
    import torch

    se, count = 0.0, 0
    with torch.inference_mode():
        for dirty, clean in pages:
            x = torch.from_numpy(dirty.astype(np.float32) / 255.0)[None, None]
            y = model(x)[0, 0].numpy()
            se += float(((y - clean.astype(np.float32) / 255.0) ** 2).sum())
            count += clean.size
    return math.sqrt(se / max(count, 1))


# ---- training -------------------------------------------------------------------------------


class _ScanData:
    """Every page a run reads: DDD train / validation / test pairs, docbin pages, the pool."""

    def __init__(self, cfg: TrainConfig) -> None:
        from aepipe.errors import ConfigError

        self.train: list[DDDPair] = []
        self.val: list[DDDPair] = []
        self.test: list[DDDPair] = []
        if cfg.ddd is not None:
            try:
                pairs = load_pairs(cfg.ddd)
            except FileNotFoundError as exc:
                raise ConfigError(f"--ddd: {exc}") from None
            try:
                if cfg.test_groups:
                    self.train, self.val, self.test = split_three(
                        pairs, cfg.val_groups, cfg.test_groups, cfg.seed
                    )
                else:
                    self.train, self.val = split_by_group(pairs, cfg.val_groups, cfg.seed)
            except ValueError as exc:
                raise ConfigError(f"--val-groups: {exc}") from None

    def load_rest(self, cfg: TrainConfig) -> None:
        """The slow part (synthetic pages, docbin), after the checks that can fail at once."""
        from aepipe.data.synthetic_pages import load_photos
        from aepipe.errors import ConfigError

        self.synth_frac = cfg.synthetic_fraction if self.train else 1.0
        try:
            photos = load_photos(cfg.photos) if cfg.photos is not None else None
        except OSError as exc:
            raise ConfigError(f"--photos: {exc}") from None
        self.pool = (
            _SyntheticPool(cfg.synthetic_pool, cfg.seed, cfg.display_prob, photos, cfg.photo_prob)
            if self.synth_frac > 0
            else None
        )
        self.real = None
        if cfg.docbin is not None:
            try:
                self.real = _RealPages(cfg)
            except (FileNotFoundError, ValueError) as exc:
                raise ConfigError(f"--docbin: {exc}") from None
        self.ddd_val = [(p.dirty, p.clean) for p in self.val]
        self.syn_val = synthetic_val_pages()
        self.mixed = self.real is not None and cfg.docbin_fraction + cfg.clean_fraction > 0


class _ScanSpec:
    """The scan denoiser as the training loop sees it (see :mod:`aepipe.train.loop`)."""

    def __init__(self, cfg: TrainConfig, out: Path, data: _ScanData) -> None:
        self.cfg, self.out, self.data = cfg, out, data
        self.t_start = time.monotonic()
        self.rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1]))
        # Before the slow part (rendering synthetic pages), so a wrong --init fails at once.
        # The pool draws from numpy generators only, so the order leaves torch's stream as is.
        held = [p.name for p in data.val + data.test]
        self.init = init_record(cfg.init, held) if cfg.init else None
        self.model = build_model(cfg)
        data.load_rest(cfg)
        if cfg.freeze_base:
            # Without gradients on the U-Net, backward stops at the correction: a fraction of
            # the cost of a full step (the loop optimises only what requires grad).
            for name, p in self.model.named_parameters():
                p.requires_grad_(self.model.is_correction(name))
        self.prep_minutes = (time.monotonic() - self.t_start) / 60
        self.last_loss = math.nan

    def lr_at(self, step: int) -> float:
        """The learning rate of (0-based) ``step``: linear warm-up, then cosine to 2 %."""
        cfg = self.cfg
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        t = (step - cfg.warmup) / max(1, (cfg.schedule_steps or cfg.max_steps) - cfg.warmup)
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

    def draw(self, step: int) -> tuple[Any, Any, Any]:
        """Patches from the mixed sources, then the pool's page refresh."""
        return _draw_batch(self.cfg, self.data, self.rng, step)

    def loss(self, model: Any, batch: tuple[Any, Any, Any], step: int) -> tuple[Any, dict]:
        """MSE (plus the clamp margin hinge); the bilevel loss on real labelled patches."""
        loss = _scan_loss(self.cfg, model, batch, self.data.mixed)
        self.last_loss = loss.item()
        return loss, {}

    def validate(self, model: Any, run: Run) -> Check:
        """RMSE on held-out DDD and fixed synthetic pages (+ docbin F): lower is better."""
        return _validate(self, model, run)

    def rng_state(self) -> dict[str, Any]:
        """The patch generator and the synthetic pool (its generator and page recipes)."""
        pool = self.data.pool
        return {"rng": self.rng.bit_generator.state, "pool": pool.state() if pool else None}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rng_state` (re-rendering the pool's pages)."""
        self.rng.bit_generator.state = state["rng"]
        if self.data.pool is not None:
            self.data.pool.set_state(state["pool"])

    def write(self, model: Any, run: Run, final: bool) -> Path:
        """Write the weights folder (at each improvement, and the best at the end)."""
        stopped = "running"
        if final:
            stopped = "max_steps" if run.stopped_by == "max_epochs" else run.stopped_by
        return _save(self, model, run, stopped)

    def minutes(self, run: Run) -> float:
        """Wall minutes since the trainer started (data preparation included)."""
        return self.prep_minutes + run.minutes()


def train(cfg: TrainConfig, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Train and write the weights folder ``out`` (best EMA checkpoint by validation).

    Args:
        cfg: the run's settings.
        out: weights folder to write (rewritten at each validation improvement, so a run
            stopped early still leaves its best weights).
        progress: called with one line of text per validation.

    Returns:
        ``out``.
    """
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = _ScanSpec(cfg, Path(out), _ScanData(cfg))
    total = max(cfg.schedule_steps or cfg.max_steps, cfg.max_steps)
    settings = LoopSettings(
        # The factor is the rate itself (lr 1): the same floats as ``cfg.lr * ...``.
        lr=1.0,
        steps_per_epoch=total,
        max_epochs=1,
        lr_factor=spec.lr_at,
        optimizer=lambda params: torch.optim.Adam(params, lr=cfg.lr),
        val_every=cfg.val_every,
        maximize=False,
        ema=cfg.ema,
        max_minutes=cfg.max_minutes,
        minutes_checked="step",
        max_steps=cfg.max_steps if cfg.max_steps < total else None,
        write_each_best=True,
        checkpoint=checkpoint_path(Path(out)),
        resume=cfg.resume,
        precision=cfg.precision,
    )
    fit(spec, settings, progress or (lambda _msg: None))
    return Path(out)


def _draw_batch(
    cfg: TrainConfig, data: _ScanData, rng: np.random.Generator, step: int
) -> tuple[Any, Any, Any]:
    """One batch ``(dirty, clean, bilevel labels)`` of patches, then the pool refresh."""
    import torch

    b = cfg.batch_size
    xb = np.empty((b, 1, cfg.patch, cfg.patch), np.float32)
    yb = np.empty_like(xb)
    labels = np.zeros((b, 1, 1, 1), bool)
    for i in range(b):
        got = data.real.sample(rng, cfg, data.pool) if data.mixed else None
        if got is not None:
            xb[i, 0], yb[i, 0], labels[i] = got
            continue
        if data.pool is not None and rng.random() < data.synth_frac:
            dirty, clean = data.pool.pages[int(rng.integers(len(data.pool.pages)))]
        else:
            pair = data.train[int(rng.integers(len(data.train)))]
            dirty, clean = pair.dirty, pair.clean
        xb[i, 0], yb[i, 0] = _crop_pair(dirty, clean, rng, cfg)
    if data.pool is not None and (step + 1) % cfg.synthetic_refresh == 0:
        data.pool.refresh()
    return torch.from_numpy(xb), torch.from_numpy(yb), torch.from_numpy(labels)


def _scan_loss(cfg: TrainConfig, model: Any, batch: tuple[Any, Any, Any], mixed: bool) -> Any:
    """The training loss of one batch (see the module docstring)."""
    import torch

    from aepipe.models.scan_unet import clamp_through

    x, target, labels = batch
    if cfg.margin > 0:  # a clamp net (the config checks it)
        lin = model.unclamped(x)
        pred = clamp_through(lin)
        # Once clamped, pure paper and ink give no gradient at all; a margin keeps them
        # clear of the edge, so a small disturbance (a speck) does not show through.
        hinge = torch.where(
            target >= 1.0,
            (1.0 + cfg.margin - lin).clamp_min(0.0),
            torch.where(target <= 0.0, (lin + cfg.margin).clamp_min(0.0), 0.0),
        )
        gray = (pred - target).square() + hinge.square()
        loss = torch.nn.functional.mse_loss(pred, target) + hinge.square().mean()
    else:
        pred = model(x)
        gray = (pred - target).square()
        loss = torch.nn.functional.mse_loss(pred, target)
    if mixed:
        loss = torch.where(labels, bilevel_loss(pred, target, cfg.ink_level), gray).mean()
    return loss


def _validate(spec: _ScanSpec, model: Any, run: Run) -> Check:
    """Score the EMA weights; the score is the sum of the RMSEs (+ docbin F deficit)."""
    data = spec.data
    r_ddd = page_rmse(model, data.ddd_val) if data.ddd_val else float("nan")
    r_syn = page_rmse(model, data.syn_val)
    f_real = data.real.val_f(model) if data.real is not None else float("nan")
    # One F point weighs as 0.01 RMSE: real pages are what the stage is for.
    score = (r_ddd if data.ddd_val else 0.0) + r_syn
    score += (100 - f_real) / 100 if data.real else 0.0
    minutes = spec.minutes(run)
    rec = dict(
        step=run.step,
        minutes=round(minutes, 2),
        loss=round(spec.last_loss, 6),
        val_ddd_rmse=round(r_ddd, 5),
        val_synthetic_rmse=round(r_syn, 5),
    )
    if data.real is not None:
        rec["val_docbin_f"] = round(f_real, 3)
    line = (
        f"step {run.step} {minutes:.1f} min loss {spec.last_loss:.5f} "
        f"val ddd {r_ddd:.4f} synth {r_syn:.4f}"
        + (f" docbin F {f_real:.2f}" if data.real is not None else "")
        + (" *" if run.improves(score, maximize=False) else "")
    )
    metrics = dict(
        best_step=run.step,
        val_ddd_rmse=rec["val_ddd_rmse"],
        val_synthetic_rmse=rec["val_synthetic_rmse"],
    )
    if data.real is not None:
        metrics["val_docbin_f"] = rec["val_docbin_f"]
    return Check(rec, score, line, metrics)


def _extra_data(test_pairs: list[DDDPair], real: _RealPages | None) -> dict[str, Any]:
    """What a run with a DDD test split or docbin pages records of them (nothing otherwise)."""
    extra: dict[str, Any] = {}
    if test_pairs:
        extra["ddd_test_names"] = [p.name for p in test_pairs]
    if real is not None:
        extra["docbin_split"] = real.split
    return extra


def _save(spec: _ScanSpec, model: Any, run: Run, stopped: str) -> Path:
    """Write the ``scan-denoiser`` weights folder of ``model`` (the best EMA weights)."""
    from aepipe.stages.scan_denoiser import ScanDenoiser

    cfg, data = spec.cfg, spec.data
    training = dict(
        command=cfg.command,
        config=cfg.model_dump(mode="json"),
        stopped=stopped,
        wall_minutes=round(spec.minutes(run), 2),
        history=run.history,
        data=dict(
            ddd=str(cfg.ddd) if cfg.ddd else None,
            ddd_train_pairs=len(data.train),
            ddd_val_names=[p.name for p in data.val],
            ddd_train_names=[p.name for p in data.train],
            synthetic=f"aepipe.data.synthetic_pages (pool {cfg.synthetic_pool}, "
            f"refresh every {cfg.synthetic_refresh} steps)",
            synthetic_val_pages=SYNTH_VAL_PAGES,
            synthetic_val_seed=SYNTH_VAL_SEED,
            **_extra_data(data.test, data.real),
        ),
        seed=cfg.seed,
        init=spec.init,
    )
    metrics = dict(run.best_metrics)
    stage = ScanDenoiser(copy.deepcopy(model).float())
    card = model_card(cfg, training, metrics)
    return stage.save_pretrained(spec.out, training=training, metrics=metrics, card=card)


def _real_data_lines(cfg: TrainConfig, data: dict[str, Any]) -> str:
    """The card's lines on the DDD test split, docbin pages, identity and display patches."""
    lines = ""
    if data.get("ddd_test_names"):
        lines += (
            f"- DDD test split: {cfg.test_groups} of those held-out pages (x4) are never scored "
            f"in training (benchmark only): {', '.join(data['ddd_test_names'])}.\n"
        )
    split = data.get("docbin_split")
    if split:
        lines += (
            f"- Real degraded pages from `{cfg.docbin}` (docbin: DIBCO / H-DIBCO 2010-2018, "
            f"Bickley diary, Persian heritage), split by page within each collection "
            f"(`aepipe.data.docbin.split_pages`): {len(split['train'])} train, "
            f"{len(split['val'])} validation ({', '.join(split['val'])}), "
            f"{len(split['test'])} test pages never used in training or to choose the net (the "
            "clean-page check's thresholds were set on all docbin pages, these included) "
            f"({', '.join(split['test'])}). Fraction {cfg.docbin_fraction} of the patches, "
            f"their own pixels or shrunk up to 2x; loss against the 1-bit ground truth: paper "
            f"pulled to white, ink pushed below {cfg.ink_level} (squared hinges).\n"
        )
    if cfg.clean_fraction:
        lines += (
            f"- Identity patches (fraction {cfg.clean_fraction}): a clean page in, the same "
            "page out (docbin training ground truth or a clean synthetic page), so clean "
            "content, bold type included, passes through.\n"
        )
    if cfg.display_prob:
        lines += (
            f"- Synthetic pages with headlines and initials of 24-150 pt in bold faces, rules, "
            f"filled shapes and photos (p={cfg.display_prob}).\n"
        )
    return lines


def _limits(cfg: TrainConfig) -> str:
    if cfg.docbin:
        return (
            "Trained on printed text (synthetic, DDD) and on real handwritten and printed archive "
            "pages (docbin). Coloured backgrounds are flattened toward white; very faint pencil "
            "may be removed as noise. See the benchmark for what holds on clean pages."
        )
    return (
        "Trained on printed text on white paper. Photos, halftones and coloured backgrounds are\n"
        "flattened toward white; very faint pencil may be removed as noise."
    )


def _real_metric_line(cfg: TrainConfig, data: dict[str, Any], metrics: dict[str, Any]) -> str:
    split = data.get("docbin_split")
    if not split:
        return ""
    return (
        f"| docbin validation pages ({len(split['val'])}), F-measure (%) after Otsu "
        f"| {metrics.get('val_docbin_f')} |\n"
    )


def _card_model(cfg: TrainConfig, training: dict[str, Any]) -> str:
    """The card's model line: network, how it started, loss."""
    arch = (
        f"ScanUNet(base={cfg.base}, levels={cfg.levels}, convs={cfg.convs}, fold={cfg.fold}"
        + (f", output={cfg.output!r}" if cfg.output != "sigmoid" else "")
        + (f", refine={cfg.refine})" if cfg.refine else ")")
        if cfg.arch == "scan-unet"
        else f"ClassicDenoisingAE(channels={cfg.classic_channels})"
    )
    start = "fine-tuned" if training.get("init") else "trained from scratch"
    if cfg.freeze_base:
        start = "its stroke-edge correction (`refine`) trained on top of the frozen net"
    loss = (
        f"MSE plus a squared hinge {cfg.margin} past pure paper and ink"
        if cfg.margin > 0
        else "MSE"
    )
    return f"{arch}, {start} with {loss}"


def _card_commands(training: dict[str, Any]) -> str:
    """The card's command lines: each earlier run this one started from, oldest first."""
    chain: list[dict[str, Any]] = []
    link = training.get("init")
    while link:
        chain.insert(0, link)
        link = link.get("init")
    commands = "".join(
        f"- Command {i + 1} (the next command read its weights from `{link['path']}`, sha256 "
        f"{link['sha256'][:12]}, "
        f"its validation: DDD {(link.get('metrics') or {}).get('val_ddd_rmse')}, synthetic "
        f"{(link.get('metrics') or {}).get('val_synthetic_rmse')}): `{link.get('command')}`\n"
        for i, link in enumerate(chain)
    )
    last = f"Command {len(chain) + 1}, this run" if chain else "Command"
    return f"{commands}- {last}: `{training.get('command')}`"


def _card_patches(cfg: TrainConfig) -> str:
    """How the card says training patches were cut."""
    scaling = (
        f"resampled by a random scale {cfg.scale_lo}-{cfg.scale_hi} with p={cfg.scale_prob} "
        "(else the page's own pixels)"
        if cfg.scale_prob > 0
        else "at the pages' own pixels (no resampling)"
    )
    levels = (
        f", random ink and paper levels on the dirty side (p={cfg.level_aug})"
        if cfg.level_aug > 0
        else ""
    )
    return f"Patches {cfg.patch} px, {scaling}, rotations/flips{levels}"


def model_card(cfg: TrainConfig, training: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Markdown model card: data, command, measured validation scores."""
    data = training.get("data", {})
    val_pages = cfg.val_groups - cfg.test_groups  # the test groups are held out, not scored
    real_bench = (
        " (that report scores v14, the last net fitted to DDD alone: rerun it for new weights);"
        " on the docbin test pages, clean pages and the DDD test split in "
        "`benchmarks/results/scan_real_shipped.md` (`.venv/bin/python benchmarks/scan_real.py "
        "--weights scan-denoiser --out benchmarks/results/scan_real_shipped.md`)"
        if cfg.docbin
        else ""
    )
    return f"""# scan-denoiser

Stage `scan-denoiser`: cleans scanned document pages (white paper, dark text; stains, creases,
shadows, watermarks, specks and dark borders removed). Gray in, gray out; colour scans are
cleaned on their BT.601 gray. Any page size, via blended overlapping tiles.

## Model
{_card_model(cfg, training)}, Adam, cosine learning rate, EMA weights.

## Data
- Denoising Dirty Documents (Kaggle 2015) training pairs from `{data.get("ddd")}`:
  {data.get("ddd_train_pairs")} pairs for training; {val_pages} whole pages
  (x4 noise versions, grouped by a hash of the clean page) held out for validation:
  {", ".join(data.get("ddd_val_names", []))}.
- Synthetic degraded pages from `aepipe.data.synthetic_pages` (fraction
  {cfg.synthetic_fraction} of the patches).
{_real_data_lines(cfg, data)}- {_card_patches(cfg)} (this run's settings;
  the earlier commands' are in their command lines).

## Training
{_card_commands(training)}
- Seed {cfg.seed}, {cfg.threads} CPU thread(s), stopped by {training.get("stopped")} after
  {training.get("wall_minutes")} min; best step {metrics.get("best_step")}.

## Measured (validation, by this training run)
| set | RMSE |
|---|---:|
| DDD validation pages ({4 * val_pages}) | {metrics.get("val_ddd_rmse")} |
| fixed synthetic pages ({len(SYNTH_VAL_PAGES)}) | {metrics.get("val_synthetic_rmse")} |
{_real_metric_line(cfg, data, metrics)}
Benchmark figures against baselines are in `benchmarks/results/scan_denoiser.md`
(`.venv/bin/python benchmarks/scan_denoiser.py --ddd ../shared/data/ddd`){real_bench}.

## Limits
{_limits(cfg)}
"""
