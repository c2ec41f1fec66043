"""OCRmyPDF plugin: our scan denoiser cleans what Tesseract reads (and, optionally, what is stored).

Use it from OCRmyPDF's command line::

    ocrmypdf --plugin aepipe.ocrmypdf in.pdf out.pdf     # Tesseract reads cleaned pages
    ocrmypdf --plugin aepipe.ocrmypdf --force-ocr --aepipe-clean-final in.pdf out.pdf

The plugin implements OCRmyPDF's documented pluggy hooks (``ocrmypdf/pluginspec.py``):
``add_options``, ``check_options``, ``filter_ocr_image`` and ``filter_page_image``. Everything
else (``--jobs``, ``--pages``, ``--output-type pdfa``, page sizes, DPI) stays OCRmyPDF's. The
model is loaded lazily, once per worker process (OCRmyPDF's workers are threads by default,
processes with ``--no-use-threads``), and cached by (weights, device).

``clean-scans --ocr`` (:func:`ocr_files`) does not use the plugin: it cleans each file exactly
as ``clean-scans`` does (a PDF in place), then :func:`add_text_layer` copies the text layer
OCRmyPDF makes for the pages without text into that file.

Needs the ``[ocr]`` extra and the Debian packages ``tesseract-ocr``, ``tesseract-ocr-eng`` and
``ghostscript``; :func:`missing_tools` names what is absent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from aepipe.errors import AepipeError, InputImageError

if TYPE_CHECKING:
    import pikepdf
    from PIL import Image

    from aepipe.batch import ImageBatch
    from aepipe.cli.common import FileJob
    from aepipe.core import Process
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


def check_languages(language: Sequence[str]) -> None:
    """Raise :class:`OcrSetupError` for Tesseract languages that are not installed.

    Checked before any file is cleaned: OCRmyPDF would otherwise fail every file on its own.
    """
    import subprocess

    try:
        out = subprocess.run(
            ["tesseract", "--list-langs"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return  # check_setup reports a missing tesseract
    installed = {line.strip() for line in out.splitlines()[1:] if line.strip()}
    missing = [lang for lang in language if lang not in installed]
    if missing:
        packages = " ".join(f"tesseract-ocr-{lang}" for lang in missing)
        raise OcrSetupError(
            f"Tesseract has no {', '.join(missing)} (installed: {', '.join(sorted(installed))}); "
            f"Debian: apt-get install {packages}"
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
    """Fail early, in the main process, on options that would do nothing or unloadable weights.

    OCRmyPDF stores a new page image (the only one ``--aepipe-clean-final`` can clean) only
    when it rasterizes pages for display: ``--force-ocr``, ``--deskew``, ``--clean-final`` or
    ``--remove-background``; otherwise the two storage options would be silently ignored.
    """
    from ocrmypdf.exceptions import BadArgsError

    from aepipe.errors import WeightsError

    clean_final = _opt(options, "aepipe_clean_final", False)
    if clean_final and options.lossless_reconstruction:
        raise BadArgsError(
            "aepipe: --aepipe-clean-final needs --force-ocr (or --deskew, --clean-final, "
            "--remove-background): otherwise OCRmyPDF keeps the pages' own images"
        )
    if _opt(options, "aepipe_binarize", False) and not clean_final:
        raise BadArgsError("aepipe: --aepipe-binarize needs --aepipe-clean-final")
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


def _int_dpi(image: Image.Image) -> tuple[int, int]:
    dpi = image.info.get("dpi", (300, 300))
    return round(float(dpi[0])), round(float(dpi[1]))


# --- clean-scans --ocr ----------------------------------------------------------------------


def ocr_files(
    inputs: Sequence[str | Path],
    process: Process,
    options: RunOptions,
    *,
    language: Sequence[str] = ("eng",),
    jobs: int | None = None,
    on_record: Callable[[FileRecord, int, int], None] | None = None,
    read: Process | None = None,
    rotate_pages: bool = False,
) -> Summary:
    """``clean-scans --ocr``: each input cleaned as ``clean-scans --format pdf`` does, then OCR'd.

    A file is first cleaned by :func:`aepipe.runner.run_files` with ``process`` and
    ``options``, so every option means what it means without OCR (a PDF is edited in place:
    text, forms, annotations, encryption and image codecs kept; an image becomes a one-page
    PDF); then :func:`add_text_layer` gives its pages without text a text layer. Inputs are
    planned by :func:`aepipe.runner.plan` (PDF output names); ``<out>/<relative name>.pdf``
    is written atomically. Resume follows the runner's rule and output record
    (:func:`aepipe.runner.run_files`): an output made from this input as it is, with these
    settings (the stage's, the options' and ``language``, ``rotate_pages``), is skipped;
    aepipe's own stale outputs are redone; a file aepipe did not make is not replaced unless
    ``options.overwrite``. The cleaning is staged in a hidden folder of the output folder
    (``.aepipe-ocr.<pid>.*.tmp``); one left by a killed run is removed by the next.

    Args:
        inputs: files and folders.
        process: the cleaning stage (a loaded scan denoiser).
        options: the runner's options; ``fmt`` is taken as ``pdf``.
        language: Tesseract languages.
        jobs: OCRmyPDF workers per file (default: its own, one per CPU).
        on_record: called after each file with (record, files done, files planned).
        read: when given, Tesseract reads the file as cleaned by this stage instead (same
            pages, other pixels: :func:`ocr_stages`); it runs before ``process``, whose file is
            stored.
        rotate_pages: turn pages that Tesseract finds sideways or upside down upright (their
            ``/Rotate``; see :func:`add_text_layer`).

    Raises:
        ConfigError: bad inputs or output folder.
        ReportError: after the run, when the report could not be written (its ``summary``
            is the run's).
        KeyboardInterrupt: re-raised after the report is written (files not finished are
            listed as ``pending``); no partial output remains.
    """
    from aepipe.io import remove_stale_temps
    from aepipe.provenance import OutputRecord
    from aepipe.runner import FileRecord, Summary, finish_report, plan, record_notes

    start = time.perf_counter()
    options = dataclasses.replace(options, fmt="pdf")
    planned, records, out_dir = plan(inputs, options)
    summary = Summary(records=list(records), out_dir=str(out_dir))
    # What a SIGKILLed run left: temporary files, and the OCR's staging folders.
    remove_stale_temps(out_dir)
    remove_stale_staging(out_dir)
    ocr = (language, jobs, rotate_pages)
    book = _Book(OutputRecord(out_dir), lambda kind: _ocr_settings(process, options, ocr, kind))
    if options.overwrite:
        _adopt(book, planned, options, out_dir)
    finished = 0
    try:
        for job in planned:
            record = _ocr_job(job, (process, read), options, out_dir, (ocr, book))
            summary.records.append(record)
            finished += 1
            if on_record is not None:
                on_record(summary.records[-1], finished, len(planned))
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            # As the runner reports it: the file being worked on and those after it are pending.
            summary.interrupted = True
            summary.records += [
                FileRecord(str(job.src), "pending", reason="not finished (interrupted)")
                for job in planned[finished:]
            ]
            exc.summary = summary  # type: ignore[attr-defined]  # as run_files does
        summary.seconds = time.perf_counter() - start
        summary.notes += record_notes(book.record)
        finish_report(options.report, summary, raising=exc)
        raise
    summary.seconds = time.perf_counter() - start
    summary.notes += record_notes(book.record)
    finish_report(options.report, summary)
    return summary


def _adopt(book: _Book, planned: Sequence[Any], options: RunOptions, out_dir: Path) -> None:
    """With ``--overwrite``: existing unrecorded outputs become aepipe's to replace, up front.

    As the file runner does (:meth:`aepipe.provenance.OutputRecord.adopt`), so a run stopped
    before reaching them is continued without ``--overwrite``.
    """
    import contextlib

    from aepipe.provenance import SourceStamp
    from aepipe.runner import output_paths

    inputs = {Path(os.path.realpath(j.src)) for j in planned}
    adopted = []
    for job in planned:
        with contextlib.suppress(OSError):
            target = output_paths(job, None, options, out_dir)[0]
            if Path(os.path.realpath(target)) not in inputs:
                adopted.append((target, SourceStamp.of(job.src)))
    with contextlib.suppress(OSError):
        book.record.adopt(adopted, None)  # adopted lines are redone whatever the settings


@dataclasses.dataclass
class _Book:
    """The output folder's record (:mod:`aepipe.provenance`) and this run's settings keys.

    ``key`` makes the key for a kind of input (:func:`aepipe.runner.input_kind`), worked out
    once per kind: PDF-only options do not count for image inputs.
    """

    record: Any
    key: Callable[[str], str | None]
    keys: dict[str, str | None] = dataclasses.field(default_factory=dict)

    def settings(self, src: Path) -> str | None:
        """The settings key of the searchable PDF of ``src``."""
        from aepipe.runner import input_kind

        kind = input_kind(Path(src))
        if kind not in self.keys:
            self.keys[kind] = self.key(kind)
        return self.keys[kind]


def _ocr_settings(
    process: Process,
    options: RunOptions,
    ocr: tuple[Sequence[str], int | None, bool],
    kind: str | None = None,
) -> str | None:
    """The settings key of a searchable PDF: the cleaning stage's, the options, and the OCR's.

    A binarizing stage split for OCR (:class:`_OnePass`) counts as the stage itself.
    """
    from aepipe.provenance import settings_key
    from aepipe.runner import output_settings

    stage = process.stage if isinstance(process, _OnePass) else process
    language, _, rotate_pages = ocr  # the workers do not change the text layer
    extra = {"ocr_language": list(language), "ocr_rotate_pages": rotate_pages}
    return settings_key(stage, {**output_settings(options, kind), **extra})


def _ocr_job(
    job: Any,
    stages: tuple[Process, Process | None],
    options: RunOptions,
    out_dir: Path,
    ocr_book: tuple[tuple[Sequence[str], int | None, bool], _Book],
) -> FileRecord:
    """One input of :func:`ocr_files`: cleaned, OCR'd and written atomically, or skipped.

    Skipped, redone or refused as the runner does (:func:`aepipe.runner.run_files`, the same
    output record); the cleaning is staged in a hidden folder of ``out_dir``.

    Args:
        job: the runner's planned job.
        stages: the stage whose output is stored, and the one Tesseract reads (None: same).
        options: the runner's options (``fmt`` pdf).
        out_dir: the output folder.
        ocr_book: Tesseract's languages, OCRmyPDF's workers and whether pages are turned
            upright; and the output record with the settings key.
    """
    from aepipe.provenance import SourceStamp
    from aepipe.runner import FileRecord, output_paths, run_files

    ocr, book = ocr_book
    [dst] = output_paths(job, None, options, out_dir)
    try:
        source: SourceStamp | None = SourceStamp.of(job.src)
    except OSError:
        source = None  # reading it says why
    note = None
    if source is not None and not options.overwrite:
        verdict, note = book.record.verdict(dst, source, book.settings(job.src), job.src)
        if verdict == "current":
            reason = "up to date (use --overwrite to redo it)"
            return FileRecord(str(job.src), "skipped", [str(dst)], reason)
        if verdict == "foreign":
            return FileRecord(str(job.src), "failed", reason=note)
    t0 = time.perf_counter()
    with _staging(out_dir) as tmp:
        # The cleaning is clean-scans' own job on this one file; only its output folder differs.
        staged = dataclasses.replace(options, out_dir=tmp, overwrite=True, report=None)
        read = None
        if stages[1] is not None:
            # Tesseract's pages first: the stored stage may reuse their pass (ocr_stages).
            reading = dataclasses.replace(staged, out_dir=tmp / "read")
            [read] = run_files([job.src], stages[1], reading).records
        if read is not None and read.status != "ok":
            record, source_pdf = read, None
            record.outputs = []
        else:
            [record] = run_files([job.src], stages[0], staged).records
            source_pdf = record.outputs[0] if record.status == "ok" else None
            if source_pdf is not None and read is not None:
                source_pdf = read.outputs[0]
        if source_pdf is not None:
            _add_layer(job, record, (Path(source_pdf), dst), ocr, (book, source))
            if record.status == "ok" and note:
                record.reason = f"{note}{_also(record.reason)}"
    record.seconds = time.perf_counter() - t0
    return record


def _add_layer(
    job: Any,
    record: FileRecord,
    paths: tuple[Path, Path],
    ocr: tuple[Sequence[str], int | None, bool],
    recording: tuple[_Book, Any],
) -> None:
    """Give the cleaned PDF ``record.outputs[0]`` a text layer at ``paths[1]``; fill ``record``.

    ``paths``: the PDF Tesseract reads and the output. ``recording``: the output record and
    the input's :class:`~aepipe.provenance.SourceStamp` (None: not recorded).
    """
    read, dst = paths
    book, source = recording
    language, jobs, rotate = ocr
    try:
        if source is not None:
            book.record.claim([dst], source, book.settings(job.src))
        added = add_text_layer(
            record.outputs[0],
            dst,
            language=language,
            jobs=jobs,
            name=job.src,
            read=read,
            rotate_pages=rotate,
        )
        if source is not None:
            book.record.done([dst], source, book.settings(job.src))
        if rotate and (turned := _turned_pages(Path(record.outputs[0]), dst)):
            pages = ", ".join(map(str, turned))
            record.reason = f"turned upright: page{'s' * (len(turned) > 1)} {pages}" + (
                _also(record.reason)
            )
        record.outputs, record.bytes_out = [str(dst)], dst.stat().st_size
        record.text_pages = added
        if not added:
            record.reason = (
                "no page got a text layer: pages with text are left as they are, and "
                f"Tesseract read nothing on the others{_also(record.reason)}"
            )
    except InputImageError as exc:
        record.status, record.reason, record.outputs = "failed", str(exc), []


@contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A hidden staging folder in ``folder``, removed afterwards.

    Named ``.aepipe-ocr.<pid>.<random>.tmp`` (the rule of :func:`aepipe.io.remove_stale_temps`
    for temporary files), so :func:`remove_stale_staging` removes one that a killed run left.
    """
    from aepipe.io import TEMP_PREFIX

    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(dir=folder, prefix=f"{TEMP_PREFIX}ocr.{os.getpid()}.", suffix=".tmp")
    )
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_staging(folder: str | Path) -> int:
    """Delete the OCR staging folders (:func:`_staging`) of runs that are no longer running.

    SIGKILL leaves them; a folder whose process still runs (another run into the same output
    folder) is kept. OCRmyPDF's own work folder (``ocrmypdf.io.*`` in the system's temporary
    folder) cannot be placed, nor found again: OCRmyPDF takes no folder for it.

    Returns:
        How many folders were removed.
    """
    from aepipe.io import TEMP_PREFIX, _pid_alive

    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for tmp in list(folder.rglob(f"{TEMP_PREFIX}ocr.*.tmp")):
        parts = tmp.name.rsplit(".", 3)  # .aepipe-ocr.<pid>.<random>.tmp
        if len(parts) != 4 or not parts[1].isdigit() or _pid_alive(int(parts[1])):
            continue
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed


