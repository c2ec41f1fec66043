"""Clean the scanned images of a PDF inside the PDF: everything but their pixels stays as it was.

:func:`edit_pdf` opens a PDF with pikepdf, finds on each page the one image that is the page's
scan (an image XObject whose placement covers most of the page), decodes it at its own pixel
grid, runs a caller-supplied ``process(batch) -> batch`` on it and writes the result back into
the *same* image object. Content streams, fonts, the text layer of an OCRed scan, annotations,
links, form fields, outlines, structure tags, page boxes, ``/Rotate`` and metadata are not
touched, but for the modification date, which becomes the edit's. Pages without a scanned image
(born-digital pages) pass through unchanged. A mixed-raster page (a background image under text
stencils, as MRC compressors write) is cleaned layer by layer in place (see
:func:`_mixed_raster`). A page that cannot be edited in place (a scan cut into tiles, other
stacks of full-page images, an inline image, a scan with a colour-key mask) takes the render
fallback: it is rendered at its finest image's own resolution, cleaned, and the cleaned
rendering becomes its only picture, with the page's text kept over it as an invisible text layer
(``fallback="report"`` leaves such pages unchanged instead). Each page gets a
:class:`PageOutcome` for a report.

Types are kept: a bilevel image (1 bit, an image mask, or a gray image of only black and white)
comes back bilevel and is stored as CCITT G4 (through Pillow's libtiff encoder) or as Flate of
its packed bits, whichever is smaller, and so does any result of only black and white
(``--binarize``); gray stays gray (Flate with the PNG predictor, or JPEG: see
:attr:`PdfEditOptions.jpeg_quality`); colour follows :attr:`PdfEditOptions.color`, and an
indexed image stays indexed. An image that comes back the same (status ``"unchanged"``) is not
re-encoded at all: a clean JBIG2 page stays JBIG2. Images are decoded by pdfium (the renderer
aepipe already uses), which reads every PDF image codec: CCITT, JBIG2 with global segments,
JPEG, JPEG 2000, Flate, and gray, RGB, CMYK, ICC, indexed and DeviceN colour.

pdfium decodes a damaged stream without a word, so the images that make up a scanned page are
checked first (:func:`check_image`): a cut JPEG, bad or short Flate data, a cut JPEG 2000
codestream or an unknown filter fails the file with a one-line reason naming the page, as a
damaged image file fails, whether the page would be edited, rendered or kept unchanged.

Every image's pixel count is checked against ``max_pixels`` from its dictionary before it is
decoded (and every rendering's before it is rendered); Pillow's own limit is raised to match
only while the encoder runs, then put back (a process-wide setting: not thread-safe).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import shutil
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from aepipe.batch import ImageBatch, to_gray
from aepipe.defaults import DEFAULT_MAX_PIXELS
from aepipe.errors import InputImageError, ShapeError, TooManyPagesError
from aepipe.io import _why, atomic_write, check_pixels
from aepipe.models import LUMA_WEIGHTS

if TYPE_CHECKING:
    import pikepdf
    import torch

Status = Literal["edited", "unchanged", "passed", "rendered", "fallback"]
Kind = Literal["bilevel", "gray", "color", ""]
Matrix = tuple[float, float, float, float, float, float]
_IDENTITY: Matrix = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
_MAX_FORM_DEPTH = 4


@dataclass(frozen=True)
class PdfEditOptions:
    """How :func:`edit_pdf` chooses, decodes and stores page images.

    Attributes:
        max_pixels: refuse (with :class:`InputImageError`) any image with more pixels than this,
            before decoding it.
        min_coverage: an image counts as a page's scan when its placement covers at least this
            fraction of the page's visible area (CropBox).
        born_digital: ``"keep"`` passes pages without a scanned image through unchanged;
            ``"fallback"`` reports them as needing the render fallback (to clean them anyway).
        jpeg_quality: store gray and colour results as JPEG at this quality (1-95); ``None``
            stores them losslessly (Flate); ``"auto"`` stores losslessly what was stored
            losslessly, and lossy what was stored lossy: a JPEG source as JPEG with its own
            quantisation tables (the same quality), a JPEG 2000 one as JPEG 2000 at the
            source's own compression ratio (the same bytes per pixel).
        color: ``"auto"`` keeps a colour image in colour only where it has coloured ink
            (:func:`aepipe.batch.coloured_ink`: chroma, max - min of R, G, B, over
            ``color_chroma`` where the cleaned gray kept ink, or strong colour anywhere, in
            more than ``color_fraction`` of the pixels); such pixels keep their input colour,
            so light coloured ink never becomes paper, while a brownish stain the cleaning
            removed goes. Without coloured ink the result is stored gray. ``"keep"`` always
            keeps colour (with the same rule), ``"gray"`` always stores gray. A stage that
            returns colour itself (a colorizer, ``keep_color``) is stored as it returned; a
            binarizing stage's pages are stored gray whatever this says.
        color_chroma: chroma in [0, 1] above which a pixel is coloured ink.
        color_fraction: fraction of coloured pixels above which an image has coloured ink.
        threshold: cut in [0, 1] that turns the result of a bilevel image back into 1 bit.
        fallback: for a page that cannot be edited in place, ``"render"`` renders it (at
            ``dpi``, or its scan's own resolution), cleans the rendering and makes it the page's
            picture, keeping the page's text as an invisible text layer over it (status
            ``"rendered"``); ``"report"`` leaves it unchanged (status ``"fallback"``).
        dpi: resolution of the render fallback; None: the page's largest image's own.
        max_pages: refuse (with :class:`TooManyPagesError`) a PDF with more pages than this.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    min_coverage: float = 0.5
    born_digital: Literal["keep", "fallback"] = "keep"
    jpeg_quality: int | Literal["auto"] | None = "auto"
    color: Literal["auto", "keep", "gray"] = "auto"
    color_chroma: float = 0.2
    color_fraction: float = 0.0005
    threshold: float = 0.5
    fallback: Literal["render", "report"] = "render"
    dpi: float | None = None
    max_pages: int | None = None

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1; got {self.max_pixels}")
        if not 0.0 < self.min_coverage <= 1.0:
            raise ValueError(f"min_coverage must be in (0, 1]; got {self.min_coverage}")
        if isinstance(self.jpeg_quality, int) and not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be 1..95; got {self.jpeg_quality}")


@dataclass(frozen=True)
class PageOutcome:
    """What :func:`edit_pdf` did with one page (one row of a ``--report``).

    Attributes:
        page: page number, 1-based.
        status: ``"edited"`` (its scan was cleaned in place), ``"unchanged"`` (its scan, or
            the rendering of a page that needs the render fallback, was cleaned and came back
            the same: the same bits for a bilevel scan, the same 8-bit values otherwise; the
            page keeps its own bytes), ``"passed"`` (left unchanged: no
            scanned image), ``"rendered"`` (the render fallback: its rendering cleaned, text kept
            invisible over it) or ``"fallback"`` (left unchanged: needs rendering to be
            cleaned, and ``fallback="report"``).
        reason: why, in words.
        kind: the scan's type, ``"bilevel"``, ``"gray"`` or ``"color"`` (empty if none).
        size: the scan's (W, H) in pixels, kept as it was.
        dpi: the scan's resolution on the page, along its width and its height.
        codec_in: the scan's filters before, e.g. ``"JBIG2Decode"``; on a mixed-raster page,
            the background's and then each text stencil's, comma-separated.
        codec_out: its filter after, e.g. ``"CCITTFaxDecode"`` (the same for each layer).
        bytes_in: encoded size of the scan before (of all its layers).
        bytes_out: encoded size after.
        stored_as: ``"bilevel"``, ``"gray"`` or ``"color"``: the type written back.
    """

    page: int
    status: Status
    reason: str
    kind: Kind = ""
    size: tuple[int, int] | None = None
    dpi: tuple[float, float] | None = None
    codec_in: str = ""
    codec_out: str = ""
    bytes_in: int = 0
    bytes_out: int = 0
    stored_as: Kind = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class _Placement:
    """One image drawn on a page: its object, resource name and transform to page space."""

    name: str
    obj: Any  # pikepdf.Stream, or None for an inline image
    ctm: Matrix
    inline: bool = False
    coverage: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# ---- geometry ------------------------------------------------------------------------------


