"""Reading and writing image files: the only module that touches image files on disk.

Reading decodes PNG, JPEG, TIFF (every page), BMP, WebP, GIF and PDF (every page rendered at a
chosen DPI) into :class:`Page` objects whose pixels :class:`~aepipe.batch.ImageBatch` takes.
Sizes are checked against a pixel limit *before* decoding, so a decompression bomb is refused
without allocating it. Whatever a decoder raises on untrusted bytes becomes one
:class:`~aepipe.errors.InputImageError` naming the file, with a one-line reason; only regular
files are opened (never a FIFO or a device), and input files are only ever opened read-only.
Animated GIF/WebP/PNG give their first frame unless ``frames="all"``.

Colour: sRGB is the pipeline's working space. Colour pixels with an embedded ICC profile
(Adobe RGB, a CMYK press profile such as SWOP, Lab) are converted to sRGB through it as they
are decoded (:func:`aepipe.batch.to_working_space`); gray pixels are kept as they are, with
their gray profile. Either profile travels in the page's ``icc_profile`` and is embedded again
in outputs of its kind (:func:`aepipe.core.encode_page`: gray outputs get the gray profile,
colour ones sRGB's), so a page passed through looks as it did. Files without a profile are
read as sRGB and written without one.

Descriptive metadata travels the same way (``exif``, ``xmp``, ``text`` in a page's meta: a
TIFF's Artist, Copyright, ImageDescription, DocumentName ...; a JPEG's EXIF and XMP;
PNG text and XMP) into outputs of the same format and, where a tag says the same, of others.
What the reading changed is not carried: the EXIF orientation is 1, pixel sizes are the page's,
thumbnails and the XMP properties of orientation, size and colour are gone.

Writing is atomic: a hidden temporary file in the target folder is renamed over the final name
only once complete and flushed, so a crash, even SIGKILL, never leaves a partial file under a
final name. Outputs get the usual permissions (0666 minus the umask).

Public: :func:`read_pages`, :func:`decode_pages` (bytes in memory), :func:`count_pages`,
:func:`read_image`, :func:`page_batch`, :func:`write_image`, :func:`write_pages`, :func:`png_bytes`,
:func:`write_encoded_pages`, :func:`pdf_from_pngs`, :func:`png_with_dpi`, :func:`atomic_write`,
:func:`remove_stale_temps`, :func:`make_grid`, :func:`pil_pixel_limit`.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import math
import os
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from aepipe.batch import ImageBatch, pil_pixels, pil_to_array
from aepipe.defaults import DEFAULT_DPI, DEFAULT_MAX_PIXELS
from aepipe.errors import (
    ConfigError,
    InputImageError,
    TooManyPagesError,
    TooManyPixelsError,
    UnsupportedInputError,
)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".pdf"}
)
OutputFormat = Literal["same", "png", "tiff", "pdf", "jpeg"]
TEMP_PREFIX = ".aepipe-"


@dataclass
class Page:
    """One decoded page or frame.

    Attributes:
        pixels: HWC array (uint8, uint16 or float32 in [0, 1]); C in 1..4.
        meta: ``source``, ``page``, ``pages``, ``format``, ``mode``, ``two_level`` (a page
            of only black and white, not stored 1-bit), ``size`` (W, H), ``dpi``,
            ``icc_profile`` (the ICC profile the pixels are in, where the file had one: its own
            gray profile, or sRGB's) and, for PDF pages, ``page_size_pt`` (W, H in points).
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def is_image_path(path: Path) -> bool:
    """Whether the suffix is one aepipe reads."""
    return path.suffix.lower() in IMAGE_SUFFIXES


# Peak memory of cleaning one page, per pixel, the process itself included: decoded bytes,
# float32 copies, the tile blend and the encoder. Measured as the maximum resident set
# (/usr/bin/time -v) of `clean-scans` on one page, OMP_NUM_THREADS=1. Gray: an 80-Mpx 1-bit PDF
# page 2.24 GB, A3 at 600 DPI (70 Mpx) 1.96 GB, 24 Mpx 0.80 GB. Colour, nearly twice as much
# (three channels in, and the colour kept beside the cleaned gray): 70 Mpx with --keep-color
# 3.6 GB, 24 Mpx 1.56 GB (1.27 GB without --keep-color), 12 Mpx 0.94 GB.
BYTES_PER_PIXEL = 28
BYTES_PER_COLOUR_PIXEL = 52


def check_pixels(
    where: str | os.PathLike[str], width: int, height: int, max_pixels: int, channels: int = 1
) -> None:
    """Refuse an image before decoding it: no pixels, too many, or too large for free memory.

    ``max_pixels`` is the user's limit. The memory check turns what would be the kernel
    killing the whole process (no message, no report, every other file lost) into one file's
    one-line error; a colour page (``channels`` 3 or 4) needs nearly twice a gray one's.

    Raises:
        InputImageError: no pixels.
        TooManyPixelsError: over the limit, or too large for the free memory.
    """
    if width <= 0 or height <= 0:
        raise InputImageError(f"{where}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise TooManyPixelsError(
            f"{where}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (raise it with --max-pixels if the file is trusted)"
        )
    per_pixel = BYTES_PER_PIXEL if channels <= 2 else BYTES_PER_COLOUR_PIXEL
    need, free = width * height * per_pixel, available_memory()
    if free is not None and need > free:
        raise TooManyPixelsError(
            f"{where}: {width}x{height} = {width * height:,} pixels need about {need / 1e9:.1f} GB "
            f"of memory to clean; {free / 1e9:.1f} GB are free (use a machine with more memory)"
        )


def available_memory() -> int | None:
    """Bytes of memory the process can still get; None if unknown.

    The smaller of the system's (Linux ``MemAvailable``) and its memory cgroup's: in a
    container or a systemd unit with a memory limit, the system's free memory is not the
    process's, and going over the cgroup's limit gets it killed all the same.
    """
    free = [v for v in (_meminfo_available(), _cgroup_free()) if v is not None]
    return min(free) if free else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as 2**63 rounded down to a page


def _cgroup_free() -> int | None:
    """Bytes the process's memory cgroup still allows; None where it has no limit.

    The tightest of the limits of its cgroup and those above it (v2), or of its hierarchy
    (v1): limit - usage, the usage less the page cache the kernel can drop.
    """
    try:
        lines = _PROC_CGROUP.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    free = []
    for line in lines:
        hierarchy, controllers, path = [*line.split(":", 2), "", ""][:3]
        if hierarchy == "0" and not controllers:  # v2: each level may limit
            free += [_v2_free(d) for d in _cgroup_dirs(_CGROUP_ROOT, path)]
        elif "memory" in controllers.split(","):  # v1: memory.stat has the hierarchy's limit
            free += [_v1_free(d) for d in _cgroup_dirs(_CGROUP_ROOT / "memory", path)[:1]]
    found = [v for v in free if v is not None]
    return max(0, min(found)) if found else None


def _cgroup_dirs(base: Path, path: str) -> list[Path]:
    """The process's cgroup folder under ``base`` and those above it, nearest first.

    ``base`` itself where its own is not there (a container that sees only its own cgroup,
    mounted at ``base``).
    """
    own = base / path.strip().lstrip("/")
    if not own.is_dir():
        return [base] if base.is_dir() else []
    return [own, *(d for d in own.parents if d.is_relative_to(base))]


def _cgroup_stat(folder: Path) -> dict[str, int]:
    stat_ = {}
    for line in (folder / "memory.stat").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            stat_[key] = int(value)
    return stat_


def _v2_free(folder: Path) -> int | None:
    try:
        limit = (folder / "memory.max").read_text(encoding="ascii").strip()
        if limit == "max":
            return None
        used = int((folder / "memory.current").read_text(encoding="ascii"))
        return int(limit) - used + _cgroup_stat(folder).get("inactive_file", 0)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _v1_free(folder: Path) -> int | None:
    try:
        stat_ = _cgroup_stat(folder)
        limit = stat_.get("hierarchical_memory_limit") or int(
            (folder / "memory.limit_in_bytes").read_text(encoding="ascii")
        )
        if limit >= _NO_LIMIT:
            return None
        used = int((folder / "memory.usage_in_bytes").read_text(encoding="ascii"))
        return limit - used + stat_.get("total_inactive_file", 0)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


#: A resolution: one DPI, or (horizontal, vertical) where they differ (fax: 204 x 98).
Resolution = float | tuple[float, float]

# What a file may claim and still be believed: below, a missing value written as 1 (or 0.99
# after a unit conversion); above, no scanner. Outside, the page counts as having no DPI.
_PLAUSIBLE_DPI = (20.0, 20_000.0)


def _dpi_meta(info: dict[str, Any], turned: bool = False) -> dict[str, float | None]:
    """A page's ``dpi`` (horizontal, if plausible) and, where it differs, its ``dpi_y``.

    ``turned``: the page was turned a quarter (EXIF orientation 5-8), so the file's X
    resolution is now the page's Y one.
    """
    dpi = info.get("dpi")
    if turned and isinstance(dpi, tuple) and len(dpi) == 2:
        info = {"dpi": (dpi[1], dpi[0])}
    xy = _dpi_xy(info)
    if xy is None:
        return {"dpi": None}
    x, y = xy
    return {"dpi": x, "dpi_y": y} if abs(y - x) > 0.01 * x else {"dpi": x}


def _dpi_xy(info: dict[str, Any]) -> tuple[float, float] | None:
    dpi = info.get("dpi")
    if not (isinstance(dpi, tuple) and len(dpi) == 2):
        return None
    lo, hi = _PLAUSIBLE_DPI
    try:
        x, y = float(dpi[0]), float(dpi[1])
    except (TypeError, ValueError):
        return None
    if not (lo <= x <= hi):
        return None
    return (x, y) if lo <= y <= hi else (x, x)


def page_resolution(meta: dict[str, Any]) -> Resolution | None:
    """A page's resolution as the writers take it: its DPI, or (x, y) where they differ."""
    dpi, dpi_y = meta.get("dpi"), meta.get("dpi_y")
    return (float(dpi), float(dpi_y)) if dpi and dpi_y else dpi


def _xy(dpi: Resolution) -> tuple[float, float]:
    return (float(dpi[0]), float(dpi[1])) if isinstance(dpi, tuple) else (float(dpi), float(dpi))


# PIL's decompression-bomb limit (Image.MAX_IMAGE_PIXELS) is one setting for the whole
# process, which a library must leave as it found it. It is raised only inside
# pil_pixel_limit blocks, which may nest and run in several threads at once (the runner's reader
# and writer threads, the HTTP service): under one lock, the limit is the largest any open block
# asked for, and what it was before once the last block has left.
_limit_lock = threading.Lock()
_limit_asked: list[int] = []  # one entry per block open now
_limit_state: dict[str, int | None] = {"before": None, "ours": None}


@contextlib.contextmanager
def pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """PIL's decompression-bomb limit at least ``max_pixels`` while the block runs.

    Our own limit is checked from the header before decoding; PIL's guard stays as a backstop
    that must not fire first. Thread-safe; a limit set by other code while a block runs is
    taken as the one to go back to (it is not overwritten by the old one). A disabled limit
    (None) stays disabled.
    """
    from PIL import Image

    with _limit_lock:
        _adopt_pil_limit(Image)
        _limit_asked.append(max_pixels)
        _apply_pil_limit(Image)
    try:
        yield
    finally:
        with _limit_lock:
            _adopt_pil_limit(Image)
            _limit_asked.remove(max_pixels)
            _apply_pil_limit(Image)


def _adopt_pil_limit(image_module: Any) -> None:
    # The value to go back to: the limit as found, unless it is the one we set.
    if not _limit_asked or _limit_state["ours"] != image_module.MAX_IMAGE_PIXELS:
        _limit_state["before"] = image_module.MAX_IMAGE_PIXELS


def _apply_pil_limit(image_module: Any) -> None:
    before = _limit_state["before"]
    value = max(before, *_limit_asked) if before is not None and _limit_asked else before
    image_module.MAX_IMAGE_PIXELS = _limit_state["ours"] = value


def _check_pages(path: Path, count: int, max_pages: int | None) -> None:
    if max_pages is not None and count > max_pages:
        raise TooManyPagesError(f"{path}: {count} pages exceeds the limit of {max_pages}")


def _read_raster(
    path: Path,
    data: bytes | IO[bytes],
    max_pixels: int,
    frames: Literal["first", "all"],
    max_pages: int | None = None,
) -> Iterator[Page]:
    """Decode a raster file from its bytes or an open binary file (read lazily by PIL)."""
    from PIL import Image, UnidentifiedImageError

    fh = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        # Our own limit is checked below from the header; PIL's bomb guard stays as a backstop.
        # PIL warns about odd metadata (corrupt EXIF, oversized tags): not fatal, and a warning
        # would print a multi-line traceback-like text in the middle of the CLI's output.
        with pil_pixel_limit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(fh)
    except Image.DecompressionBombError:
        raise TooManyPixelsError(
            f"{path}: header claims more pixels than PIL's decompression-bomb guard allows; "
            f"this exceeds the limit of {max_pixels:,} pixels"
        ) from None
    except UnidentifiedImageError:
        raise UnsupportedInputError(f"{path}: not an image (or an unsupported format)") from None
    except Exception as exc:
        raise InputImageError(f"{path}: corrupt or truncated image header ({_why(exc)})") from None
    with image:
        try:
            fmt = (image.format or path.suffix.lstrip(".")).lower()
            with pil_pixel_limit(max_pixels), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                indices = _page_frames(image, fmt, frames)
        except Exception as exc:
            raise InputImageError(f"{path}: corrupt or truncated image ({_why(exc)})") from None
        count = len(indices)
        _check_pages(path, count, max_pages)
        for index, frame_index in enumerate(indices):
            try:
                # (Not across the yield: the stage runs there, and the limit is process-wide.)
                with pil_pixel_limit(max_pixels), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    image.seek(frame_index)
                    check_pixels(path, *image.size, max_pixels, channels=_channels(image))
                    pixels, info = _decode_page(image, fmt)
                info = {"source": str(path), "page": index, "pages": count, **info}
            except InputImageError:
                raise
            except MemoryError:
                raise InputImageError(f"{path}: out of memory while decoding") from None
            except Exception as exc:
                where = f" page {index + 1}" if count > 1 else ""
                raise InputImageError(
                    f"{path}{where}: corrupt or truncated image ({_why(exc)})"
                ) from None
            yield Page(pixels, info)


def _decode_page(image: Any, fmt: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The pixels of the frame ``image`` is at, upright and in sRGB, and the page's meta.

    Returns:
        HWC pixels, and the meta of :class:`Page` but ``source``, ``page`` and ``pages``.
    """
    from PIL import ImageOps

    if fmt == "tiff" and 34675 not in getattr(image, "tag_v2", {}):
        image.info.pop("icc_profile", None)  # (PIL keeps an earlier page's, tag 34675)
    # Each TIFF page has its own orientation; an animation's frames share the file's. Turned
    # only where it says so: exif_transpose copies even an upright image.
    orientation = image.getexif().get(_ORIENTATION, 1)
    frame = ImageOps.exif_transpose(image) if orientation in range(2, 9) else image
    frame.load()
    pixels, profile = pil_pixels(frame)
    turned = orientation in (5, 6, 7, 8)  # a quarter turn: X and Y swap, resolutions too
    return pixels, {
        "format": fmt,
        "mode": image.mode,
        # Black and white in 8 bits or a 2-colour palette is bilevel, as a 1-bit page is.
        **({"two_level": True} if image.mode != "1" and is_bilevel(pixels) else {}),
        "size": (frame.width, frame.height),
        **_dpi_meta(image.info, turned),
        **({"icc_profile": profile} if profile else {}),
        **_descriptive_meta(
            image, fmt, frame.size, turned, profile != image.info.get("icc_profile")
        ),
    }


def is_bilevel(pixels: np.ndarray) -> bool:
    """Whether a one-channel uint8 page (H, W, 1) holds only pure black and pure white."""
    if pixels.ndim != 3 or pixels.shape[-1] != 1 or pixels.dtype != np.uint8:
        return False
    # In strips: a gray page fails within its first rows, and a whole page's temporaries are
    # not held at once. uint8 wraps: 255 + 1 == 0 and 0 + 1 == 1, so "<= 1" is "0 or 255".
    step = max(1, (1 << 20) // max(1, pixels.shape[1]))
    return all(
        bool(((pixels[y : y + step] + np.uint8(1)) <= 1).all())
        for y in range(0, pixels.shape[0], step)
    )


def _page_frames(image: Any, fmt: str, frames: Literal["first", "all"]) -> list[int]:
    """The frames of an open image that are pages, by index.

    Multi-page TIFFs are documents: every page counts, but not a page's thumbnail or the
    levels of a pyramid (reduced-resolution subfiles: NewSubfileType bit 0, or the old
    SubfileType 2). Animated GIF/WebP/PNG frames are not pages: the first unless ``all``.
    """
    n_frames = int(getattr(image, "n_frames", 1) or 1)
    if fmt != "tiff":
        return list(range(n_frames)) if frames == "all" else [0]
    if n_frames == 1:
        return [0]
    pages = []
    for index in range(n_frames):
        image.seek(index)  # (reads that page's directory only)
        tags = image.tag_v2
        if not (int(tags.get(254, 0)) & 1 or tags.get(255) == 2):
            pages.append(index)
    return pages or [0]  # (all reduced: the first stands for the image)


def _why(exc: BaseException) -> str:
    """A one-line reason from an exception raised by a decoder."""
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def _native_dpi(page: Any) -> float:
    """The resolution of a page's scan: that of its finest image covering half the page.

    A page without such an image (born-digital, or a small picture) renders at the default.
    """
    import pypdfium2.raw as pdfium_c

    w_pt, h_pt = page.get_size()
    best_dpi = 0.0
    for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3):
        left, bottom, right, top = obj.get_bounds()
        if max(0.0, right - left) * max(0.0, top - bottom) < 0.5 * w_pt * h_pt:
            continue
        # Of the page-size images (a mixed-raster page stacks several), the finest.
        dpi = _image_dpi(obj)
        best_dpi = max(best_dpi, dpi)
    return round(best_dpi, 2) if best_dpi > 0 else float(DEFAULT_DPI)


def _image_dpi(obj: Any) -> float:
    """An image object's pixels per inch, the finer of its two axes."""
    # Pixels per inch along the image's own axes (its matrix maps the unit square onto the
    # page), so a rotated or skewed scan is not mistaken for a finer one by its bounding box.
    a, b, c, d, _, _ = obj.get_matrix().get()
    w_px, h_px = obj.get_px_size()
    col_in, row_in = math.hypot(a, b) / 72.0, math.hypot(c, d) / 72.0
    if col_in <= 0 or row_in <= 0:
        return 0.0
    return max(w_px / col_in, h_px / row_in)


# pdfium sizes a bitmap as ceil(page size * scale) and keeps page sizes in float32 (595.2 pt is
# 595.2000122), so the scale is shaved by a few float32 steps: an A4 scan of 2480 pixels at 300
# DPI renders 2480 wide, not 2481, and a Letter page 3300 high, not 3301.
_SCALE_SHAVE = 1.0 - 1e-6


def _render_size(w_pt: float, h_pt: float, scale: float) -> tuple[int, int]:
    """Pixels of a page rendered at ``scale`` (shaved by ``_SCALE_SHAVE``), as pdfium sizes it."""
    scale *= _SCALE_SHAVE
    return math.ceil(w_pt * scale), math.ceil(h_pt * scale)


def _read_pdf(
    path: Path,
    data: bytes | os.PathLike[str] | str,
    dpi: float | None,
    max_pixels: int,
    max_pages: int | None = None,
) -> Iterator[Page]:
    """Render PDF pages from the file's bytes or its path (pdfium then reads it lazily).

    Each page renders at ``dpi``, or when it is None at its scan's own resolution
    (:func:`_native_dpi`).
    """
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data if isinstance(data, (bytes, bytearray)) else str(data))
    except Exception as exc:
        raise InputImageError(f"{path}: cannot open PDF: {_pdf_failure(data, exc)}") from None
    scans = _ScanCheck(data)
    try:
        count = len(pdf)
        if count == 0:
            raise InputImageError(f"{path}: PDF has no pages")
        _check_pages(path, count, max_pages)
        for index in range(count):
            try:
                page = pdf[index]
            except Exception as exc:
                raise InputImageError(
                    f"{path} page {index + 1}: cannot load ({_why(exc)})"
                ) from None
            try:
                scans.check(f"{path} page {index + 1}", index, page)
                page_dpi = float(dpi) if dpi else _native_dpi(page)
                pixels, mode, w_pt, h_pt = _render_pdf_page(path, page, page_dpi, max_pixels)
            except InputImageError:
                raise
            except MemoryError:
                raise InputImageError(
                    f"{path} page {index + 1}: out of memory while rendering"
                ) from None
            except Exception as exc:
                raise InputImageError(
                    f"{path} page {index + 1}: cannot render ({_why(exc)})"
                ) from None
            finally:
                page.close()
            yield Page(
                pixels,
                {
                    "source": str(path),
                    "page": index,
                    "pages": count,
                    "format": "pdf",
                    "mode": mode,
                    "size": (pixels.shape[1], pixels.shape[0]),
                    "dpi": page_dpi,
                    "page_size_pt": (float(w_pt), float(h_pt)),
                },
            )
    finally:
        scans.close()
        pdf.close()


class _ScanCheck:
    """The scan images of a PDF's pages checked for damage before pdfium renders them.

    pdfium draws a damaged image without a word (a cut JPEG ends in gray, bad Flate data gives
    black); :func:`aepipe.pdf_edit.check_page_scans` decides, as the in-place edit does. The
    PDF is opened in pikepdf only once a page draws images that may cover half of it (a
    born-digital page's content is not parsed twice).
    """

    def __init__(self, data: bytes | os.PathLike[str] | str) -> None:
        self.data, self.pdf, self.opened = data, None, False
        self.seen: set[tuple[int, int]] = set()

    def check(self, where: str, index: int, page: Any) -> None:
        """Refuse page ``index`` (pdfium's ``page``) if a scan image of it is damaged."""
        from aepipe.pdf_edit import PdfEditOptions, check_page_scans

        if not _images_may_cover(page, PdfEditOptions.min_coverage):
            return
        pdf = self._open()
        if pdf is not None and index < len(pdf.pages):
            check_page_scans(where, pdf.pages[index], self.seen)

    def _open(self) -> Any:
        if not self.opened:
            self.opened = True
            import pikepdf

            data = self.data
            try:
                source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else Path(data)
                self.pdf = pikepdf.open(source)
            except Exception:  # a PDF only pdfium can read: its pages are rendered unchecked
                self.pdf = None
        return self.pdf

    def close(self) -> None:
        if self.pdf is not None:
            self.pdf.close()


def _images_may_cover(page: Any, share: float) -> bool:
    """Whether pdfium's ``page`` draws images whose bounding boxes add up to ``share`` of it."""
    import pypdfium2.raw as pdfium_c

    w_pt, h_pt = page.get_size()
    area = 0.0
    for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3):
        left, bottom, right, top = obj.get_bounds()
        area += max(0.0, right - left) * max(0.0, top - bottom)
    return area >= share * w_pt * h_pt