def _also(reason: str | None) -> str:
    return f"; {reason}" if reason else ""


def add_text_layer(
    src: str | Path,
    dst: str | Path,
    *,
    language: Sequence[str] = ("eng",),
    jobs: int | None = None,
    name: str | Path | None = None,
    read: str | Path | None = None,
    rotate_pages: bool = False,
) -> int:
    """Write PDF ``src`` to ``dst`` (atomically) with a text layer on its pages that lack one.

    OCRmyPDF reads ``src`` in its skip-text mode (pages with text, born-digital ones included,
    are not OCR'd) without cleaning or re-encoding anything, and only the invisible text layers
    it makes are copied into ``src``'s own pages: images, forms, annotations, metadata and
    encryption stay exactly as in ``src``, whatever OCRmyPDF does to its own output file. Its
    file is staged in a hidden folder beside ``dst`` (:func:`_staging`).

    Args:
        src: the PDF (already cleaned).
        dst: where the searchable PDF goes; ``src``'s bytes when no page got a text layer.
        language: Tesseract languages.
        jobs: OCRmyPDF workers (default: its own, one per CPU).
        name: the file named in OCRmyPDF's warnings and in errors (default ``src``).
        read: the PDF Tesseract reads instead of ``src``: the same pages (boxes, rotation)
            with other pixels, e.g. gray where ``src`` stores bilevel ones.
        rotate_pages: OCRmyPDF's ``rotate_pages``: a page whose text Tesseract's orientation
            detection finds sideways or upside down is read turned, and its ``/Rotate`` is set
            as OCRmyPDF sets it (the page shows upright; its content is not touched).

    Returns:
        How many pages got a text layer.

    Raises:
        OcrSetupError: OCRmyPDF, Tesseract or Ghostscript is not installed.
        InputImageError: OCRmyPDF rejected the PDF.
    """
    import pikepdf

    from aepipe.io import atomic_write
    from aepipe.pdf_edit import save_pdf

    check_setup()
    src, dst = Path(src), Path(dst)
    name = Path(name or src)
    # Staged beside dst, where a killed run's folder is found again (remove_stale_staging).
    with _staging(dst.parent) as tmp:
        ocred = tmp / "ocr.pdf"
        _run_ocrmypdf(Path(read or src), ocred, (language, jobs, rotate_pages), name)
        with pikepdf.open(src) as pdf, pikepdf.open(ocred) as text:
            pairs = zip(pdf.pages, text.pages, strict=True)
            added = sum(_copy_text_layer(pdf, page, done) for page, done in pairs)
            if added:
                atomic_write(dst, lambda fh: save_pdf(pdf, fh))
    if not added:
        atomic_write(dst, lambda fh: fh.write(src.read_bytes()))
    return added


