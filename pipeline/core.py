"""The job core that every front end (CLI, TOML pipelines, Ray, HTTP) calls.

Front ends parse their inputs, call a function here and map the outcome (an exit code, an HTTP
status from the error class). Nothing that decides what a result looks like lives in a front end.

Generation: :func:`generate` asks any :class:`~aepipe.stage.Generator` for
``sample(n, seed=..., temperature=None)`` (``None``: the weights' default) and passes each batch
through the following stages, so ``gen-faces``, a TOML ``faces`` source, Ray's
:class:`~aepipe.ray.FaceBlockMapper` and ``GET /v1/faces`` give the same pixels for one request.

Jobs over pages: a decoded :class:`~aepipe.io.Page` goes through the stage chain
(:func:`run_pages`), each result becomes an :class:`EncodedPage` (PNG bytes, 1-bit when the page
is bilevel: :func:`encode_page`) named by :func:`page_name`, and the pages of one input become
output files by :func:`output_format` and :func:`write_document` (files) or
:func:`encode_document` (bytes for HTTP). What a page's pixels become (kept as it came, cut to
two levels, or the stage's result) is decided once, by :func:`delivered_pages`, for the files
written and for the arrays the library and Ray return. A PDF made from other inputs goes through
:func:`write_pdf`, the one place that builds a new PDF.

PDF in, PDF out: :func:`edits_in_place` decides, for every front end, that a PDF input written
as PDF is not rebuilt from renderings but cleaned inside the PDF by :func:`clean_pdf_in_place`
(:func:`clean_pdf_bytes` for an upload): its scans are cleaned at their own pixel grid and type,
its text layer, forms, links, outlines and born-digital pages stay as they were
(:mod:`aepipe.pdf_edit`). Errors are classes (:mod:`aepipe.errors`); front ends map the
class to an exit code or an HTTP status (:func:`http_status`).
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import numpy as np

from aepipe.defaults import SEED_MAX
from aepipe.errors import (
    AepipeError,
    ConfigError,
    InputImageError,
    InputTooLargeError,
    NoFaceError,
    ShapeError,
    TooManyPagesError,
    TooManyPixelsError,
    UnsupportedInputError,
    WeightsError,
)

if TYPE_CHECKING:
    import torch

    from aepipe.batch import ImageBatch
    from aepipe.faces_align import FaceChoice
    from aepipe.io import Page
    from aepipe.pdf_edit import PageOutcome, PdfEditOptions
    from aepipe.stage import Generator, Stage
    from aepipe.stages.face_generator import FaceGenerator, FaceModel

Process = Callable[["ImageBatch"], "ImageBatch"]


def as_generator(stage: Stage, where: str | os.PathLike[str]) -> Generator:
    """Return ``stage`` if it follows the generator protocol.

    Raises:
        WeightsError: the weights at ``where`` are for a stage that cannot sample.
    """
    from aepipe.stage import Generator

    if not isinstance(stage, Generator):
        raise WeightsError(f"{where}: weights are for stage {stage.name!r}, which cannot generate")
    return stage


def load_generator(
    name_or_path: str | os.PathLike[str], device: str = "cpu", **overrides: Any
) -> Generator:
    """Load any generator stage from a weights folder (shipped name or path).

    Raises:
        WeightsError: the weights are missing, broken, or for a stage that cannot generate.
        ConfigError: an override is unknown or out of range.
    """
    from aepipe.stage import Generator, load_stage, stage_class
    from aepipe.weights import read_config, resolve

    # The kind first, from the weights' config: a colorizer's weights asked to sample should say
    # so, not that a sampling override is an unknown key of its config.
    name = read_config(resolve(name_or_path))["stage"]
    if not issubclass(stage_class(name), Generator):
        raise WeightsError(f"{name_or_path}: weights are for stage {name!r}, which cannot generate")
    return cast("Generator", load_stage(name_or_path, device=device, **overrides))


def generate(
    generator: Generator,
    n: int,
    *,
    seed: int = 0,
    temperature: float | None = None,
    batch_size: int | None = None,
    first: int = 0,
    stages: Sequence[Stage] = (),
    **options: Any,
) -> Iterator[ImageBatch]:
    """Sample ``n`` images and run each batch through ``stages`` (e.g. a colorizer).

    Args:
        generator: any stage following the generator protocol.
        n: number of images.
        seed: the same seed gives the same images on any device and with any batch size.
        temperature: ``None`` keeps the weights' default (face-vae: 1.2).
        batch_size: images per batch; ``None``: the generator config's.
        first: index of the first image in ``seed``'s sequence (a block of a larger run).
        stages: stages applied to every batch, in order.
        **options: generator-specific extras passed to ``sample`` (e.g. ``concepts``).

    Returns:
        An iterator of batches named ``face_00000`` ... (the generator's names) on the CPU.

    Raises:
        ConfigError: at the call, before anything is sampled: ``seed`` outside
            0 ... :data:`SEED_MAX`, or ``temperature`` or ``batch_size`` outside the generator
            config's range.
    """
    check_seed(seed)
    generator.sampling_temperature(temperature)
    generator.sampling_batch_size(batch_size)
    batches = generator.sample(
        n, seed=seed, temperature=temperature, batch_size=batch_size, first=first, **options
    )
    return _through(batches, stages)


def check_seed(seed: int) -> int:
    """``seed`` if it is in 0 ... :data:`SEED_MAX`, the range of every front end.

    Raises:
        ConfigError: otherwise (torch would fail deep inside with an overflow).
    """
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed must be a whole number from 0 to 2**63 - 1; got {seed}")
    return seed


def _through(batches: Iterator[ImageBatch], stages: Sequence[Stage]) -> Iterator[ImageBatch]:
    for batch in batches:
        for stage in stages:
            batch = stage(batch)
        yield batch


def generate_batch(generator: Generator, n: int, **kwargs: Any) -> ImageBatch:
    """:func:`generate` as one batch (for requests that answer with all images at once).

    Raises:
        ConfigError: ``n`` < 1 (a batch holds at least one image; :func:`generate` yields
            nothing for 0).
    """
    from aepipe.batch import ImageBatch

    if n < 1:
        raise ConfigError(f"a batch of generated images needs n >= 1; got {n}")
    # The generator's own batch size, as gen-faces samples (n may exceed the largest allowed).
    batches = list(generate(generator, n, **kwargs))
    return ImageBatch.concat(batches) if len(batches) > 1 else batches[0]


# ---- pages: naming, encoding, formats ------------------------------------------------------


@dataclass
class EncodedPage:
    """One finished page, kept compressed (a 500-page PDF is never held as raw pixels).

    Attributes:
        name: output stem of the page (:func:`page_name`), e.g. ``scan`` or ``report-p002``.
        png: the page as a PNG file's bytes (mode 1, L or RGB), without a resolution chunk.
        meta: the page's metadata after the stages (``dpi``, ``page_size_pt``, ``bilevel`` ...).
    """

    name: str
    png: bytes
    meta: dict[str, Any] = field(default_factory=dict)


def page_name(stem: str, meta: Mapping[str, Any]) -> str:
    """Output stem of a page: ``stem`` for a one-page file, ``stem-p002`` for page 2 of many."""
    if int(meta.get("pages", 1) or 1) > 1:
        return f"{stem}-p{int(meta['page']) + 1:03d}"
    return stem


def page_uint8(images: Any, index: int) -> np.ndarray:
    """One image of a (N, C, H, W) float tensor as HWC uint8, converted in row strips.

    Converting a 7,000 x 10,000 page in one go would hold several float copies of it. The
    arithmetic is numpy's, on one thread and without the GIL: the file runner calls this in its
    writer thread while the stage keeps torch's threads busy (torch's ops here would start a
    second OpenMP team). Rounding is half to even, as ``torch.round``'s.
    """
    image = images[index]
    c, h, w = image.shape
    out = np.empty((h, w, c), np.uint8)
    step = max(1, (1 << 22) // max(1, w * c))
    for y in range(0, h, step):
        strip = np.nan_to_num(image[:, y : y + step].detach().float().cpu().numpy(), nan=0.0)
        np.clip(strip, 0.0, 1.0, out=strip)
        np.multiply(strip, np.float32(255.0), out=strip)
        np.rint(strip, out=strip)
        np.copyto(out[y : y + step], strip.transpose(1, 2, 0), casting="unsafe")
    return out


def one_bit(pixels: np.ndarray, meta: Mapping[str, Any] | None = None) -> bool:
    """Whether a finished page is delivered and written black and white (1 bit).

    A page the stage marks ``meta["bilevel"]``, a gray result of a bilevel page (read from a
    1-bit image, ``meta["mode"] == "1"``, or of only black and white in 8 bits or a 2-colour
    palette, ``meta["two_level"]``: bilevel stays bilevel, cut at mid-gray), or one whose pixels
    are all pure black or white (e.g. ``clean-scans --binarize``): lossless for such a page,
    written as 1-bit PNG, CCITT group 4 TIFF or 1-bit PDF.

    Args:
        pixels: (H, W, C) uint8 result, C in {1, 3}.
        meta: the page's metadata after the stages.
    """
    from aepipe.io import is_bilevel

    meta = meta or {}
    gray = pixels.ndim == 3 and pixels.shape[-1] == 1
    bilevel_in = meta.get("mode") == "1" or meta.get("two_level")
    return bool(meta.get("bilevel") or (gray and bilevel_in) or is_bilevel(pixels))


def encode_page(pixels: np.ndarray, meta: Mapping[str, Any] | None = None) -> bytes:
    """A finished page as PNG bytes; 1-bit when :func:`one_bit` says so.

    A 1-bit page is cut at mid-gray (its first channel >= 128 is white). The page's ICC profile
    (``meta["icc_profile"]``) is embedded where it fits the result: a gray profile in a gray
    page, sRGB's in a colour one (a colorizer's colour result of a gray page gets none). So is
    its descriptive metadata (``exif``, ``xmp``, ``text``: :func:`aepipe.io.png_metadata`),
    which the writers carry on into TIFF and JPEG outputs.

    Args:
        pixels: (H, W, C) uint8, C in {1, 3}.
        meta: the page's metadata after the stages.
    """
    return _encode_png(pixels, meta or {}, one_bit(pixels, meta))


def _encode_png(pixels: np.ndarray, meta: Mapping[str, Any], bilevel: bool) -> bytes:
    """:func:`encode_page` with its 1-bit decision already made (``bilevel``)."""
    from PIL import Image

    from aepipe.io import exif_for_size, png_metadata

    if bilevel:
        image = Image.fromarray(pixels[..., 0] >= 128).convert("1")
    else:
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    # zlib level 1 with run-length matching (Z_RLE) after PNG's row filters: on a cleaned
    # 300-DPI A4 page 10% smaller and ~20% faster than level 1's default strategy (1-bit:
    # 18% smaller); level 6 saved 6% more for 2-4x the time. Lossless either way.
    if meta.get("exif"):  # its pixel sizes as written (a stage may have resized the page)
        meta = {**meta, "exif": exif_for_size(meta["exif"], image.size)}
    carried = {**_profile_for(image, meta), **png_metadata(dict(meta))}
    image.save(buf, format="PNG", compress_level=1, compress_type=zlib.Z_RLE, **carried)
    return buf.getvalue()


def _profile_for(image: Any, meta: Mapping[str, Any]) -> dict[str, bytes]:
    """``icc_profile=`` for saving ``image`` where the page's profile fits its mode, else {}."""
    from aepipe.batch import icc_space

    profile = meta.get("icc_profile")
    # A 1-bit page is black and white in any gray profile: it needs none.
    fits = {"L": "GRAY", "RGB": "RGB"}.get(image.mode)
    return {"icc_profile": profile} if fits and icc_space(profile) == fits else {}


