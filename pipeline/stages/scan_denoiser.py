"""The ``scan-denoiser`` stage: clean scanned document pages of any size.

The shipped model (``weights/scan-denoiser``) is a
:class:`aepipe.models.scan_unet.ScanUNet` trained on
synthetic degraded pages and the Denoising Dirty Documents pairs. Pages are cut into overlapping
square tiles, a few tiles at a time go through the network (memory stays bounded whatever the
page size), and the tile outputs are blended with a smooth window that falls to near zero at
tile edges shared with a neighbour. Edge pixels of a tile see the least context and are the
least reliable; blending them away leaves no seams. The output has exactly the input's size.

Colour scans are cleaned on their BT.601 gray (``keep_color=False``, the default, returns gray);
``keep_color=True`` puts the input's chroma back on the ink and leaves the paper white.
``binarize=True`` thresholds the cleaned page at ``threshold`` for bilevel output.

Dark scanner borders (the band where the scanner saw past the page's edge) look to the network
like a printed black bar, which it must keep; ``borders="remove"`` (the default) whitens dark
areas of the cleaned page that touch the image edge, run along at least half of it and lie
within ``border_band`` of it. Type that runs off the edge is kept: its letters are separate
and short.

A page that is already clean (white paper, ink with its anti-aliasing, pictures and flat gray
fills, and nothing else: :mod:`aepipe.clean_page`) comes back unchanged with
``clean_pages="keep"`` (the default): the network cannot tell a photo or a gray fill from a
stain, and it sharpens anti-aliased type. So does a page that looks like a photograph (no paper
around it: :func:`~aepipe.clean_page.is_photograph`), which the network would whiten, also with
``binarize``. ``clean_pages="process"`` sends every page through it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from aepipe.batch import ImageBatch, to_gray, with_coloured_ink
from aepipe.stage import Stage, StageConfig, StagePrecision

if TYPE_CHECKING:
    import torch
    from typing_extensions import Self


class Config(StageConfig):
    """Options of the scan denoiser.

    Attributes:
        tile: tile side in pixels (pages smaller than a tile go through whole).
        overlap: pixels shared by neighbouring tiles; the blending ramp spans this width.
            Should cover the border zone where the network lacks context (~32-64 px).
        batch_size: tiles per forward pass (memory grows with ``batch_size * tile**2``).
        binarize: write bilevel pages (0 or 1) thresholded at ``threshold``.
        threshold: ink/paper cut for ``binarize``, on the cleaned page in [0, 1].
        keep_color: for RGB input, keep the ink's colour instead of returning gray.
        borders: "remove" whitens dark scanner borders (see the module docstring); "keep".
        border_band: how far in from the image edge a border may reach, as a fraction of
            the page's height (top, bottom) or width (left, right).
        clean_pages: "keep" returns pages that are already clean unchanged (thresholded with
            ``binarize``) and photographs unchanged; "process" cleans them like any other.
        precision: arithmetic of the network's convolutions. "auto" is "bfloat16" on CPUs
            that run it natively (:func:`~aepipe.stage.fast_bfloat16`: AMX or AVX512-BF16),
            about 1.6x as fast there (``benchmarks/results/scan_denoiser_speed.md``), and
            "float32" elsewhere. On a real archive page fewer
            than 0.1% of pixels differ by more than 2 gray levels (at most 20, on ink edges);
            scores are level (``benchmarks/scan_real.py --precision`` scores both).
        views: how many views of each page the network cleans; the output is their mean
            (test-time augmentation). View ``k`` is the page as :data:`VIEWS` ``[k]`` says:
            shifted by one pixel or mirrored. The network works on 2x2 pixel blocks, so its
            errors depend on where a stroke falls within a block and on mirroring; the views'
            errors partly cancel. ``views`` times slower (``benchmarks/scan_real.py --views``
            measures both).
    """

    tile: int = Field(512, ge=32, le=4096)
    overlap: int = Field(64, ge=0, le=1024)
    # One tile per call is fastest on CPU (measured on 2 threads, A4 page: 6.1 Mpx/s against
    # 4.7 with 8 tiles per call); a GPU wants more.
    batch_size: int = Field(1, ge=1, le=256)
    binarize: bool = False
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    keep_color: bool = False
    borders: Literal["remove", "keep"] = "remove"
    border_band: float = Field(0.1, gt=0.0, le=0.5)
    clean_pages: Literal["keep", "process"] = "keep"
    precision: StagePrecision = "auto"
    views: int = Field(1, ge=1, le=8)

    @model_validator(mode="after")
    def _binarize_or_colour(self) -> Self:
        if self.binarize and self.keep_color:
            # Bilevel pages have no colour to keep; one would silently win over the other.
            raise ValueError(
                "binarize and keep_color exclude each other (bilevel pages are black and white)"
            )
        return self


# The views of ``Config.views``, in order: (mirror rows, mirror columns, shift by one pixel down
# and right). On a page of even sides, mirroring a side or the shift moves every pixel to the
# other position along that side of the network's 2x2 blocks, so the first four views put each
# pixel at each of the four positions once; the last four are the other mirrorings, shifted.
# Views and order were set on the validation pages only (DDD validation groups, docbin
# validation pages): of the sets of four views tried there, these gave the lowest DDD error
# (four mirrorings alone kept slightly more docbin F-measure).
VIEWS: tuple[tuple[bool, bool, bool], ...] = (
    (False, False, False),
    (False, False, True),
    (False, True, False),
    (True, False, False),
    (True, True, False),
    (False, True, True),
    (True, False, True),
    (True, True, True),
)


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of side ``min(tile, length)`` covering ``[0, length)``.

    Consecutive tiles overlap by at least ``overlap`` pixels (when ``tile > overlap``); the
    last tile ends at ``length``. With ``align > 1`` (``length`` and ``tile`` multiples of it)
    every start is a multiple of ``align``, so each tile sees the same pixel phases as the
    whole page would: the network folds 2x2 blocks and strides by 2, and is shift-equivariant
    only for shifts that are multiples of its total stride.
    """
    if length <= tile:
        return [0]
    step = max(align, (tile - overlap) // align * align)
    n = math.ceil((length - tile) / step) + 1
    # Spread the tiles evenly so every overlap is >= the requested one.
    return [round(i * (length - tile) / (n - 1) / align) * align for i in range(n)]


def blend_ramp(size: int, overlap: int, lead: bool, trail: bool) -> torch.Tensor:
    """1-D blending weights of one tile along one axis, shape (size,).

    A raised-cosine ramp over ``overlap`` pixels on each side that has a neighbour (``lead``
    for the start, ``trail`` for the end), 1 elsewhere; a small floor keeps the sum of
    weights positive where only ramps cover a pixel.
    """
    import torch

    w = torch.ones(size)
    r = min(overlap, size // 2)
    if r > 0:
        t = (torch.arange(r, dtype=torch.float32) + 0.5) / r
        ramp = 0.5 - 0.5 * torch.cos(math.pi * t)
        if lead:
            w[:r] = ramp
        if trail:
            w[size - r :] = ramp.flip(0)
    return w.clamp_min(1e-3)


def remove_borders(pages: torch.Tensor, band: float, dark: float = 0.5) -> torch.Tensor:
    """Whiten dark scanner borders of cleaned pages.

    A border is a connected dark area (below ``dark``) that touches an image edge, runs along
    at least half of it, and lies (all but 2% of it) within the outer ``band`` of the page: a
    band, not a shape or photo that bleeds off the edge.

    Args:
        pages: (N, 1, H, W) cleaned pages in [0, 1].
        band: depth of the searched margin, as a fraction of the page's height or width.
        dark: ink/paper cut on the cleaned page.

    Returns:
        (N, 1, H, W) pages, borders set to 1 (the input is not modified).
    """
    import numpy as np
    import torch

    out = pages  # copied only when a border is found: most pages have none
    _, _, h, w = pages.shape
    bh, bw = max(1, int(band * h)), max(1, int(band * w))
    margin = None
    for i in range(pages.shape[0]):
        page = pages[i, 0]
        edges = (page[0], page[-1], page[:, 0], page[:, -1])
        if max(float((edge < dark).float().mean()) for edge in edges) < 0.5:
            # No edge is half dark, so no component can run along half of one: the usual page
            # (even with type or a dark corner touching an edge) costs one look at its edges.
            continue
        if margin is None:
            from skimage.measure import label  # only for a page with something on its edge

            margin = np.zeros((h, w), bool)
            margin[:bh], margin[h - bh :], margin[:, :bw], margin[:, w - bw :] = (True,) * 4
        labels = label((page < dark).numpy(), connectivity=2)
        n = int(labels.max()) + 1
        # Per component: how much of each edge it covers, and its share inside the margin.
        runs = [
            np.bincount(edge, minlength=n) / edge.size
            for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1])
        ]
        inside = np.bincount(labels[margin], minlength=n) / np.maximum(
            np.bincount(labels.ravel()), 1
        )
        wanted = (np.max(runs, axis=0) >= 0.5) & (inside >= 0.98)
        wanted[0] = False  # paper
        border = np.flatnonzero(wanted)
        if border.size:
            out = pages.clone() if out is pages else out
            out[i, 0][torch.from_numpy(np.isin(labels, border))] = 1.0
    return out


