"""StackNN colorizer: predicts BT.601 chroma (Cb, Cr) from gray images.

The classic "StackNN" colorizer maps the gray image up with a transposed convolution, back down
with a convolution and through dense layers, with Gaussian noise on the input against
over-fitting. At 64x64 the dense layers would hold tens of millions of weights, so this version
keeps the stack idea but is fully convolutional: a small U-Net encoder (down to 4x4, where a
3x3 convolution sees the whole face) and a decoder with skip connections that stops at half
resolution, since chroma is smooth and is upsampled bilinearly anyway.

Colour space: full-range YCbCr with BT.601 luma, ``Y = 0.299 R + 0.587 G + 0.114 B`` (the same
weights as :data:`models.LUMA_WEIGHTS`), ``Cb = (B - Y) / 1.772``, ``Cr = (R - Y) / 1.402``.
Rebuilding RGB from any (Cb, Cr) keeps ``Y`` exactly (the map is linear and chroma-free in luma),
which is what lets the stage project the output onto the input's gray.

Two heads:

* ``classify`` (default): logits over ``n_bins`` quantised (Cb, Cr) bins, decoded by the annealed
  mean ``softmax(logits / T) @ bin_centers`` (Zhang et al., 2016). Classification with class
  rebalancing is what keeps rare saturated colours from averaging into brown-gray.
* ``regress``: two channels ``0.5 * tanh(.)``, trained with plain MSE (the baseline).

Context (``context="inception"``, the photo colorizer): a few hundred training photos cannot
teach a small net what is in a picture, so the decoder also reads frozen ImageNet features of
the gray image (:class:`aepipe.models.inception.InceptionTrunk`, 17x17x768, computed from the
gray at 299x299 whatever its size): a 1x1 projection of the map, resized to each decoder level,
and a projection of its spatial mean (the scene as a whole), concatenated with the skips
(Larsson et al., 2016; Baldassarre et al., 2017).

Losses for training live here too: :func:`soft_encode`, :func:`colorizer_loss`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from aepipe.models import LUMA_WEIGHTS

_WR, _WG, _WB = LUMA_WEIGHTS
_KB = 2.0 * (1.0 - _WB)  # 1.772
_KR = 2.0 * (1.0 - _WR)  # 1.402


def rgb_to_ycbcr(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split RGB into BT.601 luma and chroma.

    Args:
        rgb: (N, 3, H, W) in [0, 1].

    Returns:
        ``(y, cbcr)``: (N, 1, H, W) in [0, 1] and (N, 2, H, W) in [-0.5, 0.5].
    """
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = _WR * r + _WG * g + _WB * b
    return y, torch.cat([(b - y) / _KB, (r - y) / _KR], dim=1)


def chroma_delta(cbcr: torch.Tensor) -> torch.Tensor:
    """The RGB offsets from luma that a chroma adds: ``rgb = y + delta``.

    Args:
        cbcr: (N, 2, H, W).

    Returns:
        (N, 3, H, W); its BT.601 luma is exactly 0 (up to float rounding).
    """
    cb, cr = cbcr[:, 0:1], cbcr[:, 1:2]
    dr = _KR * cr
    db = _KB * cb
    dg = -(_WR * dr + _WB * db) / _WG
    return torch.cat([dr, dg, db], dim=1)


def ycbcr_to_rgb(y: torch.Tensor, cbcr: torch.Tensor) -> torch.Tensor:
    """Recombine luma (N, 1, H, W) and chroma (N, 2, H, W) into unclipped RGB (N, 3, H, W)."""
    return y + chroma_delta(cbcr)