# ---- what every front end delivers ----------------------------------------------------------

Delivery = Literal["result", "input", "one_bit"]


def _deliver(out: ImageBatch, index: int, source: ImageBatch | None) -> tuple[Delivery, np.ndarray]:
    """The one decision of what image ``index`` of a stage's result becomes, for every front end.

    In order: the input itself when the stage took nothing but its colour (:func:`_as_it_was`),
    then the two-level page where :func:`one_bit` says so (cut at mid-gray), else the result.

    Returns:
        Which of the three it is, and the page as (H, W, C) uint8 (1-bit: 0 or 255, C = 1).
    """
    pixels = page_uint8(out.images, index)
    kind: Delivery = "result"
    if source is not None and _as_it_was(pixels, source):
        pixels, kind = page_uint8(source.images, 0), "input"
    meta = out.meta[index]
    if pixels.shape[-1] == 1:  # the input's levels count for a gray result only
        meta = _levels_meta(meta, source)
    if one_bit(pixels, meta):
        cut = np.where(pixels[..., :1] >= 128, np.uint8(255), np.uint8(0))
        return "one_bit", cut
    return kind, pixels


def _levels_meta(meta: Mapping[str, Any], source: ImageBatch | None) -> Mapping[str, Any]:
    """``meta``, told that its input was two-level when no decoder said how it was read.

    A decoded page's meta has its ``mode`` (and ``two_level``, :func:`aepipe.io.read_pages`);
    an array, PIL image or tensor handed to the library or a Ray image column has none, so the
    input's own pixels tell: one channel of only black and white (a 1-bit or 0/255 image), as
    the decoder decides it for a file.
    """
    if "mode" in meta or "two_level" in meta or source is None or source.channels != 1:
        return meta  # a decoder's page, or an array's (ImageBatch.from_numpy) said how
    x = source.images
    return {**meta, "two_level": True} if bool(((x == 0) | (x == 1)).all()) else meta