def _channels(image: Any) -> int:
    """1 for an image decoded as gray (a palette of grays too), else 3: for the memory guard."""
    if image.mode in ("1", "L", "LA", "I", "F") or image.mode.startswith("I;"):
        return 1
    if image.mode == "P":
        # The whole palette, not only the colours in use (batch._gray_palette, which decodes
        # the pixels to find them: this check runs before anything is decoded).
        rgb = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
        return 1 if (rgb == rgb[:, :1]).all() else 3
    return 3


def _render_pdf_page(
    path: Path, page: Any, dpi: float, max_pixels: int
) -> tuple[np.ndarray, str, float, float]:
    """One PDF page rendered at ``dpi``: (HWC pixels, mode, width and height in points)."""
    w_pt, h_pt = page.get_size()
    scale = dpi / 72.0
    w_px, h_px = _render_size(w_pt, h_pt, scale)
    # pdfium renders colour (a gray page is made gray after): counted as colour.
    check_pixels(path, w_px, h_px, max_pixels, channels=3)
    bitmap = page.render(scale=scale * _SCALE_SHAVE)
    try:
        pil = bitmap.to_pil()
        pixels = pil_to_array(pil)
        mode = pil.mode
        del pil
    finally:
        # Freed now, not at garbage collection: a long PDF otherwise piles them up.
        bitmap.close()
    if _is_gray_rgb(pixels):
        # pdfium renders in colour; a gray page stays gray (a third of the memory,
        # and a gray scan is not turned into a colour one).
        pixels, mode = np.ascontiguousarray(pixels[..., :1]), "L"
    return pixels, mode, float(w_pt), float(h_pt)