def _run_ocrmypdf(
    src: Path, dst: Path, ocr: tuple[Sequence[str], int | None, bool], name: Path
) -> None:
    """OCRmyPDF in skip-text mode, nothing cleaned or re-encoded; raise InputImageError.

    ``ocr``: Tesseract's languages, OCRmyPDF's workers, whether pages are turned upright.
    """
    import ocrmypdf

    language, jobs, rotate_pages = ocr
    # pikepdf's check_linearization (called by OCRmyPDF after writing) leaves sys.stderr
    # pointing at a StringIO (pikepdf 10.18); restore the streams so our messages still show.
    streams = sys.stdout, sys.stderr
    try:
        with _warnings_name(name):
            code = ocrmypdf.ocr(
                src,
                dst,
                skip_text=True,
                # The cleaning step has already edited the file, as clean-scans does without OCR.
                invalidate_digital_signatures=True,
                language=list(language),
                jobs=jobs,
                rotate_pages=rotate_pages,
                # Only the text layer is kept (see add_text_layer), so nothing else is worth
                # OCRmyPDF's work: no optimisation, no PDF/A conversion.
                output_type="pdf",
                optimize=0,
                progress_bar=False,
            )
    except (ocrmypdf.exceptions.ExitCodeException, OSError, ValueError) as exc:
        # One bad file fails alone, as in every file command; on one line.
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise InputImageError(f"{name}: OCRmyPDF: {why}") from exc
    finally:
        sys.stdout, sys.stderr = streams
    if code == ocrmypdf.ExitCode.ctrl_c:  # OCRmyPDF turns Ctrl-C into this exit code
        raise KeyboardInterrupt
    if code == ocrmypdf.ExitCode.invalid_output_pdf:
        raise InputImageError(f"{name}: damaged PDF: OCRmyPDF could not make a valid PDF of it")
    if code != ocrmypdf.ExitCode.ok:
        raise InputImageError(f"{name}: OCRmyPDF failed ({code.name})")


