"""OCRmyPDF plugin: our scan denoiser cleans what Tesseract reads (and, optionally, what is stored).

Use it from OCRmyPDF's command line::

    ocrmypdf --plugin aepipe.ocrmypdf in.pdf out.pdf     # Tesseract reads cleaned pages
    ocrmypdf --plugin aepipe.ocrmypdf --force-ocr --aepipe-clean-final in.pdf out.pdf

or through :func:`ocr_file` (what ``clean-scans --ocr`` calls). The plugin implements OCRmyPDF's
documented pluggy hooks (``ocrmypdf/pluginspec.py``): ``add_options``, ``check_options``,
``filter_ocr_image`` and ``filter_page_image``. Everything else (``--jobs``, ``--pages``,
``--output-type pdfa``, page sizes, DPI) stays OCRmyPDF's. The model is loaded lazily, once per
worker process (OCRmyPDF's workers are threads by default, processes with ``--no-use-threads``),
and cached by (weights, device).

Needs the ``[ocr]`` extra and the Debian packages ``tesseract-ocr``, ``tesseract-ocr-eng`` and
``ghostscript``; :func:`missing_tools` names what is absent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from aepipe.defaults import DEFAULT_DPI
from aepipe.errors import AepipeError, InputImageError

if TYPE_CHECKING:
    from PIL import Image

    from aepipe.runner import FileRecord, RunOptions, Summary
    from aepipe.stages.scan_denoiser import ScanDenoiser

try:  # The hooks are only registered when OCRmyPDF is installed; the helpers work without it.
    from ocrmypdf import hookimpl
except ImportError:  # pragma: no cover - exercised only without the [ocr] extra

    def hookimpl(func: Any) -> Any:  # type: ignore[no-redef]  # noqa: D103
        return func


DEFAULT_WEIGHTS = "scan-denoiser"
PLUGIN = __name__  # "aepipe.ocrmypdf"; follows a rename of the package

# (what is probed, how to install it); a probe starting with "py:" is an importable module.
_TOOLS = (
    ("py:ocrmypdf", "the Python package ocrmypdf (pip install 'aepipe[ocr]')"),
    (
        "tesseract",
        "the Debian package tesseract-ocr (apt-get install tesseract-ocr tesseract-ocr-eng)",
    ),
    ("gs", "the Debian package ghostscript (apt-get install ghostscript)"),
)


class OcrSetupError(AepipeError):
    """A tool the OCR features need is not installed. The message names the package."""


def missing_tools() -> list[str]:
    """Names (with the install command) of the OCR tools that are not installed, in order."""
    missing = []
    for probe, package in _TOOLS:
        if probe.startswith("py:"):
            found = importlib.util.find_spec(probe[3:]) is not None
        else:
            found = shutil.which(probe) is not None
        if not found:
            missing.append(package)
    return missing


def check_setup() -> None:
    """Raise :class:`OcrSetupError` naming every missing OCR tool; return if all are there."""
    missing = missing_tools()
    if len(missing) == 1:
        raise OcrSetupError(f"OCR needs {missing[0]}, which is not installed")
    if missing:  # all in one message, so one install round fixes the set-up
        raise OcrSetupError(
            f"OCR needs {'; '.join(missing[:-1])} and {missing[-1]}, which are not installed"
        )


# --- the model, once per process ------------------------------------------------------------

_MODELS: dict[tuple[str, str, int], ScanDenoiser] = {}
_MODELS_LOCK = threading.Lock()


def denoiser(weights: str = DEFAULT_WEIGHTS, device: str = "cpu", views: int = 1) -> ScanDenoiser:
    """The scan denoiser for ``weights`` and ``views``, loaded on first use, kept for the process.

    OCRmyPDF's page workers are threads sharing this cache (or forked processes, each with
    its own); the lock makes concurrent first calls load the weights once.
    """
    key = (str(weights), device, views)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from aepipe.stages.scan_denoiser import ScanDenoiser

            _MODELS[key] = ScanDenoiser.from_pretrained(weights, device=device, views=views)
        return _MODELS[key]


def clean_page(
    image: Image.Image, weights: str = DEFAULT_WEIGHTS, *, device: str = "cpu", views: int = 1
) -> Image.Image:
    """Clean one page image: same pixel size and DPI, mode ``L``.

    Args:
        image: a page of any PIL mode; its ``info["dpi"]`` is carried over.
        weights: weights name or folder of a scan denoiser.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        views: the stage's ``views`` (shifted and mirrored views averaged).
    """
    from aepipe.batch import ImageBatch

    out = denoiser(weights, device, views)(ImageBatch.from_pil([image])).to_pil()[0]
    if "dpi" in image.info:
        out.info["dpi"] = image.info["dpi"]
    return out


# --- OCRmyPDF hooks -------------------------------------------------------------------------


def _opt(options: Any, name: str, default: Any) -> Any:
    # Plugin options live in OcrOptions' extra attributes; getattr covers CLI and API alike.
    value = getattr(options, name, None)
    return default if value is None else value


@hookimpl
def add_options(parser: Any) -> None:
    """Add the ``--aepipe-*`` options (weights, clean-final, binarize, device, views).

    Through the API they are the keywords ``aepipe_weights=`` etc. of ``ocrmypdf.ocr``.
    """
    group = parser.add_argument_group("aepipe", "Clean pages with aepipe's scan denoiser")
    group.add_argument(
        "--aepipe-weights",
        metavar="NAME_OR_DIR",
        default=None,
        help=f"Scan-denoiser weights (name or folder; default {DEFAULT_WEIGHTS}).",
    )
    group.add_argument(
        "--aepipe-clean-final",
        action="store_true",
        default=None,
        help="Also store the cleaned page in the output (needs --force-ocr or another "
        "option that rasterizes pages, e.g. --deskew).",
    )
    group.add_argument(
        "--aepipe-binarize",
        action="store_true",
        default=None,
        help="With --aepipe-clean-final: store bilevel pages (CCITT G4).",
    )
    group.add_argument(
        "--aepipe-device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="Where the denoiser runs (default cpu).",
    )
    group.add_argument(
        "--aepipe-views",
        type=int,
        choices=range(1, 9),
        metavar="N",
        default=None,
        help="Average the denoiser over N shifted and mirrored views of each page (1-8, "
        "default 1; N times slower).",
    )


@hookimpl
def check_options(options: Any) -> None:
    """Fail early, in the main process, when the weights cannot be loaded."""
    from ocrmypdf.exceptions import BadArgsError

    from aepipe.errors import WeightsError

    try:
        denoiser(**_denoiser_options(options))
    except WeightsError as exc:
        raise BadArgsError(f"aepipe: {exc}") from exc


def _denoiser_options(options: Any) -> dict[str, Any]:
    """The denoiser the ``--aepipe-*`` options name: :func:`clean_page`'s keywords."""
    return dict(
        weights=_opt(options, "aepipe_weights", DEFAULT_WEIGHTS),
        device=_opt(options, "aepipe_device", "cpu"),
        views=_opt(options, "aepipe_views", 1),
    )


