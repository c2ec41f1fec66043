"""Synthetic training views for the face aligner: LFW crops placed into photo backgrounds.

A *scene* is an LFW 64x64 crop (whose own pixel grid is the true template frame), a background
photo, and a candidate frame: ``true_from_cand`` maps candidate template coordinates to the
crop's, ``bg_from_cand`` maps them to background pixels. :func:`render` draws what
:func:`aepipe.faces_align.align_crops` would cut from such a photo in the candidate frame
(enlarged by the aligner's ``view``). Moving the candidate frame (the aligner's correction) is a
change of both matrices (:meth:`Scene.moved`), so a scene can be re-rendered after each
correction, as the aligner is applied at inference.

The face is visible through a random window (the whole square, a smaller rectangle or a soft
ellipse at a random offset), so the edge of a pasted square tells the network nothing about where
the face is: it must find the face itself, as in a real photo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from aepipe.models.face_aligner import DEGREE, TEMPLATE, similarity

BG_SIZE = 128


def background_bank(folder: Path, per_photo: int = 2, seed: int = 0) -> torch.Tensor:
    """(K, 1, 128, 128) gray background squares cut at random from every ``*.jpg`` in folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for path in sorted(Path(folder).glob("*.jpg")):
        img = Image.open(path).convert("L")
        scale = BG_SIZE / min(img.size)
        img = img.resize((max(BG_SIZE, round(img.width * scale)),
                          max(BG_SIZE, round(img.height * scale))))  # fmt: skip
        a = np.asarray(img, np.float32) / 255
        for _ in range(per_photo):
            y = int(rng.integers(a.shape[0] - BG_SIZE + 1))
            x = int(rng.integers(a.shape[1] - BG_SIZE + 1))
            out.append(a[y : y + BG_SIZE, x : x + BG_SIZE])
    if not out:
        raise FileNotFoundError(f"{folder}: no *.jpg background photos")
    return torch.from_numpy(np.stack(out))[:, None]


@dataclass
class Scene:
    """A batch of scenes (see the module docstring); B scenes, tensors on the CPU.

    Attributes:
        faces: (B, 1, 64, 64) the crops (already degraded to their photo resolution).
        bgs: (B, 1, 128, 128) backgrounds.
        true_from_cand: (B, 2, 3) candidate template coords -> crop coords.
        bg_from_cand: (B, 2, 3) candidate template coords -> background pixel coords.
        window: (B, 6) visible part of the crop: kind (0 the whole square, 1 an ellipse, 2 a
            rounded rectangle, 3 nothing), centre x, y, half-widths x, y, edge softness (px).
        is_face: (B,) 1 when the candidate frame holds a face to align, 0 for a negative.
        noise: (B,) std of the pixel noise added after rendering.
    """

    faces: torch.Tensor
    bgs: torch.Tensor
    true_from_cand: torch.Tensor
    bg_from_cand: torch.Tensor
    window: torch.Tensor
    is_face: torch.Tensor
    noise: torch.Tensor

    def moved(self, correction: torch.Tensor) -> Scene:
        """The scenes seen from the frame ``correction @ cand`` ((B, 2, 3) similarities).

        This is how the aligner moves its frame: both maps get ``correction``'s inverse on the
        right.
        """
        inv = invert(correction)
        return replace(
            self,
            true_from_cand=compose(self.true_from_cand, inv),
            bg_from_cand=compose(self.bg_from_cand, inv),
        )


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine ``a`` after ``b``."""
    out = a[:, :, :2] @ b
    out[:, :, 2] += a[:, :, 2]
    return out


def invert(m: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) inverse affine maps."""
    lin = torch.linalg.inv(m[:, :, :2])
    return torch.cat([lin, -(lin @ m[:, :, 2:])], 2)


def _grid(m: torch.Tensor, q: torch.Tensor, size: int) -> torch.Tensor:
    """grid_sample grid (align_corners=False) of points ``m @ q`` in an image ``size`` px wide."""
    p = torch.einsum("bij,nj->bni", m[:, :, :2], q) + m[:, None, :, 2]
    return (2 * p + 1) / size - 1, p


def render(scene: Scene, view: float, gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, 1, 64, 64) gray views of the scenes in their candidate frames, in [0, 1]."""
    c = (TEMPLATE - 1) / 2
    t = (torch.arange(TEMPLATE, dtype=torch.float32) - c) * view + c
    ys, xs = torch.meshgrid(t, t, indexing="ij")
    q = torch.stack([xs.flatten(), ys.flatten()], 1)  # (P, 2) candidate template coords
    b = scene.faces.shape[0]
    shape = (b, TEMPLATE, TEMPLATE, 2)
    g_face, p = _grid(scene.true_from_cand, q, TEMPLATE)
    g_bg, _ = _grid(scene.bg_from_cand, q, BG_SIZE)
    face = F.grid_sample(scene.faces, g_face.view(shape), align_corners=False)
    bg = F.grid_sample(scene.bgs, g_bg.view(shape), padding_mode="reflection", align_corners=False)
    w = _window(scene.window, p).view(b, 1, TEMPLATE, TEMPLATE)
    out = w * face + (1 - w) * bg
    if gen is not None:
        out = out + scene.noise[:, None, None, None] * torch.randn(out.shape, generator=gen)
    return out.clamp(0, 1)


def _window(win: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(B, P) visibility in [0, 1] of crop points p (B, P, 2) through each scene's window."""
    kind, cx, cy, hx, hy, soft = (v[:, None] for v in win.unbind(1))
    # Square: the pasted crop itself (hard edge at the crop border, as a pasted square).
    inside = (p[..., 0] > -0.5) & (p[..., 0] < TEMPLATE - 0.5)
    inside &= (p[..., 1] > -0.5) & (p[..., 1] < TEMPLATE - 0.5)
    square = inside.float()
    # Ellipse / rounded rectangle: superellipse of random roundness, soft edge.
    dx, dy = (p[..., 0] - cx).abs() / hx, (p[..., 1] - cy).abs() / hy
    r = (dx**4 + dy**4) ** 0.25 * (kind - 1).clamp(0, 1) + (dx**2 + dy**2).sqrt() * (
        1 - (kind - 1).clamp(0, 1)
    )
    edge = ((1 - r) * torch.minimum(hx, hy) / soft + 0.5).clamp(0, 1)
    out = torch.where(kind == 0, square, edge * square)
    return torch.where(kind == 3, torch.zeros_like(out), out)