@contextmanager
def _warnings_name(name: Path) -> Iterator[None]:
    """Print OCRmyPDF's warnings as ``<name>: <warning>``, so a folder run says whose they are."""
    logger = logging.getLogger("ocrmypdf")
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_NamedFormatter(name))
    handler.addFilter(_relevant)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False  # else Python's last-resort handler prints it a second time
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


class _NamedFormatter(logging.Formatter):
    """``<file>: <message>``; the file name is not put in the format string (it may hold %)."""

    def __init__(self, name: Path) -> None:
        super().__init__()
        self.name = name

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.name}: {super().format(record)}"


# OCRmyPDF's warnings about its own output file, which add_text_layer discards (our file keeps
# its forms, tags and dates): not the user's concern.
_MOOT_WARNINGS = (
    "This PDF has a fillable form",
    "This PDF is marked as a Tagged PDF",
    "The input's creation date has no time zone",
    "Some input metadata could not be copied",
)


def _relevant(record: logging.LogRecord) -> bool:
    return not record.getMessage().lstrip().startswith(_MOOT_WARNINGS)


def _copy_text_layer(pdf: pikepdf.Pdf, page: pikepdf.Page, done: pikepdf.Page) -> bool:
    """Copy the text layer OCRmyPDF added to ``done`` (its copy of ``page``) into ``page``.

    OCRmyPDF's grafter draws each text layer as a new form XObject named ``/OCR-...``, in a
    ``q [cm] /OCR-... Do Q`` group put before the page's own content. That group and the form
    (with its fonts) are copied; the page's own content stream and images are not touched. A
    page OCRmyPDF turned upright (``rotate_pages``) gets its ``/Rotate``, which the group's
    ``cm`` assumes.

    Returns:
        Whether ``page`` got a text layer (a layer without any text is left out).
    """
    import pikepdf

    mine = page.obj.get("/Resources", {}).get("/XObject", {})
    theirs = done.obj.get("/Resources", {}).get("/XObject", {})
    names = [k for k in theirs if k.startswith("/OCR-") and k not in mine]
    if not names or b"BT" not in theirs[names[0]].read_bytes():
        return False
    ops = pikepdf.parse_content_stream(done)
    kinds = [str(op.operator) for op in ops]
    draws = (i for i, op in enumerate(ops) if kinds[i] == "Do" and str(op.operands[0]) == names[0])
    draw = next(draws, None)
    if draw is None:  # not drawn as the grafter draws it: no layer to copy (not a crash)
        return False
    begin = max(i for i in range(draw) if kinds[i] == "q")
    end = kinds.index("Q", draw)
    page.add_resource(pdf.copy_foreign(theirs[names[0]]), pikepdf.Name.XObject, names[0])
    group = pikepdf.unparse_content_stream(ops[begin : end + 1])
    page.contents_add(pdf.make_stream(group), prepend=True)
    if "/Rotate" in done.obj and _rotation(done) != _rotation(page):
        page.obj.Rotate = _rotation(done)
    return True