def _mul(m: Matrix, n: Matrix) -> Matrix:
    """``m`` then ``n`` (PDF row-vector convention: ``m x n``)."""
    a, b, c, d, e, f = m
    A, B, C, D, E, F = n
    return (
        a * A + b * C,
        a * B + b * D,
        c * A + d * C,
        c * B + d * D,
        e * A + f * C + E,
        e * B + f * D + F,
    )


def _bbox(m: Matrix) -> tuple[float, float, float, float]:
    """Bounding box in page space of the unit square under ``m``."""
    pts = [(x * m[0] + y * m[2] + m[4], x * m[1] + y * m[3] + m[5]) for x in (0, 1) for y in (0, 1)]
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def _coverage(m: Matrix, box: tuple[float, float, float, float]) -> float:
    """Fraction of ``box`` covered by the unit square placed by ``m``."""
    x0, y0, x1, y1 = _bbox(m)
    w = max(0.0, min(x1, box[2]) - max(x0, box[0]))
    h = max(0.0, min(y1, box[3]) - max(y0, box[1]))
    area = max((box[2] - box[0]) * (box[3] - box[1]), 1e-9)
    return w * h / area


def _page_box(page: pikepdf.Page) -> tuple[float, float, float, float]:
    box = [float(v) for v in page.cropbox]
    return min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])


def _orientation(m: Matrix, rotate: int) -> tuple[bool, bool, bool]:
    """How to turn the stored pixels upright as displayed: (transpose, flip rows, flip cols).

    Applied in that order to an (H, W) grid; the image's columns run along ``(a, b)`` in page
    space and its rows (top to bottom) along ``(-c, -d)``; ``/Rotate`` turns the page clockwise.
    """
    cols, rows = (m[0], m[1]), (-m[2], -m[3])
    for _ in range((rotate // 90) % 4):
        cols, rows = (cols[1], -cols[0]), (rows[1], -rows[0])
    # Screen space: x right, y down.
    cols, rows = (cols[0], -cols[1]), (rows[0], -rows[1])
    transpose = abs(cols[1]) > abs(cols[0])
    if transpose:
        return True, cols[1] < 0, rows[0] < 0
    return False, rows[1] < 0, cols[0] < 0


def _dpi(m: Matrix, w: int, h: int) -> tuple[float, float]:
    """Pixels per inch of a ``w`` x ``h`` image placed by ``m``, along its columns and rows."""
    col_in, row_in = math.hypot(m[0], m[1]) / 72.0, math.hypot(m[2], m[3]) / 72.0
    return round(w / max(col_in, 1e-9), 2), round(h / max(row_in, 1e-9), 2)


def _upright(images: torch.Tensor, turn: tuple[bool, bool, bool]) -> torch.Tensor:
    transpose, flip_rows, flip_cols = turn
    out = images.transpose(-1, -2) if transpose else images
    dims = [d for d, on in ((-2, flip_rows), (-1, flip_cols)) if on]
    return out.flip(dims) if dims else out


def _stored(images: torch.Tensor, turn: tuple[bool, bool, bool]) -> torch.Tensor:
    transpose, flip_rows, flip_cols = turn
    dims = [d for d, on in ((-2, flip_rows), (-1, flip_cols)) if on]
    out = images.flip(dims) if dims else images
    return out.transpose(-1, -2).contiguous() if transpose else out.contiguous()


# ---- finding the page's images -------------------------------------------------------------


def _resources(page: pikepdf.Page) -> Any:
    """The page's /Resources, inherited from the page tree if the page has none."""
    node: Any = page.obj
    for _ in range(64):
        if node is None:
            break
        if "/Resources" in node:
            return node.Resources
        node = node.get("/Parent")
    return None


def _placements(
    pdf_content: Any, resources: Any, ctm: Matrix, depth: int = 0
) -> Iterator[_Placement]:
    """Every image drawn by a content stream (and the forms it draws), with its placement."""
    import pikepdf

    stack: list[Matrix] = []
    xobjects = resources.get("/XObject") if resources is not None else None
    for operands, op in pikepdf.parse_content_stream(pdf_content):
        name = str(op)
        if name == "q":
            stack.append(ctm)
        elif name == "Q" and stack:
            ctm = stack.pop()
        elif name == "cm" and len(operands) == 6:
            ctm = _mul(tuple(float(v) for v in operands), ctm)  # type: ignore[arg-type]
        elif name == "INLINE IMAGE":
            yield _Placement("inline", None, ctm, inline=True)
        elif name == "Do" and xobjects is not None and str(operands[0]) in xobjects:
            key = str(operands[0])
            xobj = xobjects[key]
            subtype = str(xobj.get("/Subtype", ""))
            if subtype == "/Image":
                yield _Placement(key, xobj, ctm)
            elif subtype == "/Form" and depth < _MAX_FORM_DEPTH:
                matrix = tuple(float(v) for v in xobj.get("/Matrix", _IDENTITY))
                inner = xobj.get("/Resources", resources)
                yield from _placements(xobj, inner, _mul(matrix, ctm), depth + 1)  # type: ignore[arg-type]


@dataclass
class _Plan:
    """A page's plan: its scan ``target`` and, on a mixed-raster page, its text ``stencils``."""

    status: Status
    reason: str
    target: _Placement | None = None
    stencils: list[_Placement] = field(default_factory=list)


def _found(page: pikepdf.Page) -> list[_Placement]:
    """Every image drawn on ``page``, with the share of the page it covers."""
    if "/Contents" not in page.obj:
        return []
    box = _page_box(page)
    found = list(_placements(page, _resources(page), _IDENTITY))
    for item in found:
        item.coverage = _coverage(item.ctm, box)
    return found


def _scan_parts(found: list[_Placement], min_coverage: float) -> list[Any]:
    """The image objects that make up a scanned page's picture: those to check for damage.

    On a page whose images cover at least ``min_coverage`` of it together: each image that
    covers at least ``_PIECE_COVERAGE`` (the scan, its tiles or strips, a mixed-raster page's
    layers, a photo pasted on it). Inline images are not checked.
    """
    if sum(p.coverage for p in found) < min_coverage:
        return []
    parts = {}  # an image drawn twice is checked once
    for item in found:
        if not item.inline and item.coverage >= _PIECE_COVERAGE:
            parts.setdefault(item.obj.objgen, item.obj)
    return list(parts.values())


def check_page_scans(where: str, page: pikepdf.Page, seen: set[tuple[int, int]]) -> None:
    """Refuse a page whose scan images do not decode completely (see :func:`check_image`).

    For a reader that renders the page with pdfium, which draws a damaged image without a word.
    A page whose content cannot be parsed is left to the renderer. ``seen``: the images of the
    document checked so far (an image drawn on many pages is checked once), updated.

    Raises:
        InputImageError: naming ``where`` and the damage.
    """
    try:
        found = _found(page)
    except Exception:
        return
    for obj in _scan_parts(found, PdfEditOptions.min_coverage):
        if obj.objgen not in seen:
            check_image(where, obj)
            seen.add(obj.objgen)


def _plan_page(page: pikepdf.Page, found: list[_Placement], options: PdfEditOptions) -> _Plan:
    """Which image of a page is its scan, or why the page passes or falls back.

    ``found``: the page's images (:func:`_found`).
    """
    import pikepdf

    if "/Contents" not in page.obj:
        return _born_digital(options, "no content")
    large = [p for p in found if p.coverage >= options.min_coverage]
    # For the render fallback: the image with the most pixels sets the codec of the rendering.
    finest = max(
        (p for p in found if not p.inline),
        key=lambda p: int(p.obj.get("/Width", 0)) * int(p.obj.get("/Height", 0)),
        default=None,
    )
    if not large:
        total = sum(p.coverage for p in found)
        if len(found) > 1 and total >= options.min_coverage:
            return _Plan("fallback", f"scan split into {len(found)} images (tiles)", finest)
        return _born_digital(options, "no scanned image (born-digital page)")
    if len(large) > 1:
        stencils = _mixed_raster(large)
        if stencils is not None:
            reason = (
                f"mixed raster page: its background and {len(stencils)} text stencil(s) processed "
                "in place, foreground colours kept"
            )
            return _Plan("edited", reason, large[0], stencils)
        reason = f"{len(large)} stacked page-size images (mixed raster content)"
        return _Plan("fallback", reason, finest)
    pieces = _more_of_the_scan(large[0], found)
    if pieces:
        # Cleaning the largest piece alone would leave the others dirty.
        return _Plan("fallback", f"scan split into {pieces + 1} images (strips)", finest)
    if large[0].inline:
        return _Plan("fallback", "the scan is an inline image")
    if "/Mask" in large[0].obj and not isinstance(large[0].obj.Mask, pikepdf.Stream):
        # Its colours decide what shows through: cleaned colours would show something else
        # (and a colour key for RGB is invalid for an image stored gray).
        return _Plan("fallback", "the scan has a colour-key mask", large[0])
    return _Plan("edited", "scan processed in place", large[0])


def _more_of_the_scan(scan: _Placement, found: list[_Placement]) -> int:
    """How many other images of a page look like more of its scan.

    A piece is a strip or tile of at least ``_PIECE_COVERAGE`` of the page at the scan's
    resolution (within 2%); a logo or photo pasted on a scan is smaller or of another
    resolution, and stays as it is.
    """
    if scan.inline:
        return 0
    dpi = max(_dpi(scan.ctm, int(scan.obj.get("/Width", 0)), int(scan.obj.get("/Height", 0))))
    n = 0
    for item in found:
        if item is scan or item.inline or item.coverage < _PIECE_COVERAGE:
            continue
        if bool(item.obj.get("/ImageMask", False)):
            continue
        w, h = int(item.obj.get("/Width", 0)), int(item.obj.get("/Height", 0))
        n += abs(max(_dpi(item.ctm, w, h)) - dpi) <= 0.02 * dpi
    return n


# Smallest share of the page a second piece of a scan covers for the page to count as split.
_PIECE_COVERAGE = 0.05


def _mixed_raster(large: list[_Placement]) -> list[_Placement] | None:
    """The text stencils of a mixed-raster (MRC) page drawn as ``large``, or None if it is not.

    Such a page (what DjVu-style and MRC scan compressors write) draws one plain background
    image, then its text as 1-bit stencils at a finer resolution: image masks painted in one
    colour, or colour images cut out by a stencil ``/Mask``. The background is the scan's
    paper and pictures, the stencils its ink: each is cleaned at its own pixel grid (the
    stencils as bilevel scans), and a foreground's colours are kept (they only tint the ink).
    Other stacks (several plain images, soft masks, colour-key masks) are rendered instead.
    """
    import pikepdf

    base, *rest = large
    if any(p.inline for p in large) or not rest or _masked(base.obj):
        return None
    stencils = []
    for item in rest:
        mask = item.obj.get("/Mask")
        if bool(item.obj.get("/ImageMask", False)):
            stencils.append(item)
        elif (
            isinstance(mask, pikepdf.Stream)
            and bool(mask.get("/ImageMask", False))
            and "/SMask" not in item.obj
        ):
            stencils.append(_Placement(f"{item.name}/Mask", mask, item.ctm))
        else:
            return None
    return stencils


def _masked(obj: Any) -> bool:
    """Whether image ``obj`` is a stencil or has a mask of any kind."""
    return bool(obj.get("/ImageMask", False)) or "/Mask" in obj or "/SMask" in obj


def _born_digital(options: PdfEditOptions, reason: str) -> _Plan:
    if options.born_digital == "fallback":
        return _Plan("fallback", f"{reason}; rendering asked for")
    return _Plan("passed", reason)


# ---- decoding ------------------------------------------------------------------------------


def _filters(obj: Any) -> list[str]:
    import pikepdf

    f = obj.get("/Filter")
    if f is None:
        return []
    items = list(f) if isinstance(f, pikepdf.Array) else [f]
    return [str(x).lstrip("/") for x in items]


# ---- damaged images ------------------------------------------------------------------------

# pdfium decodes a damaged stream without a word (a cut JPEG ends in gray, bad Flate data
# gives black), so a scan's stream is checked before it is cleaned or rendered: it must decode
# completely, as an image file must (Pillow refuses a truncated one). Filters by name, with
# the short names of inline images; the codecs are the last filter, decoded by pdfium.
_GENERAL = {
    **dict.fromkeys(("FlateDecode", "Fl"), "Flate"),
    **dict.fromkeys(("LZWDecode", "LZW"), "LZW"),
    **dict.fromkeys(("RunLengthDecode", "RL"), "RunLength"),
    **dict.fromkeys(("ASCIIHexDecode", "AHx"), "ASCIIHex"),
    **dict.fromkeys(("ASCII85Decode", "A85"), "ASCII85"),
}
_CODECS = {
    **dict.fromkeys(("DCTDecode", "DCT"), "JPEG"),
    "JPXDecode": "JPEG 2000",
    **dict.fromkeys(("CCITTFaxDecode", "CCF"), "CCITT"),
    "JBIG2Decode": "JBIG2",
}
_COMPONENTS = {
    **dict.fromkeys(("/DeviceGray", "/CalGray", "/Indexed", "/Separation", "/G", "/I"), 1),
    **dict.fromkeys(("/DeviceRGB", "/CalRGB", "/Lab", "/RGB"), 3),
    **dict.fromkeys(("/DeviceCMYK", "/CMYK"), 4),
}


def check_image(where: str, obj: Any) -> None:
    """Refuse image XObject ``obj`` if its stream does not decode completely.

    Raises:
        InputImageError: one line naming ``where`` and the damage, e.g. ``truncated JPEG
            data`` or an unknown filter.
    """
    problem = _damage(obj)
    if problem is not None:
        raise InputImageError(f"{where}: its scan image {problem}; nothing written for this file")


def _damage(obj: Any) -> str | None:
    """Why ``obj``'s stream does not decode completely (``"is damaged (...)"``), or None.

    JPEG is decoded by Pillow (at an eighth of its size: every coded byte is still read), a
    JPEG 2000 codestream must be whole (its end marker), Flate, LZW and RunLength data must
    give every pixel's bytes. CCITT and JBIG2 data is not checked (their decoders, libtiff's
    and pdfium's, take any data without a word), nor are inline images.
    """
    import pikepdf

    filters = _filters(obj)
    unknown = [f for f in filters if f not in _GENERAL and f not in _CODECS and f != "Crypt"]
    if unknown:
        return f"cannot be decoded (unknown filter /{unknown[0]})"
    codec = _CODECS.get(filters[-1]) if filters else None
    words = " and ".join(_GENERAL[f] for f in filters if f in _GENERAL) or "image"
    expected = None if codec is not None else _raw_size(obj)
    try:
        if filters in (["FlateDecode"], ["Fl"]) and expected is not None:
            # Counted, not kept: a page's worth of pixels (or a bomb's) never sits in memory.
            size, expected = _flate_size(obj, expected)
        else:
            data = _general_bytes(obj, filters, codec is not None)
            size = len(data)
    except (pikepdf.DataDecodingError, zlib.error) as exc:
        # qpdf's and zlib's messages name the file, the object or the code: the last part says why.
        return f"is damaged (corrupt {words} data: {_why(exc).rsplit(': ', 1)[-1]})"
    except Exception:  # a filter qpdf does not take (a predictor): pdfium's to decode
        return None
    if codec == "JPEG":
        return _jpeg_damage(data)
    if codec == "JPEG 2000":
        return None if _jpx_whole(data) else "is damaged (truncated JPEG 2000 data)"
    if expected is not None and size < expected:
        return f"is damaged (truncated {words} data: {size} of {expected} bytes)"
    return None


def _flate_size(obj: Any, samples: int) -> tuple[int, int]:
    """(bytes ``obj``'s Flate data inflates to, up to enough; bytes it must give).

    ``samples``: the image's sample bytes; a PNG predictor adds a byte to every row.
    """
    import pikepdf

    parms = obj.get("/DecodeParms")
    if isinstance(parms, pikepdf.Array):  # (one filter's parameters may come in an array)
        parms = parms[0] if len(parms) else None
    predictor = int(parms.get("/Predictor", 1)) if isinstance(parms, pikepdf.Dictionary) else 1
    enough = samples + (int(obj.get("/Height", 0)) if predictor >= 10 else 0)
    inflater, size, data = zlib.decompressobj(), 0, obj.read_raw_bytes()
    while size < enough and not inflater.eof:
        out = inflater.decompress(data, 1 << 20)
        if not out:
            break
        size, data = size + len(out), inflater.unconsumed_tail
    return size, enough


def _general_bytes(obj: Any, filters: list[str], keep_codec: bool) -> bytes:
    """``obj``'s data with its general filters (Flate, LZW, ...) undone, but not its codec's."""
    import pikepdf

    if not keep_codec:
        return bytes(obj.read_bytes(pikepdf.StreamDecodeLevel.specialized))
    if len(filters) == 1:
        return bytes(obj.read_raw_bytes())
    # (A JPEG under Flate: read_bytes refuses a stream whose last filter it cannot decode, so
    # a copy with only the general filters is decoded.)
    one = pikepdf.new()
    copy = one.make_stream(obj.read_raw_bytes())
    copy.Filter = pikepdf.Array([pikepdf.Name("/" + f) for f in filters[:-1]])
    parms = obj.get("/DecodeParms")
    if isinstance(parms, pikepdf.Array):
        copy.DecodeParms = pikepdf.Array([one.copy_foreign(p) for p in list(parms)[:-1]])
    return bytes(copy.read_bytes(pikepdf.StreamDecodeLevel.specialized))


def _raw_size(obj: Any) -> int | None:
    """Bytes of the image's samples, rows padded to a byte; None where the colours are unknown."""
    import pikepdf

    w, h = int(obj.get("/Width", 0)), int(obj.get("/Height", 0))
    if bool(obj.get("/ImageMask", False)):
        return (w + 7) // 8 * h
    cs, bpc = obj.get("/ColorSpace"), int(obj.get("/BitsPerComponent", 0))
    if isinstance(cs, pikepdf.Array) and len(cs) > 1:
        family = str(cs[0])
        if family == "/ICCBased":
            channels = int(cs[1].get("/N", 0))
        elif family == "/DeviceN":
            channels = len(cs[1])
        else:
            channels = _COMPONENTS.get(family, 0)
    else:
        channels = _COMPONENTS.get(str(cs[0] if isinstance(cs, pikepdf.Array) else cs), 0)
    if channels < 1 or bpc < 1:
        return None
    return (w * channels * bpc + 7) // 8 * h


def _jpeg_damage(data: bytes) -> str | None:
    """Why JPEG ``data`` does not decode completely, as Pillow reads a JPEG file; or None.

    Only damage counts: a JPEG Pillow does not read (12 bits, lossless) is left to pdfium.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                # libjpeg's scaled decoding: each coded byte is read, an eighth of the pixels
                # are made.
                image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
    except UnidentifiedImageError:  # (Pillow reads every kind of JPEG header: this one is cut)
        return (
            "is damaged (corrupt JPEG data)"
            if data[:2] == b"\xff\xd8"
            else "is damaged (not JPEG data)"
        )
    except OSError as exc:
        if "truncated" in str(exc).lower():  # ("Truncated File Read": cut in its header)
            return "is damaged (truncated JPEG data)"
        if "broken data stream" in str(exc):
            return "is damaged (corrupt JPEG data)"
        return None
    except Exception:  # Pillow's limits or a feature it lacks: not damage
        return None
    return None


def _jpx_whole(data: bytes) -> bool:
    """Whether JPEG 2000 ``data`` (a JP2 file or a bare codestream) holds its whole codestream.

    A cut codestream lacks its end marker (EOC); a cut JP2 file also its codestream box's end.
    """
    code = data
    if data[4:8] == b"jP  ":
        pos, code = 0, b""
        while pos + 8 <= len(data):
            size, head = int.from_bytes(data[pos : pos + 4], "big"), 8
            kind = data[pos + 4 : pos + 8]
            if size == 1:
                size, head = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
            elif size == 0:
                size = len(data) - pos
            if size < head:
                return True  # not a box layout we know: pdfium's to decode
            if kind == b"jp2c":
                code = data[pos + head : pos + size] if pos + size <= len(data) else b""
                break
            pos += size
    elif data[:2] != b"\xff\x4f":
        return True  # not JPEG 2000 at all: pdfium's to decode
    return code.rstrip(b"\0\r\n\t ").endswith(b"\xff\xd9")


def _check_size(where: str, obj: Any, max_pixels: int) -> tuple[int, int]:
    w, h = int(obj.get("/Width", 0)), int(obj.get("/Height", 0))
    # A colour page needs nearly twice the memory of a gray one (check_pixels); anything but
    # a mask, 1-bit or DeviceGray image is counted as colour.
    gray = obj.get("/ImageMask", False) or int(obj.get("/BitsPerComponent", 8)) == 1
    gray = gray or str(obj.get("/ColorSpace", "")) == "/DeviceGray"
    check_pixels(where, w, h, max_pixels, channels=1 if gray else 3)
    return w, h


def _decode(obj: Any, w: int, h: int) -> np.ndarray:
    """The image's pixels as drawn (HW1 gray or HW3 RGB uint8), decoded by pdfium.

    The image is copied alone into a one-page PDF, the page exactly its pixel grid, so pdfium
    decodes it with its whole colour handling (Decode arrays, ICC, CMYK, DeviceN, JBIG2
    globals). An image mask is rendered (ink black on white) since it has no colours of its own.
    """
    import pikepdf
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    one = pikepdf.new()
    image = one.copy_foreign(obj)
    if "/SMask" in image:
        del image["/SMask"]  # the base colours are cleaned; the soft mask stays in the source
    resources = pikepdf.Dictionary(XObject=pikepdf.Dictionary(Im0=image))
    content = one.make_stream(f"q {w} 0 0 {h} 0 0 cm /Im0 Do Q".encode())
    one.pages.append(
        pikepdf.Page(
            pikepdf.Dictionary(
                Type=pikepdf.Name.Page,
                MediaBox=[0, 0, w, h],
                Resources=resources,
                Contents=content,
            )
        )
    )
    buf = io.BytesIO()
    one.save(buf)
    doc = pdfium.PdfDocument(buf.getvalue())
    try:
        page = doc[0]
        if bool(obj.get("/ImageMask", False)):
            bitmap = page.render(scale=1.0, grayscale=True)
            arr = np.array(bitmap.to_numpy(), copy=True)
            bitmap.close()
        else:
            item = next(iter(page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE])))
            # pdfium owns this bitmap (closing it by hand makes pypdfium2 print a warning).
            arr = np.array(item.get_bitmap(render=False).to_numpy(), copy=True)
        page.close()
    finally:
        doc.close()
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.shape[-1] >= 3:
        # pdfium's bitmaps are BGR(x); a page rendered gray still comes as BGR on some builds.
        arr = arr[..., 2::-1]
        if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
            arr = arr[..., :1]
    if arr.shape[:2] != (h, w):
        raise InputImageError(f"decoded {arr.shape[1]}x{arr.shape[0]}, expected {w}x{h}")
    return np.ascontiguousarray(arr)


# ---- encoding ------------------------------------------------------------------------------


@contextlib.contextmanager
def _pil_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb limit at least ``max_pixels`` here, its warnings quiet.

    :func:`aepipe.io.pil_pixel_limit`: thread-safe, the old limit put back.
    """
    from aepipe.io import pil_pixel_limit

    with pil_pixel_limit(max_pixels), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _g4(bits: Any) -> bytes:
    """CCITT G4 data of a mode "1" image (one strip), through Pillow's libtiff encoder."""
    from PIL import Image

    buf = io.BytesIO()
    bits.save(buf, format="TIFF", compression="group4", tiffinfo={278: bits.height})
    buf.seek(0)
    with Image.open(buf) as tif:
        offsets, counts = tif.tag_v2[273], tif.tag_v2[279]
    data = buf.getvalue()
    return b"".join(data[o : o + n] for o, n in zip(offsets, counts, strict=True))


def _flate_png(image: Any) -> tuple[bytes, int]:
    """Flate data with the PNG predictor (PNG's own filtered IDAT stream) and its colours.

    ``image`` is 8-bit: mode L, RGB or P (palette indices).
    """
    import struct

    buf = io.BytesIO()
    if image.mode == "P":
        # Pillow packs the indices of a palette of up to 16 colours into 1, 2 or 4 bits:
        # a full palette keeps them 8-bit, as the PDF's BitsPerComponent says.
        palette = image.getpalette("RGB") or []
        image = image.copy()
        image.putpalette(palette + [0] * (768 - len(palette)))
    image.save(buf, format="PNG", compress_level=9)
    png, pos, idat = buf.getvalue(), 8, []
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        if png[pos + 4 : pos + 8] == b"IDAT":
            idat.append(png[pos + 8 : pos + 8 + length])
        pos += 12 + length
    return b"".join(idat), 3 if image.mode == "RGB" else 1


def _jpeg_settings(obj: Any, options: PdfEditOptions) -> dict[str, Any] | None:
    """Pillow JPEG save arguments for a gray or colour result, or None to store it as Flate."""
    import pikepdf
    from PIL import Image

    if options.jpeg_quality != "auto":
        return None if options.jpeg_quality is None else {"quality": options.jpeg_quality}
    filters = _filters(obj)
    if "JPXDecode" in filters:
        if not _jpx_encoder():
            return {"quality": 85}
        return {"jpx_bytes": len(obj.read_raw_bytes())}
    if "DCTDecode" not in filters:
        return None
    try:
        # The JPEG file inside, with any Flate over it undone (read_bytes refuses a stream whose
        # last filter it cannot decode, so it would never reach the tables).
        buf = io.BytesIO()
        is_jpeg = pikepdf.PdfImage(obj).extract_to(stream=buf) == ".jpg"
        with Image.open(io.BytesIO(buf.getvalue())) as src:
            tables = (getattr(src, "quantization", None) or {}) if is_jpeg else {}
    except Exception:
        tables = {}
    if not tables:
        return {"quality": 85}
    return {"qtables": [tables[k] for k in sorted(tables)]}


def _jpx_encoder() -> bool:
    """Whether this Pillow can write JPEG 2000 (its wheels bundle OpenJPEG)."""
    from PIL import features

    return bool(features.check("jpg_2000"))


def _jpx(image: Any, source_bytes: int) -> bytes:
    """``image`` as a JPEG 2000 file about ``source_bytes`` long (the source's own ratio)."""
    bands = len(image.getbands())
    rate = max(1.0, image.width * image.height * bands / max(source_bytes, 1))
    buf = io.BytesIO()
    image.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[rate])
    return buf.getvalue()


def _write_bilevel(obj: Any, bits: Any, mask: bool) -> str:
    """Store mode "1" ``bits`` in ``obj`` as CCITT G4 or Flate, whichever is smaller.

    G4 wins on text; Flate of the packed rows on fine regular patterns (dithered or halftoned
    pictures, where G4 codes every run and can grow past the raw bits). Both are lossless.
    """
    import pikepdf

    g4, packed = _g4(bits), zlib.compress(bits.tobytes(), 9)
    if not mask:
        obj.ColorSpace = pikepdf.Name.DeviceGray
    obj.BitsPerComponent = 1
    # Either way the samples decode as Pillow's bits, 1 = white and 0 = ink: what DeviceGray
    # shows, and what a stencil paints (its 0 samples, with its default Decode).
    if len(packed) < len(g4):
        obj.write(packed, filter=pikepdf.Name.FlateDecode, type_check=False)
        return "FlateDecode"
    # Pillow's libtiff writes mode "1" as min-is-black, so G4 codes white as 1 bits, what the
    # CCITT decoder calls black: it is told so (BlackIs1) to give back 1 for white.
    parms = pikepdf.Dictionary(K=-1, Columns=bits.width, Rows=bits.height, BlackIs1=True)
    obj.write(g4, filter=pikepdf.Name.CCITTFaxDecode, decode_parms=parms, type_check=False)
    return "CCITTFaxDecode"


def _write_image(obj: Any, image: Any, kind: Kind, mask: bool, jpeg: dict[str, Any] | None) -> str:
    """Replace the pixels of image XObject ``obj`` with PIL ``image``; returns the filter."""
    import pikepdf

    for key in ("/Decode", "/DecodeParms", "/Filter", "/Intent"):
        if key in obj:
            del obj[key]
    w = image.width
    if kind == "bilevel":
        return _write_bilevel(obj, image, mask)
    if image.mode == "P":
        palette = bytes(image.getpalette("RGB") or b"")
        colours = max(1, len(palette) // 3)
        obj.ColorSpace = pikepdf.Array(
            [pikepdf.Name.Indexed, pikepdf.Name.DeviceRGB, colours - 1, pikepdf.String(palette)]
        )
    else:
        obj.ColorSpace = pikepdf.Name.DeviceGray if image.mode == "L" else pikepdf.Name.DeviceRGB
    obj.BitsPerComponent = 8
    if jpeg is not None and "jpx_bytes" in jpeg:
        obj.write(_jpx(image, jpeg["jpx_bytes"]), filter=pikepdf.Name.JPXDecode, type_check=False)
        return "JPXDecode"
    if jpeg is not None:
        if "qtables" in jpeg:
            # A gray image takes one table; a colour one two (luma, chroma).
            tables = jpeg["qtables"]
            jpeg = {"qtables": tables[:1] if image.mode == "L" else (tables * 2)[:2]}
        buf = io.BytesIO()
        image.save(buf, format="JPEG", optimize=True, **jpeg)
        data = buf.getvalue()
        # A page of mostly plain paper codes as long runs of the same few bytes: Flate over
        # the JPEG (a filter chain every reader decodes) then saves a third or more.
        packed = zlib.compress(data, 9)
        if len(packed) < len(data):
            filters = pikepdf.Array([pikepdf.Name.FlateDecode, pikepdf.Name.DCTDecode])
            obj.write(packed, filter=filters, type_check=False)
            return "FlateDecode+DCTDecode"
        obj.write(data, filter=pikepdf.Name.DCTDecode, type_check=False)
        return "DCTDecode"
    data, colors = _flate_png(image)
    parms = pikepdf.Dictionary(Predictor=15, Colors=colors, BitsPerComponent=8, Columns=w)
    obj.write(data, filter=pikepdf.Name.FlateDecode, decode_parms=parms, type_check=False)
    return "FlateDecode"


# ---- one page ------------------------------------------------------------------------------


def _colour_rule(inp: torch.Tensor, out: torch.Tensor, options: PdfEditOptions) -> torch.Tensor:
    """Gray or colour result of a colour image; coloured ink keeps its input colour.

    Args:
        inp: (1, 3, H, W) the image as decoded.
        out: (1, C, H, W) what ``process`` returned.
        options: the colour rule's settings.

    Returns:
        (1, 1, H, W) when the result is stored gray, else (1, 3, H, W).
    """
    from aepipe.batch import coloured_ink, with_coloured_ink

    if options.color == "gray":
        return to_gray(out)
    if out.shape[1] == 3:
        # The stage chose the colours itself (a colorizer, keep_color); a page it left gray
        # (keep_color and no coloured ink) is stored gray.
        return to_gray(out) if _is_gray(out) else out
    ink = coloured_ink(inp, out, options.color_chroma)
    if options.color == "auto" and float(ink.float().mean()) <= options.color_fraction:
        return out
    return with_coloured_ink(inp, out, options.color_chroma)


def _decode_checked(where: str, obj: Any, options: PdfEditOptions) -> tuple[np.ndarray, Kind]:
    """The image's pixels (HWC uint8, after the pixel limit is checked) and its kind."""
    w, h = _check_size(where, obj, options.max_pixels)
    try:
        pixels = _decode(obj, w, h)
    except InputImageError as exc:
        raise InputImageError(f"{where}: cannot decode its image ({exc})") from None
    except MemoryError:
        raise  # the front ends' one-line "out of memory" error, not a corrupt image
    except Exception as exc:
        raise InputImageError(f"{where}: cannot decode its image ({type(exc).__name__})") from None
    bilevel = bool(obj.get("/ImageMask", False)) or int(obj.get("/BitsPerComponent", 8)) == 1
    # A gray image holding only black and white (bilevel content stored 8-bit) is bilevel.
    bilevel = bilevel or (pixels.shape[-1] == 1 and _two_level(pixels))
    return pixels, "bilevel" if bilevel else ("gray" if pixels.shape[-1] == 1 else "color")


def _clean(
    where: str,
    batch: ImageBatch,
    kind: Kind,
    turn: tuple[bool, bool, bool],
    process: Callable[[ImageBatch], ImageBatch],
    options: PdfEditOptions,
) -> Any:
    """Run ``process`` on the upright image; return the result as stored, a PIL image.

    Args:
        where: file and page, for error messages.
        batch: (1, C, H, W) the image as stored.
        kind: its kind; a bilevel result is cut back to mode "1".
        turn: how to turn it upright (see :func:`_orientation`).
        process: the cleaning.
        options: the colour rule and the bilevel threshold.
    """
    h, w = batch.size
    decoded = batch.images
    out = _stored(process(batch.replace(_upright(decoded, turn))).images, turn)
    if out.shape[0] != 1 or tuple(out.shape[-2:]) != (h, w):
        raise ShapeError(f"{where}: process returned shape {tuple(out.shape)} for a {w}x{h} image")
    gray_out = out.shape[1] == 1
    if kind == "color" and (
        _same_values(out, decoded) or (gray_out and _same_values(out, to_gray(decoded)))
    ):
        # Nothing changed, or only the colour was dropped (a gray stage passing a clean page
        # through gives its luma): the image stays as it was, colours and bytes.
        return batch.to_pil()[0]
    if kind == "color":
        out = _colour_rule(decoded, out, options)
    elif out.shape[1] == 3 and (options.color == "gray" or _is_gray(out)):
        out = to_gray(out)
    # (A colour result of a gray or bilevel image, e.g. a colorizer's, is stored in colour.)
    image = ImageBatch(out.clamp(0.0, 1.0)).to_pil()[0]
    # A bilevel image stays bilevel; so does a result of only black and white (``--binarize``).
    if image.mode == "L" and (kind == "bilevel" or _two_level(np.asarray(image))):
        cut = round(options.threshold * 255)
        image = image.point(lambda v: 255 if v >= cut else 0, mode="1")
    return image


def _same_values(out: torch.Tensor, decoded: torch.Tensor) -> bool:
    """Whether (1, C, H, W) ``out`` holds the same 8-bit values as ``decoded``."""
    if out.shape != decoded.shape:
        return False
    return bool(((out.clamp(0.0, 1.0) - decoded).abs() < 0.5 / 255.0).all())


def _is_gray(images: torch.Tensor) -> bool:
    """Whether (N, 3, H, W) ``images`` have equal channels (to within one 8-bit step)."""
    return float((images.amax(dim=1) - images.amin(dim=1)).max()) <= 1.0 / 255.0


def _two_level(pixels: np.ndarray) -> bool:
    """Whether uint8 ``pixels`` ((H, W) or (H, W, 1)) hold only black and white."""
    from aepipe.io import is_bilevel

    return is_bilevel(pixels if pixels.ndim == 3 else pixels[..., None])


def _edit_image(
    where: str,
    target: _Placement,
    rotate: int,
    process: Callable[[ImageBatch], ImageBatch],
    meta: dict[str, Any],
    options: PdfEditOptions,
) -> dict[str, Any]:
    """Decode, clean and write back one page image; returns the outcome's fields and status."""
    obj = target.obj
    codec_in, bytes_in = "+".join(_filters(obj)) or "none", len(obj.read_raw_bytes())
    pixels, kind = _decode_checked(where, obj, options)
    h, w = pixels.shape[:2]
    turn, dpi = _orientation(target.ctm, rotate), _dpi(target.ctm, w, h)
    batch = ImageBatch.from_numpy(pixels, [meta["name"]], [{**meta, "kind": kind, "dpi": max(dpi)}])
    with _pil_limit(options.max_pixels):
        image = _clean(where, batch, kind, turn, process, options)
        unchanged = _unchanged(image, pixels, kind, options.threshold)
        if unchanged:
            # Do no harm: the image keeps its own codec and bytes (JBIG2 stays JBIG2).
            codec_out, stored_as = codec_in, kind
        else:
            jpeg = None if image.mode == "1" else _jpeg_settings(obj, options)
            if jpeg is None and image.mode == "RGB" and _indexed(obj):
                # An indexed source stays indexed (a third of RGB's size): a palette of the
                # result's colours, without dithering, which would speckle the paper.
                image = image.quantize(256, dither=0)
            mask = bool(obj.get("/ImageMask", False))
            stored_as = _stored_kind(image)
            codec_out = _write_image(obj, image, stored_as, mask, jpeg)
    return {
        "status": "unchanged" if unchanged else "edited",
        "kind": kind,
        "size": (w, h),
        "dpi": dpi,
        "codec_in": codec_in,
        "codec_out": codec_out,
        "bytes_in": bytes_in,
        "bytes_out": len(obj.read_raw_bytes()),
        "stored_as": stored_as,
    }


def _stored_kind(image: Any) -> Kind:
    return {"1": "bilevel", "L": "gray"}.get(image.mode, "color")  # type: ignore[return-value]


# ---- the render fallback -------------------------------------------------------------------

# Operators kept in the invisible text layer of a rendered page: text, its state, the graphics
# state stack and transforms (text positions depend on them), marked content (structure tags).
_TEXT_OPS = frozenset(
    {
        *("BT", "ET", "Tf", "Td", "TD", "Tm", "T*", "Tj", "TJ", "'", '"', "Tc", "Tw", "Tz"),
        *("TL", "Ts", "q", "Q", "cm", "BMC", "BDC", "EMC", "MP", "DP"),
    }
)


class _Renderer:
    """The source PDF opened in pdfium, only once a page needs rendering."""

    def __init__(self, src: Path) -> None:
        self.src, self.doc = src, None

    def __enter__(self) -> _Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.doc is not None:
            self.doc.close()

    def render(self, where: str, index: int, options: PdfEditOptions) -> tuple[np.ndarray, float]:
        """Page ``index`` rendered as displayed (HWC uint8) and its resolution."""
        import pypdfium2 as pdfium

        from aepipe.io import _native_dpi, _render_pdf_page

        if self.doc is None:
            self.doc = pdfium.PdfDocument(str(self.src))
        page = self.doc[index]
        try:
            dpi = float(options.dpi) if options.dpi else _native_dpi(page)
            pixels = _render_pdf_page(Path(where), page, dpi, options.max_pixels)[0]
        finally:
            page.close()
        return pixels, dpi


def _render_jpeg(source: Any, options: PdfEditOptions) -> dict[str, Any] | None:
    """JPEG settings of a rendered page: those of its finest image ``source`` (or None)."""
    if isinstance(options.jpeg_quality, int):
        return {"quality": options.jpeg_quality}
    return None if source is None else _jpeg_settings(source, options)


def _text_only(page: pikepdf.Page) -> bytes:
    """The page's content with only its text, drawn invisibly (render mode 3).

    Text drawn inside form XObjects is not kept (the forms also paint what was rendered).
    """
    import pikepdf

    kept: list[Any] = []
    for operands, op in pikepdf.parse_content_stream(page):
        name = str(op)
        if name not in _TEXT_OPS and name != "Tr":
            continue
        kept.append(([3], pikepdf.Operator("Tr")) if name == "Tr" else (operands, op))
        if name == "BT":
            kept.append(([3], pikepdf.Operator("Tr")))
    return pikepdf.unparse_content_stream(kept)


def _render_page(
    where: str,
    pdf: pikepdf.Pdf,
    page: pikepdf.Page,
    renderer: _Renderer,
    process: Callable[[ImageBatch], ImageBatch],
    meta: dict[str, Any],
    options: PdfEditOptions,
    source: Any = None,
) -> dict[str, Any]:
    """The render fallback: the cleaned rendering becomes the page, its text stays invisible.

    Unless the cleaning changes nothing: the page then stays as it was (status ``unchanged``).

    ``source`` is the page's finest image, whose codec the rendering takes (JPEG stays JPEG).
    """
    import pikepdf

    pixels, dpi = renderer.render(where, meta["page"], options)
    x0, y0, x1, y1 = _page_box(page)
    ctm: Matrix = (x1 - x0, 0.0, 0.0, y1 - y0, x0, y0)
    # The rendering is upright; the image is stored in the page's own (unrotated) space.
    turn = _orientation(ctm, int(page.obj.get("/Rotate", 0) or 0))
    kind: Kind = "gray" if pixels.shape[-1] == 1 else "color"
    upright = ImageBatch.from_numpy(pixels, [meta["name"]], [{**meta, "kind": kind, "dpi": dpi}])
    batch = upright.replace(_stored(upright.images, turn))
    with _pil_limit(options.max_pixels):
        image = _clean(where, batch, kind, turn, process, options)
        size = (image.width, image.height)
        if _unchanged(image, batch.to_numpy()[0], kind, options.threshold):
            # Do no harm: a cleaning that changed nothing leaves the page as it was.
            return {"status": "unchanged", "kind": kind, "size": size, "dpi": (dpi, dpi)}
        obj = pdf.make_stream(b"", Type=pikepdf.Name.XObject, Subtype=pikepdf.Name.Image)
        obj.Width, obj.Height = image.width, image.height
        jpeg = None if image.mode == "1" else _render_jpeg(source, options)
        codec_out = _write_image(obj, image, _stored_kind(image), False, jpeg)
    # A page's own resources (the old ones may be shared with other pages): what the text
    # layer names (fonts, marked-content properties) and the rendering. Nothing else is drawn
    # now, so the old images, colour spaces (ICC profiles of hundreds of KB) and patterns go.
    old = _resources(page) or {}
    resources = pikepdf.Dictionary(XObject=pikepdf.Dictionary(AepipeRender=obj))
    for key in ("/Font", "/Properties"):
        if key in old:
            resources[key] = old[key]
    picture = f"q {ctm[0]:.4f} 0 0 {ctm[3]:.4f} {x0:.4f} {y0:.4f} cm /AepipeRender Do Q\n"
    text = _text_only(page)
    page.obj.Resources = resources
    page.obj.Contents = pikepdf.Array([pdf.make_stream(picture.encode()), pdf.make_stream(text)])
    return {
        "status": "rendered",
        "kind": kind,
        "size": size,
        "dpi": (dpi, dpi),
        "codec_out": codec_out,
        "bytes_out": len(obj.read_raw_bytes()),
        "stored_as": _stored_kind(image),
    }


def _indexed(obj: Any) -> bool:
    import pikepdf

    cs = obj.get("/ColorSpace")
    return isinstance(cs, pikepdf.Array) and len(cs) > 0 and str(cs[0]) == "/Indexed"


def _unchanged(image: Any, pixels: np.ndarray, kind: Kind, threshold: float) -> bool:
    """Whether the cleaned PIL ``image`` shows what the decoded HWC uint8 ``pixels`` showed.

    A bilevel scan is compared bit for bit (its pixels cut at ``threshold`` as the result was:
    a 1-bit image in a colour space such as DeviceN decodes to two colours, not black and
    white); anything else value for value (mode L or RGB, 8 bits).
    """
    if image.mode == "1":
        if kind != "bilevel" and not (pixels.shape[-1] == 1 and _two_level(pixels)):
            return False  # (a gray or colour image of only black and white: the same values)
        luma = pixels[..., 0] if pixels.shape[-1] == 1 else np.rint(pixels @ LUMA_WEIGHTS)
        return bool(np.array_equal(np.asarray(image), luma >= round(threshold * 255)))
    arr = np.asarray(image)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return arr.shape == pixels.shape and bool(np.array_equal(arr, pixels))


# ---- the document --------------------------------------------------------------------------


def _open(src: Path) -> pikepdf.Pdf:
    import pikepdf

    try:
        return pikepdf.open(src)
    except pikepdf.PasswordError:
        reason = "encrypted PDF (a password is needed)"
        raise InputImageError(f"{src}: cannot open PDF: {reason}") from None
    except FileNotFoundError:
        raise InputImageError(f"{src}: no such file") from None
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputImageError(f"{src}: cannot open PDF: corrupt PDF ({reason})") from None


def is_signed(path: str | Path) -> bool:
    """Whether a PDF carries a digital signature (a signed ``/Sig`` form field).

    Any edit, ours included, invalidates it; the caller says so rather than hide it.
    """
    import pikepdf

    try:
        with pikepdf.open(path) as pdf:
            form = pdf.Root.get("/AcroForm")
            fields = list(form.get("/Fields", [])) if form is not None else []
            return any(f.get("/FT") == pikepdf.Name.Sig and "/V" in f for f in fields)
    except Exception:  # unreadable here: the edit itself reports why
        return False


def edit_pdf(
    src: str | Path,
    dst: str | Path,
    process: Callable[[ImageBatch], ImageBatch],
    *,
    options: PdfEditOptions | None = None,
) -> list[PageOutcome]:
    """Clean every page's scanned image inside a PDF and write the result atomically to ``dst``.

    ``process`` gets one page image at a time as a one-image batch, (1, C, H, W) at the image's
    own pixel grid, turned upright as the page is displayed; C = 1 for bilevel and gray images,
    3 for colour ones. It must return the same H and W (C may be 1 or 3). Its metadata carries
    ``source``, ``page`` (0-based), ``pages``, ``dpi`` and ``kind``. An image drawn on several
    pages is cleaned once. When no page is changed, ``dst`` is a byte-for-byte copy of ``src``.

    Args:
        src: the PDF to read (never modified).
        dst: the PDF to write (atomically; may be ``src`` itself).
        process: the cleaning, e.g. a stage: ``batch -> batch``.
        options: see :class:`PdfEditOptions`.

    Returns:
        One :class:`PageOutcome` per page, in page order.

    Raises:
        InputImageError: the PDF cannot be opened (corrupt, encrypted, no pages), or an image
            cannot be decoded, or a scan image is damaged (:func:`check_image`); its subclasses
            :class:`TooManyPixelsError` (an image or a rendering over ``max_pixels``) and
            :class:`TooManyPagesError` (over ``max_pages``).
            Nothing is written then.
        ShapeError: ``process`` changed an image's size.
    """
    options = _for_stage(options or PdfEditOptions(), process)
    src, dst = Path(src), Path(dst)
    with _open(src) as pdf, _Renderer(src) as renderer:
        _check_pages(src, len(pdf.pages), options.max_pages)
        done: dict[tuple[int, int], dict[str, Any]] = {}
        outcomes = [
            _do_page(src, pdf, index, process, options, done, renderer)
            for index in range(len(pdf.pages))
        ]
        if any(o.status in ("edited", "rendered") for o in outcomes):
            atomic_write(dst, lambda fh: save_pdf(pdf, fh))
            return outcomes
    if src.resolve() != dst.resolve():
        with src.open("rb") as fh:
            atomic_write(dst, lambda out: shutil.copyfileobj(fh, out))
    return outcomes


def _for_stage(options: PdfEditOptions, process: Callable[..., Any]) -> PdfEditOptions:
    """``options`` with the colour the stage's own settings ask for.

    One place for every front end: a binarizing stage's pages are stored gray (1-bit pages
    keep no colour, not even coloured ink). A stage keeping colour returns it itself.
    """
    stages = getattr(process, "stages", None)  # a Pipeline: its last stage's pages are stored
    last = stages[-1] if isinstance(stages, list) and stages else process
    if getattr(getattr(last, "config", None), "binarize", False):
        return dataclasses.replace(options, color="gray")
    return options


def _check_pages(src: Path, count: int, max_pages: int | None) -> None:
    if count == 0:
        raise InputImageError(f"{src}: PDF has no pages")
    if max_pages is not None and count > max_pages:
        raise TooManyPagesError(f"{src}: {count} pages exceeds the limit of {max_pages}")


def _do_page(
    src: Path,
    pdf: pikepdf.Pdf,
    index: int,
    process: Callable[[ImageBatch], ImageBatch],
    options: PdfEditOptions,
    done: dict[tuple[int, int], dict[str, Any]],
    renderer: _Renderer,
) -> PageOutcome:
    """Plan and carry out one page's edit; ``done`` remembers images already cleaned."""
    page = pdf.pages[index]
    where = f"{src} page {index + 1}"
    try:
        found = _found(page)
        plan = _plan_page(page, found, options)
    except Exception as exc:
        found = []
        plan = _Plan("fallback", f"content stream not understood ({type(exc).__name__})")
    # Before anything is cleaned, whatever the page's plan: pdfium would clean a damaged scan
    # as it decodes it (gray or black), and "came back the same" would keep it unnoticed.
    for obj in _scan_parts(found, options.min_coverage):
        if obj.objgen not in done:  # (an image in ``done`` was checked on its first page)
            check_image(where, obj)
    meta = {"name": f"{src.stem}_p{index + 1:04d}", "source": str(src), "page": index}
    meta["pages"] = len(pdf.pages)
    rotate = int(page.obj.get("/Rotate", 0) or 0)
    if plan.status == "fallback" and options.fallback == "render":
        source = None if plan.target is None else plan.target.obj
        fields = _render_page(where, pdf, page, renderer, process, meta, options, source)
        reason = plan.reason
        if fields["status"] == "unchanged":
            reason += "; its rendering came back the same, so the page is kept as it was"
        return PageOutcome(index + 1, reason=reason, **fields)
    if plan.status != "edited" or plan.target is None:
        return PageOutcome(index + 1, plan.status, plan.reason)
    reason, parts = plan.reason, []
    for target in (plan.target, *plan.stencils):
        key = target.obj.objgen
        if key in done:
            reason = "its image (shared with an earlier page) processed once"
        else:
            done[key] = _edit_image(where, target, rotate, process, meta, options)
        parts.append(done[key])
    fields = _layers(parts)
    if fields["status"] == "unchanged":
        reason += "; it came back the same, so its image is kept as it was"
    return PageOutcome(index + 1, reason=reason, **fields)


def _layers(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One outcome's fields for the images cleaned on a page (the scan's, then its stencils').

    The first image's fields, with the codecs of every layer (comma-separated) and their bytes
    summed.
    """
    if len(parts) == 1:
        return parts[0]
    changed = any(p["status"] == "edited" for p in parts)
    return {
        **parts[0],
        "status": "edited" if changed else "unchanged",
        "codec_in": ", ".join(p["codec_in"] for p in parts),
        "codec_out": ", ".join(p["codec_out"] for p in parts),
        "bytes_in": sum(p["bytes_in"] for p in parts),
        "bytes_out": sum(p["bytes_out"] for p in parts),
    }


def _stamp_modified(pdf: pikepdf.Pdf) -> None:
    """Record the edit's time as the document's modification date.

    Archives sort and audit by it; an edited file that still claims its scanner's date hides
    the change. XMP metadata, where the PDF has it, is kept in step with the Info dictionary
    (PDF/A requires both to agree); a PDF without XMP gets none added.
    """
    from pikepdf.models.metadata import encode_pdf_date

    from aepipe.io import edit_time

    when = edit_time()
    pdf.docinfo["/ModDate"] = encode_pdf_date(when)
    if "/Metadata" not in pdf.Root:
        return
    # Not pikepdf's update_docinfo: it rewrites the Info dictionary from the XMP, dropping
    # every entry (a title, an author) the XMP lacks.
    try:
        with pdf.open_metadata(set_pikepdf_as_editor=False, update_docinfo=False) as meta:
            # Whole seconds, as the Info dictionary's date: PDF/A wants the two equivalent.
            meta["xmp:ModifyDate"] = when.isoformat(timespec="seconds")
            meta["xmp:MetadataDate"] = when.isoformat(timespec="seconds")
    except Exception:  # malformed XMP: left as it is (the Info dictionary is dated)
        return


def save_pdf(pdf: pikepdf.Pdf, fh: Any) -> None:
    """Write ``pdf`` into ``fh`` as the in-place edit does (also the OCR text layer's saver).

    The modification date becomes the edit's (:func:`_stamp_modified`); a linearized source
    ("fast web view") is written linearized again.
    """
    import pikepdf

    _stamp_modified(pdf)

    # Untouched streams are written as they are (no recompression, no decoding), object
    # streams as the source had them: a page not edited keeps its content bytes. A PDF opened
    # with an empty user password keeps its encryption and permissions (pikepdf's True copies
    # the source's; its streams are re-encrypted, so the stream options do not apply).
    kept = (
        dict(encryption=True)
        if pdf.is_encrypted
        else dict(stream_decode_level=pikepdf.StreamDecodeLevel.none)
    )
    pdf.save(
        fh,
        compress_streams=False,
        object_stream_mode=pikepdf.ObjectStreamMode.preserve,
        recompress_flate=False,
        linearize=pdf.is_linearized,
        **kept,
    )
