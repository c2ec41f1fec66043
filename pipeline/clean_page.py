"""Is a page already clean? The scan denoiser's "do no harm" check.

A network trained to remove stains cannot tell a continuous-tone photo or a soft gray fill from
a stain by looking at a tile, and it sharpens anti-aliased type. A page that is already clean
(born-digital, or scanned and already cleaned) must come out unchanged, so the scan stage asks
this check first and passes such pages through.

A page counts as clean when

- most of it is pure white paper (``WHITE`` or brighter: scanned paper, even clean, is grayer
  and is left to the network), and
- every other pixel is accounted for: ink (dark) and the anti-aliased gray within two pixels
  of it, pictures (rectangular areas of non-white pixels: photos, figures, bars, boxes) and
  flat gray fills (one exact level, as a renderer draws them),

up to ``STRAY_LIMIT`` of the page in "stray" gray pixels (bleed-through, stains, faded strokes
and toner dust on white paper are stray), and with at most ``SPECK_LIMIT`` isolated dark specks
(three pixels or fewer, away from other ink) per megapixel: speck noise on a white page is what
a user wants removed. A colour page that fails this in luma is checked again in its darkest
channel (:func:`is_clean`): saturated ink is mid-gray in luma, dark there.

The thresholds were set on generated clean pages of other seeds than the benchmark's (60 pages
of 1.2 Mpx at 150-600 DPI, with validation photographs, and 8 A4 pages) and on all docbin and
DDD pages as they come: the clean pages have at most 4.4% stray pixels (a photo with a blown-out
sky touching its edge) and 8 specks per Mpx; the whitest degraded page, DIBCO 2017 H17, has 12%
stray pixels; every other degraded page has under 40% white paper.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

WHITE = 0.97  # paper level of a clean page (renderers: 1.0; JPEG of a clean page: >= 0.98)
MIN_WHITE = 0.4  # share of white paper below which a page is not checked further
DARK = 0.4  # ink core; gray within NEAR pixels of it is its anti-aliasing
NEAR = 2
STRAY_LIMIT = 0.06
SPECK_LIMIT = 100.0  # per megapixel of the page
ANALYSIS_PIXELS = 1e6  # a larger page is checked at a reduced scale
_PICTURE_MIN_SIDE = 24  # pixels
_PICTURE_FILL = 0.9  # share of non-white pixels in a picture's bounding box
_FLAT_STD = 0.01  # a gray fill drawn by a renderer is one level


class PageCheck(NamedTuple):
    """What :func:`check_page` found.

    Attributes:
        stray: share of the page in stray gray pixels (1.0: too little white paper to look).
        specks: isolated dark specks per megapixel of the page.
    """

    stray: float
    specks: float

    @property
    def clean(self) -> bool:
        """Whether the page passes for clean (both measures within their limits)."""
        return self.stray <= STRAY_LIMIT and self.specks <= SPECK_LIMIT


def check_page(gray: np.ndarray, quick: bool = False) -> PageCheck:
    """Measure what no clean page has (see the module docstring).

    Args:
        gray: (H, W) float page in [0, 1], 1 = white.
        quick: stop at an upper bound of ``stray`` once it is at most ``STRAY_LIMIT``.

    Returns:
        The page's :class:`PageCheck`.
    """
    from scipy import ndimage as ndi

    if (gray >= WHITE).mean() < MIN_WHITE:
        return PageCheck(1.0, 0.0)
    mpx = gray.size / 1e6
    gray = _shrink(gray)
    paper = gray >= WHITE
    dark = gray < DARK
    mid = ~paper & ~_grow(dark, NEAR)
    specks = _specks(dark) / mpx
    if quick and mid.mean() <= STRAY_LIMIT:
        return PageCheck(float(mid.mean()), specks)  # an upper bound: no pictures needed
    mid &= ~_pictures(paper, mid)
    labels, n = ndi.label(mid, np.ones((3, 3), bool))
    inside = labels.ravel() > 0
    ids, values = labels.ravel()[inside], gray.ravel()[inside]
    sizes = np.bincount(ids, minlength=n + 1)[1:]
    mean = np.bincount(ids, values, minlength=n + 1)[1:] / np.maximum(sizes, 1)
    var = np.bincount(ids, values * values, minlength=n + 1)[1:] / np.maximum(sizes, 1) - mean**2
    flat = (sizes >= 20) & (var < _FLAT_STD**2)
    return PageCheck(float(sizes[~flat].sum()) / gray.size, specks)


def is_clean(gray: np.ndarray, darkest: np.ndarray | None = None) -> bool:
    """Whether ``gray`` ((H, W) in [0, 1]) is a clean page to pass through unchanged.

    A page of two levels (a 1-bit scan drawn in any two colours, as a PDF colour space may
    draw it) is checked as black and white, and a mostly dark page also as its negative: light
    type on a dark ground, printed so, is as clean as dark type on white.

    Args:
        gray: the page's luma.
        darkest: for a colour page, its darkest channel per pixel ((H, W)). Saturated ink (the
            red, green and blue lines of a chart, a yellow highlight) is mid-gray in luma, so
            stray there, but dark in its darkest channel; gray and brown dirt and yellowed
            paper are about as light in it as in luma, so stay stray (not clean).
    """
    if _is_clean_gray(gray):
        return True
    return darkest is not None and _is_clean_gray(darkest)


def _is_clean_gray(gray: np.ndarray) -> bool:
    if _two_levels(gray):
        gray = (gray == gray.max()).astype(np.float32)
    if check_page(gray, quick=True).clean:
        return True
    return float(gray.mean()) < 0.5 and check_page(1.0 - gray, quick=True).clean


def _two_levels(gray: np.ndarray) -> bool:
    """Whether the page holds exactly two values (a 1-bit scan drawn in any two colours).

    A sparse sample settles it for almost every page; only a sample of two values is
    confirmed on the whole page.
    """
    sample = np.unique(gray[::16, ::16])
    if sample.size > 2:
        return False
    if sample.size == 1:  # a nearly plain page: is everything else one other value?
        other = gray[gray != sample[0]]
        return other.size > 0 and bool((other == other[0]).all())
    return bool(((gray == sample[0]) | (gray == sample[1])).all())


def _pictures(paper: np.ndarray, mid: np.ndarray) -> np.ndarray:
    """(H, W) mask of the pictures on a page: photos, figures, gray bars and boxes.

    The gray pixels away from ink, closed over small gaps, make areas; an area whose bounding
    box is (almost) all non-white is a rectangle of non-white content, a picture, and its whole
    box is one (dark parts of a photo touching its edge included). Bleed-through and stains on
    white paper leave white between their strokes or round their edges.
    """
    from scipy import ndimage as ndi

    closed = ~_grow(~_grow(mid, 4), 4) | mid  # closing with a 9 x 9 square
    labels, _ = ndi.label(closed, np.ones((3, 3), bool))
    out = np.zeros(mid.shape, bool)
    for box in ndi.find_objects(labels):
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        if min(h, w) >= _PICTURE_MIN_SIDE and 1.0 - paper[box].mean() >= _PICTURE_FILL:
            out[box] = True
    return out


def _shrink(gray: np.ndarray) -> np.ndarray:
    """A large page as the darkest pixel of each k x k block.

    k is chosen to leave about ``ANALYSIS_PIXELS``: ink and gray keep their place and reach,
    and an A4 page at 300 DPI is checked in a fraction of the time the network takes for it.
    """
    k = max(1, round(math.sqrt(gray.size / ANALYSIS_PIXELS)))
    if k == 1:
        return gray
    page = gray[: gray.shape[0] // k * k, : gray.shape[1] // k * k]
    # Strided minima, rows then columns: ~15x faster than a reshape and min over two axes.
    rows = page[0::k].copy()
    for i in range(1, k):
        np.minimum(rows, page[i::k], out=rows)
    out = rows[:, 0::k].copy()
    for j in range(1, k):
        np.minimum(out, rows[:, j::k], out=out)
    return out


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """``mask`` dilated by a (2r + 1)-square (separable, so fast at any ``r``)."""
    from scipy import ndimage as ndi

    return ndi.maximum_filter(mask.view(np.uint8), size=2 * r + 1).view(bool)


def _specks(dark: np.ndarray) -> int:
    """How many dark specks of at most 3 pixels lie farther than 6 px from other ink."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(dark, np.ones((3, 3), bool))
    if n == 0:
        return 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes <= 3
    small[0] = False
    tiny = small[labels]
    others = _grow(dark & ~tiny, 6)
    return int(ndi.label(tiny & ~others, np.ones((3, 3), bool))[1])