def delivered_pixels(out: ImageBatch, index: int, source: ImageBatch | None = None) -> np.ndarray:
    """Image ``index`` of a stage's result as every front end delivers it, (H, W, C) uint8.

    The pixels :func:`encode_result` writes (a 1-bit page as 0 and 255, C = 1), for front ends
    that hand out arrays of files' pages (Ray's ``image`` column of file rows).

    Args:
        out: the stage's result batch.
        index: which image.
        source: that page as it went in (N = 1), or None.
    """
    return _deliver(out, index, source)[1]


def delivered(out: ImageBatch, source: ImageBatch | None = None) -> ImageBatch:
    """A stage's result turned into what every front end delivers, as one batch.

    Per image, the decisions the encoder makes for the CLI, TOML runs and the service
    (:func:`delivered_pages`). Images whose channels then differ (a colour page kept as it
    was beside a cleaned gray one) all come back in RGB (gray replicated), so that they fit
    one (N, 3, H, W) batch.

    Args:
        out: the stage's result, (N, C, H, W).
        source: the batch as it went in (N images), or None.

    Returns:
        (N, C, H, W) float32 in [0, 1], ``out``'s names and meta.
    """
    from aepipe.batch import ImageBatch

    pages = delivered_pages(out, source)
    if len(pages) == 1:
        return pages[0]
    if len({p.channels for p in pages}) > 1:
        pages = [p.rgb() for p in pages]
    return ImageBatch.concat(pages)


def delivered_pages(out: ImageBatch, source: ImageBatch | None = None) -> list[ImageBatch]:
    """Each image of a stage's result as every front end delivers it, one batch (N = 1) each.

    The library (:func:`aepipe.apply`, ``Pipeline.map``) and Ray give the same pixels as the
    files the CLI, TOML runs and the service write (:func:`encode_result`): the input's own
    pixels (colour and 16 bits included) for a page the stage kept as it was; the two-level
    page (exactly 0 or 1, one channel) for a bilevel input or result, as the encoder cuts it;
    else the stage's result as it is (float precision kept).

    Args:
        out: the stage's result, (N, C, H, W).
        source: the batch as it went in, or None (no page is then kept as it was).

    Returns:
        N one-image batches with ``out``'s names and meta.
    """
    import torch

    from aepipe.batch import ImageBatch

    if source is not None and len(source) != len(out):
        source = None  # not one input per result: nothing to keep
    pages = []
    for k in range(len(out)):
        one = None if source is None else ImageBatch(source.images[k : k + 1], [], [{}])
        kind, pixels = _deliver(out, k, one)
        device = out.images.device
        if kind == "input":
            images = one.images.to(device)  # type: ignore[union-attr]
        elif kind == "one_bit":
            images = torch.from_numpy(pixels[None, :, :, 0] == 255)[:, None].float().to(device)
        else:
            images = out.images[k : k + 1]
        pages.append(ImageBatch(images, out.names[k : k + 1], out.meta[k : k + 1]))
    return pages