def _rotation(page: pikepdf.Page) -> int:
    return int(page.obj.get("/Rotate", 0) or 0) % 360


def _turned_pages(before: Path, after: Path) -> list[int]:
    """The 1-based pages whose ``/Rotate`` differs between two versions of a PDF."""
    import pikepdf

    with pikepdf.open(before) as a, pikepdf.open(after) as b:
        pairs = enumerate(zip(a.pages, b.pages, strict=True), 1)
        return [n for n, (x, y) in pairs if _rotation(x) != _rotation(y)]


def ocr_stages(process: Process) -> tuple[Process, Process | None]:
    """The stage whose pages are stored and the one Tesseract reads (None: the same).

    A binarizing scan denoiser stores bilevel pages, which Tesseract reads worse than the gray
    cleaned page (``benchmarks/ocr_pipeline.py``: character error rate 0.035 against 0.013 on
    the DDD pages). Tesseract then reads the same stage's gray page, and the stored bilevel page
    is that gray page thresholded (:class:`_OnePass`): the network runs once per page.
    """
    config = getattr(process, "config", None)
    if not getattr(config, "binarize", False):
        return process, None
    shared = _OnePass(process)  # type: ignore[arg-type]
    return shared, shared.read


class _OnePass:
    """A binarizing scan denoiser split into its gray pass and its threshold.

    :meth:`read` runs the network without the threshold (the page Tesseract reads) and keeps
    each page's thresholded bits (packed, 1/32 of the float page) keyed by the input's pixels;
    calling the object gives the stage's own bilevel result from them, so the pages must be
    read first. A page it has not seen goes through the binarizing stage itself. ``config`` is
    the binarizing stage's (the PDF editor stores its pages as that stage's would be).
    """

    def __init__(self, stage: ScanDenoiser) -> None:
        gray = stage.config.model_copy(update={"binarize": False})
        self.stage, self.gray = stage, type(stage)(stage.model, gray, stage.extras)
        self.config = stage.config
        self.threshold: float = stage.config.threshold  # type: ignore[attr-defined]
        self.kept: dict[tuple[Any, ...], list[tuple[Any, dict[str, Any]]]] = {}

    @staticmethod
    def _key(image: Any, meta: dict[str, Any]) -> tuple[Any, ...]:
        """The page's file, number and shape, and a hash of every 7th pixel of every 7th row.

        The same page decodes to the same pixels in both passes; the sample keeps the hash at
        a fiftieth of the page (a whole 300-DPI page cost ~0.08 s a call).
        """
        import hashlib

        sample = image[..., ::7, ::7].detach().cpu().contiguous().numpy()
        digest = hashlib.blake2b(sample.tobytes(), digest_size=16).digest()
        return meta.get("source"), meta.get("page"), tuple(image.shape), digest

    def read(self, batch: ImageBatch) -> ImageBatch:
        import numpy as np

        out = self.gray(batch)
        for image, page, meta in zip(batch.images, out.images, out.meta, strict=True):
            # A photograph is stored as it came (its gray), not thresholded, as the stage does.
            ink = (page >= self.threshold).cpu().numpy()
            bits = None if meta.get("photograph") else np.packbits(ink)
            # A list: the same page twice (a duplicated page of a file) is read twice.
            self.kept.setdefault(self._key(image, meta), []).append((bits, dict(meta)))
        return out

    def __call__(self, batch: ImageBatch) -> ImageBatch:
        import numpy as np
        import torch

        from aepipe.batch import ImageBatch

        keys = [self._key(image, m) for image, m in zip(batch.images, batch.meta, strict=True)]
        if any(len(self.kept.get(k, [])) < keys.count(k) for k in keys):
            return self.stage(batch)
        gray, pages, metas = batch.gray().images, [], []
        for key, image in zip(keys, gray, strict=True):
            bits, meta = self.kept[key].pop(0)
            if not self.kept[key]:
                del self.kept[key]
            if bits is None:
                pages.append(image.detach().cpu().clone())
            else:
                flat = np.unpackbits(bits, count=image.numel()).reshape(tuple(image.shape))
                pages.append(torch.from_numpy(flat).to(torch.float32))
            metas.append(meta)
        return ImageBatch(torch.stack(pages).to(batch.images.device), list(batch.names), metas)


def run_ocr_command(
    job: FileJob,
    load: Callable[[], Process],
    language: Sequence[str] = ("eng",),
    rotate_pages: bool = False,
) -> NoReturn:
    """The ``clean-scans --ocr`` command body: check the set-up, clean and OCR every file, exit.

    Exits with :attr:`~aepipe.errors.ExitCode.SETUP_ERROR` and one line naming the package
    when a tool is missing, before the inputs are read or the weights loaded.

    Args:
        job: the command's inputs and runner options (``--format`` same or pdf).
        load: builds the cleaning stage, as without ``--ocr``.
        language: Tesseract languages (``--language``).
        rotate_pages: turn sideways and upside-down pages upright (``--rotate-pages``; needs
            Tesseract's orientation data, ``osd``).
    """
    from aepipe.cli.common import cli_errors, fail, require_jobs, run_planned
    from aepipe.errors import ConfigError, ExitCode
    from aepipe.runner import plan

    with cli_errors(job.quiet):
        try:
            check_setup()
            check_languages([*language, *(["osd"] if rotate_pages else [])])
        except OcrSetupError as exc:
            fail(str(exc), ExitCode.SETUP_ERROR)
        if job.options.fmt not in ("same", "pdf"):
            raise ConfigError("--ocr writes PDFs; leave --format out or use --format pdf")
        # Its own default folder (<input>_ocr): a plain run's PDFs in <input>_clean have no
        # text layer, and would be taken for finished outputs.
        options = dataclasses.replace(job.options, fmt="pdf", out_suffix="ocr")
        planned = plan(job.inputs, options)
        require_jobs(planned, job.inputs, options)

        def start(stages: tuple[Process, Process], bar: Any) -> Any:
            return ocr_files(
                job.inputs,
                stages[0],
                options,
                language=language,
                on_record=bar,
                read=stages[1],
                rotate_pages=rotate_pages,
            )

        run_planned(lambda: ocr_stages(load()), start, planned, options, quiet=job.quiet)
