"""Shared plumbing of the file-processing commands: options, progress, errors, exit codes.

Every command follows the same path: parse -> check inputs and output folder -> load weights ->
:func:`aepipe.runner.run_files` with a progress bar -> one summary line -> documented exit code.
"""

from __future__ import annotations

import inspect
import os
import shlex
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from aepipe.defaults import DEFAULT_MAX_PIXELS
from aepipe.errors import AepipeError, ConfigError, ExitCode, WeightsError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aepipe.runner import RunOptions, Summary

# Reusable option declarations, so every command spells its options the same way.
InputsArg = Annotated[
    list[Path], typer.Argument(help="Image/PDF files or folders.", show_default=False)
]
OutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Output folder (default: DIR_<suffix> beside an input folder DIR; for input "
        "files, beside the folder holding them: a.png in docs/ goes to docs_<suffix>/). "
        "Several input folders each get a subfolder in it.",
    ),
]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="same (TIFF->TIFF, PDF->PDF edited in place, others->PNG) | png | tiff | pdf.",
        case_sensitive=False,
    ),
]
DpiOpt = Annotated[
    int | None,
    typer.Option(
        "--dpi",
        min=36,
        max=1200,
        help="Resolution for PDF pages that are rendered (written as images, or not editable "
        "in place): an override; default: each page's scan's own DPI (300 without a scan).",
        show_default=False,
    ),
]
JpegQualityOpt = Annotated[
    int | None,
    typer.Option(
        "--jpeg-quality",
        min=1,
        max=95,
        help="Store cleaned gray/colour PDF scans as JPEG at this quality. Default: lossless "
        "scans stay lossless (Flate), JPEG scans stay JPEG at their own quality. Bilevel "
        "scans are always lossless 1-bit (CCITT G4, or Flate where smaller).",
        show_default=False,
    ),
]
CleanBornDigitalOpt = Annotated[
    bool,
    typer.Option(
        "--clean-born-digital",
        help="Also render and clean PDF pages that hold no scan (vector text, drawings); by "
        "default such born-digital pages pass through unchanged, byte for byte.",
    ),
]
BatchOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        max=4096,
        help="Pages (or images) per model call; fewer for large ones (16 Mpx a call at most).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace existing outputs (default: skip them).")
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-r", help="Descend into sub-folders, keeping the layout.")
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="Write a JSON report of every file here.")
]
QuietOpt = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress bar; errors and summary only.")
]
TrainOutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Weights folder to write.", show_default="runs/<model>"),
]
OverwriteShippedOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite-shipped",
        help="Allow --out to replace a weights folder that ships with aepipe.",
    ),
]


def train_out(out: Path | None, name: str, overwrite_shipped: bool = False) -> Path:
    """The folder a training command writes: ``--out``, else ``runs/<name>``.

    A bare training command must never replace the shipped weights, so an ``--out`` inside the
    shipped weights folder needs ``--overwrite-shipped``.

    Raises:
        ConfigError: ``out`` is inside the shipped weights and the flag is not given, or it
            is a file or lies under one (checked before training, not when saving after it).
    """
    from aepipe.io import check_creatable
    from aepipe.weights import shipped_weights_dir

    target = Path("runs") / name if out is None else out
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {target}: is a file; training writes a weights folder")
    check_creatable(target, "--out")
    shipped = shipped_weights_dir().resolve()
    resolved = target.resolve()
    if not overwrite_shipped and (resolved == shipped or shipped in resolved.parents):
        raise ConfigError(
            f"--out {target}: is inside the shipped weights ({shipped}); write under runs/ "
            "or pass --overwrite-shipped to replace them"
        )
    return target


FramesOpt = Annotated[
    str,
    typer.Option(
        "--frames",
        help="Animated GIF/WebP/PNG: first frame only, or all frames (<name>-p001.png ...). "
        "Multi-page TIFF and PDF always give every page.",
        case_sensitive=False,
    ),
]
ListIgnoredOpt = Annotated[
    bool,
    typer.Option("--list-ignored", help="List non-image files found in folders (and in --report)."),
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        min=1,
        help="Refuse pages and PDF images with more pixels than this (decompression bombs).",
    ),
]

FORMATS = ("same", "png", "tiff", "pdf")
FRAMES = ("first", "all")
DEVICES = ("auto", "cpu", "cuda")


def err(message: str) -> None:
    """Print one message line to stderr."""
    typer.echo(message, err=True)


def fail(message: str, code: ExitCode) -> NoReturn:
    """Print ``message`` and exit with ``code``."""
    err(f"error: {message}")
    raise typer.Exit(int(code))


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    """Validate a string option against its choices (case-insensitive)."""
    low = value.lower()
    if low not in choices:
        fail(f"{option} must be one of {', '.join(choices)}; got {value!r}", ExitCode.BAD_ARGS)
    return low