@hookimpl
def filter_ocr_image(page: Any, image: Image.Image) -> Image.Image:
    """Clean the image Tesseract reads (then apply Tesseract's own size limits)."""
    from ocrmypdf.builtin_plugins import tesseract_ocr

    options = page.options
    cleaned = clean_page(image, **_denoiser_options(options))
    if _same_raster(options):
        # The stored page is the same raster: keep the result so filter_page_image needs no
        # second pass through the network.
        cleaned.save(_reuse_path(page), dpi=_int_dpi(image))
    # This hook is first-result: ours replaces Tesseract's, so call it for its size limits.
    return tesseract_ocr.filter_ocr_image(page=page, image=cleaned)


@hookimpl
def filter_page_image(page: Any, image_filename: Path) -> Path:
    """With ``--aepipe-clean-final``, store the cleaned page (PNG, or CCITT G4 when bilevel)."""
    from PIL import Image

    options = page.options
    if not _opt(options, "aepipe_clean_final", False):
        return image_filename
    with Image.open(image_filename) as im:
        im.load()
    dpi = _int_dpi(im)
    reuse = _reuse_path(page)
    cleaned = None
    if _same_raster(options) and reuse.exists():
        with Image.open(reuse) as prev:
            if prev.size == im.size:
                prev.load()
                cleaned = prev
    if cleaned is None:
        cleaned = clean_page(im, **_denoiser_options(options))
    if _opt(options, "aepipe_binarize", False):
        # The stage's cut (threshold 0.5) on the 8-bit page; img2pdf embeds a G4 TIFF as a
        # CCITTFax stream without re-encoding it.
        bilevel = cleaned.point(lambda v: 255 if v >= 128 else 0).convert("1", dither=None)
        out = image_filename.with_name(image_filename.stem + "_aepipe.tif")
        bilevel.save(out, compression="group4", dpi=dpi)
    else:
        out = image_filename.with_name(image_filename.stem + "_aepipe.png")
        cleaned.save(out, dpi=dpi)
    return out


def _same_raster(options: Any) -> bool:
    # OCRmyPDF's own test for "the image for OCR is the presentation image": no unpaper, no
    # vector removal (see make_intermediate_images in ocrmypdf/_pipelines/_common.py).
    return bool(_opt(options, "aepipe_clean_final", False)) and not any(
        getattr(options, name, False) for name in ("clean", "clean_final", "remove_vectors")
    )


def _reuse_path(page: Any) -> Path:
    return Path(page.get_path("aepipe_ocr_clean.png"))


def _has_dpi(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return float(im.info.get("dpi", (0, 0))[0]) > 1
    except OSError:
        return False  # OCRmyPDF reports the unreadable file


def _int_dpi(image: Image.Image) -> tuple[int, int]:
    dpi = image.info.get("dpi", (300, 300))
    return round(float(dpi[0])), round(float(dpi[1]))


# --- clean-scans --ocr ----------------------------------------------------------------------


def ocr_file(
    src: str | Path,
    dst: str | Path,
    *,
    weights: str = DEFAULT_WEIGHTS,
    binarize: bool = False,
    jobs: int | None = None,
    dpi: float = DEFAULT_DPI,
    device: str = "cpu",
    output_type: str = "auto",
    language: Sequence[str] = ("eng",),
    pages: str | None = None,
    views: int = 1,
) -> Path:
    """Write ``src`` (a PDF or an image) as a cleaned, searchable PDF at ``dst``.

    Every page is rasterized at its own resolution, cleaned by the scan denoiser (for both
    Tesseract and the stored image) and given Tesseract's text layer; page sizes are kept.

    Args:
        src: PDF, PNG, JPEG or TIFF (all TIFF frames become pages).
        dst: output PDF (its folder must exist).
        weights: scan-denoiser weights name or folder.
        binarize: store bilevel pages (CCITT G4); otherwise gray PNG (Flate, lossless).
        jobs: OCRmyPDF workers (default: its own, one per CPU).
        dpi: resolution assumed for images that record none.
        device: ``"cpu"`` or ``"cuda"``.
        output_type: OCRmyPDF's: ``"auto"`` (its default) gives PDF/A-2b when that needs no
            re-encoding, ``"pdfa"`` always (Ghostscript if needed), ``"pdf"`` never. The stored
            G4 and PNG streams were kept as they are in all three in our tests.
        language: Tesseract languages.
        pages: OCRmyPDF page selection (e.g. ``"1,3-5"``); other pages are copied as they are.
        views: the scan denoiser's ``views`` (shifted and mirrored views averaged).

    Raises:
        OcrSetupError: OCRmyPDF, Tesseract or Ghostscript is not installed.
        InputImageError: OCRmyPDF rejected the input.
    """
    check_setup()
    import ocrmypdf

    src, dst = Path(src), Path(dst)
    kwargs: dict[str, Any] = {}
    if src.suffix.lower() != ".pdf" and not _has_dpi(src):
        kwargs["image_dpi"] = dpi
    if pages:
        kwargs["pages"] = pages
    # pikepdf's check_linearization (called by OCRmyPDF after writing) leaves sys.stderr
    # pointing at a StringIO (pikepdf 10.18); restore the streams so our messages still show.
    streams = sys.stdout, sys.stderr
    try:
        code = ocrmypdf.ocr(
            src,
            dst,
            plugins=[PLUGIN],
            force_ocr=True,
            language=list(language),
            jobs=jobs,
            output_type=output_type,
            # Level 0 leaves our G4 streams alone (without jbig2enc there is nothing better).
            optimize=0 if binarize else 1,
            progress_bar=False,
            aepipe_weights=str(weights),
            aepipe_clean_final=True,
            aepipe_binarize=binarize,
            aepipe_device=device,
            aepipe_views=views,
            **kwargs,
        )
    except (ocrmypdf.exceptions.ExitCodeException, OSError, ValueError) as exc:
        # One bad file fails alone, as in every file command (PIL raises OSError/ValueError).
        raise InputImageError(f"{src}: OCRmyPDF: {exc or type(exc).__name__}") from exc
    finally:
        sys.stdout, sys.stderr = streams
    if code != ocrmypdf.ExitCode.ok:
        raise InputImageError(f"{src}: OCRmyPDF exited with {code!r}")
    return dst


def ocr_files(
    inputs: Sequence[str | Path],
    options: RunOptions,
    *,
    weights: str = DEFAULT_WEIGHTS,
    binarize: bool = False,
    device: str = "cpu",
    jobs: int | None = None,
    on_record: Callable[[FileRecord, int, int], None] | None = None,
    views: int = 1,
) -> Summary:
    """``clean-scans --ocr``: one cleaned, searchable PDF per input file, in the runner's layout.

    Inputs are listed and the output folder checked by :func:`aepipe.runner.plan` (same
    rules as every file command); ``<out>/<relative name>.pdf`` is written atomically, and an
    existing output is skipped unless ``options.overwrite``.

    Args:
        inputs: files and folders.
        options: the runner's options (``out_dir``, ``recursive``, ``overwrite``, ``dpi``).
        weights: scan-denoiser weights name or folder.
        binarize: bilevel pages stored as CCITT G4.
        device: where the denoiser runs.
        jobs: OCRmyPDF workers per file.
        on_record: called after each file with (record, files done, files planned).
        views: the scan denoiser's ``views``.

    Raises:
        OcrSetupError: a tool is missing (checked before anything is read or written).
        ConfigError: bad inputs or output folder.
        WeightsError: the weights cannot be loaded.
    """
    from aepipe.runner import Summary, plan, write_report

    check_setup()
    start = time.perf_counter()
    # Every output is a PDF: planning for PDF gives scan.png and scan.pdf distinct names.
    options = dataclasses.replace(options, fmt="pdf")
    planned, records, out_dir = plan(inputs, options)
    summary = Summary(records=list(records), out_dir=str(out_dir))
    if planned:
        denoiser(weights, device, views)  # a weights problem stops the run here (WeightsError)
    settings = dict(weights=weights, binarize=binarize, jobs=jobs, device=device, views=views)
    try:
        for job in planned:
            record = _ocr_job(job, options, out_dir, settings)
            summary.records.append(record)
            if on_record is not None:
                on_record(record, len(summary.records) - len(records), len(planned))
    finally:
        summary.seconds = time.perf_counter() - start
        if options.report:
            write_report(options.report, summary)
    return summary


def _ocr_job(job: Any, options: RunOptions, out_dir: Path, settings: dict[str, Any]) -> FileRecord:
    """One input of :func:`ocr_files`: its searchable PDF written atomically, or skipped."""
    from aepipe.runner import FileRecord, output_paths

    [dst] = output_paths(job, None, options, out_dir)
    t0 = time.perf_counter()
    if dst.exists() and not options.overwrite:
        record = FileRecord(str(job.src), "skipped", [str(dst)], "output exists")
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.part")
        try:
            # --dpi is an override; an image that records no resolution gets 300.
            ocr_file(job.src, tmp, dpi=options.dpi or DEFAULT_DPI, **settings)
            tmp.replace(dst)
            record = FileRecord(str(job.src), "ok", [str(dst)], pages=_page_count(dst))
        except InputImageError as exc:
            record = FileRecord(str(job.src), "failed", reason=str(exc))
        finally:
            tmp.unlink(missing_ok=True)
    record.seconds = time.perf_counter() - t0
    return record


def _page_count(pdf: Path) -> int:
    import pikepdf

    with pikepdf.open(pdf) as doc:
        return len(doc.pages)


def run_ocr_command(
    inputs: Sequence[Path],
    options: RunOptions,
    weights: str,
    *,
    binarize: bool,
    keep_color: bool,
    device: str,
    quiet: bool,
    views: int = 1,
) -> NoReturn:
    """The ``clean-scans --ocr`` command body: check the set-up, OCR every file, exit.

    Exits with :attr:`~aepipe.errors.ExitCode.SETUP_ERROR` and one line naming the package
    when a tool is missing.
    """
    from aepipe.cli.common import cli_errors, fail, finish_summary, progress_bar, require_jobs
    from aepipe.errors import ConfigError, ExitCode
    from aepipe.runner import plan

    with cli_errors():
        try:
            check_setup()
        except OcrSetupError as exc:
            fail(str(exc), ExitCode.SETUP_ERROR)
        if keep_color:
            raise ConfigError("--keep-color cannot be combined with --ocr (pages are stored gray)")
        if options.fmt not in ("same", "pdf"):
            raise ConfigError("--ocr writes PDFs; leave --format out or use --format pdf")
        jobs = plan(inputs, options)[0]
        require_jobs(jobs, inputs)
        with progress_bar(len(jobs), quiet, "file") as on_record:
            summary = ocr_files(
                inputs,
                options,
                weights=weights,
                binarize=binarize,
                device=device,
                on_record=on_record,
                views=views,
            )
    finish_summary(summary, quiet)