def encode_result(
    out: ImageBatch, index: int, name: str, source: ImageBatch | None = None
) -> EncodedPage:
    """Image ``index`` of a stage's result batch as an :class:`EncodedPage` named ``name``.

    The page's pixels are those every front end delivers (:func:`delivered_pages`). Thread-safe
    (the file runner encodes in a worker thread while the stage runs): it only reads ``out``,
    and the conversion and zlib release the GIL for most of the work.

    Args:
        out: the stage's result batch.
        index: which image.
        name: the page's output name.
        source: that page as it went in (N = 1), to keep it as it was when nothing but its
            colour was taken.
    """
    meta = out.meta[index]
    kind, pixels = _deliver(out, index, source)
    return EncodedPage(name, _encode_png(pixels, meta, kind == "one_bit"), dict(meta))


def _as_it_was(pixels: np.ndarray, source: ImageBatch) -> bool:
    """Whether ``pixels`` is exactly the luma of the colour page ``source``.

    A gray stage that cleaned nothing (a clean page or a photograph passed through) took only
    the colour, and such a page must come back unchanged; PDFs follow the same rule in place.

    Args:
        pixels: (H, W, C) uint8 result of one page.
        source: that page as it went in, (1, C, H, W).
    """
    from aepipe.batch import to_gray

    if source.channels != 3 or pixels.ndim != 3 or pixels.shape[-1] != 1 or len(source) != 1:
        return False
    top = source.images[:, :, :64]  # a cleaned page usually differs near its top: look there
    if not np.array_equal(pixels[:64], page_uint8(to_gray(top), 0)):
        return False
    return np.array_equal(pixels, page_uint8(source.gray().images, 0))


def encode_results(
    out: ImageBatch, names: Sequence[str], sources: Sequence[ImageBatch] | None = None
) -> list[EncodedPage]:
    """Every image of a stage's result batch as an :class:`EncodedPage` named ``names[i]``.

    ``sources``: the pages as they went in (see :func:`encode_result`).
    """
    return [
        encode_result(out, k, name, None if sources is None else sources[k])
        for k, name in enumerate(names)
    ]


def run_pages(process: Process, pages: Sequence[Page], stem: str) -> list[EncodedPage]:
    """Run each decoded page of one input through ``process`` and encode the results.

    Args:
        process: a stage, a :class:`~aepipe.pipeline.Pipeline` or any batch -> batch callable.
        pages: the input's pages, as :func:`aepipe.io.decode_pages` gives them.
        stem: the input's output stem (its file name without suffix).

    Returns:
        One page per input page, named by :func:`page_name`.
    """
    from aepipe.io import page_batch

    done: list[EncodedPage] = []
    for page in pages:
        name = page_name(stem, page.meta)
        source = page_batch(page, name)
        out = process(source)
        if len(out) != 1:
            raise ShapeError(f"{stem}: the stage returned {len(out)} images for 1")
        done += encode_results(out, [name], [source])
    return done


_KEPT_FORMATS = {"pdf": "pdf", "tif": "tiff", "tiff": "tiff"}


def output_format(
    source: str | os.PathLike[str], fmt: str, keep_tiff: bool = True, kind: str | None = None
) -> str:
    """The output format for an input, decided here for every front end.

    ``same`` keeps PDF as PDF and TIFF as TIFF (unless ``keep_tiff`` is False, as for HTTP
    answers) and makes every other input PNG (lossless, so no JPEG artefacts are added back);
    any other ``fmt`` is used as it is.

    Args:
        source: the input's path or its decoded format (``"pdf"``, the ``format`` of a
            :class:`~aepipe.io.Page`). A path's suffix decides, but for a file that is or is not
            a PDF whatever its name says (:func:`_source_kind`).
        fmt: ``same``, ``png``, ``tiff``, ``pdf`` or ``jpeg``.
        keep_tiff: whether ``same`` keeps TIFF as TIFF.
        kind: ``_source_kind(source)`` when the caller already knows it (no second read).
    """
    if fmt != "same":
        return fmt
    found = _KEPT_FORMATS.get(kind if kind is not None else _source_kind(source), "png")
    return "png" if found == "tiff" and not keep_tiff else found


def _source_kind(source: str | os.PathLike[str]) -> str:
    """An input's kind: its suffix (``pdf``, ``tif`` ...) or its decoded format.

    A PDF is known by its content, as the readers know it (:func:`aepipe.io.sniff_pdf`): a PNG
    named ``.pdf`` is a raster (it was opened as a PDF and failed as a corrupt one), a PDF
    named ``.png`` a PDF. A name that is not a readable file goes by its suffix.
    """
    from aepipe.io import sniff_pdf

    text = str(source).lower()
    kind = Path(text).suffix.lstrip(".") or text
    # A decoded format ("png") is a bare word; a path may be one too ("scans/doc"), as a file.
    named = isinstance(source, os.PathLike) or Path(text).suffix or "/" in text
    if named or Path(source).is_file():
        pdf = sniff_pdf(source)
        if pdf is not None and pdf != (kind == "pdf"):
            return "pdf" if pdf else "raster"
    return kind