def image_target(path: Path, what: str) -> Path:
    """:func:`aepipe.io.check_image_target`, imported only when a command runs."""
    from aepipe.io import check_image_target

    return check_image_target(path, what)


@contextmanager
def training_data_errors(out: Path | None = None) -> Iterator[None]:
    """A training run's missing data as a bad argument (exit 2), not a traceback.

    Args:
        out: the run's output folder: a file that cannot be made there is named as an output,
            not as missing data.

    Raises:
        ConfigError: for ``FileNotFoundError`` or ``NotADirectoryError`` while training.
    """
    try:
        yield
    except (FileNotFoundError, NotADirectoryError) as exc:
        where = Path(os.path.abspath(exc.filename)) if exc.filename else None  # noqa: PTH100
        if out is not None and where is not None and where.is_relative_to(out.absolute()):
            raise ConfigError(f"cannot write the output {where}: {exc.strerror}") from None
        raise ConfigError(f"cannot read the training data: {exc}") from None


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def invocation() -> str:
    """This process's command line as ``aepipe ...``, shell-quoted (recorded in weights)."""
    return "aepipe " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@contextmanager
def cli_errors() -> Iterator[None]:
    """Map aepipe's exceptions to exit codes and SIGTERM to a clean interrupt."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        # Every command writes atomically, so whatever exists is whole; only file jobs resume.
        err("interrupted: files already written are complete (file commands resume on re-run)")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except ConfigError as exc:
        fail(str(exc), ExitCode.BAD_ARGS)
    except WeightsError as exc:
        fail(str(exc), ExitCode.MODEL_ERROR)
    except AepipeError as exc:
        fail(str(exc), ExitCode.SOME_FAILED)
    except Exception as exc:
        # pydantic is imported lazily (``--help`` stays fast), so its error is matched here:
        # settings built from several options at once (a training run's config) that clash.
        from pydantic import ValidationError

        from aepipe.stage import format_validation_error

        if isinstance(exc, ValidationError):
            fail(format_validation_error(exc, "options", sep=": "), ExitCode.BAD_ARGS)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def file_options(out_suffix: str, args: Mapping[str, Any]) -> RunOptions:
    """Check the options every file command shares and build the runner's options from them.

    Args:
        out_suffix: the default output folder is ``<input>_<out_suffix>``.
        args: the command's parameters (its ``locals()``); the shared ones are read by name:
            ``out``, ``fmt``, ``recursive``, ``overwrite``, ``dpi``, ``max_pixels``,
            ``batch_size``, ``report``, ``frames``, ``list_ignored``, and where the command
            has them ``jpeg_quality`` and ``clean_born_digital`` (a PDF's colour follows the
            stage's ``binarize`` and ``keep_color``: :func:`aepipe.pdf_edit.edit_pdf`).
    """
    from aepipe.runner import RunOptions

    return RunOptions(
        out_dir=args["out"],
        out_suffix=out_suffix,
        fmt=check_choice(args["fmt"], FORMATS, "--format"),  # type: ignore[arg-type]
        recursive=args["recursive"],
        overwrite=args["overwrite"],
        dpi=args["dpi"],
        max_pixels=args["max_pixels"],
        batch_size=args["batch_size"],
        report=args["report"],
        frames=check_choice(args["frames"], FRAMES, "--frames"),  # type: ignore[arg-type]
        list_ignored=args["list_ignored"],
        jpeg_quality=args.get("jpeg_quality"),
        clean_born_digital=bool(args.get("clean_born_digital", False)),
    )


@dataclass(frozen=True)
class FileJob:
    """What a file command's shared options decided (see :func:`file_command`).

    Attributes:
        inputs: files and folders from the command line.
        options: the runner's options.
        device: the checked ``--device``.
        quiet: ``--quiet``.
    """

    inputs: list[Path]
    options: RunOptions
    device: str
    quiet: bool

    def run(self, load: Callable[[], Callable[..., Any]]) -> NoReturn:
        """:func:`run_job` with these inputs and options."""
        run_job(self.inputs, load, self.options, quiet=self.quiet)


def _file_params(batch_size: int) -> tuple[list[inspect.Parameter], list[inspect.Parameter]]:
    """The shared parameters that go before and after a file command's own ones."""
    keyword = inspect.Parameter.KEYWORD_ONLY

    def param(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> Any:
        return inspect.Parameter(name, keyword, annotation=annotation, default=default)

    before = [param("inputs", InputsArg), param("out", OutOpt, None)]
    after = [
        param("fmt", FormatOpt, "same"),
        param("dpi", DpiOpt, None),
        param("batch_size", BatchOpt, batch_size),
        param("device", DeviceOpt, "auto"),
        param("overwrite", OverwriteOpt, False),
        param("recursive", RecursiveOpt, False),
        param("report", ReportOpt, None),
        param("quiet", QuietOpt, False),
        param("max_pixels", MaxPixelsOpt, DEFAULT_MAX_PIXELS),
        param("frames", FramesOpt, "first"),
        param("list_ignored", ListIgnoredOpt, False),
    ]
    return before, after


def file_command(
    app: typer.Typer, name: str, out_suffix: str, *, batch_size: int = 16
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a file command with the options every file command shares.

    The decorated function declares only its own options and a ``job`` parameter: the inputs,
    ``--out``, ``--format``, ``--dpi``, ``--batch-size``, ``--device``, ``--overwrite``,
    ``--recursive``, ``--report``, ``--quiet``, ``--max-pixels``, ``--frames`` and
    ``--list-ignored`` are added to its signature, checked (with its own options that
    :func:`file_options` reads, such as ``--binarize``) and handed over as one :class:`FileJob`.

    Args:
        app: the typer app to register on.
        name: the command name.
        out_suffix: the default output folder is ``<input>_<out_suffix>``.
        batch_size: the ``--batch-size`` default.
    """

    def register(func: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(func, eval_str=True).parameters
        before, after = _file_params(batch_size)
        shared = {p.name for p in before + after}

        def command(**values: Any) -> None:
            device = check_choice(values["device"], DEVICES, "--device")
            options = file_options(out_suffix, values)
            job = FileJob(values["inputs"], options, device, values["quiet"])
            func(job=job, **{k: v for k, v in values.items() if k not in shared})

        mine = [p.replace(kind=p.KEYWORD_ONLY) for p in own.values() if p.name != "job"]
        command.__signature__ = inspect.Signature([*before, *mine, *after])  # type: ignore[attr-defined]
        command.__name__, command.__doc__ = func.__name__, func.__doc__
        app.command(name)(command)
        return func

    return register


def run_job(
    inputs: list[Path],
    load: Callable[[], Callable[..., Any]],
    options: RunOptions,
    *,
    quiet: bool = False,
) -> NoReturn:
    """Check inputs, load the stage, process every file with a progress bar, then exit.

    The bar counts files (a PDF of 60 pages is one) and shows the pages per second.

    Args:
        inputs: files and folders from the command line.
        load: builds the batch -> batch callable (loads weights); called only after the inputs
            and output folder were checked, so a typo costs no model loading.
        options: runner options.
        quiet: no progress bar.
    """
    from aepipe.runner import plan, run_files

    with cli_errors():
        jobs, _, _ = plan(inputs, options)
        require_jobs(jobs, inputs)
        process = load()
        with progress_bar(len(jobs), quiet) as on_record:
            summary = run_files(inputs, process, options, on_record=on_record)
        finish_summary(summary, quiet)


@contextmanager
def progress_bar(total: int, quiet: bool, unit: str = "file") -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr fed by :func:`run_files`'s ``on_record`` callback.

    Per-file failures are printed above the bar as one line each, as they happen.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    show = not quiet and console.is_terminal
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )
    task = progress.add_task(f"{unit}s", total=total, rate="")
    pages = 0

    def on_record(record: Any, done: int, _total: int) -> None:
        nonlocal pages
        pages += record.pages
        if record.status == "failed":
            console.print(
                f"[red]failed[/red] {escape(record.reason)}",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
        elapsed = progress.tasks[0].elapsed or 0.0
        rate = f"{pages / elapsed:.2f} pages/s" if elapsed > 0 and pages else ""
        progress.update(task, completed=done, rate=rate)

    with progress:
        yield on_record


def require_jobs(jobs: Sequence[Any], inputs: Sequence[Any]) -> None:
    """Exit 3 with the reason when the inputs hold no file to process (before weights load)."""
    if not jobs:
        fail(f"no image files found in {', '.join(map(str, inputs))}", ExitCode.NOTHING_PROCESSED)


def finish_summary(summary: Summary, quiet: bool) -> NoReturn:
    """Print what was ignored, the summary line and where outputs went; exit with its code.

    Ignored entries are in the summary only with ``--list-ignored``.
    """
    for record in summary.records:
        if record.status == "ignored":
            err(f"ignored {record.path}: {record.reason}")
        elif record.status == "ok" and record.reason:
            err(f"note {record.path}: {record.reason}")
    err(summary.line())
    if not quiet and summary.out_dir and summary.count("ok"):
        err(f"outputs in {summary.out_dir}")
    raise typer.Exit(int(summary.exit_code))


def run_app(app: typer.Typer) -> None:
    """Entry point wrapper: run a typer app and turn stray exceptions into exit codes."""
    try:
        app(standalone_mode=True)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
