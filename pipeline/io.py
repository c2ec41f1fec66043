"""Reading and writing image files: the only module that touches image files on disk.

Reading decodes PNG, JPEG, TIFF (every page), BMP, WebP, GIF and PDF (every page rendered at a
chosen DPI) into :class:`Page` objects whose pixels :class:`~pipeline.batch.ImageBatch` takes.
Sizes are checked against a pixel limit *before* decoding, so a decompression bomb is refused
without allocating it. Writing is atomic: a temporary file in the target folder is renamed over
the final name only once complete, so a crash never leaves a partial file under a final name.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from pipeline.batch import ImageBatch, pil_to_array
from pipeline.defaults import DEFAULT_DPI, DEFAULT_MAX_PIXELS
from pipeline.errors import InputImageError
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".pdf"}
)
OutputFormat = Literal["same", "png", "tiff", "pdf", "jpeg"]
TEMP_PREFIX = ".aepipe-"


@dataclass
class Page:
    """One decoded page or frame.

    Attributes:
        pixels: HWC array (uint8, uint16 or float32 in [0, 1]); C in 1..4.
        meta: ``source``, ``page``, ``pages``, ``format``, ``mode``, ``size`` (W, H), ``dpi`` and,
            for PDF pages, ``page_size_pt`` (W, H in points).
    """

    pixels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def is_image_path(path: Path) -> bool:
    """Whether the suffix is one aepipe reads."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InputImageError(f"{path}: image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputImageError(
            f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit of "
            f"{max_pixels:,} (raise it with --max-pixels if the file is trusted)"
        )


def _dpi_of(info: dict[str, Any]) -> float | None:
    dpi = info.get("dpi")
    if isinstance(dpi, tuple) and dpi and dpi[0]:
        return float(dpi[0])
    return None