# ---- PDF in, PDF out: edited in place -------------------------------------------------------


def edits_in_place(source: str | os.PathLike[str], fmt: str, kind: str | None = None) -> bool:
    """Whether an input is cleaned inside its own PDF rather than rebuilt from renderings.

    Decided here for every front end: a PDF input (by its content, suffix or decoded format,
    as :func:`output_format` reads it) whose output is a PDF (``same`` or ``pdf``).

    Args:
        source: the input's path, or its decoded format (``"pdf"``).
        fmt: the requested output format (``same``, ``pdf``, ``png`` ...).
        kind: as for :func:`output_format`.
    """
    same = output_format(source, "same", kind=kind)
    return same == "pdf" and output_format(source, fmt, kind=kind) == "pdf"


def pdf_options(
    *,
    max_pixels: int,
    dpi: float | None = None,
    clean_born_digital: bool = False,
    jpeg_quality: int | None = None,
    color: Literal["auto", "keep", "gray"] = "auto",
    max_pages: int | None = None,
) -> PdfEditOptions:
    """The editor's options from the knobs front ends expose (``clean-scans``' flags).

    Args:
        max_pixels: refuse any image (or rendering) with more pixels, before decoding it.
        dpi: resolution of pages that must be rendered; None: their scan's own.
        clean_born_digital: render and clean pages without a scan too (default: unchanged).
        jpeg_quality: store cleaned gray and colour scans as JPEG at this quality; None keeps
            lossless scans lossless and JPEG scans JPEG at their own quality.
        color: ``auto`` keeps a colour scan in colour only where it has coloured ink,
            ``keep`` keeps colour, ``gray`` stores gray (or 1-bit).
        max_pages: refuse a PDF with more pages (HTTP uploads).
    """
    from aepipe.pdf_edit import PdfEditOptions

    return PdfEditOptions(
        max_pixels=max_pixels,
        dpi=dpi,
        born_digital="fallback" if clean_born_digital else "keep",
        jpeg_quality="auto" if jpeg_quality is None else jpeg_quality,
        color=color,
        max_pages=max_pages,
    )


def clean_pdf_in_place(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    process: Process,
    options: PdfEditOptions,
) -> list[PageOutcome]:
    """Clean the scans of PDF ``src`` inside the PDF and write it atomically to ``dst``.

    The one PDF-in, PDF-out step of every front end (the runner behind ``clean-scans``,
    ``colorize``, ``denoise`` and TOML pipelines; ``POST /v1/clean-scan`` through
    :func:`clean_pdf_bytes`). Library warnings (pikepdf, pdfium, Pillow) are kept off the
    terminal; a failure is one :class:`~aepipe.errors.AepipeError` line.

    Returns:
        One :class:`~aepipe.pdf_edit.PageOutcome` per page (``edited``, ``passed`` or
        ``rendered``), for a report.

    Raises:
        InputImageError: unreadable, encrypted, over a limit (its subclasses say which).
        ShapeError: ``process`` changed an image's size.
    """
    import warnings

    from aepipe.pdf_edit import edit_pdf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return edit_pdf(Path(src), Path(dst), process, options=options)


