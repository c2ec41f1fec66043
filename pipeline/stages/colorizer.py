"""The ``colorizer`` stage: add colour to gray images and change nothing else.

Gray (C=1) images go in as they are; RGB (C=3) images are first converted to BT.601 gray with
:func:`aepipe.batch.to_gray`. The model (:class:`aepipe.models.colorizer.StackNNColorizer`, shipped
as ``weights/colorizer`` for faces and ``weights/colorizer-photo`` for photos of any scene)
predicts chroma from the gray image **resized** to ``model_size`` x ``model_size`` (bilinear,
antialiased; the face model was trained on whole 64x64 faces and the photo model on whole
photos and large crops squashed the same way, so resizing rather than running fully
convolutionally at full size shows the model the whole picture at the scale it expects,
whatever the input's size or aspect). The chroma is upsampled back to the input's full size,
bilinearly or (``upsample="guided"``, the photo model's setting) by a fast guided filter that
makes colour edges follow the full-resolution gray's edges
(:func:`aepipe.models.colorizer.guided_upsample`); that small prediction is what keeps a
12-megapixel photo fast. A model with context
(``colorizer-photo``) also reads frozen ImageNet features of the full-resolution gray, seen at
299x299 (:class:`aepipe.models.inception.InceptionTrunk`).

With ``projection`` on (default) that chroma is laid onto the **exact** full-resolution input
luma: RGB is rebuilt from (Y_input, Cb, Cr), which keeps Y exactly, and where a channel would
leave [0, 1] the chroma of that pixel is scaled towards gray just enough to fit (same hue, less
saturation), so clipping cannot change the luma (done in row bands, which is what keeps a
12-megapixel photo well under a second). The output's BT.601 gray therefore equals the
input up to float error, and within half a gray level after 8-bit rounding. With projection off
the output is the model's own colour image at ``model_size``, recombined with the resized luma
and upsampled back (blurrier; for comparison).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from aepipe.batch import ImageBatch, to_gray
from aepipe.errors import ConfigError
from aepipe.stage import Stage, StageConfig, StagePrecision, precision_autocast

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from typing_extensions import Self

_BAND_PIXELS = 1 << 16


class Config(StageConfig):
    """Options of the colorizer.

    Attributes:
        projection: keep the input's luma exactly (default) instead of the model's own RGB.
        model_size: side in pixels at which chroma is predicted (the input gray is resized to
            it); must be a multiple of the model's downsampling factor (16 for the shipped one).
        temperature: annealed-mean temperature of the chroma bins: 1 is the mean colour (safe,
            dull), lower values pick the likeliest colours (vivid, riskier). Ignored by models
            with a regression head.
        saturation: gain on the colour differences within each image, around its mean
            predicted colour (1: as predicted; 0: that one tint everywhere). A model trained
            for the mean colour (the best PSNR) gives muted colours; a gain above 1 buys
            colour back at a known cost in PSNR without strengthening the overall tint
            (``benchmarks/colorizer_photo.py --select-setting`` picks it on validation photos).
        upsample: how the small chroma is brought to the input's size: "bilinear" (smooth,
            smears colour across object edges) or "guided" (a fast guided filter with the
            full-size gray as guide: colour changes where the gray does). Used with
            ``projection`` on; without it the model's own RGB is upsampled bilinearly.
        guide_radius: window radius of the guided filter, in pixels of the small chroma.
        guide_eps: damping of the guided filter's local fit (larger: closer to bilinear).
        precision: arithmetic of the context trunk of models that have one ("auto": bfloat16
            on CPUs with native bfloat16 units, as the photo model's training features were
            computed; float32 elsewhere). The colorizer itself always runs in float32.
    """

    projection: bool = True
    model_size: int = Field(64, ge=8, le=1024)
    temperature: float = Field(0.38, ge=0.05, le=2.0)
    saturation: float = Field(1.0, ge=0.0, le=4.0)
    upsample: Literal["bilinear", "guided"] = "bilinear"
    guide_radius: int = Field(1, ge=1, le=8)
    guide_eps: float = Field(1e-3, gt=0.0, le=1.0)
    precision: StagePrecision = "auto"


class Colorizer(Stage):
    """Gray -> RGB whose BT.601 gray is the input (see the module docstring)."""

    name = "colorizer"
    Config = Config
    input_channels = (1, 3)
    min_size = 1

    def forward(self, batch: ImageBatch) -> ImageBatch:
        """Colorize a batch.

        Args:
            batch: float32 (N, 1 or 3, H, W) in [0, 1].

        Returns:
            float32 (N, 3, H, W) in [0, 1].
        """
        import torch.nn.functional as F

        from aepipe.models.colorizer import gamut_fit_into, guided_upsample, ycbcr_to_rgb

        cfg = self.config
        factor = self.model.factor
        if cfg.model_size % factor:
            raise ConfigError(
                f"colorizer.model_size: {cfg.model_size} is not a multiple of the model's "
                f"downsampling factor {factor}"
            )
        y = to_gray(batch.images).clamp(0.0, 1.0)
        size = (cfg.model_size, cfg.model_size)
        small = F.interpolate(y, size=size, mode="bilinear", align_corners=False, antialias=True)
        with precision_autocast(cfg.precision, self.device):
            features = self.model.context_features(y)
        chroma = self.model.decode(self.model(small, features), cfg.temperature)
        if cfg.saturation != 1.0:
            # Around each image's own mean: on validation photos this gave more colour for
            # the same PSNR than a gain around gray (which also deepens the overall cast).
            tint = chroma.mean(dim=(2, 3), keepdim=True)
            chroma = tint + cfg.saturation * (chroma - tint)
        h, w = batch.size
        if cfg.projection:
            if cfg.upsample == "guided":
                full = guided_upsample(chroma, y, cfg.guide_radius, cfg.guide_eps)
            else:
                full = F.interpolate(chroma, size=(h, w), mode="bilinear", align_corners=False)
            rgb = y.new_empty((y.shape[0], 3, h, w))
            # Bands of ~64k pixels keep the per-pixel fit's temporaries in cache: a 12-megapixel
            # photo takes a fraction of a second instead of seconds.
            rows = max(1, _BAND_PIXELS // w)
            for r in range(0, h, rows):
                band = slice(r, r + rows)
                gamut_fit_into(y[:, :, band], full[:, :, band], rgb[:, :, band])
        else:
            chroma = F.interpolate(chroma, size=size, mode="bilinear", align_corners=False)
            own = ycbcr_to_rgb(small, chroma).clamp(0.0, 1.0)
            rgb = F.interpolate(own, size=(h, w), mode="bilinear", align_corners=False)
            rgb = rgb.clamp(0.0, 1.0)
        return batch.replace(rgb.contiguous(), colorized=True)

    @classmethod
    def tiny(cls, seed: int = 0, **config: Any) -> Self:
        """A small random colorizer (widths 4-8-8, 16 chroma bins) seeded by ``seed``."""
        import torch

        from aepipe.models.colorizer import StackNNColorizer, chroma_grid

        gen = torch.Generator().manual_seed(seed)
        model = StackNNColorizer((4, 8, 8), n_bins=16, bin_step=0.25)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            model.bin_centers.copy_(chroma_grid(0.25)[:16])
        config.setdefault("model_size", 16)
        return cls(model.eval(), config)


FACE_MODEL = "colorizer"
PHOTO_MODEL = "colorizer-photo"
FACE_MAX_SIDE = 160
FACE_SURE_SIDE = 96  # this small and square: a face crop (gen-faces' are 64 px)
FACE_MAX_ASPECT = 1.25


def auto_model(height: int, width: int, gray: torch.Tensor | None = None) -> str:
    """The weights :class:`AutoColorizer` uses for an image of this size (and luma).

    Face crops (the face colorizer's 64x64 training faces, gen-faces' output) are small and
    roughly square; a photo of a scene is rarely that small. Up to ``FACE_SURE_SIDE`` pixels
    such an image is taken as a face crop; above, up to ``FACE_MAX_SIDE``, only when a face
    fills it (a third of its short side or more, found in ``gray``, (H, W) in [0, 1]), since
    small square scene photos exist too (``benchmarks/colorize_auto.py`` measures the rule).
    """
    if not _face_sized(height, width):
        return PHOTO_MODEL
    if max(height, width) <= FACE_SURE_SIDE or gray is None or fills_with_face(gray):
        return FACE_MODEL
    return PHOTO_MODEL


def _face_sized(height: int, width: int) -> bool:
    long, short = max(height, width), min(height, width)
    return long <= FACE_MAX_SIDE and long <= FACE_MAX_ASPECT * short


def _needs_pixels(height: int, width: int) -> bool:
    """Whether :func:`auto_model` looks at the pixels of an image of this size."""
    return _face_sized(height, width) and max(height, width) > FACE_SURE_SIDE


def fills_with_face(gray: torch.Tensor, share: float = 1 / 3) -> bool:
    """Whether a face at least ``share`` of the short side wide is found in (H, W) ``gray``."""
    from aepipe.faces_align import detect_boxes

    side = min(gray.shape[-2:]) * share
    return any(box[2] >= side for box in detect_boxes(gray.float().cpu()))


class AutoColorizer:
    """Batch -> batch colorizer that uses, per image, the weights :func:`auto_model` picks.

    What ``colorize --model auto`` (the default) and ``POST /v1/colorize`` (the service's
    default, weights name ``auto``) run, so both choose alike. A batch whose images need
    different models is split and put back together in order. Each model is loaded the first
    time it is needed (all at once with :meth:`preload`).

    Args:
        load: weights name -> colorizer stage (default: :meth:`Colorizer.from_pretrained`
            with ``device`` and ``overrides``).
        device: where the default loader puts the models.
        **overrides: stage options for both models (e.g. ``saturation``).
    """

    name = Colorizer.name
    input_channels = Colorizer.input_channels
    weights: ClassVar[tuple[str, ...]] = (FACE_MODEL, PHOTO_MODEL)

    def __init__(
        self, load: Callable[[str], Stage] | None = None, device: str = "auto", **overrides: Any
    ) -> None:
        if load is None:
            from aepipe.stage import build_config, resolve_device

            # The models load on first use; a device or option they would refuse is refused
            # now, before any image (else every file fails on its own, exit 3 not 2).
            resolve_device(device)
            build_config(Colorizer.Config, overrides, Colorizer.name)
        # A partial, not a lambda: the chooser pickles (multiprocessing, a built Ray actor).
        self._load = load or functools.partial(
            Colorizer.from_pretrained, device=device, **overrides
        )
        self._device = device
        self._stages: dict[str, Stage] = {}

    def _stage(self, weights: str) -> Stage:
        """The stage of ``weights``, loaded on first use."""
        if weights not in self._stages:
            self._stages[weights] = self._load(weights)
        return self._stages[weights]

    def stage_for(self, height: int, width: int, gray: torch.Tensor | None = None) -> Stage:
        """The loaded stage for an image of this size and luma (:func:`auto_model`).

        Without ``gray``, a 96-160 px squarish image counts as a face crop.
        """
        return self._stage(auto_model(height, width, gray))

    def preload(self) -> Self:
        """Load every model now (a server finds missing weights before it serves)."""
        for weights in self.weights:
            self._stage(weights)
        return self

    @property
    def device(self) -> Any:
        """The device of the loaded models (the requested one before any is loaded)."""
        return next((s.device for s in self._stages.values()), self._device)

    def __call__(self, batch: ImageBatch) -> ImageBatch:
        """Colorize one batch (N, 1 or 3, H, W), each image with the model chosen for it."""
        if _needs_pixels(*batch.size):
            chosen = [auto_model(*batch.size, g) for g in to_gray(batch.images)[:, 0]]
        else:  # the size decides: no luma of large photos computed for nothing
            chosen = [auto_model(*batch.size)] * len(batch)
        if len(set(chosen)) == 1:
            return self._stage(chosen[0])(batch)
        parts = {}
        for weights in set(chosen):
            idx = [i for i, w in enumerate(chosen) if w == weights]
            part = ImageBatch(
                batch.images[idx], [batch.names[i] for i in idx], [batch.meta[i] for i in idx]
            )
            parts[weights] = iter(self._stage(weights)(part).split(1))
        return ImageBatch.concat([next(parts[w]) for w in chosen])