def _read_raster(
    path: Path, data: bytes, max_pixels: int, frames: Literal["first", "all"]
) -> Iterator[Page]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        # Our own limit is checked below from the header; PIL's bomb guard stays as a backstop.
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InputImageError(
            f"{path}: header claims more pixels than PIL's decompression-bomb guard allows; "
            f"this exceeds the limit of {max_pixels:,} pixels"
        ) from None
    except UnidentifiedImageError:
        raise InputImageError(f"{path}: not an image (or an unsupported format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputImageError(f"{path}: cannot read image header ({exc})") from None
    fmt = (image.format or path.suffix.lstrip(".")).lower()
    n_frames = int(getattr(image, "n_frames", 1) or 1)
    # Multi-page TIFFs are documents: every page counts. Animated GIF/WebP are not pages.
    take_all = fmt == "tiff" or frames == "all"
    count = n_frames if take_all else 1
    for index in range(count):
        try:
            image.seek(index)
            _check_pixels(path, image.width, image.height, max_pixels)
            frame = ImageOps.exif_transpose(image) if index == 0 else image
            frame.load()
            pixels = pil_to_array(frame)
        except InputImageError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            where = f" page {index + 1}" if count > 1 else ""
            raise InputImageError(f"{path}{where}: corrupt or truncated image ({exc})") from None
        yield Page(
            pixels,
            {
                "source": str(path),
                "page": index,
                "pages": count,
                "format": fmt,
                "mode": image.mode,
                "size": (frame.width, frame.height),
                "dpi": _dpi_of(image.info),
            },
        )


def _read_pdf(path: Path, data: bytes, dpi: int, max_pixels: int) -> Iterator[Page]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        reason = str(exc)
        if "password" in reason.lower():
            reason = "encrypted PDF (a password is needed)"
        raise InputImageError(f"{path}: cannot open PDF: {reason}") from None
    try:
        count = len(pdf)
        if count == 0:
            raise InputImageError(f"{path}: PDF has no pages")
        scale = dpi / 72.0
        for index in range(count):
            page = pdf[index]
            try:
                w_pt, h_pt = page.get_size()
                w_px, h_px = round(w_pt * scale), round(h_pt * scale)
                _check_pixels(path, w_px, h_px, max_pixels)
                bitmap = page.render(scale=scale)
                pil = bitmap.to_pil()
            except pdfium.PdfiumError as exc:
                raise InputImageError(f"{path} page {index + 1}: cannot render ({exc})") from None
            finally:
                page.close()
            yield Page(
                pil_to_array(pil),
                {
                    "source": str(path),
                    "page": index,
                    "pages": count,
                    "format": "pdf",
                    "mode": pil.mode,
                    "size": (pil.width, pil.height),
                    "dpi": float(dpi),
                    "page_size_pt": (float(w_pt), float(h_pt)),
                },
            )
    finally:
        pdf.close()


def read_pages(
    path: str | os.PathLike[str],
    *,
    dpi: int = DEFAULT_DPI,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    frames: Literal["first", "all"] = "first",
) -> Iterator[Page]:
    """Decode every page of an image or PDF file, lazily.

    Args:
        path: the file.
        dpi: resolution at which PDF pages are rendered.
        max_pixels: refuse any page with more pixels than this, before decoding it.
        frames: for animated GIF/WebP, only the ``"first"`` frame or ``"all"`` frames. Every page
            of a multi-page TIFF or PDF is always read.

    Yields:
        One :class:`Page` per page or frame.

    Raises:
        InputImageError: with the file name and reason, for anything unreadable.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise InputImageError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise InputImageError(f"{path}: permission denied") from None
    except FileNotFoundError:
        raise InputImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise InputImageError(f"{path}: empty file (0 bytes)")
    if data[:5] == b"%PDF-":
        yield from _read_pdf(path, data, dpi, max_pixels)
    else:
        yield from _read_raster(path, data, max_pixels, frames)


def read_image(path: str | os.PathLike[str], **kwargs: Any) -> ImageBatch:
    """Read the first page of a file as a one-image batch (gray stays gray, color is RGB)."""
    page = next(read_pages(path, **kwargs))
    return page_batch(page)


def page_batch(page: Page, name: str | None = None) -> ImageBatch:
    """Wrap a page in a one-image :class:`ImageBatch`."""
    stem = name or Path(page.meta.get("source", "image")).stem
    return ImageBatch.from_numpy(page.pixels, [stem], [page.meta])


# ---- writing -------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that it appears complete under its final name or not at all.

    Args:
        path: final file name; its folder is created if needed.
        write: called with a binary file object open on a temporary file in the same folder.

    Returns:
        The final path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as fh:  # TIFF writers read back what they wrote
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left by a killed run (SIGKILL cannot clean up after itself)."""
    removed = 0
    if folder.is_dir():
        for tmp in folder.rglob(f"{TEMP_PREFIX}*.tmp"):
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
    pixels: np.ndarray | Any, path: str | os.PathLike[str], dpi: float | None = None
) -> Path:
    """Write one image atomically; the format follows the suffix (.png, .tif/.tiff, .jpg, .pdf)."""
    return write_pages([pixels], path, dpis=[dpi])


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
    dpis: Sequence[float | None] | None = None,
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
            kwargs["dpi"] = (dpis[0], dpis[0])
        if fmt == "tiff":
            kwargs["compression"] = "group4" if first.mode == "1" else "tiff_lzw"
            if len(images) > 1:
                kwargs.update(save_all=True, append_images=images[1:])
        if fmt == "jpeg":
            kwargs["quality"] = 95
            first = first.convert("L" if first.mode in ("1", "L") else "RGB")
        first.save(fh, format=_PIL_FORMATS[fmt], **kwargs)

    return atomic_write(path, write)


def _pdf_bytes(images: list[Any], dpis: list[float | None], sizes: list[Any]) -> bytes:
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
            scale = 72.0 / (dpi or DEFAULT_DPI)
            size = (image.width * scale, image.height * scale)
        return size[0], size[1], size[0], size[1]

    return img2pdf.convert(blobs, layout_fun=layout, rotation=img2pdf.Rotation.ifvalid)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
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