def clean_pdf_bytes(
    data: bytes, name: str, process: Process, options: PdfEditOptions
) -> tuple[bytes, list[PageOutcome]]:
    """:func:`clean_pdf_in_place` for a PDF held in memory (an HTTP upload).

    The bytes go to a private temporary folder (the editor reads and writes files), removed
    before returning. Error messages name ``name``, not the temporary file.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="aepipe-") as tmp:
        src = Path(tmp) / (Path(name).name or "upload.pdf")
        src.write_bytes(data)
        dst = Path(tmp) / "out.pdf"
        try:
            outcomes = clean_pdf_in_place(src, dst, process, options)
        except AepipeError as exc:
            raise type(exc)(str(exc).replace(str(src), Path(name).name or "upload")) from None
        return dst.read_bytes(), outcomes


# ---- documents: pages -> output files ------------------------------------------------------


def write_pdf(
    pages: Sequence[EncodedPage],
    fh: IO[bytes],
    source: str | os.PathLike[str] | bytes | None = None,
) -> None:
    """Write ``pages`` as one new PDF into ``fh`` (the output of non-PDF inputs).

    Every PDF that aepipe builds from images (``clean-scans --format pdf`` on images, TOML
    pipelines, ``POST /v1/clean-scan?format=pdf``) is made here; a PDF input written as PDF is
    edited in place instead (:func:`clean_pdf_in_place`). Each page keeps its input page's size
    (``meta["page_size_pt"]``, else its pixel size at ``meta["dpi"]``), and its PNG is embedded
    as it is (no re-encoding).

    Args:
        pages: the finished pages, in order.
        fh: a binary file open for writing.
        source: the input the pages came from (a path, or its bytes for an upload); not read.
    """
    from aepipe.io import page_resolution, pdf_from_pngs

    del source  # a new PDF is built from the pages alone
    pdf_from_pngs(
        [p.png for p in pages],
        [page_resolution(p.meta) for p in pages],
        [p.meta.get("page_size_pt") for p in pages],
        fh,
    )


def write_document(
    pages: Sequence[EncodedPage],
    targets: Sequence[Path],
    source: str | os.PathLike[str] | bytes | None = None,
) -> list[Path]:
    """Write one input's finished pages atomically.

    One file holds every page (PDF, TIFF, or a one-page input), or each page gets its own file
    (``targets`` then has one path per page).

    Args:
        pages: the finished pages, in order.
        targets: output paths; the suffix picks the format.
        source: the input the pages came from, passed on to :func:`write_pdf`.
    """
    from aepipe.io import atomic_write, page_resolution, write_encoded_pages

    if len(targets) not in (1, len(pages)):
        raise ConfigError(f"{len(pages)} pages cannot be written to {len(targets)} files")
    with _own_pages_limit(pages):
        if len(targets) == 1 and targets[0].suffix.lower() == ".pdf":
            return [atomic_write(targets[0], lambda fh: write_pdf(pages, fh, source))]
        if len(targets) == 1:
            blobs, dpis = [p.png for p in pages], [page_resolution(p.meta) for p in pages]
            return [write_encoded_pages(blobs, targets[0], dpis=dpis)]
        for page, target in zip(pages, targets, strict=True):
            write_encoded_pages([page.png], target, dpis=[page_resolution(page.meta)])
    return list(targets)


def _own_pages_limit(pages: Sequence[EncodedPage]) -> contextlib.AbstractContextManager[None]:
    """Pillow's decompression-bomb limit raised to the largest of our own finished pages.

    The TIFF, JPEG and PDF writers reopen the pages' PNGs through Pillow, whose own limit
    (89 Mpx by default) would warn about, or refuse, a page that passed ``--max-pixels`` when
    it was decoded (a rendered PDF page never went through Pillow). Raised for the block only
    (:func:`aepipe.io.pil_pixel_limit`: the limit is process-wide).
    """
    from aepipe.io import pil_pixel_limit

    # A PNG's IHDR chunk (bytes 16-24) holds its width and height.
    largest = max(
        (int.from_bytes(p.png[16:20], "big") * int.from_bytes(p.png[20:24], "big") for p in pages),
        default=0,
    )
    return pil_pixel_limit(largest)


def encode_document(
    pages: Sequence[EncodedPage],
    fmt: str,
    stem: str,
    source: str | os.PathLike[str] | bytes | None = None,
) -> list[tuple[str, bytes]]:
    """One input's finished pages as output files in memory (for HTTP answers).

    Args:
        pages: the finished pages, in order.
        fmt: ``pdf`` (one file with every page) or ``png`` (one file per page).
        stem: the output stem (the PDF is ``<stem>.pdf``).
        source: the input the pages came from, passed on to :func:`write_pdf`.

    Returns:
        ``[(file name, bytes), ...]``: PNG pages are named ``<page name>.png`` with their DPI.
    """
    from aepipe.io import page_resolution, png_with_dpi

    if fmt == "pdf":
        buf = io.BytesIO()
        with _own_pages_limit(pages):
            write_pdf(pages, buf, source)
        return [(f"{stem}.pdf", buf.getvalue())]
    if fmt == "png":
        return [(f"{p.name}.png", png_with_dpi(p.png, page_resolution(p.meta))) for p in pages]
    raise ConfigError(f"format must be 'png' or 'pdf' here; got {fmt!r}")


# ---- faces in photos: find, align, edit, paste back -----------------------------------------

FaceAlign = Literal["auto", "photo", "crop"]
Concepts = Sequence[tuple["torch.Tensor", float]]


WalkMethod = Literal["linear", "slerp", "both"]


def load_face_vae(
    name_or_path: str | os.PathLike[str], device: str = "cpu", **overrides: Any
) -> FaceGenerator:
    """Load face-VAE weights (the photo and latent-space calls need its encoder).

    Raises:
        WeightsError: the weights are missing, broken or for another stage.
    """
    from aepipe.stages.face_generator import FaceGenerator

    return _load_face_stage(name_or_path, device, FaceGenerator, "'face-generator'", overrides)


def load_face_model(
    name_or_path: str | os.PathLike[str], device: str = "cpu", **overrides: Any
) -> FaceModel:
    """Load any face model that reconstructs aligned faces: the face VAE or the face VQ-VAE.

    Raises:
        WeightsError: the weights are missing, broken or for another stage.
    """
    from aepipe.stages.face_generator import FaceModel

    what = "a face model ('face-generator' or 'face-vqvae')"
    return _load_face_stage(name_or_path, device, FaceModel, what, overrides)


def _load_face_stage(name_or_path, device: str, cls: type, what: str, overrides: dict) -> Any:
    """A stage of class ``cls`` from a weights folder, or a WeightsError naming ``what``."""
    from aepipe.stage import load_stage

    stage = load_stage(name_or_path, device=device, **overrides)
    if not isinstance(stage, cls):
        raise WeightsError(f"{name_or_path}: weights are for stage {stage.name!r}, not {what}")
    return stage


def read_photo(path: str | os.PathLike[str]) -> ImageBatch:
    """The first page of an image file as a one-image batch named after the file.

    Raises:
        ConfigError: ``path`` does not exist: a bad argument (exit 2), as a missing input of
            a file job is (:func:`aepipe.runner.plan`).
        InputImageError: the file exists but cannot be read as an image.
    """
    from aepipe.io import page_batch, read_pages

    if not Path(path).exists() and not Path(path).is_symlink():
        raise ConfigError(f"input not found: {path}")
    page = next(iter(read_pages(path)))
    return page_batch(page, Path(path).stem)


def walk_methods(method: WalkMethod) -> list[Literal["linear", "slerp"]]:
    """The interpolation paths ``method`` names (``both``: linear, then great circle)."""
    return ["linear", "slerp"] if method == "both" else [method]


def face_concepts(
    specs: Sequence[str], dirs: Sequence[Path], *, names_only: bool = False
) -> list[tuple[torch.Tensor, float]]:
    """Concept vectors for ``NAME:STRENGTH`` specs (``smile:+1``), looked up in ``dirs``.

    Args:
        specs: e.g. ``["smile:1.5", "eyeglasses:-1"]``; a bare name means strength 1.
        dirs: concept folders, first wins (:func:`~aepipe.stages.face_generator.
            default_concept_dirs`).
        names_only: refuse file paths (HTTP clients may name shipped concepts only).

    Raises:
        ConfigError: a spec is malformed, names a path when ``names_only``, or is not found.
    """
    from aepipe.stages.face_generator import load_concept, parse_concept_arg

    out = []
    for spec in specs:
        name, strength = parse_concept_arg(spec)
        if names_only and not (name and all(c.isalnum() or c in "-_" for c in name)):
            raise ConfigError(f"concept must be NAME:STRENGTH with a plain name; got {spec!r}")
        out.append((load_concept(name, dirs), strength))
    return out


def _is_face_crop(stage: FaceModel, batch: ImageBatch, align: FaceAlign) -> bool:
    """Whether ``batch`` is taken as face crops (centre-cropped) rather than whole photos."""
    return align == "crop" or (align == "auto" and max(batch.size) <= 2 * stage.native_size)


@dataclass
class FacePhoto:
    """A whole photo after :func:`edit_face_photo`, with one report line per face found."""

    batch: ImageBatch
    report: list[str] = field(default_factory=list)


def edit_face_photo(
    stage: FaceGenerator,
    batch: ImageBatch,
    concepts: Concepts | None,
    *,
    face: FaceChoice = "all",
    align: FaceAlign = "auto",
) -> FacePhoto:
    """Edit (or reconstruct) the faces of a photo and return the whole photo.

    The one call behind ``aepipe faces edit|reconstruct``, ``POST /v1/faces/edit`` and the
    library: each face is found, aligned to the VAE's framing, moved along ``concepts``, and
    the change is pasted back at the photo's resolution inside a feathered mask (luma only;
    chroma and every pixel outside the masks stay bit for bit). Face crops (``align="crop"``,
    or ``auto`` on images at most twice the model size) come back as the model's gray decodes.

    Args:
        stage: the face VAE.
        batch: one photo (N = 1), gray or colour, any size.
        concepts: ``(vector, strength)`` pairs (:func:`face_concepts`); ``None`` reconstructs.
        face: ``"all"``, ``"largest"`` or a face index (largest first).
        align: ``auto``, ``photo`` or ``crop``.

    Raises:
        NoFaceError: no face was edited; the message gives the reason per face.
    """
    from aepipe import faces_align
    from aepipe.batch import ImageBatch

    if concepts is not None and not concepts:
        raise ConfigError("give at least one concept (NAME:STRENGTH)")
    if _is_face_crop(stage, batch, align):
        return FacePhoto(stage(batch) if concepts is None else stage.edit(batch, concepts))
    if len(batch) != 1:
        raise ShapeError(f"photos go one at a time; got a batch of {len(batch)}")
    vectors = None if concepts is None else list(concepts)
    result = faces_align.edit_photo(stage, batch.images, vectors, face)
    lines = faces_align.face_report(result, face)
    if not result.edited:
        raise NoFaceError(f"{batch.names[0]}: nothing {result.done}: " + "; ".join(lines))
    return FacePhoto(
        ImageBatch(result.images, list(batch.names), [dict(m) for m in batch.meta]), lines
    )


NoFace = Literal["fail", "keep"]


class FaceEditor:
    """:func:`edit_face_photo` as a batch -> batch step, for every front end.

    ``aepipe faces edit|reconstruct`` (through :func:`aepipe.runner.run_files`), a TOML
    ``[[stages]]`` table with ``faces = {...}``, Ray's :class:`~aepipe.ray.StageMapper` and the
    HTTP routes all run this one step, so one photo gives the same pixels everywhere.

    Args:
        stage: the face VAE.
        concepts: as for :func:`edit_face_photo` (``None`` reconstructs).
        face: which faces.
        align: ``auto``, ``photo`` or ``crop``.
        no_face: ``fail`` raises :class:`~aepipe.errors.NoFaceError` for a photo with no usable
            face (the CLI's failed file, HTTP 422); ``keep`` returns it unchanged (batch jobs
            over mixed photos).
        report: called with ``"<name>: <line>"`` for each face of each photo.
    """

    def __init__(
        self,
        stage: FaceGenerator,
        concepts: Concepts | None,
        *,
        face: FaceChoice = "all",
        align: FaceAlign = "auto",
        no_face: NoFace = "fail",
        report: Callable[[str], None] | None = None,
    ) -> None:
        if concepts is not None and not concepts:
            raise ConfigError("give at least one concept (NAME:STRENGTH)")
        self.stage, self.concepts = stage, concepts
        self.face, self.align, self.no_face, self.report = face, align, no_face, report

    @property
    def device(self) -> Any:
        """The face VAE's device."""
        return self.stage.device

    def __call__(self, batch: ImageBatch) -> ImageBatch:
        """Edit each photo of ``batch`` (several same-sized photos go one at a time).

        Args:
            batch: (N, C, H, W) photos or face crops.

        Returns:
            The photos at their size and channels (face crops: the model's gray decodes).
        """
        from aepipe.batch import ImageBatch

        if _is_face_crop(self.stage, batch, self.align):
            return self._one(batch)
        return ImageBatch.concat([self._one(part) for part in batch.split(1)])

    def _one(self, batch: ImageBatch) -> ImageBatch:
        try:
            done = edit_face_photo(
                self.stage, batch, self.concepts, face=self.face, align=self.align
            )
        except NoFaceError as exc:
            if self.no_face == "fail":
                raise
            if self.report is not None:
                self.report(f"kept unchanged: {exc}")
            return batch
        for line in done.report if self.report is not None else ():
            self.report(f"{batch.names[0]}: {line}")
        return done.batch


def face_strip(rows: Sequence[ImageBatch]) -> np.ndarray:
    """The rows of :func:`interpolate_faces` as one (H, W, C) uint8 sheet, a row per method."""
    from aepipe.batch import ImageBatch
    from aepipe.io import make_grid

    return make_grid(ImageBatch.concat(rows).to_numpy(np.uint8), ncols=len(rows[0]))


def aligned_face(
    stage: FaceModel,
    batch: ImageBatch,
    *,
    face: FaceChoice = "largest",
    align: FaceAlign = "auto",
) -> ImageBatch:
    """One face of a photo warped to the face models' framing (64x64 gray), or a crop as it is.

    For the face VAE and the face VQ-VAE alike (``faces interpolate``, ``traverse --image``,
    ``vq-interpolate``).

    Raises:
        NoFaceError: the photo has no usable face (``face`` picks which; reason per face).
    """
    from aepipe import faces_align
    from aepipe.batch import ImageBatch

    if _is_face_crop(stage, batch, align):
        return batch
    faces = faces_align.find_faces(batch.images[:1], mean_face=faces_align.mean_face(stage))
    chosen = faces_align.select_faces(faces, "largest" if face == "all" else face)
    if not chosen:
        lines = faces_align.face_report(faces_align.PhotoEdit(batch.images, faces, []), face)
        raise NoFaceError(f"{batch.names[0]}: no face to use: " + "; ".join(lines))
    crop = faces_align.align_crops(batch.images[:1], chosen[:1])
    return ImageBatch(crop, batch.names[:1], [dict(batch.meta[0])])