def _is_gray_rgb(pixels: np.ndarray) -> bool:
    """Whether an HWC array has three identical channels."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        return False
    return bool(
        np.array_equal(pixels[..., 0], pixels[..., 1])
        and np.array_equal(pixels[..., 1], pixels[..., 2])
    )


def _pdf_failure(data: bytes | os.PathLike[str] | str, exc: BaseException) -> str:
    """Why pdfium could not open a PDF, in words.

    pdfium's error code is process-global and is not reset by every failure (a PDF with an
    empty page tree fails with a stale code), so the bytes are checked for the real cause.
    """
    import re

    try:
        raw = bytes(data) if isinstance(data, (bytes, bytearray)) else Path(data).read_bytes()
    except OSError:
        raw = b""
    if b"/Encrypt" in raw:
        return "encrypted PDF (a password is needed)"
    if re.search(rb"/Count\s+0\b", raw) and not re.search(rb"/Count\s+[1-9]", raw):
        return "PDF has no pages"
    reason = _why(exc)
    if "password" in reason.lower() or "success" in reason.lower():
        reason = "not a valid PDF"
    return f"corrupt PDF ({reason})" if reason != "not a valid PDF" else reason


def _open_regular(path: Path) -> IO[bytes]:
    """Open ``path`` for reading, refusing anything that is not a regular file.

    A FIFO or a device (``/dev/zero`` behind a symlink named ``x.png``) would block or never
    end, so the file is opened non-blocking and checked before a single byte is read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise InputImageError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise InputImageError(f"{path}: permission denied") from None
    except FileNotFoundError:
        reason = "broken symbolic link" if path.is_symlink() else "no such file"
        raise InputImageError(f"{path}: {reason}") from None
    except OSError as exc:
        raise InputImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputImageError(f"{path}: not a regular file")
        if st.st_size == 0:
            raise InputImageError(f"{path}: empty file (0 bytes)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, OSError):
            raise InputImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
        raise


# Signatures of the raster formats read here: a file that starts with one is not a PDF, even
# with "%PDF-" in its first bytes (in a text chunk, say).
_FORMAT_OF_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpg",
    b"II*\x00": "tif",
    b"MM\x00*": "tif",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
}
_RASTER_MAGIC = (*_FORMAT_OF_MAGIC, b"RIFF")