class ScanDenoiser(Stage):
    """Document scan cleaner (``scan-denoiser``); see the module docstring."""

    name: ClassVar[str] = "scan-denoiser"
    Config: ClassVar[type[StageConfig]] = Config
    input_channels: ClassVar[tuple[int, ...]] = (1, 3)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._layout_ready = False

    def _prepare(self) -> None:
        """Switch the model to channels-last once: ~1.5-2x faster convolutions on CPU."""
        import torch

        if not self._layout_ready:
            self.model.to(memory_format=torch.channels_last)
            self._layout_ready = True

    def clean_gray(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network over (N, 1, H, W) pages in blended tiles.

        Args:
            x: float32 (N, 1, H, W) in [0, 1] on the model's device.

        Returns:
            (N, 1, H, W) cleaned pages in [0, 1].
        """
        self._prepare()
        cfg: Config = self.config  # type: ignore[assignment]
        with self._autocast(x.device):
            total = None
            for rows, cols, shift in VIEWS[: cfg.views]:  # the first view is the page itself
                y = self._one_view(x, cfg, rows, cols, shift)
                total = y if total is None else total.add_(y)
            return total if cfg.views == 1 else total.div_(cfg.views)

    def _one_view(
        self, x: torch.Tensor, cfg: Config, rows: bool, cols: bool, shift: bool
    ) -> torch.Tensor:
        """The network over one view of (N, 1, H, W) pages, mapped back: (N, 1, H, W)."""
        import torch

        if shift:
            x = torch.nn.functional.pad(x, (1, 0, 1, 0), mode="replicate")
        dims = [d for d, on in ((-2, rows), (-1, cols)) if on]
        if dims:
            x = x.flip(dims)
        y = self._tiled(x, cfg)
        if dims:
            y = y.flip(dims)
        return y[..., 1:, 1:] if shift else y

    def _autocast(self, device: torch.device) -> torch.autocast:
        """The precision context of the network's forward passes (see ``Config.precision``)."""
        from aepipe.stage import precision_autocast

        # Convolutions run in bfloat16; the input skip and the output stay float32, so the
        # output is float32 either way.
        return precision_autocast(self.config.precision, device)  # type: ignore[attr-defined]

    def _tiled(self, x: torch.Tensor, cfg: Config) -> torch.Tensor:
        """:meth:`clean_gray` without the precision context."""
        import torch

        n, _, h0, w0 = x.shape
        m = int(self.model.multiple)  # every scan model declares it (ScanUNet, ClassicDenoisingAE)
        ph, pw = (-h0) % m, (-w0) % m
        if ph or pw:
            # The same replicate padding the model applies to a whole page, done once here
            # so that every tile is aligned to the model's stride.
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        h, w = x.shape[-2:]
        tile = max(m, cfg.tile // m * m)
        th, tw = min(tile, h), min(tile, w)
        tops = tile_starts(h, tile, cfg.overlap, m)
        lefts = tile_starts(w, tile, cfg.overlap, m)
        if len(tops) * len(lefts) == 1:
            out = torch.empty_like(x)
            for s in range(0, n, cfg.batch_size):
                xb = x[s : s + cfg.batch_size].contiguous(memory_format=torch.channels_last)
                out[s : s + cfg.batch_size] = self.model(xb)
            return out[..., :h0, :w0]
        acc = torch.zeros_like(x)
        norm = torch.zeros((1, 1, h, w), device=x.device)
        windows: dict[tuple[bool, bool, bool, bool], torch.Tensor] = {}

        def window(top: int, left: int) -> torch.Tensor:
            # A tile's window depends only on which sides have a neighbour: at most 9 kinds,
            # each made once (not once per tile and twice per page: 1-2% of the stage's time).
            key = (top > 0, top + th < h, left > 0, left + tw < w)
            if key not in windows:
                wy = blend_ramp(th, cfg.overlap, key[0], key[1]).to(x.device)
                wx = blend_ramp(tw, cfg.overlap, key[2], key[3]).to(x.device)
                windows[key] = wy[:, None] * wx[None, :]
            return windows[key]

        # Weights depend on the tile position only, so accumulate them for one page.
        for top in tops:
            for left in lefts:
                norm[0, 0, top : top + th, left : left + tw] += window(top, left)
        pending: list[tuple[int, int, int]] = []

        def flush() -> None:
            xb = torch.stack([x[i, :, t : t + th, c : c + tw] for i, t, c in pending])
            yb = self.model(xb.contiguous(memory_format=torch.channels_last))
            for (i, t, c), y in zip(pending, yb, strict=True):
                acc[i, :, t : t + th, c : c + tw] += y * window(t, c)
            pending.clear()

        for item in ((i, t, c) for i in range(n) for t in tops for c in lefts):
            pending.append(item)
            if len(pending) == cfg.batch_size:
                flush()
        if pending:
            flush()
        return (acc / norm).clamp_(0.0, 1.0)[..., :h0, :w0]

    def forward(self, batch: ImageBatch) -> ImageBatch:
        """Clean a batch of same-sized pages.

        Args:
            batch: float32 (N, C, H, W) in [0, 1], C = 1 or 3.

        Returns:
            (N, 1, H, W) gray pages, or (N, 3, H, W) with ``keep_color`` and RGB input;
            values are 0 or 1 with ``binarize``. Each page's meta gets ``already_clean``.
        """
        import torch

        cfg: Config = self.config  # type: ignore[assignment]
        images = batch.images
        gray_in = to_gray(images)
        if cfg.clean_pages == "process":
            kept = photos = [False] * len(batch)
        else:
            kept = self.already_clean(gray_in, images)
            photos = self.photographs(gray_in, kept)
            kept = [k or ph for k, ph in zip(kept, photos, strict=True)]
        todo = [i for i, k in enumerate(kept) if not k]
        if len(todo) == len(kept):
            clean = self._denoise(gray_in)  # the usual case: no copy, no indexing
        else:
            clean = gray_in.clone()
            if todo:
                clean[todo] = self._denoise(gray_in[todo])
        if cfg.binarize:
            bilevel = (clean >= cfg.threshold).to(clean.dtype)
            # A photograph has no bilevel form worth keeping: it stays as it came.
            clean = torch.where(torch.tensor(photos).view(-1, 1, 1, 1), clean, bilevel)
        if cfg.keep_color and images.shape[1] == 3:
            # Coloured ink keeps its colour, as in PDFs (batch.with_coloured_ink); a kept page
            # keeps its colours as they were.
            out = with_coloured_ink(images, clean)
            if not cfg.binarize and any(kept):
                as_is = torch.tensor(kept)
                out[as_is] = images[as_is]
        else:
            out = clean
        result = batch.replace(out.contiguous(), cleaned="scan-denoiser")
        for meta, k, ph in zip(result.meta, kept, photos, strict=True):
            meta["already_clean"] = k and not ph
            meta["photograph"] = ph
        return result

    def photographs(self, gray: torch.Tensor, clean: list[bool]) -> list[bool]:
        """Which pages (not already clean) look like photographs, to keep as they are.

        The network would whiten a photograph's mid-tones as stains
        (:func:`~aepipe.clean_page.is_photograph`). Not asked with ``clean_pages="process"``.
        """
        from aepipe.clean_page import is_photograph

        return [
            not c and is_photograph(g[0].float().cpu().numpy())
            for g, c in zip(gray, clean, strict=True)
        ]

    def _denoise(self, gray: torch.Tensor) -> torch.Tensor:
        """The network over (N, 1, H, W) pages, then the border step if configured."""
        cfg: Config = self.config  # type: ignore[assignment]
        pages = self.clean_gray(gray)
        return remove_borders(pages, cfg.border_band) if cfg.borders == "remove" else pages

    def already_clean(self, gray: torch.Tensor, images: torch.Tensor | None = None) -> list[bool]:
        """Which pages are already clean, to pass through (not asked with "process").

        Args:
            gray: (N, 1, H, W) luma of the pages.
            images: the (N, C, H, W) pages themselves; colour ones are also checked in their
                darkest channel (:func:`~aepipe.clean_page.is_clean`).
        """
        from aepipe.clean_page import is_clean

        colour = images is not None and images.shape[1] == 3
        darkest = images.amin(1) if colour else [None] * gray.shape[0]  # type: ignore[union-attr]
        return [
            is_clean(g[0].float().cpu().numpy(), None if d is None else d.float().cpu().numpy())
            for g, d in zip(gray, darkest, strict=True)
        ]

    @classmethod
    def tiny(cls, seed: int = 0, **config: Any) -> Self:
        """A small random ScanUNet (base 4, 2 levels) seeded by ``seed``."""
        import torch

        from aepipe.models.scan_unet import ScanUNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ScanUNet(base=4, levels=2, convs=1)
            # The head starts at zero (a pure contrast stretch); give it random weights so
            # the tiny model mixes neighbouring pixels like a trained one and seeds differ.
            model.head.reset_parameters()
        return cls(model, config)