@dataclass
class ViewSampler:
    """Draws random scenes (positives and negatives) from faces and a background bank.

    Attributes:
        faces: (N, 64, 64) uint8 gray LFW crops.
        bank: backgrounds from :func:`background_bank`.
        negatives: share of scenes without a face to align.
        wide: share of positives drawn from the wide error range (the rest: near the answer).
    """

    faces: torch.Tensor
    bank: torch.Tensor
    negatives: float = 0.2
    wide: float = 0.6

    def draw(self, n: int, gen: torch.Generator) -> Scene:
        """``n`` random scenes (seeded by ``gen``)."""

        def u(lo: float, hi: float, size: int = n) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(size, generator=gen)

        idx = torch.randint(len(self.faces), (n,), generator=gen)
        faces = self.faces[idx].float()[:, None] / 255
        flip = torch.rand(n, generator=gen) < 0.5
        faces = torch.where(flip[:, None, None, None], faces.flip(-1), faces)
        faces = _degrade(faces, u(0.0, 1.0), gen)
        bgs = self.bank[torch.randint(len(self.bank), (n,), generator=gen)]
        params = _true_params(n, self.wide, gen, u)
        neg = torch.rand(n, generator=gen) < self.negatives
        params = torch.where(neg[:, None], _negative_params(n, gen, u), params)
        # Background: its own random scale (photo px per template px), roll and offset.
        k = u(0.15, 1.4)
        bg_params = torch.stack([u(-40, 40), u(-40, 40), k.log(), u(-0.3, 0.3)], 1)
        bg_from_cand = similarity(bg_params)
        bg_from_cand[:, :, 2] += (BG_SIZE - TEMPLATE) / 2
        kind = torch.randint(3, (n,), generator=gen).float()
        window = torch.stack(
            [kind, u(27.5, 35.5), u(28.5, 38.5), u(22, 36), u(24, 38), u(0.5, 4)], 1
        )
        no_face = neg & (torch.rand(n, generator=gen) < 0.5)
        window[no_face, 0] = 3.0  # background only
        return Scene(
            faces, bgs, similarity(params), bg_from_cand, window, (~neg).float(), u(0.0, 0.03)
        )


def _true_params(n: int, wide: float, gen: torch.Generator, u) -> torch.Tensor:
    """(n, 4) transforms candidate -> true frame for positives: detector-like errors."""
    is_wide = torch.rand(n, generator=gen) < wide
    broad = torch.stack([u(-14, 14), u(-14, 14), u(-0.4, 0.4), u(-25, 25) * DEGREE], 1)
    near = torch.randn(n, 4, generator=gen) * torch.tensor([2.5, 2.5, 0.06, 4 * DEGREE])
    return torch.where(is_wide[:, None], broad, near)


def _negative_params(n: int, gen: torch.Generator, u) -> torch.Tensor:
    """(n, 4) candidate frames far off any face: shifted by 26-45 px or scaled 2.2-3.7x."""
    angle = u(0, 2 * math.pi)
    dist = u(26, 45)
    far = torch.stack([dist * angle.cos(), dist * angle.sin(), u(-0.3, 0.3), u(-0.4, 0.4)], 1)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    scaled = torch.stack([u(-8, 8), u(-8, 8), sign * u(0.8, 1.3), u(-0.4, 0.4)], 1)
    return torch.where((torch.rand(n, generator=gen) < 0.6)[:, None], far, scaled)


def _degrade(faces: torch.Tensor, level: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Faces pasted small lose detail: 40% are cut to 20-52 px and brought back to 64."""
    out = faces.clone()
    for k, size in enumerate((20, 28, 36, 44, 52)):
        pick = (level >= 0.08 * k) & (level < 0.08 * (k + 1))
        if pick.any():
            small = F.interpolate(faces[pick], size=(size, size), mode="bilinear", antialias=True)
            out[pick] = F.interpolate(small, size=(TEMPLATE, TEMPLATE), mode="bilinear")
    # Contrast, brightness and gamma of the face vary from photo to photo.
    n = faces.shape[0]
    gamma = torch.exp(torch.randn(n, generator=gen) * 0.25)[:, None, None, None]
    return out.clamp(1e-4, 1) ** gamma