def is_pdf_head(head: bytes) -> bool:
    """Whether a file that starts with ``head`` is a PDF: ``%PDF-`` in its first 1024 bytes.

    As PDF readers (pdfium, qpdf) take it: a header may follow some bytes of junk.
    """
    head = bytes(head[:1024])
    return not head.startswith(_RASTER_MAGIC) and b"%PDF-" in head


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    """The format of the file at ``path`` by its first bytes (``png``, ``gif``, ``pdf`` ...).

    None when it is none aepipe reads, or cannot be read. For names without a suffix found
    in folders (some scanners and archive exports write them): the content decides, as it
    does for a file given by name.
    """
    try:
        with _open_regular(Path(path)) as fh:
            head = fh.read(1024)
    except (InputImageError, OSError):
        return None
    if head.startswith(b"RIFF"):
        return "webp" if head[8:12] == b"WEBP" else None
    found = next((f for magic, f in _FORMAT_OF_MAGIC.items() if head.startswith(magic)), None)
    return found or ("pdf" if is_pdf_head(head) else None)


def sniff_image(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` is an image or PDF aepipe reads (:func:`sniff_format`)."""
    return sniff_format(path) is not None


def sniff_pdf(path: str | os.PathLike[str]) -> bool | None:
    """Whether the file at ``path`` is a PDF by its content; None if it cannot be read."""
    try:
        with _open_regular(Path(path)) as fh:
            return is_pdf_head(fh.read(1024))
    except (InputImageError, OSError):
        return None


def read_pages(
    path: str | os.PathLike[str],
    *,
    dpi: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    frames: Literal["first", "all"] = "first",
) -> Iterator[Page]:
    """Decode every page of an image or PDF file, lazily.

    The file is never written to and is read lazily: a 500-page PDF or TIFF is not loaded
    into memory at once, only the page being decoded. PDF pages whose rendering has three equal
    channels come out gray (one channel), like a gray PNG. Anything unreadable, whatever the decoder
    raised, becomes one :class:`InputImageError`.

    Args:
        path: the file.
        dpi: resolution at which PDF pages are rendered; None renders each page at its
            scanned image's own resolution (300 DPI for a page without one).
        max_pixels: refuse any page with more pixels than this, before decoding it.
        frames: for animated GIF/WebP, only the ``"first"`` frame or ``"all"`` frames. Every page
            of a multi-page TIFF or PDF is always read.

    Yields:
        One :class:`Page` per page or frame.

    Raises:
        InputImageError: with the file name and a one-line reason, for anything unreadable
            (empty, truncated, not an image, encrypted PDF, a PDF page whose scan image is
            damaged, too many pixels, not a regular file, permission denied, symlink loop).
    """
    path = Path(path)
    with _open_regular(path) as fh:
        try:
            head = fh.read(1024)
            fh.seek(0)
        except OSError as exc:
            raise InputImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if is_pdf_head(head):
            yield from _read_pdf(path, path, dpi, max_pixels)
        else:
            yield from _read_raster(path, fh, max_pixels, frames)


def count_pages(
    path: str | os.PathLike[str],
    frames: Literal["first", "all"] = "first",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> int:
    """How many pages :func:`read_pages` would yield, from the headers only (nothing decoded).

    ``max_pixels``: as for :func:`read_pages` (PIL refuses large headers by its own limit).

    Raises:
        InputImageError: if the file cannot be opened as an image or PDF.
    """
    path = Path(path)
    with _open_regular(path) as fh:
        head = fh.read(1024)
        fh.seek(0)
        if is_pdf_head(head):
            import pypdfium2 as pdfium

            try:
                pdf = pdfium.PdfDocument(str(path))
            except Exception as exc:
                reason = _pdf_failure(path, exc)
                raise InputImageError(f"{path}: cannot open PDF: {reason}") from None
            try:
                return len(pdf)
            finally:
                pdf.close()
        from PIL import Image

        try:
            with pil_pixel_limit(max_pixels), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(fh) as image:
                    return len(_page_frames(image, (image.format or "").lower(), frames))
        except Exception as exc:
            raise InputImageError(f"{path}: cannot read image header ({_why(exc)})") from None


def decode_pages(
    data: bytes,
    name: str | os.PathLike[str],
    *,
    dpi: float | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    frames: Literal["first", "all"] = "first",
    max_pages: int | None = None,
) -> Iterator[Page]:
    """Decode a file held in memory (an upload, a blob) exactly as :func:`read_pages` does.

    Args:
        data: the file's bytes.
        name: used in error messages and as ``meta["source"]``.
        dpi: resolution at which PDF pages are rendered; None renders each page at its
            scanned image's own resolution (300 DPI for a page without one).
        max_pixels: refuse any page with more pixels than this, before decoding it.
        frames: ``"first"`` or ``"all"`` frames of animated GIF/WebP.
        max_pages: refuse a PDF or TIFF with more pages than this, before decoding any.

    Raises:
        InputImageError: naming ``name``, for anything undecodable; its subclasses say why
            (:class:`~aepipe.errors.UnsupportedInputError`,
            :class:`~aepipe.errors.TooManyPixelsError`,
            :class:`~aepipe.errors.TooManyPagesError`).
    """
    path = Path(name)
    if not data:
        raise InputImageError(f"{path}: empty file (0 bytes)")
    if is_pdf_head(data[:1024]):
        yield from _read_pdf(path, bytes(data), dpi, max_pixels, max_pages)
    else:
        yield from _read_raster(path, bytes(data), max_pixels, frames, max_pages)


def read_image(path: str | os.PathLike[str], **kwargs: Any) -> ImageBatch:
    """Read the first page of a file as a one-image batch (gray stays gray, color is RGB)."""
    page = next(read_pages(path, **kwargs))
    return page_batch(page)


def page_batch(page: Page, name: str | None = None) -> ImageBatch:
    """Wrap a page in a one-image :class:`ImageBatch`."""
    stem = name or Path(page.meta.get("source", "image")).stem
    return ImageBatch.from_numpy(page.pixels, [stem], [page.meta])


# ---- descriptive metadata ------------------------------------------------------------------

# First-IFD tags (TIFF's, and EXIF's, which is a TIFF directory) that describe the document,
# not its pixels: DocumentName, ImageDescription, Make, Model, PageName, Artist, Copyright.
# The rest of a TIFF's first IFD (size, orientation,
# compression, strips, resolution, colour) is the file's structure, which the writer makes anew.
# Not DateTime (306), Software (305), HostComputer (316): they describe the file aepipe
# replaces, not the page (as a PDF's modification date becomes the edit's).
_DESCRIPTIVE_TAGS = frozenset({269, 270, 271, 272, 285, 315, 33432})
_ORIENTATION, _EXIF_IFD, _XMP_TAG = 274, 0x8769, 700
# XMP properties that restate what the reading changed: orientation, size, layout, resolution
# and colour of the pixels, and thumbnails of the old pixels.
_STALE_XMP = (
    "tiff:Orientation",
    "tiff:ImageWidth",
    "tiff:ImageLength",
    "tiff:BitsPerSample",
    "tiff:SamplesPerPixel",
    "tiff:PhotometricInterpretation",
    "tiff:Compression",
    "tiff:PlanarConfiguration",
    "tiff:YCbCrSubSampling",
    "tiff:YCbCrPositioning",
    "tiff:XResolution",
    "tiff:YResolution",
    "tiff:ResolutionUnit",
    "exif:PixelXDimension",
    "exif:PixelYDimension",
    "exif:ColorSpace",
    "exif:ComponentsConfiguration",
    "exif:CompressedBitsPerPixel",
    "photoshop:ICCProfile",
    "photoshop:ColorMode",
    "xmp:Thumbnails",
)
# PNG text that is not text: XMP (kept as such) and ImageMagick's hex dumps of profiles.
_PNG_OWN_TEXT = frozenset(
    {"XML:com.adobe.xmp", "Raw profile type exif", "Raw profile type APP1"}
    | {"Raw profile type xmp", "Raw profile type icc", "Raw profile type icm"}
)
# PNG's keywords and the TIFF/EXIF tags that say the same (DocumentName, ImageDescription,
# Artist, Copyright), for TIFF and JPEG outputs of a PNG.
_TEXT_TAGS = {"Title": 269, "Description": 270, "Author": 315, "Copyright": 33432}


def _descriptive_meta(
    image: Any, fmt: str, size: tuple[int, int], turned: bool, srgb: bool
) -> dict[str, Any]:
    """A page's descriptive metadata, less what the reading made wrong, for its outputs.

    Args:
        image: the open file, at the page.
        fmt: its format (``png``, ``tiff`` ...).
        size: the page's (W, H) as read (turned upright).
        turned: whether the reading turned the page a quarter (EXIF orientation 5-8).
        srgb: whether the reading converted its colours to sRGB.

    Returns:
        ``exif`` (an EXIF block: :func:`_page_exif`; a TIFF's descriptive tags), ``xmp``
        (without the properties in ``_STALE_XMP``) and ``text`` (PNG text, a JPEG or GIF
        comment as ``Comment``), each where the file has it.
    """
    out: dict[str, Any] = {}
    if fmt == "tiff":
        tags = getattr(image, "tag_v2", {})
        exif = _exif_bytes({t: _raw(tags[t]) for t in _DESCRIPTIVE_TAGS if t in tags})
    else:
        exif = _page_exif(_exif_block(image, fmt), size, turned, srgb)
    if exif:
        out["exif"] = exif
    xmp = image.info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if isinstance(xmp, bytes) and xmp.strip(b"\0 "):
        out["xmp"] = _without_stale_xmp(xmp)
    text = {k: v for k, v in image.text.items() if k not in _PNG_OWN_TEXT} if fmt == "png" else {}
    comment = image.info.get("comment")
    if comment and "Comment" not in text:
        text["Comment"] = _raw(comment).decode("utf-8", "replace")
    if text:
        out["text"] = text
    return out


def _raw(value: Any) -> Any:
    """A tag's string as the bytes it was read from; other values as they are.

    PIL reads tag strings as Latin-1 and writes them as ASCII ("Müller" would be "M?ller").
    """
    return value.encode("latin-1", "replace") if isinstance(value, str) else value


def _exif_block(image: Any, fmt: str) -> bytes:
    """The file's EXIF block (JPEG APP1, PNG eXIf or ImageMagick's text dump, WebP)."""
    raw = image.info.get("exif")
    if not raw and fmt == "png" and "Raw profile type exif" in image.info:
        try:  # as PIL reads it: three header lines, then hex
            raw = bytes.fromhex("".join(image.info["Raw profile type exif"].split("\n")[3:]))
        except (ValueError, TypeError):
            raw = b""
    return raw if isinstance(raw, bytes) else b""


def _page_exif(
    block: bytes, size: tuple[int, int], turned: bool, srgb: bool, stamp: bool = False
) -> bytes | None:
    """An EXIF block patched in place for the page as read; None if absent or unreadable.

    The orientation becomes 1 (it is applied to the pixels), the pixel sizes the page's, the
    colour space sRGB where colours were converted, the X and Y resolutions swap where the page
    was turned, and the thumbnail (IFD1, of the old pixels) is unlinked. With ``stamp`` (when an
    output is written) the file date becomes :func:`edit_time`. All else stays byte for byte:
    patching keeps the tag types and the offsets maker notes rely on, which PIL's rebuilding of
    a block loses.
    """
    import struct

    data = bytearray(block[6:] if block.startswith(b"Exif\0\0") else block)
    order = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if order is None:
        return None
    w, h = size
    try:
        if struct.unpack_from(order + "H", data, 2)[0] != 42:
            return None
        ifd0 = struct.unpack_from(order + "I", data, 4)[0]
        values = {_ORIENTATION: 1, 256: w, 257: h}
        fields, end = _patch_ifd(data, order, ifd0, values, (282, 283) if turned else ())
        if stamp:
            _date_now(data, order, fields.get(306))
        data = _without_thumbnail(data, order, end)
        if _EXIF_IFD in fields:
            sub = struct.unpack_from(order + "I", data, fields[_EXIF_IFD] + 8)[0]
            values = {0xA002: w, 0xA003: h, **({0xA001: 1} if srgb else {})}
            _patch_ifd(data, order, sub, values, (0xA20E, 0xA20F) if turned else ())
    except struct.error:
        return None  # a damaged block: better none than one with a stale orientation
    return b"Exif\0\0" + bytes(data)


def edit_time() -> datetime.datetime:
    """Now, or ``SOURCE_DATE_EPOCH`` where set (reproducible outputs, as build tools do).

    The date an output records as its change (a PDF's ModDate, an image's EXIF DateTime).
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch.isdigit():
        return datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc)
    return datetime.datetime.now().astimezone()


def _date_now(data: bytearray, order: str, entry: int | None) -> None:
    """Set the DateTime entry (the file's change date) to :func:`edit_time`, in place."""
    import struct

    if entry is None:
        return
    kind, n, where = struct.unpack_from(order + "HII", data, entry + 2)
    if kind == 2 and n == 20 and where + 20 <= len(data):  # ASCII "YYYY:MM:DD HH:MM:SS\0"
        now = edit_time().strftime("%Y:%m:%d %H:%M:%S").encode() + b"\0"
        data[where : where + 20] = now


def _without_thumbnail(data: bytearray, order: str, end: int) -> bytearray:
    """Unlink IFD1 (the thumbnail of the old pixels) and blank its JPEG bytes.

    Unlinked alone, the preview of the original page stays in the block (size, and a privacy
    leak); the bytes are zeroed in place, or cut where they end the block.
    """
    import struct

    ifd1 = struct.unpack_from(order + "I", data, end)[0]
    struct.pack_into(order + "I", data, end, 0)
    try:
        fields, ifd1_end = _patch_ifd(data, order, ifd1, {}, ()) if ifd1 else ({}, 0)
        start, size = (_entry_int(data, order, fields[t]) for t in (0x201, 0x202))
    except (struct.error, KeyError):  # no thumbnail, or a damaged IFD1: unlinked is enough
        return data
    ifd0 = struct.unpack_from(order + "I", data, 4)[0]
    directories = ((ifd0, end + 4), (ifd1, ifd1_end + 4))
    # Only a thumbnail inside the block and off both directories is touched: a damaged
    # pointer must not blank them.
    if start is None or size is None or start < 8 or start + size > len(data):
        return data
    if any(start < hi and lo < start + size for lo, hi in directories):
        return data
    if start + size == len(data):
        return data[:start]
    data[start : start + size] = bytes(size)
    return data


def _entry_int(data: bytearray, order: str, entry: int) -> int | None:
    """The value of a one-count SHORT or LONG directory entry, else None."""
    import struct

    kind, n = struct.unpack_from(order + "HI", data, entry + 2)
    if n != 1 or kind not in (3, 4):
        return None
    return struct.unpack_from(order + ("H" if kind == 3 else "I"), data, entry + 8)[0]


def exif_for_size(block: bytes | None, size: tuple[int, int]) -> bytes | None:
    """An EXIF block read with a page, made ready for an output.

    Its pixel sizes set to ``size`` (a stage may have resized the page), its file date to the
    write's (:func:`edit_time`).
    """
    return _page_exif(block, size, False, False, stamp=True) if block else block


def _patch_ifd(
    data: bytearray, order: str, offset: int, values: dict[int, int], swap: tuple[int, ...]
) -> tuple[dict[int, int], int]:
    """Set integer tags of the TIFF directory at ``offset``, and swap two tags' values, in place.

    Returns:
        Each tag's entry position, and the position of the next-directory pointer.
    """
    import struct

    count = struct.unpack_from(order + "H", data, offset)[0]
    fields: dict[int, int] = {}
    for pos in range(offset + 2, offset + 2 + 12 * count, 12):
        tag, kind, n = struct.unpack_from(order + "HHI", data, pos)
        fields[tag] = pos
        if tag in values and kind in (3, 4) and n == 1:  # SHORT or LONG, held in the entry
            code, top = ("H", 0xFFFF) if kind == 3 else ("I", 0xFFFFFFFF)
            struct.pack_into(order + code, data, pos + 8, min(values[tag], top))
    if len(swap) == 2 and all(t in fields for t in swap):
        a, b = (fields[t] + 8 for t in swap)
        data[a : a + 4], data[b : b + 4] = data[b : b + 4], data[a : a + 4]
    end = offset + 2 + 12 * count
    struct.unpack_from(order + "I", data, end)  # (raises if the pointer is cut off)
    return fields, end


def _exif_bytes(tags: dict[int, Any]) -> bytes:
    """A new EXIF block holding first-IFD ``tags`` (types PIL knows); empty for none."""
    from PIL import Image

    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    return exif.tobytes() if tags else b""


def _without_stale_xmp(xmp: bytes) -> bytes:
    """``xmp`` without the properties in ``_STALE_XMP``, in attribute or element form."""
    import re

    for name in _STALE_XMP:
        prop = re.escape(name.encode())
        xmp = re.sub(rb"\s+" + prop + rb"\s*=\s*(\"[^\"]*\"|'[^']*')", b"", xmp)
        xmp = re.sub(rb"\s*<" + prop + rb"(\s[^>]*)?/>", b"", xmp)
        xmp = re.sub(rb"\s*<" + prop + rb"(\s[^>]*)?>.*?</" + prop + rb"\s*>", b"", xmp, flags=re.S)
    return xmp


def png_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Save arguments that put a page's ``exif``, ``xmp`` and ``text`` into its PNG."""
    from PIL import PngImagePlugin

    kwargs: dict[str, Any] = {}
    if meta.get("exif"):
        kwargs["exif"] = meta["exif"]
    chunks = PngImagePlugin.PngInfo()
    for key, value in (meta.get("text") or {}).items():
        if isinstance(value, PngImagePlugin.iTXt):
            chunks.add_itxt(key, value, value.lang or "", value.tkey or "")
        else:
            chunks.add_text(key, str(value))  # (iTXt where it is not Latin-1)
    if meta.get("xmp"):
        chunks.add_itxt("XML:com.adobe.xmp", meta["xmp"].decode("utf-8", "replace"))
    if chunks.chunks:
        kwargs["pnginfo"] = chunks
    return kwargs


def _carried(image: Any, fmt: str) -> dict[str, Any]:
    """Save arguments that carry a page's profile and metadata from its PNG into a TIFF or JPEG.

    A JPEG takes the EXIF block as it is; a TIFF its descriptive first-IFD tags (PIL writes no
    Exif or GPS IFD through libtiff, which LZW and G4 need). PNG text with a tag of its own
    (``_TEXT_TAGS``) fills that tag where there is no EXIF; XMP goes into TIFF tag 700 or
    JPEG's XMP segment. What a JPEG segment cannot hold (64 KB) is left out, not failed on.
    """
    from PIL import Image

    text, block = getattr(image, "text", None) or {}, image.info.get("exif") or b""
    exif = Image.Exif()
    exif.load(block)
    tags = {t: _raw(exif[t]) for t in _DESCRIPTIVE_TAGS & set(exif)}
    if not block:
        tags = {
            tag: str(text[key]).encode("utf-8") for key, tag in _TEXT_TAGS.items() if text.get(key)
        }
    xmp = image.info.get("xmp")
    if fmt == "tiff":
        tiffinfo = {**tags, **({_XMP_TAG: xmp} if xmp else {})}
        return {"tiffinfo": tiffinfo} if tiffinfo else {}
    kwargs: dict[str, Any] = {}
    if image.info.get("icc_profile"):  # (PIL's TIFF writer takes it from the image itself)
        kwargs["icc_profile"] = image.info["icc_profile"]
    block = block or _exif_bytes(tags)
    if 0 < len(block) <= 65_533:
        kwargs["exif"] = block
    if xmp and len(xmp) <= 65_504:
        kwargs["xmp"] = xmp
    if text.get("Comment"):
        kwargs["comment"] = str(text["Comment"]).encode("utf-8")
    return kwargs


# ---- writing -------------------------------------------------------------------------------


def _current_umask() -> int:
    # mkstemp creates files 0600; outputs should get the usual permissions (0666 & ~umask).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that it appears complete under its final name or not at all.

    The data goes to a hidden temporary file in the same folder (``.aepipe-<name>.<pid>.*.tmp``),
    is flushed to disk, then renamed over the final name. Killing the process at any moment,
    even with SIGKILL, leaves either the old file, the new complete file, or no file; a left-over
    temporary file is removed by :func:`remove_stale_temps` on the next run. The rename replaces
    the name only: a file that ``path`` was a hard or symbolic link to is never modified.

    Args:
        path: final file name; its folder is created if needed.
        write: called with a binary file object open on a temporary file in the same folder.

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w+b") as fh:  # TIFF writers read back what they wrote
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), _FILE_MODE)
            os.fsync(fh.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable across a power cut; best effort (not every FS allows it).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files left by a killed run (SIGKILL cannot clean up after itself).

    Temporary files of a process that is still running (another run writing to the same
    folder) are left alone; their name carries the writer's process id.

    Returns:
        How many files were removed.
    """
    folder = Path(folder)
    removed = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(f"{TEMP_PREFIX}*.tmp"):
        parts = tmp.name.rsplit(".", 3)  # .aepipe-<name>.<pid>.<random>.tmp
        pid = int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None
        if pid is not None and _pid_alive(pid):
            continue
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def to_pil(pixels: np.ndarray | Any) -> Any:
    """Make a PIL image from an HW/HWC uint8 array, a bool array (1-bit) or a PIL image."""
    from PIL import Image

    if isinstance(pixels, Image.Image):
        return pixels
    arr = np.asarray(pixels)
    if arr.dtype == np.bool_:
        return Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 else arr).convert("1")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels; got {arr.dtype}")
    return Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")


_PIL_FORMATS = {"png": "PNG", "tiff": "TIFF", "jpeg": "JPEG"}
SUFFIX_OF = {"png": ".png", "tiff": ".tif", "pdf": ".pdf", "jpeg": ".jpg"}


def write_image(
    pixels: np.ndarray | Any, path: str | os.PathLike[str], dpi: Resolution | None = None
) -> Path:
    """Write one image atomically; the format follows the suffix (.png, .tif/.tiff, .jpg, .pdf)."""
    return write_pages([pixels], path, dpis=[dpi])


def png_bytes(pixels: np.ndarray | Any, dpi: Resolution | None = None) -> bytes:
    """Encode HW/HWC uint8 (or bool, 1-bit) pixels or a PIL image as PNG bytes, with its DPI."""
    buf = io.BytesIO()
    kwargs = {"dpi": _xy(dpi)} if dpi else {}
    to_pil(pixels).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def check_creatable(folder: Path, what: str) -> None:
    """Refuse, before any work, a folder we could not write into.

    Its nearest existing folder must be writable (the folder itself, or the one where it would
    be made): a read-only mount or a folder of another user fails here, in one line, instead of
    after every page was processed. Nothing is created to find out.

    Raises:
        ConfigError: naming the file in the way, or the folder we may not write to.
    """
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"{what} {folder} cannot be made: {part} is a file")
            if not os.access(part, os.W_OK | os.X_OK):
                why = "read-only file system" if _read_only_mount(part) else "no permission"
                raise ConfigError(f"{what} {folder}: cannot write into {part} ({why})")
            return


def _read_only_mount(folder: Path) -> bool:
    """Whether ``folder`` lies on a file system mounted read-only (for the message only)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # statvfs is POSIX only
        return False


def check_image_target(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse, before any work, an image file that :func:`write_image` could not write.

    Args:
        path: the file to write (a contact sheet, a strip, a grid).
        what: how the user named it, for the message (``--grid``, ``sink.grid``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ConfigError: its suffix is not one we write, it is a folder, or a file stands where
            one of its folders would be made.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; give a file name (e.g. grid.png)")
    try:
        _format_of(path)
    except ValueError as exc:
        raise ConfigError(f"{what} {exc}") from None
    check_creatable(path.parent, what)
    return path


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    fmt = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg", ".jpeg": "jpeg"}.get(
        suffix, "pdf" if suffix == ".pdf" else None
    )
    if fmt is None:
        raise ValueError(f"{path}: cannot write this format; use .png, .tif, .jpg or .pdf")
    return fmt


def write_pages(
    pages: Sequence[np.ndarray | Any],
    path: str | os.PathLike[str],
    *,
    dpis: Sequence[Resolution | None] | None = None,
    page_sizes_pt: Sequence[tuple[float, float] | None] | None = None,
) -> Path:
    """Write one or more pages into one file atomically.

    PNG and JPEG take a single page; TIFF and PDF take many. For PDF, ``page_sizes_pt`` keeps
    each output page the size of its input page.

    Args:
        pages: HW/HWC uint8 arrays, bool arrays (written 1-bit) or PIL images.
        path: output file; the suffix picks the format.
        dpis: resolution to record per page (PNG/TIFF metadata; PDF page size if no size given).
        page_sizes_pt: PDF page sizes (W, H) in points, one per page.
    """
    path = Path(path)
    fmt = _format_of(path)
    images = [to_pil(p) for p in pages]
    dpis = list(dpis or [None] * len(images))
    if fmt in ("png", "jpeg") and len(images) != 1:
        raise ValueError(f"{path}: {fmt.upper()} holds one page; got {len(images)}")

    if fmt == "pdf":
        sizes = list(page_sizes_pt or [None] * len(images))
        return atomic_write(path, lambda fh: fh.write(_pdf_bytes(images, dpis, sizes)))

    def write(fh: IO[bytes]) -> None:
        first = images[0]
        kwargs: dict[str, Any] = {}
        if dpis[0]:
            kwargs["dpi"] = _xy(dpis[0])
        if fmt == "tiff":
            kwargs["compression"] = "group4" if first.mode == "1" else "tiff_lzw"
            if len(images) > 1:
                kwargs.update(save_all=True, append_images=images[1:])
        if fmt == "jpeg":
            kwargs["quality"] = 95
            kwargs.update(_carried(first, "jpeg"))
            first = first.convert("L" if first.mode in ("1", "L") else "RGB")
        first.save(fh, format=_PIL_FORMATS[fmt], **kwargs)

    return atomic_write(path, write)


def write_encoded_pages(
    blobs: Sequence[bytes],
    path: str | os.PathLike[str],
    *,
    dpis: Sequence[Resolution | None] | None = None,
    page_sizes_pt: Sequence[tuple[float, float] | None] | None = None,
) -> Path:
    """Write pages already encoded as PNG into one file atomically, one page decoded at a time.

    This is how the runner writes long documents: a 500-page PDF's cleaned pages are kept as
    compressed PNG, never all decoded at once. PNG output is that data as it is, with its
    resolution set, and PDF embeds it as it is (no re-encoding); TIFF decodes and appends one
    page at a time; JPEG decodes and encodes. Each page's ICC profile and metadata in its PNG
    go into TIFF and JPEG pages too (:func:`_carried`).

    Args:
        blobs: one PNG file's bytes per page (mode L, RGB or 1).
        path: output file; the suffix picks the format (.png, .jpg, .tif, .pdf).
        dpis: resolution to record per page.
        page_sizes_pt: PDF page sizes (W, H) in points, one per page.
    """
    from PIL import Image, TiffImagePlugin

    path = Path(path)
    fmt = _format_of(path)
    dpis = list(dpis or [None] * len(blobs))
    if not blobs:
        raise ValueError(f"{path}: no pages to write")
    if fmt in ("png", "jpeg"):
        if len(blobs) != 1:
            raise ValueError(f"{path}: {fmt.upper()} holds one page; got {len(blobs)}")
        if fmt == "png":
            # Already a PNG (zlib level 1): re-encoding it at Pillow's default level 6 took
            # 0.42 s of an A4 page's ~4.5 s, for a file 6% smaller.
            return atomic_write(path, lambda fh: fh.write(png_with_dpi(blobs[0], dpis[0])))
        with Image.open(io.BytesIO(blobs[0])) as image:
            image.load()
            return write_pages([image], path, dpis=dpis)
    if fmt == "pdf":
        sizes = list(page_sizes_pt or [None] * len(blobs))
        return atomic_write(path, lambda fh: pdf_from_pngs(list(blobs), dpis, sizes, fh))

    def write(fh: IO[bytes]) -> None:
        with TiffImagePlugin.AppendingTiffWriter(fh, new=True) as tf:
            for blob, dpi in zip(blobs, dpis, strict=True):
                with Image.open(io.BytesIO(blob)) as image:
                    image.load()
                    kwargs: dict[str, Any] = {
                        "compression": "group4" if image.mode == "1" else "tiff_lzw",
                        **_carried(image, "tiff"),
                    }
                    if dpi:
                        kwargs["dpi"] = _xy(dpi)
                    image.save(tf, format="TIFF", **kwargs)
                tf.newFrame()

    return atomic_write(path, write)


def _pdf_page_size(size: tuple[float, float]) -> tuple[float, float]:
    """Scale a page size (points) into PDF's allowed 3..14,400 units, keeping its aspect.

    A 3 x 3 pixel image at 300 DPI would be 0.7 pt wide, which PDF readers refuse.
    """
    w, h = float(size[0]), float(size[1])
    if min(w, h) < 3.0:
        grow = 3.0 / max(min(w, h), 1e-6)
        w, h = w * grow, h * grow
    if max(w, h) > 14_400.0:
        shrink = 14_400.0 / max(w, h)
        w, h = max(3.0, w * shrink), max(3.0, h * shrink)
    return w, h


def pdf_from_pngs(
    blobs: list[bytes], dpis: list[Resolution | None], sizes: list[Any], fh: IO[bytes]
) -> None:
    """Write a new PDF of PNG-encoded pages into ``fh``, embedding each PNG as it is.

    Args:
        blobs: one PNG file's bytes per page.
        dpis: resolution per page (sets the page size when ``sizes`` has none).
        sizes: page size (W, H) in points per page, or ``None``.
        fh: a binary file open for writing.
    """
    import img2pdf

    pages = iter(zip(blobs, dpis, sizes, strict=True))

    def layout(img_w_px: float, img_h_px: float, ndpi: Any) -> tuple[float, float, float, float]:
        _, dpi, size = next(pages)
        if size is None:
            size = _size_pt(img_w_px, img_h_px, dpi)
        w, h = _pdf_page_size(size)
        return w, h, w, h

    img2pdf.convert(blobs, layout_fun=layout, rotation=img2pdf.Rotation.ifvalid, outputstream=fh)


def png_with_dpi(blob: bytes, dpi: Resolution | None) -> bytes:
    """``blob`` (a PNG file) with its resolution chunk (pHYs) set to ``dpi``, pixels untouched."""
    import struct
    import zlib

    if not blob.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG file")
    chunks, pos = [], 8
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        end = pos + 12 + length
        if blob[pos + 4 : pos + 8] != b"pHYs":
            chunks.append(blob[pos:end])
        pos = end
    if dpi:
        x, y = _xy(dpi)
        # Pixels per metre, rounded as Pillow writes it.
        body = b"pHYs" + struct.pack(">IIB", int(x / 0.0254 + 0.5), int(y / 0.0254 + 0.5), 1)
        phys = struct.pack(">I", 9) + body + struct.pack(">I", zlib.crc32(body))
        chunks.insert(1, phys)  # right after IHDR, before the image data as PNG requires
    return blob[:8] + b"".join(chunks)


def _size_pt(w_px: float, h_px: float, dpi: Resolution | None) -> tuple[float, float]:
    """A page's size in points from its pixels and resolution (300 DPI when it has none)."""
    x, y = _xy(dpi or DEFAULT_DPI)
    return w_px * 72.0 / x, h_px * 72.0 / y


def _pdf_bytes(images: list[Any], dpis: list[Resolution | None], sizes: list[Any]) -> bytes:
    import img2pdf

    blobs = []
    for image in images:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        blobs.append(buf.getvalue())
    pages = iter(zip(images, dpis, sizes, strict=True))

    def layout(img_w_px: float, img_h_px: float, ndpi: Any) -> tuple[float, float, float, float]:
        # img2pdf calls the layout once per image, in order: give each page its own size.
        image, dpi, size = next(pages)
        if size is None:
            size = _size_pt(image.width, image.height, dpi)
        w, h = _pdf_page_size(size)
        return w, h, w, h

    return img2pdf.convert(blobs, layout_fun=layout, rotation=img2pdf.Rotation.ifvalid)


def make_grid(
    images: np.ndarray, ncols: int | None = None, pad: int = 2, fill: int = 255
) -> np.ndarray:
    """Tile N same-sized images into one contact sheet.

    Args:
        images: (N, H, W, C) uint8.
        ncols: columns; defaults to about sqrt(N).
        pad: pixels between tiles.
        fill: padding value.

    Returns:
        (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8.
    """
    n, h, w, c = images.shape
    ncols = ncols or max(1, int(np.ceil(np.sqrt(n))))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid
