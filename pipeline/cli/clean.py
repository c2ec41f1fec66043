"""``clean-scans``: clean a folder of scanned pages with the scan-denoiser stage."""

from __future__ import annotations

from typing import Annotated

import typer

from aepipe.cli.apps import app
from aepipe.cli.common import CleanBornDigitalOpt, FileJob, JpegQualityOpt, file_command
from aepipe.stage import StagePrecision

CleanAllOpt = Annotated[
    bool | None,
    typer.Option(
        "--clean-all/--no-clean-all",
        help="Also run pages that are already clean (pure white paper with nothing but ink, "
        "pictures and flat fills) and photographs through the network (default: the model's; "
        "for the shipped weights they come back unchanged).",
    ),
]

PrecisionOpt = Annotated[
    StagePrecision | None,
    typer.Option(
        "--precision",
        help="Arithmetic of the network: auto is bfloat16 on CPUs that run it natively "
        "(AMX or AVX512-BF16; the stage about 1.6x as fast, a few edge pixels differ), else "
        "float32 (default: the model's; auto for the shipped weights).",
    ),
]

ViewsOpt = Annotated[
    int | None,
    typer.Option(
        "--views",
        min=1,
        max=8,
        help="Clean each page N times, shifted by a pixel or mirrored, and average: N times "
        "slower; 4 views lowered the error on the DDD test pages by 7% (default: the model's; "
        "1 for the shipped weights).",
    ),
]


@file_command(app, "clean-scans", "clean", batch_size=1)
def clean_scans(
    job: FileJob,
    binarize: Annotated[
        bool | None,
        typer.Option(
            "--binarize/--no-binarize",
            help="Write bilevel (1-bit) pages, for OCR and archives (default: the model's; "
            "off for the shipped weights).",
        ),
    ] = None,
    keep_color: Annotated[
        bool | None,
        typer.Option(
            "--keep-color/--no-keep-color",
            help="Keep the colour of colour scans (default: the model's; gray for the shipped "
            "weights, and in a PDF coloured ink keeps its colour either way).",
        ),
    ] = None,
    model: Annotated[
        str, typer.Option("--model", help="Weights name or folder.")
    ] = "scan-denoiser",
    ocr: Annotated[
        bool,
        typer.Option(
            "--ocr",
            help="Write one searchable PDF per input: cleaned as with --format pdf (every "
            "other option means the same), then Tesseract (via OCRmyPDF) adds a text layer to "
            "the pages without text (default folder <input>_ocr); needs the 'ocr' extra, "
            "tesseract-ocr and ghostscript.",
        ),
    ] = False,
    language: Annotated[
        str,
        typer.Option(
            "--language",
            help="With --ocr: Tesseract's languages, joined by + (e.g. eng+deu); each needs "
            "its tesseract-ocr-<lang> package.",
        ),
    ] = "eng",
    rotate_pages: Annotated[
        bool,
        typer.Option(
            "--rotate-pages",
            help="With --ocr: turn pages whose text Tesseract finds sideways or upside down "
            "upright (their display rotation; the scan itself is not re-encoded).",
        ),
    ] = False,
    clean_born_digital: CleanBornDigitalOpt = False,
    jpeg_quality: JpegQualityOpt = None,
    clean_all: CleanAllOpt = None,
    precision: PrecisionOpt = None,
    views: ViewsOpt = None,
) -> None:
    """Clean scanned pages (PNG, JPEG, TIFF, PDF): white paper, dark text, no stains or specks.

    Outputs keep each input's name and pixel size. A PDF comes out as the
    same PDF with its scans cleaned in place, at their own resolution and
    type (1-bit stays 1-bit, stored CCITT G4 or Flate, the smaller; a scan
    that comes back the same keeps its own bytes): text layer, forms, links,
    bookmarks and metadata are kept (the modification date becomes the
    edit's); pages without a scan (born-digital) pass through unchanged
    unless --clean-born-digital. --report lists what happened to every
    page. Up-to-date outputs are skipped, so an interrupted run resumes where
    it stopped when run again (without --overwrite, which redoes every file).
    Options left out take the model's stored settings.

    Exit codes: 0 all done, 1 some files failed, 2 bad arguments, 3 nothing processed (all failed),
    4 weights could not be loaded, 5 an OCR tool is not installed (--ocr), 130 interrupted
    (Ctrl-C or SIGTERM).
    """
    # Only what was given overrides the settings stored with the weights.
    overrides = {
        "binarize": binarize,
        "keep_color": keep_color,
        "clean_pages": None if clean_all is None else "process" if clean_all else "keep",
        "precision": precision,
        "views": views,
    }
    given = {k: v for k, v in overrides.items() if v is not None}

    def load():
        from aepipe.stages.scan_denoiser import ScanDenoiser

        return ScanDenoiser.from_pretrained(model, device=job.device, **given)

    languages = [lang for lang in language.split("+") if lang]
    if ocr:
        from aepipe.ocrmypdf import run_ocr_command

        run_ocr_command(job, job.loader(load), languages, rotate_pages)
    if languages != ["eng"] or rotate_pages:
        from aepipe.cli.common import fail
        from aepipe.errors import ExitCode

        option = "--rotate-pages" if rotate_pages else "--language"
        fail(f"{option} is for --ocr (it needs Tesseract)", ExitCode.BAD_ARGS)
    job.run(load)