def interpolate_faces(
    stage: FaceGenerator,
    a: ImageBatch,
    b: ImageBatch,
    steps: int,
    methods: Sequence[Literal["linear", "slerp"]] = ("linear",),
    *,
    face: FaceChoice = "largest",
    align: FaceAlign = "auto",
) -> list[ImageBatch]:
    """Walk the latent space from the face in photo ``a`` to the one in ``b``.

    The one call behind ``aepipe faces interpolate`` and the library: each photo's face is
    aligned first (:func:`aligned_face`), so ordinary photos work as well as face crops.

    Returns:
        One batch of ``steps`` decoded faces per method, ends included.
    """
    za, zb = (stage.encode(aligned_face(stage, x, face=face, align=align))[0] for x in (a, b))
    return [stage.interpolate(za, zb, steps, m) for m in methods]


def named_by_method(rows: Sequence[ImageBatch], methods: Sequence[str]) -> list[ImageBatch]:
    """The rows of :func:`interpolate_faces`, each frame named ``<method>_<name>``.

    ``linear_step_00`` ...: the file names of ``faces interpolate --frames`` and TOML sinks.
    """
    from aepipe.batch import ImageBatch

    return [
        ImageBatch(row.images, [f"{m}_{n}" for n in row.names], row.meta)
        for m, row in zip(methods, rows, strict=True)
    ]


# ---- outcomes: error classes -> HTTP -------------------------------------------------------

# Most specific first: the first class an error is an instance of decides.
_HTTP_STATUS: tuple[tuple[type[BaseException], int, str], ...] = (
    (TooManyPixelsError, 413, "too_many_pixels"),
    (TooManyPagesError, 413, "too_many_pages"),
    (InputTooLargeError, 413, "too_large"),
    (UnsupportedInputError, 415, "unsupported"),
    (NoFaceError, 422, "no_face"),
    (InputImageError, 422, "corrupt"),
    (ShapeError, 422, "bad_image"),
    (ConfigError, 422, "invalid"),
    (WeightsError, 503, "weights"),
    (AepipeError, 500, "internal"),
)


def http_status(exc: BaseException) -> tuple[int, str] | None:
    """``(HTTP status, error code)`` for one of aepipe's errors, decided by its class.

    Returns ``None`` for an exception aepipe did not raise on purpose (an internal error).
    """
    for cls, status, code in _HTTP_STATUS:
        if isinstance(exc, cls):
            return status, code
    return None