# ---- photographs: pages with no paper ---------------------------------------------------------
#
# The network is trained on pages (paper, ink, stains, pictures placed on paper). A photograph
# scanned or filed among the pages has no paper: it whitens the photo's mid-tones as if they were
# stains. Six measures of the page's background (its light envelope: a 9-px closing of a
# 256-px thumbnail, smoothed) tell the two apart; a logistic model over them, fitted by
# ``benchmarks/page_kind.py`` on the train and validation splits only (DDD and docbin pages,
# generated pages with photos on them, and the photos' train/val split), sets the constants
# below. Its threshold is the lowest that flags no train/val document: a page it misses is
# cleaned as before; see that script's results for what it catches on the test splits.

PHOTO_FEATURES = ("ink", "bg_range", "bg_std", "dark_bg", "paper", "near_paper")
_PHOTO_MEAN = (0.14375, 0.4892, 0.15449, 0.41264, 0.77085, 0.43226)
_PHOTO_STD = (0.09253, 0.22694, 0.07403, 0.26481, 0.1477, 0.21263)
_PHOTO_WEIGHTS = (-1.11, 0.03, 0.85, 2.09, -2.15, -1.38)
_PHOTO_BIAS = 3.11
PHOTO_THRESHOLD = 0.99


def page_features(gray: np.ndarray) -> np.ndarray:
    """The six background measures of :data:`PHOTO_FEATURES` for an (H, W) page in [0, 1].

    ink: share darker than the background by over 0.15; bg_range, bg_std: spread of the
    background (p95 - p5, standard deviation); dark_bg: share of background over 0.2 below the
    paper level (its 90th percentile); paper: that level; near_paper: share of pixels within
    0.15 of the page's 90th percentile.
    """
    from PIL import Image
    from scipy import ndimage as ndi

    # Block means down to at most 512 px first: converting a whole A4 page at 300 DPI for PIL
    # took a fifth of the network's time.
    k = max(1, max(gray.shape) // 512)
    if k > 1:
        h, w = gray.shape[0] // k * k, gray.shape[1] // k * k
        gray = gray[:h, :w].reshape(h // k, k, w // k, k).mean((1, 3))
    small = Image.fromarray(np.clip(gray * 255.0, 0, 255).astype(np.uint8))
    scale = 256 / max(small.size)
    size = (max(8, round(small.size[0] * scale)), max(8, round(small.size[1] * scale)))
    g = np.asarray(small.resize(size, Image.BILINEAR), np.float32) / 255.0
    bg = ndi.uniform_filter(ndi.grey_closing(g, size=(9, 9)), 9)
    paper = float(np.percentile(bg, 90))
    lo, hi = np.percentile(bg, [5, 95])
    return np.array(
        [
            ((bg - g) > 0.15).mean(),
            hi - lo,
            bg.std(),
            (bg < paper - 0.2).mean(),
            paper,
            (g >= np.percentile(g, 90) - 0.15).mean(),
        ],
        np.float64,
    )


def photo_score(gray: np.ndarray) -> float:
    """The model's probability that an (H, W) page in [0, 1] is a photograph, not a page."""
    z = (page_features(gray) - np.array(_PHOTO_MEAN)) / np.array(_PHOTO_STD)
    return float(1.0 / (1.0 + np.exp(-(z @ np.array(_PHOTO_WEIGHTS) + _PHOTO_BIAS))))


def is_photograph(gray: np.ndarray) -> bool:
    """Whether the scan stage should keep this page as it is, as a photograph."""
    return photo_score(gray) > PHOTO_THRESHOLD
