"""The ``impulse-denoiser`` stage: remove salt-and-pepper (impulse) noise from images of any size.

The shipped model (``weights/salt-pepper``) is a fully convolutional
:class:`aepipe.models.impulse.ImpulseDenoiser` trained on gray Fashion-MNIST with 2-50% noise. Gray
images go through it directly. RGB images are handled by ``rgb`` in the config:
``"per-channel"`` (default) denoises R, G and B as three gray images, which matches impulse
noise that hits channels independently (imgaug's ``ImpulseNoise``) and keeps the colours;
``"gray"`` converts to BT.601 luma first and returns a gray image. Large images are processed in
overlapping tiles so memory stays bounded; the overlap covers the network's receptive field, so
tiling does not change the result. Solid black and white areas (blank paper, blown highlights)
pass through as they are, impulses inside them removed (:func:`solid_areas`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from aepipe.batch import ImageBatch
from aepipe.stage import Stage, StageConfig

if TYPE_CHECKING:
    import torch
    from typing_extensions import Self


class Config(StageConfig):
    """Options of the impulse denoiser.

    Attributes:
        rgb: how 3-channel images are treated: ``per-channel`` or convert to ``gray``.
        tile: largest tile side in pixels processed at once (bounds memory on big images).
        overlap: context in pixels added around each tile (>= the receptive field radius).
        passes: how many times the network is applied (a second pass can help above ~40%
            noise; 1 is what the benchmark reports).
    """

    rgb: Literal["per-channel", "gray"] = "per-channel"
    tile: int = Field(1024, ge=64, le=8192)
    overlap: int = Field(32, ge=0, le=256)
    passes: int = Field(1, ge=1, le=4)


def solid_areas(
    x: torch.Tensor, share: float = 0.75, size: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pure black or white areas of images, and the value each of their extremes takes.

    Salt and pepper are exact 0s and 1s, but so are blank paper, blown highlights and black
    areas, which the network (trained on Fashion-MNIST) turns gray. Noise cannot make a solid
    area: at 50% density a pixel's 5x5 neighbourhood holds about a quarter of salt (or of
    pepper). So where at least ``share`` of a pixel's neighbours hold one extreme, a pixel at
    that extreme is kept and a pixel at the other one (an impulse in the area) takes it.

    Args:
        x: (N, 1, H, W) images in [0, 1].
        share: fraction of the neighbourhood (the pixel itself left out) that must match.
        size: side of the square neighbourhood.

    Returns:
        ``(mask, value)``, both (N, 1, H, W): where the area decides the pixel (bool), and its
        value there (0 or 1).
    """
    import torch
    from torch.nn import functional as F

    def window_sum(m: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(m, size, 1, size // 2, count_include_pad=True) * (size * size)

    inside = window_sum(torch.ones_like(x))  # fewer at the image's edges
    ends = [((x - level).abs() <= 0.5 / 255.0).to(x.dtype) for level in (0.0, 1.0)]
    extreme = (ends[0] + ends[1]) > 0
    mask = torch.zeros_like(x, dtype=torch.bool)
    value = torch.zeros_like(x)
    for level, same in zip((0.0, 1.0), ends, strict=True):
        area = (window_sum(same) - same) / (inside - 1).clamp_min(1) >= share
        mask |= area & extreme
        value[area] = level
    return mask, value


class ImpulseDenoiser(Stage):
    """Salt-and-pepper denoiser stage (``impulse-denoiser``); see the module docstring."""

    name: ClassVar[str] = "impulse-denoiser"
    Config: ClassVar[type[StageConfig]] = Config
    input_channels: ClassVar[tuple[int, ...]] = (1, 3)

    def _run_tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the model to (N, 1, H, W) in overlapping tiles; returns (N, 1, H, W)."""
        import torch

        cfg: Config = self.config  # type: ignore[assignment]
        h, w = x.shape[-2:]
        if h <= cfg.tile and w <= cfg.tile:
            return self.model(x).clamp(0.0, 1.0)
        out = torch.empty_like(x)
        m = cfg.overlap
        for top in range(0, h, cfg.tile):
            for left in range(0, w, cfg.tile):
                bottom, right = min(top + cfg.tile, h), min(left + cfg.tile, w)
                t0, l0 = max(top - m, 0), max(left - m, 0)
                t1, l1 = min(bottom + m, h), min(right + m, w)
                y = self.model(x[..., t0:t1, l0:l1]).clamp(0.0, 1.0)
                inner = y[..., top - t0 : bottom - t0, left - l0 : right - l0]
                out[..., top:bottom, left:right] = inner
        return out

    def forward(self, batch: ImageBatch) -> ImageBatch:
        """Denoise a batch.

        Args:
            batch: float32 (N, C, H, W) in [0, 1], C = 1 or 3.

        Returns:
            (N, C, H, W), or (N, 1, H, W) for RGB input with ``rgb="gray"``.
        """
        import torch

        cfg: Config = self.config  # type: ignore[assignment]
        images = batch.images
        if images.shape[1] == 3 and cfg.rgb == "gray":
            images = batch.gray().images
        n, c, h, w = images.shape
        # Channels become batch items: the model is single-channel. channels_last lets oneDNN
        # use its faster CPU kernels (about 1.5x for this network).
        self.model.to(memory_format=torch.channels_last)
        x = images.reshape(n * c, 1, h, w).contiguous(memory_format=torch.channels_last)
        for _ in range(cfg.passes):
            mask, value = solid_areas(x)
            x = torch.where(mask, value, self._run_tiled(x))
        out = x.contiguous().reshape(n, c, h, w)
        return batch.replace(out, denoised="impulse")

    @classmethod
    def tiny(cls, seed: int = 0, **config: Any) -> Self:
        """A small random ImpulseDenoiser (8 channels, 2 blocks) seeded by ``seed``."""
        import torch

        from aepipe.models.impulse import ImpulseDenoiser as Net

        torch.manual_seed(seed)
        model = Net(channels=8, dilations=(1, 2))
        # Random init gives a near-identity switch; push the weights so seeds differ visibly.
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        return cls(model, config)