def gamut_fit(y: torch.Tensor, cbcr: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] with luma exactly ``y``: chroma is scaled down per pixel where it would clip.

    Clipping R, G or B independently changes the luma; shrinking the chroma vector towards gray
    (same hue, lower saturation) until every channel fits keeps it.

    Args:
        y: (N, 1, H, W) luma in [0, 1].
        cbcr: (N, 2, H, W) chroma.

    Returns:
        (N, 3, H, W) RGB in [0, 1].
    """
    d = chroma_delta(cbcr)
    eps = 1e-12
    # Largest s in [0, 1] with 0 <= y + s * d <= 1 for every channel.
    up = torch.where(d > eps, (1.0 - y) / d.clamp_min(eps), torch.ones_like(d))
    down = torch.where(d < -eps, y / (-d).clamp_min(eps), torch.ones_like(d))
    s = torch.minimum(up, down).amin(dim=1, keepdim=True).clamp(0.0, 1.0)
    return (y + s * d).clamp(0.0, 1.0)


def gamut_fit_into(y: torch.Tensor, cbcr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """:func:`gamut_fit` with far fewer passes over memory, written into ``out``; same pixels.

    The chroma offsets have zero luma with positive weights, so per pixel the largest offset is
    >= 0 >= the smallest; the largest admissible scale is therefore
    ``min(1, (1 - y) / max_c d, y / -min_c d)``, and dividing by the extreme offset gives
    exactly the minimum of the per-channel quotients that :func:`gamut_fit` takes. This
    works on single-channel planes instead of three-channel temporaries, which matters at
    12 megapixels.

    Args:
        y: (N, 1, H, W) luma in [0, 1].
        cbcr: (N, 2, H, W) chroma.
        out: (N, 3, H, W) float32 tensor to write RGB into (may be a view of a larger tensor).

    Returns:
        ``out``, RGB in [0, 1] with luma ``y``; bit-identical to ``gamut_fit(y, cbcr)``.
    """
    eps = 1e-12
    dr = _KR * cbcr[:, 1:2]
    db = _KB * cbcr[:, 0:1]
    dg = -(_WR * dr + _WB * db) / _WG
    hi = torch.maximum(torch.maximum(dr, dg), db)
    lo = torch.minimum(torch.minimum(dr, dg), db)
    s = torch.where(hi > eps, (1.0 - y) / hi.clamp_min(eps), 1.0)
    s = torch.minimum(s, torch.where(lo < -eps, y / (-lo).clamp_min(eps), 1.0)).clamp_(0.0, 1.0)
    for i, d in enumerate((dr, dg, db)):
        # s * d, then + y: the same two roundings as gamut_fit (a fused multiply-add is not).
        torch.mul(s, d, out=out[:, i : i + 1]).add_(y)
    return out.clamp_(0.0, 1.0)


def guided_upsample(
    chroma: torch.Tensor, gray: torch.Tensor, radius: int = 1, eps: float = 1e-3
) -> torch.Tensor:
    """Upsample low-resolution chroma onto full-resolution gray so colour edges follow its edges.

    He and Sun's fast guided filter: at the chroma's resolution, fit in each (2r+1)^2 window a
    linear map gray -> chroma (``a * gray + b``, ``eps`` damping ``a`` where the window is
    flat), average the maps, upsample only ``a`` and ``b`` and apply them to the full-size
    gray. Plain bilinear upsampling smears a 32x32 or 48x48 prediction across object edges; this
    puts the colour change where the gray changes, at the cost of two extra full-size planes.

    Args:
        chroma: (N, C, h, w) low-resolution chroma.
        gray: (N, 1, H, W) full-resolution luma in [0, 1] (any size; usually larger).
        radius: window radius in low-resolution pixels (>= 1).
        eps: regularisation of the local slope (larger: closer to plain bilinear).

    Returns:
        (N, C, H, W) chroma.
    """
    size = gray.shape[-2:]

    def box(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)

    low = F.interpolate(
        gray, size=chroma.shape[-2:], mode="bilinear", align_corners=False, antialias=True
    )
    mean_g, mean_c = box(low), box(chroma)
    slope = (box(low * chroma) - mean_g * mean_c) / (box(low * low) - mean_g**2 + eps)
    offset = mean_c - slope * mean_g
    out = F.interpolate(box(slope), size=size, mode="bilinear", align_corners=False)
    out.mul_(gray).add_(F.interpolate(box(offset), size=size, mode="bilinear", align_corners=False))
    return out


def chroma_grid(step: float = 1.0 / 24.0, limit: float = 0.5) -> torch.Tensor:
    """Centres of a square (Cb, Cr) grid, shape (Q, 2), spacing ``step`` within +-``limit``."""
    n = round(2 * limit / step)
    axis = (torch.arange(n, dtype=torch.float32) + 0.5) * step - limit
    cb, cr = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([cb.flatten(), cr.flatten()], dim=1)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class StackNNColorizer(nn.Module):
    """Fully convolutional chroma predictor (encoder-decoder with skip connections).

    Args:
        channels: widths of the encoder levels (full, 1/2, 1/4, ... resolution); the last level
            is repeated once more at half its resolution as the bottleneck.
        head: ``"classify"`` (chroma bins, annealed mean) or ``"regress"`` (Cb, Cr directly).
        n_bins: number of chroma bins (classify head); their centres are the ``bin_centers``
            buffer, set by training and stored with the weights.
        bin_step: spacing of the chroma bins, used to soft-encode targets.
        context: ``"inception"`` adds frozen ImageNet features to the decoder (see the module
            docstring); ``"none"`` reads the gray image only.
        context_channels: width of each projection of the context features.
        context_dropout: dropout on the projected context features while training.
    """

    def __init__(
        self,
        channels: tuple[int, ...] | list[int] = (16, 32, 64, 128),
        head: Literal["classify", "regress"] = "classify",
        n_bins: int = 576,
        bin_step: float = 1.0 / 24.0,
        context: Literal["none", "inception"] = "none",
        context_channels: int = 64,
        context_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if len(channels) < 2:
            raise ValueError("channels needs at least two levels")
        if head not in ("classify", "regress"):
            raise ValueError(f"head must be 'classify' or 'regress'; got {head!r}")
        if context not in ("none", "inception"):
            raise ValueError(f"context must be 'none' or 'inception'; got {context!r}")
        self.hparams = dict(channels=channels, head=head, n_bins=int(n_bins), bin_step=bin_step)
        if context != "none":
            self.hparams |= dict(
                context=context,
                context_channels=int(context_channels),
                context_dropout=float(context_dropout),
            )
        self.head_kind = head
        extra = self._build_context(context, int(context_channels), float(context_dropout))
        self.stem = _block(1, channels[0])
        self.down = nn.ModuleList()
        cin = channels[0]
        for c in [*channels[1:], channels[-1]]:
            self.down.append(nn.Sequential(_block(cin, c, stride=2), _block(c, c)))
            cin = c
        # Decoder: back up to half resolution only (chroma is upsampled from there).
        skips = [*channels[1:], channels[-1]][:-1][::-1]
        self.up = nn.ModuleList()
        for s in skips:
            cout = max(s, channels[1])
            self.up.append(nn.Sequential(_block(cin + s + extra, cout), _block(cout, cout)))
            cin = cout
        out = n_bins if head == "classify" else 2
        self.head = nn.Conv2d(cin, out, 1)
        self.register_buffer("bin_centers", chroma_grid(bin_step)[:n_bins].clone())

    def _build_context(self, context: str, width: int, dropout: float) -> int:
        """Create the context trunk and projections; returns the channels they add per level."""
        self.context: nn.Module | None = None
        if context == "none":
            return 0
        from aepipe.models.inception import OUT_CHANNELS, InceptionTrunk

        self.context = InceptionTrunk()
        self.context_map = nn.Sequential(
            nn.Conv2d(OUT_CHANNELS, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
        )
        self.context_scene = nn.Sequential(
            nn.Linear(OUT_CHANNELS, width), nn.ReLU(inplace=True), nn.Dropout(dropout)
        )
        return 2 * width

    def context_features(self, gray: torch.Tensor) -> torch.Tensor | None:
        """The context trunk's features of gray images of any size, or None without context.

        Args:
            gray: (N, 1, H, W) in [0, 1]: best the full-resolution input (the trunk sees it at
                299x299, more than the ``model_size`` the decoder works at).

        Returns:
            (N, 768, 17, 17), or None.
        """
        if self.context is None:
            return None
        with torch.no_grad():
            return self.context(gray)

    def _context_inputs(self, features: torch.Tensor | None, levels) -> list:
        """Per decoder level, the context tensors to concatenate (empty without context)."""
        if self.context is None:
            return [[] for _ in levels]
        feats = features.float()
        fmap = self.context_map(feats)
        scene = self.context_scene(feats.mean(dim=(2, 3)))[:, :, None, None]
        return [
            [
                F.interpolate(fmap, size=size, mode="bilinear", align_corners=False),
                scene.expand(-1, -1, *size),
            ]
            for size in levels
        ]

    @property
    def factor(self) -> int:
        """Input sizes must be a multiple of this (the total downsampling)."""
        return 2 ** len(self.down)

    def forward(self, gray: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Raw head output at half resolution.

        Args:
            gray: (N, 1, H, W) in [0, 1], H and W multiples of :attr:`factor`.
            features: (N, 768, 17, 17) :meth:`context_features` of the same images (a model
                with context computes them from ``gray`` when not given; ignored without).

        Returns:
            (N, n_bins, H/2, W/2) logits (classify) or (N, 2, H/2, W/2) chroma (regress).
        """
        if self.context is not None and features is None:
            features = self.context_features(gray)
        x = self.stem(gray - 0.5)
        feats = []
        for layer in self.down:
            x = layer(x)
            feats.append(x)
        skips = feats[:-1][::-1]
        context = self._context_inputs(features, [s.shape[-2:] for s in skips])
        for layer, skip, ctx in zip(self.up, skips, context, strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = layer(torch.cat([x, skip, *ctx], dim=1))
        x = self.head(x)
        return 0.5 * torch.tanh(x) if self.head_kind == "regress" else x

    def decode(self, raw: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
        """Chroma (N, 2, h, w) from the head output (annealed mean for the classify head).

        Args:
            raw: output of :meth:`forward`.
            temperature: annealed-mean temperature: 1 is the mean (safe, dull), towards 0 the
                mode (vivid, riskier).
        """
        if self.head_kind == "regress":
            return raw
        probs = torch.softmax(raw / max(temperature, 1e-3), dim=1)
        return torch.einsum("nqhw,qc->nchw", probs, self.bin_centers)

    def chroma(
        self, gray: torch.Tensor, temperature: float = 0.38, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predicted chroma at the input's resolution.

        Args:
            gray: (N, 1, H, W) in [0, 1], H and W multiples of :attr:`factor`.
            temperature: see :meth:`decode`.
            features: see :meth:`forward`.

        Returns:
            (N, 2, H, W) Cb, Cr.
        """
        c = self.decode(self(gray, features), temperature)
        return F.interpolate(c, size=gray.shape[-2:], mode="bilinear", align_corners=False)


def soft_encode(
    cbcr: torch.Tensor, centers: torch.Tensor, sigma: float, k: int = 5
) -> torch.Tensor:
    """Soft bin targets: Gaussian weights on the ``k`` nearest bin centres of each pixel.

    Args:
        cbcr: (N, 2, h, w) target chroma.
        centers: (Q, 2) bin centres.
        sigma: Gaussian width (about one bin spacing).
        k: number of neighbours.

    Returns:
        (N, Q, h, w) probabilities.
    """
    n, _, h, w = cbcr.shape
    flat = cbcr.permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = torch.cdist(flat, centers).square()
    k = min(k, centers.shape[0])
    dist, idx = d2.topk(k, dim=1, largest=False)
    wts = torch.exp(-dist / (2 * sigma**2))
    wts = wts / wts.sum(1, keepdim=True)
    out = torch.zeros(flat.shape[0], centers.shape[0], device=cbcr.device)
    out.scatter_(1, idx, wts)
    return out.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def colorizer_loss(
    model: StackNNColorizer,
    raw: torch.Tensor,
    gray: torch.Tensor,
    target: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    w_color: float = 1.0,
    w_class: float = 1.0,
    w_luma: float = 1.0,
    temperature: float = 0.38,
) -> dict[str, torch.Tensor]:
    """Training loss: colour reconstruction + luminance consistency (+ chroma classification).

    Args:
        model: the colorizer (for bin centres and decoding).
        raw: ``model(gray)``.
        gray: (N, 1, H, W) input luma (without training noise).
        target: (N, 2, H, W) true chroma.
        class_weights: (Q,) rebalancing weight of each bin (classify head), or None.
        w_color: weight of the colour term (MSE on chroma for ``regress``, L1 on the annealed
            mean chroma for ``classify``).
        w_class: weight of the rebalanced soft cross-entropy (classify head).
        w_luma: weight of the luminance term: L1 between the BT.601 gray of the predicted RGB
            (clipped to [0, 1], as a file would store it) and the input gray.
        temperature: annealed-mean temperature for the colour term.

    Returns:
        Dict with ``loss`` (scalar to minimise) and its parts.
    """
    chroma = F.interpolate(
        model.decode(raw, temperature), size=gray.shape[-2:], mode="bilinear", align_corners=False
    )
    if model.head_kind == "regress":
        color = F.mse_loss(chroma, target)
    else:
        color = F.l1_loss(chroma, target)
    rgb = ycbcr_to_rgb(gray, chroma).clamp(0.0, 1.0)
    luma = (_WR * rgb[:, 0:1] + _WG * rgb[:, 1:2] + _WB * rgb[:, 2:3] - gray).abs().mean()
    parts = {"color": color, "luma": luma}
    loss = w_color * color + w_luma * luma
    if model.head_kind == "classify":
        small = F.avg_pool2d(target, 2) if raw.shape[-1] != target.shape[-1] else target
        small = F.interpolate(small, size=raw.shape[-2:], mode="bilinear", align_corners=False)
        q = soft_encode(small, model.bin_centers, sigma=model.hparams["bin_step"])
        ce = -(q * F.log_softmax(raw, dim=1)).sum(1)
        if class_weights is not None:
            ce = ce * class_weights[q.argmax(1)]
        ce = ce.mean()
        parts["class"] = ce
        loss = loss + w_class * ce
    parts["loss"] = loss
    return parts
