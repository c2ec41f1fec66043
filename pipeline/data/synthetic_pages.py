"""Synthetic degraded-document generator: unlimited clean/dirty page pairs for the scan denoiser.

Clean pages are rendered with Pillow from fonts that ship inside the matplotlib wheel (Computer
Modern, STIX, DejaVu; a project dependency) or a Debian font package, falling back to Pillow's
built-in font. Layouts mix paragraphs (one or two columns, justified or ragged), headings, ruled
tables and lines of handwriting-like strokes; text is procedurally generated pseudo-language, so
nothing is downloaded. Pages are then damaged with randomised, physically motivated degradations
(crumpled paper, folds, coffee and tea stains, bleed-through, watermarks, footprints, uneven
illumination, scanner shadows, dark borders, blur, scanner noise, salt-and-pepper, JPEG).

Everything is numpy / OpenCV / Pillow: no torch import, so workers stay light. Conventions:
pages are uint8 (H, W) arrays, 255 = white paper. The clean target is pure white paper with
near-black anti-aliased ink, like the cleaned pages of the Kaggle "Denoising Dirty Documents" set.

Example:
    >>> dirty, clean = make_pair(7, height=420, width=540)
    >>> dirty.shape, clean.dtype
    ((420, 540), dtype('uint8'))

Command line (writes ``NNNNN_dirty.png`` / ``NNNNN_clean.png``)::

    python -m aepipe.data.synthetic_pages --out DIR --n 100 --seed 0 --height 420 --width 540
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "SyntheticPages",
    "add_display_content",
    "degrade",
    "font_inventory",
    "load_photos",
    "make_pair",
    "preview_grid",
    "render_clean_page",
    "write_pairs",
]

# Fonts by role. Names are file stems looked up in matplotlib's bundled fonts, then in
# /usr/share/fonts. Computer Modern (cm*) is what most Denoising-Dirty-Documents pages use.
_FONT_ROLES: dict[str, tuple[str, ...]] = {
    "serif": (
        "cmr10",
        "STIXGeneral",
        "DejaVuSerif",
        "DejaVuSerifCondensed",
        "LiberationSerif-Regular",
    ),
    "serif_italic": ("cmti10", "STIXGeneralItalic", "DejaVuSerif-Italic", "LiberationSerif-Italic"),
    "sans": ("cmss10", "DejaVuSans", "DejaVuSansCondensed", "LiberationSans-Regular"),
    "sans_italic": ("DejaVuSans-Oblique", "DejaVuSansCondensed-Oblique"),
    "mono": ("cmtt10", "DejaVuSansMono", "LiberationMono-Regular"),
    "bold": (
        "cmb10",
        "STIXGeneralBol",
        "DejaVuSerif-Bold",
        "DejaVuSans-Bold",
        "LiberationSans-Bold",
    ),
}
# Body-text roles and how often a page uses each; "sans_fake_italic" is an upright sans sheared
# like the cmssi pages of the Kaggle set, whose font no package ships.
_BODY_ROLES = ("serif", "serif_italic", "sans", "sans_fake_italic", "sans_italic", "mono")
_BODY_WEIGHTS = (0.28, 0.16, 0.16, 0.14, 0.06, 0.20)

_COMMON_TEXT = (
    "the of and to in is a that for with as on by be are this or can it from at which an not "
    "these their more than other may also have has was were they been when where there such "
    "each one two into its but all only most used some between over after under before while "
    "method image form field data page noise filter value text line paper scan model test"
)
_COMMON_WORDS = tuple(_COMMON_TEXT.split())
_ONSET_TEXT = "b c d f g h l m n p r s t v w br cl cr dr fl gr pl pr st str th tr ch sh sp"
_ONSETS = tuple(_ONSET_TEXT.split())
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "ou", "io", "ai")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "nt", "st", "rs", "ng", "ck", "ss")
_SUFFIXES = ("", "", "", "", "ing", "ed", "tion", "ly", "ment", "er", "es", "al", "ity")
_WATERMARK_WORDS = (
    "CONFIDENTIAL",
    "DRAFT",
    "COPY",
    "ARCHIVE",
    "VOID",
    "RECEIVED",
    "FILE",
    "ORIGINAL",
)


# --------------------------------------------------------------------------------------------
# Fonts and text
# --------------------------------------------------------------------------------------------


def _font_dirs() -> list[Path]:
    """Folders to search for .ttf files, matplotlib's bundled fonts first."""
    dirs: list[Path] = []
    # find_spec locates matplotlib without importing it (importing costs ~0.2 s per worker).
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            dirs.append(Path(loc) / "mpl-data" / "fonts" / "ttf")
    dirs += [Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts")]
    return [d for d in dirs if d.is_dir()]


@lru_cache(maxsize=1)
def font_inventory() -> dict[str, tuple[str, ...]]:
    """Font files found for each role.

    Returns:
        Role name (``serif``, ``serif_italic``, ``sans``, ``sans_italic``, ``mono``, ``bold``)
        to the paths of the fonts available for it; empty tuples mean Pillow's default font.
    """
    by_stem: dict[str, Path] = {}
    for d in _font_dirs():
        for path in sorted(d.rglob("*.ttf")):
            by_stem.setdefault(path.stem, path)
    return {
        role: tuple(str(by_stem[s]) for s in stems if s in by_stem)
        for role, stems in _FONT_ROLES.items()
    }


@lru_cache(maxsize=512)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font object, cached: opening a TrueType file costs ~1 ms."""
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _pick_font(rng: np.random.Generator, role: str, size: int) -> tuple[ImageFont.ImageFont, bool]:
    """A random font of a role; the flag says its glyphs must be sheared into a fake italic."""
    inv = font_inventory()
    fake_italic = False
    if role == "sans_fake_italic":
        role, fake_italic = "sans", True
    paths = inv.get(role) or inv.get("serif") or ("",)
    if not paths:
        paths = ("",)
    return _font(paths[int(rng.integers(len(paths)))], max(int(size), 6)), fake_italic


def _word(rng: np.random.Generator) -> str:
    """One pseudo-English word: common short words interleaved with syllable compounds."""
    if rng.random() < 0.45:
        return _COMMON_WORDS[int(rng.integers(len(_COMMON_WORDS)))]
    n_syl = int(rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))
    parts = []
    for _ in range(n_syl):
        onset = _ONSETS[int(rng.integers(len(_ONSETS)))] if rng.random() < 0.85 else ""
        parts.append(onset + _VOWELS[int(rng.integers(len(_VOWELS)))])
    word = "".join(parts) + _CODAS[int(rng.integers(len(_CODAS)))]
    return word + _SUFFIXES[int(rng.integers(len(_SUFFIXES)))]


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` words forming sentences, with capitals, punctuation, numbers and brackets."""
    out: list[str] = []
    start = True
    for _ in range(n):
        r = rng.random()
        if r < 0.04:
            num = rng.random() < 0.6
            w = str(int(rng.integers(1, 2000))) if num else f"{rng.uniform(0, 100):.1f}"
        elif r < 0.055:
            w = _word(rng).upper()[: int(rng.integers(2, 5))]
        else:
            w = _word(rng)
        if start or rng.random() < 0.04:
            w = w[:1].upper() + w[1:]
        start = False
        if rng.random() < 0.02:
            w = "(" + w
            if rng.random() < 0.7:
                w += ")"
        p = rng.random()
        if p < 0.08:
            w += "."
            start = True
        elif p < 0.14:
            w += ","
        elif p < 0.15:
            w += rng.choice([";", ":"])
        elif p < 0.153:
            w += "?"
            start = True
        out.append(w)
    if out and out[-1][-1] not in ".?":
        out[-1] += "."
    return out


# --------------------------------------------------------------------------------------------
# Clean page rendering
# --------------------------------------------------------------------------------------------


@dataclass
class _Canvas:
    """The page being drawn: an upright layer and a layer sheared afterwards (fake italics)."""

    page: Image.Image
    sheared: Image.Image | None
    shear: float
    height: int

    def draw(self, fake_italic: bool) -> ImageDraw.ImageDraw:
        if fake_italic and self.sheared is not None:
            return ImageDraw.Draw(self.sheared)
        return ImageDraw.Draw(self.page)

    def x_for(self, x: float, baseline: float, fake_italic: bool) -> float:
        """Pre-shift so that the page-wide shear leaves this baseline where it was drawn."""
        if fake_italic and self.sheared is not None:
            return x + self.shear * baseline
        return x


def _line_metrics(font: ImageFont.ImageFont) -> tuple[int, int]:
    """(ascent, descent) in pixels."""
    try:
        asc, desc = font.getmetrics()
    except AttributeError:
        asc, desc = 10, 3
    return int(asc), int(desc)


def _text_width(font: ImageFont.ImageFont, text: str) -> float:
    try:
        return float(font.getlength(text))
    except AttributeError:
        box = font.getbbox(text)
        return float(box[2] - box[0])


def _paragraph(
    canvas: _Canvas, rng: np.random.Generator, lay: _Layout, x0: float, y: float
) -> float:
    """Lay out one paragraph of random words in a column from ``y`` on; returns the next free y."""
    font, fake_italic, leading, ink = lay.font, lay.fake_italic, lay.leading, lay.ink
    width, y_max, justify, indent = lay.col_w, lay.y_max, lay.justify, lay.indent
    asc, _ = _line_metrics(font)
    space = _text_width(font, " ")
    words = _words(rng, int(rng.integers(25, 140)))
    widths = [_text_width(font, w) for w in words]
    draw = canvas.draw(fake_italic)
    i, first = 0, True
    while i < len(words) and y + leading <= y_max + leading * 0.3:
        start_x = x0 + (indent if first else 0.0)
        avail = width - (indent if first else 0.0)
        j, used = i, 0.0
        while j < len(words) and (used + widths[j] + (space if j > i else 0) <= avail or j == i):
            used += widths[j] + (space if j > i else 0)
            j += 1
        line = words[i:j]
        baseline = y + asc
        last_line = j >= len(words)
        gap = (avail - sum(widths[i:j])) / max(len(line) - 1, 1)
        # Narrow columns with long words would get rivers of white: leave those lines ragged.
        if justify and not last_line and len(line) > 1 and gap < 4 * space:
            x = start_x
            for k, w in enumerate(line):
                draw.text((canvas.x_for(x, baseline, fake_italic), y), w, font=font, fill=ink)
                x += widths[i + k] + gap
        else:
            draw.text(
                (canvas.x_for(start_x, baseline, fake_italic), y),
                " ".join(line),
                font=font,
                fill=ink,
            )
        y += leading
        i, first = j, False
    return y


def _heading(
    canvas: _Canvas,
    rng: np.random.Generator,
    size: int,
    x0: float,
    y: float,
    width: float,
    ink: int,
) -> float:
    """A bold, larger, optionally numbered heading that fits ``width``; returns the next free y."""
    font, _ = _pick_font(rng, "bold", int(size * rng.uniform(1.1, 1.7)))
    words = [_word(rng) for _ in range(int(rng.integers(1, 6)))]
    text = " ".join(words).capitalize() if rng.random() < 0.7 else " ".join(words).upper()
    if rng.random() < 0.5:
        text = f"{int(rng.integers(1, 10))}.{int(rng.integers(1, 10))}  " + text
    while " " in text and _text_width(font, text) > width:
        text = text.rsplit(" ", 1)[0]
    canvas.draw(False).text((x0, y), text, font=font, fill=ink)
    asc, desc = _line_metrics(font)
    return y + (asc + desc) * rng.uniform(1.4, 2.0)


def _table(
    canvas: _Canvas,
    rng: np.random.Generator,
    size: int,
    x0: float,
    y: float,
    width: float,
    y_max: float,
    ink: int,
    scale: float,
) -> float:
    """A ruled table of short words and numbers; returns the next free y."""
    role = str(rng.choice(["serif", "sans", "mono"]))
    font, _ = _pick_font(rng, role, int(size * rng.uniform(0.8, 1.0)))
    bold, _ = _pick_font(rng, "bold", int(size * rng.uniform(0.8, 1.0)))
    asc, desc = _line_metrics(font)
    row_h = (asc + desc) * rng.uniform(1.3, 1.8)
    n_cols = int(rng.integers(2, 6))
    n_rows = int(min(rng.integers(3, 10), max((y_max - y) // row_h - 1, 2)))
    if y + row_h * (n_rows + 1) > y_max + row_h:
        return y
    table_w = width * rng.uniform(0.6, 1.0)
    frac = rng.uniform(0.6, 1.4, n_cols)
    col_x = x0 + np.concatenate([[0.0], np.cumsum(frac / frac.sum() * table_w)])
    draw = ImageDraw.Draw(canvas.page)
    lw = max(1, round(scale * rng.uniform(0.8, 1.8)))
    vertical = rng.random() < 0.5
    pad = 0.25 * (asc + desc)
    y_top = y
    for r in range(n_rows + 1):
        yy = y + r * row_h
        for c in range(n_cols):
            if r == 0:
                text, f = _word(rng).capitalize(), bold
            elif c == 0 or rng.random() < 0.3:
                text, f = _word(rng), font
            else:
                digits = int(rng.integers(0, 3))
                text, f = f"{rng.uniform(0, 10 ** rng.integers(1, 5)):.{digits}f}", font
            cell_w = col_x[c + 1] - col_x[c] - 2 * pad
            while len(text) > 1 and _text_width(f, text) > cell_w:
                text = text[:-1]
            tx = col_x[c] + pad if c == 0 else col_x[c + 1] - pad - _text_width(f, text)
            draw.text((tx, yy + 0.15 * row_h), text, font=f, fill=ink)
        if r in (0, 1) or r == n_rows or rng.random() < 0.2:
            draw.line([(col_x[0], yy), (col_x[-1], yy)], fill=ink, width=lw)
    y_end = y + (n_rows + 1) * row_h
    draw.line([(col_x[0], y_end), (col_x[-1], y_end)], fill=ink, width=lw)
    if vertical:
        for cx in col_x:
            draw.line([(cx, y_top), (cx, y_end)], fill=ink, width=lw)
    return y_end + row_h * rng.uniform(0.6, 1.2)


def _handwriting(
    page: np.ndarray,
    rng: np.random.Generator,
    x0: float,
    y: float,
    width: float,
    y_max: float,
    x_height: float,
    scale: float,
) -> float:
    """A few lines of cursive-like pen strokes drawn straight into ``page`` (uint8, in place).

    Each pseudo-letter is one loop of a cycloid whose height varies (x-height, ascender,
    descender); a slant, a wobbling baseline and a varying pen pressure make it look written.
    """
    xh = x_height * rng.uniform(0.9, 1.5)
    pitch = xh * rng.uniform(2.6, 3.4)
    slant = rng.uniform(0.1, 0.45)
    ink = int(rng.integers(10, 90))
    thick = max(1, round(scale * rng.uniform(1.0, 2.2)))
    n_lines = int(rng.integers(1, 4))
    for _ in range(n_lines):
        base = y + 2.2 * xh
        if base + 1.3 * xh > y_max:  # room for descenders
            break
        x = x0 + rng.uniform(0, 0.1) * width
        drift = rng.uniform(-0.03, 0.03)
        while x < x0 + width * rng.uniform(0.75, 1.0):
            n_letters = int(rng.integers(2, 9))
            w_letter = xh * rng.uniform(0.6, 0.9)
            t = np.linspace(0, n_letters, n_letters * 24)
            letter = np.minimum(t.astype(int), n_letters - 1)
            # Mostly x-height letters, some ascenders (l, h) and descenders (g, y).
            heights = rng.choice([1.0, 1.0, 1.0, 2.1, -1.2], n_letters)
            heights = heights * rng.uniform(0.85, 1.1, n_letters)
            h = heights[letter]
            phase = 2 * np.pi * (t - letter)
            # Per-letter loopiness: < 0.3 gives arches (n, m), > 0.5 closed loops (e, l).
            loop = rng.uniform(0.1, 0.75, n_letters)[letter]
            widths = rng.uniform(0.7, 1.3, n_letters)
            start = np.concatenate([[0.0], np.cumsum(widths)])[letter]
            adv = start + widths[letter] * (t - letter)
            px = x + w_letter * adv - loop * w_letter * np.sin(phase)
            up = np.where(h > 0, h * xh * (0.5 - 0.5 * np.cos(phase)), 0.0)
            down = np.where(h < 0, h * xh * (0.5 - 0.5 * np.cos(phase)), 0.0)
            py = base - up - down + np.cumsum(rng.normal(0, 0.04 * xh, t.size)) * 0.2
            py += drift * (px - x0)
            px = px + slant * (base - py)
            pts = np.stack([px, py], 1)
            # 4 fractional bits: sub-pixel positions keep the anti-aliased curve smooth.
            poly = np.round(pts * 16).astype(np.int32)
            cv2.polylines(page, [poly], False, ink, thick, cv2.LINE_AA, 4)
            x += w_letter * float(widths.sum()) + xh * rng.uniform(0.8, 1.6)
        y += pitch
    return y + pitch * 0.3


@dataclass
class _Layout:
    """A page's style and geometry, drawn from the generator before any text is set."""

    scale: float
    size_px: int
    font: ImageFont.ImageFont
    fake_italic: bool
    leading: float
    ink: int
    justify: bool
    indent: float
    cropped: bool
    margin_x: float
    margin_top: float
    text_w: float
    gutter: float
    n_cols: int
    col_w: float
    y_max: float
    handwritten_pending: bool


def _draw_layout(
    rng: np.random.Generator, height: int, width: int, dpi: int
) -> tuple[_Layout, _Canvas]:
    """The page's random layout and its empty canvas.

    The order of the draws is part of every seed's page (training and benchmarks replay them).
    """
    scale = dpi / 100.0
    shear = float(rng.uniform(0.17, 0.25))
    role = str(rng.choice(_BODY_ROLES, p=np.array(_BODY_WEIGHTS) / sum(_BODY_WEIGHTS)))
    # Kaggle-like 100 DPI crops carry big type (x-height 9-14 px); printed pages scanned at
    # 150-300 DPI mostly 9-14 pt body text. sqrt() leans towards the larger sizes.
    lo, hi = (11.0, 21.0) if dpi <= 120 else (8.5, 14.0)
    size_px = round((lo + (hi - lo) * math.sqrt(float(rng.random()))) * dpi / 72.0)
    font, fake_italic = _pick_font(rng, role, size_px)
    canvas = _Canvas(
        page=Image.new("L", (width, height), 255),
        # Wider than the page by the shear, so pre-shifted lines are not clipped on the right.
        sheared=(
            Image.new("L", (width + math.ceil(shear * height) + 1, height), 255)
            if fake_italic
            else None
        ),
        shear=shear,
        height=height,
    )
    # From the em size, not ascent + descent: STIX reports huge metrics for its tall glyphs.
    leading = size_px * rng.uniform(1.05, 1.45)
    ink = int(rng.integers(0, 35))
    justify = rng.random() < 0.6
    indent = size_px * rng.uniform(0.8, 2.5) if rng.random() < 0.6 else 0.0
    cropped = rng.random() < 0.35  # a crop of a larger page: text runs off the edges
    margin_x = (rng.uniform(-0.01, 0.04) if cropped else rng.uniform(0.04, 0.12)) * width
    margin_top = (rng.uniform(-0.02, 0.03) if cropped else rng.uniform(0.03, 0.1)) * height
    text_w = width - 2 * margin_x
    gutter = size_px * rng.uniform(1.0, 2.5)
    # Two columns only where each still holds a readable measure (>= ~24 em).
    n_cols = 2 if ((text_w - gutter) / 2 > 24 * size_px and rng.random() < 0.4) else 1
    if cropped and n_cols == 1:
        text_w *= rng.uniform(1.0, 1.5)
    col_w = (text_w - gutter * (n_cols - 1)) / n_cols
    y_max = height - (0 if cropped else rng.uniform(0.03, 0.08) * height)
    handwritten_pending = rng.random() < 0.25
    layout = _Layout(
        scale, size_px, font, fake_italic, leading, ink, justify, indent, cropped, margin_x,
        margin_top, text_w, gutter, n_cols, col_w, y_max, handwritten_pending,
    )  # fmt: skip
    return layout, canvas


def _fill_columns(
    canvas: _Canvas, rng: np.random.Generator, lay: _Layout
) -> list[tuple[float, float, float, float]]:
    """Set headings, tables and paragraphs column by column.

    Returns:
        the handwriting blocks (x0, y, width, y_max) left blank for :func:`_handwriting`.
    """
    hand_jobs: list[tuple[float, float, float, float]] = []
    y = lay.margin_top
    if rng.random() < 0.4 and not lay.cropped:
        y = _heading(canvas, rng, lay.size_px, lay.margin_x, y, lay.text_w, lay.ink)
    col_top = y
    for c in range(lay.n_cols):
        x0 = lay.margin_x + c * (lay.col_w + lay.gutter)
        y = col_top
        while y < lay.y_max - lay.leading * 0.7:
            r = rng.random()
            if r < 0.08:
                y = _heading(
                    canvas, rng, lay.size_px, x0, y + lay.leading * 0.5, lay.col_w, lay.ink
                )
            elif r < 0.16:
                y = _table(
                    canvas, rng, lay.size_px, x0, y, lay.col_w, lay.y_max, lay.ink, lay.scale
                )
            elif r < 0.24 and lay.handwritten_pending:
                lay.handwritten_pending = False
                block = lay.size_px * rng.uniform(3.5, 8.0)
                hand_jobs.append((x0, y, lay.col_w, min(lay.y_max, y + block)))
                y += block
            else:
                y = _paragraph(canvas, rng, lay, x0, y)
                gap = rng.uniform(0.0, 0.8) if lay.indent else rng.uniform(0.5, 1.2)
                y += lay.leading * gap
    return hand_jobs


def _finish_page(
    canvas: _Canvas,
    rng: np.random.Generator,
    lay: _Layout,
    hand_jobs: list[tuple[float, float, float, float]],
) -> np.ndarray:
    """Merge the sheared layer, write the handwriting, maybe darken the print: (H, W) uint8."""
    page_arr = np.array(canvas.page)
    if canvas.sheared is not None:
        height, width = page_arr.shape
        m = np.float32([[1, -canvas.shear, 0], [0, 1, 0]])
        layer = cv2.warpAffine(
            np.array(canvas.sheared), m, (width, height), flags=cv2.INTER_LINEAR, borderValue=255
        )
        page_arr = np.minimum(page_arr, layer)
    for x0, y0, w, ym in hand_jobs:
        _handwriting(page_arr, rng, x0, y0, w, ym, lay.size_px * 0.45, lay.scale)
    if rng.random() < 0.5:
        # Heavier print: a gamma < 1 on the ink coverage darkens anti-aliased stroke edges,
        # like toner spread or the bold rendering of the Kaggle targets.
        cover = (255.0 - page_arr.astype(np.float32)) / 255.0
        cover **= rng.uniform(0.45, 0.85)
        page_arr = np.round(255.0 - 255.0 * cover).astype(np.uint8)
    return page_arr


def render_clean_page(
    rng: np.random.Generator, height: int, width: int, dpi: int = 100
) -> np.ndarray:
    """Render a clean synthetic document page.

    Layouts vary per page: one or two columns, paragraphs justified or ragged, headings, ruled
    tables, a few lines of handwriting-like strokes, and sometimes text running off the right
    edge (as in cropped scans). At ``dpi`` <= 120 body text is 11-21 pt (x-height about 7-15 px
    at 100 DPI, like the Kaggle pages); above, 8.5-14 pt, so strokes thicken with ``dpi``.

    Args:
        rng: random generator; the page is a pure function of its state.
        height: page height H in pixels.
        width: page width W in pixels.
        dpi: nominal resolution that sets font sizes, line widths and margins.

    Returns:
        (H, W) uint8 page, 255 = white paper, ink near 0.
    """
    layout, canvas = _draw_layout(rng, height, width, dpi)
    hand_jobs = _fill_columns(canvas, rng, layout)
    return _finish_page(canvas, rng, layout, hand_jobs)


# --------------------------------------------------------------------------------------------
# Display content: what archive pages have and body-text pages do not
# --------------------------------------------------------------------------------------------


def _display_text(img: Image.Image, rng: np.random.Generator, dpi: int) -> None:
    """A headline or a huge initial, 24-150 pt, in the heaviest packaged bold face."""
    h, w = img.height, img.width
    pt = math.exp(rng.uniform(math.log(24.0), math.log(150.0)))
    font, _ = _pick_font(rng, "bold", round(pt * dpi / 72.0))
    n = 1 if rng.random() < 0.35 else int(rng.integers(1, 4))
    text = " ".join(_word(rng) for _ in range(n))
    text = text.upper() if rng.random() < 0.5 else text.capitalize()
    x, y = rng.uniform(-0.05, 0.7) * w, rng.uniform(-0.05, 0.85) * h
    # Black weights: a stroke around the glyphs thickens a bold face further.
    bolder = round(rng.uniform(0.0, 0.06) * pt * dpi / 72.0) if rng.random() < 0.5 else 0
    ink = int(rng.integers(0, 40))
    ImageDraw.Draw(img).text(
        (x, y),
        text,
        font=font,
        fill=ink,
        stroke_width=bolder,
        stroke_fill=ink,
    )


def _display_shape(img: Image.Image, rng: np.random.Generator, dpi: int) -> None:
    """A filled rectangle or ellipse (logo, bar), a thick rule or a ruled box."""
    h, w = img.height, img.width
    draw = ImageDraw.Draw(img)
    x0, y0 = rng.uniform(0, 0.9) * w, rng.uniform(0, 0.9) * h
    ink = int(rng.integers(0, 60))
    kind = int(rng.integers(4))
    if kind == 0:  # a horizontal or vertical rule, 1-12 pt thick
        t = max(1.0, rng.uniform(1.0, 12.0) * dpi / 72.0)
        length = rng.uniform(0.2, 0.9) * w
        box = (x0, y0, x0 + length, y0 + t) if rng.random() < 0.7 else (x0, y0, x0 + t, y0 + length)
        draw.rectangle(box, fill=ink)
    elif kind == 1:  # a filled bar or block
        bw, bh = rng.uniform(0.03, 0.4) * w, rng.uniform(0.02, 0.25) * h
        draw.rectangle((x0, y0, x0 + bw, y0 + bh), fill=ink)
    elif kind == 2:  # a filled disc or ellipse (a logo)
        r = rng.uniform(0.02, 0.15) * min(h, w)
        draw.ellipse((x0, y0, x0 + r * rng.uniform(1.0, 2.0), y0 + r), fill=ink)
    else:  # a ruled box
        bw, bh = rng.uniform(0.1, 0.5) * w, rng.uniform(0.05, 0.3) * h
        t = max(1, round(rng.uniform(0.5, 4.0) * dpi / 72.0))
        draw.rectangle((x0, y0, x0 + bw, y0 + bh), outline=ink, width=t)


def _photo(
    page: np.ndarray, rng: np.random.Generator, photos: Sequence[np.ndarray] | None = None
) -> tuple[int, int, int, int]:
    """Paste a continuous-tone photo; returns its box.

    Without ``photos`` the 'photo' is smooth shapes and gradients, which a denoiser can hardly
    tell from a stain; with them, one of those real photographs, resized to the box.
    """
    h, w = page.shape
    ph, pw = int(rng.uniform(0.15, 0.45) * h), int(rng.uniform(0.15, 0.45) * w)
    y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    if photos:
        page[y0 : y0 + ph, x0 : x0 + pw] = _real_photo(photos, rng, ph, pw)
        return y0, x0, ph, pw
    field = sum(
        _smooth_noise(rng, ph, pw, max(2.0, min(ph, pw) * f)) * a
        for f, a in ((0.5, 1.0), (0.15, 0.5), (0.04, 0.25))
    )
    yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    field = field + rng.uniform(-1, 1) * yy / ph + rng.uniform(-1, 1) * xx / pw
    lo, hi = rng.uniform(0.05, 0.35), rng.uniform(0.75, 0.97)
    f = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    page[y0 : y0 + ph, x0 : x0 + pw] = np.round(255 * (lo + (hi - lo) * f)).astype(np.uint8)
    return y0, x0, ph, pw


def _real_photo(
    photos: Sequence[np.ndarray], rng: np.random.Generator, h: int, w: int
) -> np.ndarray:
    """One of ``photos`` ((h', w') uint8 gray each), cropped to the box's aspect and resized."""
    src = photos[int(rng.integers(len(photos)))]
    sh, sw = src.shape
    # Crop the source to the box's aspect ratio (centred) so the photo is not stretched.
    if sw * h > sh * w:
        cw = max(1, round(sh * w / h))
        src = src[:, (sw - cw) // 2 : (sw - cw) // 2 + cw]
    else:
        ch = max(1, round(sw * h / w))
        src = src[(sh - ch) // 2 : (sh - ch) // 2 + ch]
    return np.asarray(Image.fromarray(src).resize((w, h), Image.Resampling.BICUBIC))


def load_photos(folder: Path, limit: int | None = None) -> list[np.ndarray]:
    """The photographs in ``folder`` (``*.jpg``, ``*.png``, sorted) as BT.601 gray uint8 arrays.

    Raises:
        FileNotFoundError: the folder holds no such file.
    """
    kinds = {".jpg", ".jpeg", ".png"}
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in kinds)
    if not files:
        raise FileNotFoundError(f"{folder}: no .jpg or .png photographs in it")
    return [np.asarray(Image.open(f).convert("L")) for f in files[:limit]]


def add_display_content(
    page: np.ndarray,
    rng: np.random.Generator,
    dpi: int = 100,
    photo: bool | None = None,
    photos: Sequence[np.ndarray] | None = None,
    photo_prob: float = 0.3,
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """Add large/bold type, filled shapes and rules, and sometimes a photo to a clean page.

    Real archive pages carry headlines and initials of 24-150 pt, black bars, logos and
    photos: dark areas far wider than body-text strokes, which a denoiser trained on body text
    alone takes for stains.

    Args:
        page: (H, W) uint8 clean page, 255 = white (not modified).
        rng: random generator.
        dpi: nominal resolution (sets type sizes and rule widths).
        photo: add a continuous-tone photo (None: with probability ``photo_prob``).
        photos: real photographs ((h, w) uint8 gray; :func:`load_photos`) to paste as the photo;
            None: a synthetic continuous-tone field.
        photo_prob: P(a photo) when ``photo`` is None.

    Returns:
        The new (H, W) uint8 page and the photo's (y, x, h, w) box or None.
    """
    img = Image.fromarray(page)
    for _ in range(int(rng.integers(1, 4))):
        _display_text(img, rng, dpi)
    for _ in range(int(rng.integers(0, 4))):
        _display_shape(img, rng, dpi)
    out = np.array(img)
    wanted = rng.random() < photo_prob if photo is None else photo
    box = _photo(out, rng, photos) if wanted else None
    return out, box


# --------------------------------------------------------------------------------------------
# Degradations. All fields are float32 (H, W); "albedo" multiplies paper and ink alike.
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-ish variance noise with features about ``cell`` pixels wide."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _facets(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Random value per Voronoi cell (cells ~``cell`` px, stretched along x or y)."""
    stretch = rng.uniform(1.0, 2.5)
    if rng.random() < 0.5:
        gh, gw = h, max(2, int(w / stretch))
    else:
        gh, gw = max(2, int(h / stretch)), w
    n = max(4, int(gh * gw / cell**2))
    seeds = np.ones((gh, gw), np.uint8)
    seeds[rng.integers(0, gh, n), rng.integers(0, gw, n)] = 0
    # Mask size 5: the 3x3 chamfer metric draws long axis-aligned cell borders.
    _, lab = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    if (gh, gw) != (h, w):
        lab = cv2.resize(lab.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
        lab = lab.astype(np.int32)
    val = rng.standard_normal(int(lab.max()) + 1).astype(np.float32)
    return val[lab]


def _crumple(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Shading of crumpled paper: facets of different tilt meeting in sharp crease lines.

    The sheet is modelled as overlapping Voronoi facets; side light turns each facet border
    into a thin highlight/shadow line (derivative of the lightly blurred facet field) and the
    facets themselves into soft patches of brightness.
    """
    f = np.zeros((h, w), np.float32)
    cell = rng.uniform(60, 130) * scale
    for k, weight in enumerate((1.0, 0.6, rng.uniform(0.0, 0.35))):
        f += _facets(rng, h, w, cell / 2**k) * weight
    ang = rng.uniform(0, 2 * np.pi)
    fb = cv2.GaussianBlur(f, (0, 0), rng.uniform(0.8, 2.0) * scale)
    gx = cv2.Sobel(fb, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(fb, cv2.CV_32F, 0, 1)
    lines = gx * math.cos(ang) + gy * math.sin(ang)
    patches = cv2.GaussianBlur(f, (0, 0), 3.0 * scale)
    shade = rng.uniform(0.3, 1.0) * patches / (float(patches.std()) + 1e-6)
    shade += rng.uniform(0.4, 1.0) * lines / (float(lines.std()) + 1e-6)
    return 1.0 + rng.uniform(0.02, 0.06) * np.clip(shade, -3.5, 3.5)


def _folds(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Shading of one to three straight folds or creases across the sheet."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.ones((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        th = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
        d = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
        wide = rng.uniform(4, 25) * scale
        side = rng.uniform(0.02, 0.07) * np.sign(d) * np.exp(-np.abs(d) / wide)
        line = rng.uniform(0.05, 0.25) * np.exp(-((d / (rng.uniform(0.6, 1.6) * scale)) ** 2))
        out *= 1.0 - line + side
    return out


def _stains(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Darkening (0 = none) of coffee rings and tea blotches with irregular outlines."""
    dark = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(1, 4))):
        r0 = rng.uniform(0.06, 0.35) * min(h, w) * (1.0 if rng.random() < 0.7 else 1.8)
        cx, cy = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        x0, x1 = int(max(0, cx - 1.5 * r0)), int(min(w, cx + 1.5 * r0))
        y0, y1 = int(max(0, cy - 1.5 * r0)), int(min(h, cy + 1.5 * r0))
        if x1 <= x0 or y1 <= y0:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ang = np.arctan2(yy - cy, xx - cx)
        wobble = np.zeros_like(ang)
        for k in range(2, 7):
            wobble += rng.uniform(0, 0.08 / k**0.5) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
        rho = np.hypot(xx - cx, yy - cy) / (r0 * (1.0 + wobble))
        rim_w = rng.uniform(0.02, 0.08)
        tint = _smooth_noise(rng, y1 - y0, x1 - x0, rng.uniform(8, 30) * scale)
        if rng.random() < 0.6:  # coffee ring: dark rim, light interior, often an incomplete arc
            arc = np.ones_like(ang)
            if rng.random() < 0.5:
                a0 = rng.uniform(-np.pi, np.pi)
                arc = (0.5 + 0.5 * np.cos(ang - a0)) ** rng.uniform(0.5, 2.0)
            rim = np.exp(-(((rho - 1.0) / rim_w) ** 2)) * rng.uniform(0.12, 0.45) * arc
            inside = (rho < 1.0) * rng.uniform(0.0, 0.12) * (1 + 0.3 * tint)
            stain = rim + cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 2 * scale)
        else:  # tea / water blotch: soft-edged, mottled, lighter
            edge = 1.0 / (1.0 + np.exp((rho - 1.0) / rng.uniform(0.03, 0.12)))
            stain = edge * rng.uniform(0.06, 0.25) * np.clip(1 + 0.5 * tint, 0.2, 2.0)
            stain += np.exp(-(((rho - 1.0) / rim_w) ** 2)) * rng.uniform(0.0, 0.12)
        dark[y0:y1, x0:x1] = 1 - (1 - dark[y0:y1, x0:x1]) * (1 - np.clip(stain, 0, 0.8))
    return dark


def _watermark(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Darkening of a big faint rotated word or logo letters (office stamps, watermarks)."""
    layer = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(layer)
    role = str(rng.choice(["bold", "sans", "serif"]))
    text = (
        str(rng.choice(_WATERMARK_WORDS))
        if rng.random() < 0.5
        else "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(2, 5))))
    )
    font, _ = _pick_font(rng, role, int(rng.uniform(0.15, 0.45) * min(h, w) * 1.2))
    tw = _text_width(font, text)
    pos = (rng.uniform(-0.2, 0.8) * w - tw * 0.2, rng.uniform(0.0, 0.7) * h)
    draw.text(pos, text, font=font, fill=255)
    layer = layer.rotate(float(rng.uniform(-45, 45)), resample=Image.BILINEAR)
    arr = np.asarray(layer, np.float32) / 255.0
    if rng.random() < 0.5:
        # Mottled, partly worn-off print like the large ghost letters of the Kaggle backgrounds.
        arr *= np.clip(0.6 + 0.5 * _smooth_noise(rng, h, w, 6 * scale), 0, 1)
    arr = cv2.GaussianBlur(arr, (0, 0), rng.uniform(0.5, 3.0) * scale)
    return arr * rng.uniform(0.05, 0.3)


def _footprint(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Darkening of a partial shoe print: sole and heel outlines filled with tread stripes."""
    s = rng.uniform(0.5, 1.2) * max(h, w)
    lay = np.zeros((h, w), np.float32)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    ang = rng.uniform(0, 180)
    rad = math.radians(ang)
    dx, dy = math.cos(rad), math.sin(rad)
    sole = (int(cx + dx * s * 0.18), int(cy + dy * s * 0.18))
    heel = (int(cx - dx * s * 0.25), int(cy - dy * s * 0.25))
    cv2.ellipse(lay, sole, (int(s * 0.2), int(s * 0.11)), ang, 0, 360, 1.0, -1, cv2.LINE_AA)
    cv2.ellipse(lay, heel, (int(s * 0.11), int(s * 0.085)), ang, 0, 360, 1.0, -1, cv2.LINE_AA)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(6, 16) * scale
    u = ((xx - cx) * dx + (yy - cy) * dy) / period
    v = (-(xx - cx) * dy + (yy - cy) * dx) / period
    tread = np.sin(2 * np.pi * u) > rng.uniform(-0.3, 0.4)
    if rng.random() < 0.5:
        tread &= np.sin(2 * np.pi * v * rng.uniform(0.5, 1.5)) > -0.2
    worn = np.clip(0.5 + _smooth_noise(rng, h, w, 15 * scale), 0, 1)
    lay = lay * tread * worn
    lay = cv2.GaussianBlur(lay, (0, 0), rng.uniform(0.8, 2.0) * scale)
    return lay * rng.uniform(0.08, 0.3)


def _illumination(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Multiplicative light field: gradient, vignette, and scanner-lid shadows along edges."""
    yy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    light = 1.0 + rng.uniform(-0.12, 0.12) * xx + rng.uniform(-0.12, 0.12) * yy
    if rng.random() < 0.5:
        light = light - rng.uniform(0.0, 0.2) * (xx**2 + yy**2) / 2
    light = light + 0.04 * _smooth_noise(rng, h, w, rng.uniform(80, 250) * scale) * rng.random()
    if rng.random() < 0.4:
        # Scanner shadow: the page lifts off the glass near the spine or an edge.
        edge = int(rng.integers(4))
        dist = [yy + 1, 1 - yy, xx + 1, 1 - xx][edge] * (h if edge < 2 else w) / 2
        light = light * (1 - rng.uniform(0.2, 0.7) * np.exp(-dist / (rng.uniform(5, 45) * scale)))
    return np.broadcast_to(light, (h, w)).astype(np.float32)


def _dark_borders(
    rng: np.random.Generator, out: np.ndarray, clean: np.ndarray, scale: float
) -> None:
    """Paint black scanner-lid borders on 1-2 edges, never over ink (the target must stay true)."""
    h, w = out.shape
    ink_rows = np.flatnonzero((clean < 200).any(1))
    ink_cols = np.flatnonzero((clean < 200).any(0))
    if ink_rows.size == 0:
        return
    room = {
        0: ink_rows[0],
        1: h - 1 - ink_rows[-1],
        2: ink_cols[0],
        3: w - 1 - ink_cols[-1],
    }
    for edge in rng.permutation(4)[: int(rng.integers(1, 3))]:
        limit = int(room[int(edge)]) - int(3 * scale)
        if limit < 2:
            continue
        depth = rng.uniform(2, min(limit, 0.08 * (h if edge < 2 else w)) + 2)
        n = w if edge < 2 else h
        # Slightly skewed and ragged edge of the dark area.
        prof = (
            depth * (1 + rng.uniform(-0.3, 0.3) * np.linspace(-1, 1, n))
            + 1.5 * _smooth_noise(rng, 1, n, 30 * scale)[0]
        )
        prof = np.clip(prof, 0, limit)
        level = rng.uniform(0.02, 0.25)
        idx = np.arange(h if edge < 2 else w, dtype=np.float32)
        if edge == 0:
            m = idx[:, None] < prof[None, :]
        elif edge == 1:
            m = (h - 1 - idx)[:, None] < prof[None, :]
        elif edge == 2:
            m = idx[None, :] < prof[:, None]
        else:
            m = (w - 1 - idx)[None, :] < prof[:, None]
        out[m] = level + 0.03 * rng.standard_normal(int(m.sum())).astype(np.float32)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else img


def _salt_pepper(img: np.ndarray, p: float, seed: int) -> np.ndarray:
    """Salt-and-pepper noise by imgaug's SaltAndPepper, imported lazily (its import takes ~1 s)."""
    try:
        import imgaug.augmenters as iaa
    except ImportError:  # same corruption without imgaug
        rng = np.random.default_rng(seed)
        out = img.copy()
        m = rng.random(img.shape) < p
        out[m] = np.where(rng.random(int(m.sum())) < 0.5, 0, 255).astype(np.uint8)
        return out
    return iaa.SaltAndPepper(p, seed=seed).augment_image(img)


def degrade(clean: np.ndarray, rng: np.random.Generator, dpi: int = 100) -> np.ndarray:
    """Damage a clean page with a random mix of scan and paper degradations.

    Each degradation is applied with some probability and random parameters: paper tone and
    grain, crumpled-paper shading, folds, coffee/tea stains, bleed-through of the mirrored
    verso, watermarks, footprints, uneven illumination and scanner shadows, dark borders, ink
    fading and spread, blur, scanner noise, salt-and-pepper and JPEG. Ink is never hidden and
    it absorbs at least ~70 % of the local paper's light, so the text remains readable.

    Args:
        clean: (H, W) uint8 page, 255 = white.
        rng: random generator.
        dpi: nominal resolution of the page; sizes of stains, blur and texture scale with it.

    Returns:
        (H, W) uint8 degraded page.
    """
    h, w = clean.shape
    scale = dpi / 100.0
    ink = (255.0 - clean.astype(np.float32)) / 255.0
    # Ink as scanned: slightly lighter or spread, with toner speckle.
    if rng.random() < 0.3:
        ink = cv2.GaussianBlur(ink, (0, 0), rng.uniform(0.3, 0.7) * scale)
    if rng.random() < 0.25:
        speckle = np.abs(_smooth_noise(rng, h, w, 3 * scale))
        ink = ink * np.clip(1 - rng.uniform(0.1, 0.3) * speckle, 0, 1)
    ink = np.clip(ink * rng.uniform(0.85, 1.0), 0, 1)

    albedo = np.full((h, w), rng.uniform(0.8, 0.98), np.float32)
    albedo *= 1 + rng.uniform(0.005, 0.03) * _smooth_noise(rng, h, w, rng.uniform(1.0, 3.0) * scale)
    darken = np.zeros((h, w), np.float32)
    if rng.random() < 0.35:
        darken = 1 - (1 - darken) * (1 - _stains(rng, h, w, scale))
    if rng.random() < 0.3:
        darken = 1 - (1 - darken) * (1 - _watermark(rng, h, w, scale))
    if rng.random() < 0.15:
        darken = 1 - (1 - darken) * (1 - _footprint(rng, h, w, scale))
    if rng.random() < 0.25:
        # Bleed-through: the verso's ink, mirrored, offset and diffused by the paper.
        shift = (int(rng.integers(-h // 4, h // 4 + 1)), int(rng.integers(-w // 8, w // 8 + 1)))
        verso = np.roll(np.fliplr(ink), shift, (0, 1))
        verso = cv2.GaussianBlur(verso, (0, 0), rng.uniform(0.8, 2.5) * scale)
        darken = 1 - (1 - darken) * (1 - rng.uniform(0.06, 0.25) * verso)
    albedo *= 1 - darken

    shading = np.ones((h, w), np.float32)
    if rng.random() < 0.6:
        shading *= _crumple(rng, h, w, scale)
    if rng.random() < 0.25:
        shading *= _folds(rng, h, w, scale)
    if rng.random() < 0.6:
        shading *= _illumination(rng, h, w, scale)

    paper = albedo * shading
    # Ink absorbs 70-100 % of the light the paper would reflect: text stays readable.
    out = paper * (1 - ink * rng.uniform(0.85, 1.0))
    if rng.random() < 0.2:
        _dark_borders(rng, out, clean, scale)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.1) * scale)
    if rng.random() < 0.7:
        out = out + rng.uniform(0.005, 0.04) * rng.standard_normal((h, w), dtype=np.float32)
    if rng.random() < 0.3:
        out = np.clip(out, 0, 1) ** rng.uniform(0.8, 1.25)
    img = np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.25:
        img = _salt_pepper(img, float(rng.uniform(0.001, 0.02)), int(rng.integers(2**31)))
    if rng.random() < 0.35:
        img = _jpeg(img, int(rng.integers(25, 90)))
    return img


def make_pair(
    seed: int,
    height: int = 420,
    width: int = 540,
    dpi: int = 100,
    bilevel: bool = False,
    display: bool = False,
    photos: Sequence[np.ndarray] | None = None,
    photo_prob: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """One deterministic (dirty, clean) pair.

    Args:
        seed: the pair is a pure function of (seed, height, width, dpi, bilevel).
        height: page height H in pixels.
        width: page width W in pixels.
        dpi: nominal resolution (font sizes, stroke widths, texture scale).
        bilevel: make the clean page strictly black (0) and white (255), like the ground
            truth of archive scans; the dirty page is degraded from it, so its grey edges
            come from blur alone.
        display: also add large/bold type, shapes and sometimes a photo
            (:func:`add_display_content`); off by default so earlier seeds replay unchanged.
        photos: real photographs for the display content's photo (the pair then also
            depends on them); None: a synthetic one.
        photo_prob: P(the display content has a photo).

    Returns:
        (dirty, clean): two (H, W) uint8 arrays, 255 = white.
    """
    key = [int(seed), height, width, dpi, int(bilevel)] + ([1] if display else [])
    rng = np.random.default_rng(np.random.SeedSequence(key))
    clean = render_clean_page(rng, height, width, dpi)
    if display:
        clean, _ = add_display_content(clean, rng, dpi, photos=photos, photo_prob=photo_prob)
    if bilevel:
        clean = np.where(clean < 128, 0, 255).astype(np.uint8)
    dirty = degrade(clean, rng, dpi)
    return dirty, clean


# --------------------------------------------------------------------------------------------
# Training patches
# --------------------------------------------------------------------------------------------


class SyntheticPages:
    """Random (dirty, clean) patches cut from freshly generated pages, unlimited and seeded.

    Works two ways, both torch-free:

    * map-style (``len`` and ``[i]``): item ``i`` is a pure function of ``(seed, epoch, i)``,
      so a fixed validation set is ``SyntheticPages(n, seed=...)``. Items ``i`` that share a page
      (``i // patches_per_page``) reuse one cached render; pass it to a torch ``DataLoader``
      with ``shuffle=False`` (the data is random already) so consecutive indices, which the
      loader sends to the same worker, hit the cache.
    * iterable (``iter``): an endless stream; inside a torch ``DataLoader`` worker the stream
      is seeded by ``(seed, epoch, worker id)`` so workers never repeat each other.

    Call :meth:`set_epoch` before each training epoch for fresh pages (otherwise every epoch
    sees the same ones).

    Each item is ``(dirty, clean)``, two float32 arrays of shape (1, P, P) in [0, 1].

    Args:
        length: number of items in map-style use.
        patch_size: side P of the square patches.
        seed: base seed.
        patches_per_page: patches cut from each generated page (amortises rendering).
        page_sizes: (H, W, dpi) choices for the generated pages, picked at random per page.
            The default mixes Kaggle-like 540-wide pages at 100 DPI with 150 and 300 DPI
            pages of thicker strokes.
        bilevel: probability that a page's clean target is strictly black and white (see
            :func:`make_pair`).
    """

    DEFAULT_PAGE_SIZES: tuple[tuple[int, int, int], ...] = (
        (420, 540, 100),
        (258, 540, 100),
        (512, 512, 150),
        (640, 640, 300),
    )

    def __init__(
        self,
        length: int = 10_000,
        patch_size: int = 128,
        seed: int = 0,
        patches_per_page: int = 8,
        page_sizes: Sequence[tuple[int, int, int]] | None = None,
        bilevel: float = 0.0,
    ) -> None:
        self.length = int(length)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.patches_per_page = max(1, int(patches_per_page))
        self.page_sizes = tuple(tuple(s) for s in (page_sizes or self.DEFAULT_PAGE_SIZES))
        self.bilevel = float(bilevel)
        for h, w, _ in self.page_sizes:
            if h < self.patch_size or w < self.patch_size:
                raise ValueError(f"page size {h}x{w} is smaller than patch_size {self.patch_size}")
        self.epoch = 0
        self._cache: tuple[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Draw other pages from now on: items are functions of (seed, epoch, index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _page(self, stream: int, page_index: int) -> tuple[np.ndarray, np.ndarray]:
        key = (self.epoch, stream, page_index)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, self.epoch, stream, page_index])
        )
        h, w, dpi = self.page_sizes[int(rng.integers(len(self.page_sizes)))]
        bilevel = bool(rng.random() < self.bilevel)
        pair = make_pair(int(rng.integers(2**62)), h, w, dpi, bilevel=bilevel)
        self._cache = (key, pair)
        return pair

    def _crop(
        self, pair: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        dirty, clean = pair
        p = self.patch_size
        h, w = clean.shape
        # Prefer patches with ink: blank paper teaches little. Try a few positions.
        for _ in range(4):
            y, x = int(rng.integers(h - p + 1)), int(rng.integers(w - p + 1))
            c = clean[y : y + p, x : x + p]
            if (c < 128).mean() > 0.01:
                break
        d = dirty[y : y + p, x : x + p]
        return (
            (d.astype(np.float32) / 255.0)[None],
            (c.astype(np.float32) / 255.0)[None],
        )

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        pair = self._page(0, index // self.patches_per_page)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, 1, index]))
        return self._crop(pair, rng)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        worker = 0
        # A DataLoader worker has torch.utils.data loaded; never import torch ourselves.
        torch_data = sys.modules.get("torch.utils.data")
        if torch_data is not None:
            info = torch_data.get_worker_info()
            if info is not None:
                worker = int(info.id)
        stream = 2 + worker
        page_index = 0
        rng = np.random.default_rng(
            np.random.SeedSequence([self.seed, self.epoch, stream, 1 << 40])
        )
        while True:
            pair = self._page(stream, page_index)
            for _ in range(self.patches_per_page):
                yield self._crop(pair, rng)
            page_index += 1


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def write_pairs(
    out: Path, n: int, seed: int, height: int = 420, width: int = 540, dpi: int = 100
) -> list[tuple[Path, Path]]:
    """Write ``n`` pairs as ``{i:05d}_dirty.png`` and ``{i:05d}_clean.png`` under ``out``.

    Args:
        out: output folder (created).
        n: number of pairs.
        seed: pair ``i`` uses seed ``seed + i``.
        height: page height in pixels.
        width: page width in pixels.
        dpi: nominal resolution.

    Returns:
        (dirty path, clean path) for each pair.
    """
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        dirty, clean = make_pair(seed + i, height, width, dpi)
        pd, pc = out / f"{i:05d}_dirty.png", out / f"{i:05d}_clean.png"
        Image.fromarray(dirty).save(pd)
        Image.fromarray(clean).save(pc)
        paths.append((pd, pc))
    return paths


def preview_grid(
    seeds: Sequence[int], height: int = 420, width: int = 540, dpi: int = 100
) -> np.ndarray:
    """One image showing each seed's pair as a row: dirty on the left, clean on the right.

    Args:
        seeds: one row per seed.
        height: page height in pixels.
        width: page width in pixels.
        dpi: nominal resolution.

    Returns:
        (rows * (H + 8), 2 * W + 8) uint8 grid; separators are black.
    """
    rows = []
    for seed in seeds:
        dirty, clean = make_pair(int(seed), height, width, dpi)
        row = np.concatenate([dirty, np.zeros((height, 8), np.uint8), clean], 1)
        rows.append(np.concatenate([row, np.zeros((8, row.shape[1]), np.uint8)]))
    return np.concatenate(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m aepipe.data.synthetic_pages``."""
    ap = argparse.ArgumentParser(description="Write synthetic dirty/clean document page pairs.")
    ap.add_argument("--out", type=Path, help="output folder for the pairs")
    ap.add_argument("--n", type=int, default=16, help="number of pairs")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first pair")
    ap.add_argument("--height", type=int, default=420)
    ap.add_argument("--width", type=int, default=540)
    ap.add_argument("--dpi", type=int, default=100, help="nominal DPI (font and stroke size)")
    ap.add_argument(
        "--preview", type=Path, help="also write a PNG grid of 4 pairs (seeds seed..seed+3)"
    )
    args = ap.parse_args(argv)
    if args.out is None and args.preview is None:
        ap.error("give --out and/or --preview")
    if args.preview is not None:
        args.preview.parent.mkdir(parents=True, exist_ok=True)
        grid = preview_grid(range(args.seed, args.seed + 4), args.height, args.width, args.dpi)
        Image.fromarray(grid).save(args.preview)
        sys.stdout.write(f"wrote preview {args.preview}\n")
    if args.out is None:
        return 0
    paths = write_pairs(args.out, args.n, args.seed, args.height, args.width, args.dpi)
    sys.stdout.write(f"wrote {len(paths)} pairs to {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
