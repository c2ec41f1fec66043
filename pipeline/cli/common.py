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
import time
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

    from aepipe.runner import FileRecord, RunOptions, Summary

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
    bool,
    typer.Option(
        "--overwrite",
        help="Redo every output, replacing existing files (default: skip up-to-date outputs, "
        "redo those made from a changed input or with other settings, and refuse files "
        "aepipe did not make).",
    ),
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
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        max=1024,
        help="CPU threads for the model (torch's; default: torch's own, one per core).",
        show_default=False,
    ),
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
    typer.Option(
        "--list-ignored",
        help="Name each non-image file found in folders (the report lists them, the summary "
        "counts them, either way).",
    ),
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


def raise_interrupt(signum: int, frame: Any) -> None:
    """Signal handler: SIGTERM raises the ``KeyboardInterrupt`` that Ctrl-C raises."""
    raise KeyboardInterrupt


def invocation() -> str:
    """This process's command line as ``aepipe ...``, shell-quoted (recorded in weights)."""
    return "aepipe " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# Every command writes atomically, so whatever exists is whole; only file commands resume.
INTERRUPTED = "interrupted: files already written are complete (file commands resume on re-run)"


@contextmanager
def cli_errors(quiet: bool = False) -> Iterator[None]:
    """Map aepipe's exceptions to exit codes and SIGTERM to a clean interrupt.

    A run whose ``--report`` could not be written (the runner's ``ReportError``) prints its
    summary, then the error, and exits with the run's own code: its outputs are written.

    Args:
        quiet: ``--quiet`` (for that summary).
    """
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        err(INTERRUPTED)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except ConfigError as exc:
        fail(str(exc), ExitCode.BAD_ARGS)
    except WeightsError as exc:
        fail(str(exc), ExitCode.MODEL_ERROR)
    except AepipeError as exc:
        summary = _finished_summary(exc)
        if summary is None:
            fail(str(exc), ExitCode.SOME_FAILED)
        show_summary(summary, quiet)
        fail(str(exc), summary.exit_code)
    except OSError as exc:
        # Outside any one file (those fail alone, inside the run): the system's reason.
        fail(os_message(exc), ExitCode.SOME_FAILED)
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


def _finished_summary(exc: AepipeError) -> Summary | None:
    """The run's summary if ``exc`` is the runner's ``ReportError`` (raised after the run)."""
    # aepipe.runner imports torch: looked up, not imported (a ReportError means it was).
    runner = sys.modules.get("aepipe.runner")
    if runner is not None and isinstance(exc, runner.ReportError):
        return exc.summary
    return None


def os_message(exc: OSError) -> str:
    """An ``OSError`` as one line: the file it names, if any, and the system's reason."""
    why = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {why}" if exc.filename else why


def set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads in this process (None leaves torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


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
        threads: ``--threads`` (None: torch's default).
    """

    inputs: list[Path]
    options: RunOptions
    device: str
    quiet: bool
    threads: int | None = None

    def loader(self, load: Callable[[], Any]) -> Callable[[], Any]:
        """``load`` with ``--threads`` applied first: every file command loads its stage so."""

        def loaded() -> Any:
            set_threads(self.threads)
            return load()

        return loaded

    def run(self, load: Callable[[], Callable[..., Any]]) -> NoReturn:
        """:func:`run_job` with these inputs and options."""
        run_job(self.inputs, self.loader(load), self.options, quiet=self.quiet)


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
        param("threads", ThreadsOpt, None),
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
    ``--recursive``, ``--report``, ``--quiet``, ``--threads``, ``--max-pixels``, ``--frames``
    and ``--list-ignored`` are added to its signature, checked (with its own options that
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
            with cli_errors():  # building the options imports the runner (and torch)
                device = check_choice(values["device"], DEVICES, "--device")
                options = file_options(out_suffix, values)
            job = FileJob(values["inputs"], options, device, values["quiet"], values["threads"])
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

    Args:
        inputs: files and folders from the command line.
        load: builds the batch -> batch callable (loads weights); called only after the inputs
            and output folder were checked, so a typo costs no model loading.
        options: runner options.
        quiet: no progress bar.
    """
    with cli_errors(quiet):
        from aepipe.runner import plan, run_files

        planned = plan(inputs, options)
        require_jobs(planned, inputs, options)

        def start(process: Callable[..., Any], bar: FileProgress) -> Summary:
            return run_files(inputs, process, options, on_record=bar, on_page=bar.on_page)

        run_planned(load, start, planned, options, quiet=quiet)


def run_planned(
    load: Callable[[], Any],
    start: Callable[[Any, FileProgress], Summary],
    planned: tuple[Sequence[Any], Sequence[FileRecord], Path],
    options: RunOptions,
    *,
    quiet: bool = False,
) -> NoReturn:
    """Load the stage, run the planned files under a progress bar, print the summary, exit.

    Ctrl-C or SIGTERM while the stage loads or the files run ends the same way as a finished
    run: failures not printed yet, the summary line (files not finished counted as pending) and
    the ``--report`` (the runner writes it; every input pending if the run had not started),
    then how to continue; exit 130.

    Args:
        load: builds the stage (loads weights).
        start: runs the files with the loaded stage, feeding the bar (``on_record``: the bar
            itself; ``on_page``: ``bar.on_page``), and returns the run's summary.
        planned: :func:`aepipe.runner.plan`'s jobs, extra records (ignored entries, unreadable
            folders) and output folder.
        options: the runner's options (``report``, ``overwrite``).
        quiet: no progress bar.
    """
    from aepipe.runner import finish_report

    t0 = time.perf_counter()
    try:
        process = load()
    except KeyboardInterrupt as exc:
        summary = _so_far(planned, [], time.perf_counter() - t0)
        finish_report(options.report, summary, raising=exc)
        stop_interrupted(summary, exc, options.overwrite)
    stopped: KeyboardInterrupt | None = None
    with progress_bar(len(planned[0]), quiet) as bar:
        try:
            summary = start(process, bar)
        except KeyboardInterrupt as exc:
            stopped = exc  # the runner wrote the report and attached its summary
    if stopped is not None:
        so_far = getattr(stopped, "summary", None) or _so_far(planned, bar.records, bar.elapsed)
        stop_interrupted(so_far, stopped, options.overwrite)
    finish_summary(summary, quiet)


def _so_far(
    planned: tuple[Sequence[Any], Sequence[FileRecord], Path],
    finished: Sequence[FileRecord],
    seconds: float,
) -> Summary:
    """An interrupted run's summary: the files ``finished``, every other planned one pending."""
    from aepipe.runner import FileRecord, Summary

    jobs, extra, out_dir = planned
    done = {record.path for record in finished}
    pending = [
        FileRecord(str(job.src), "pending", reason="not finished (interrupted)")
        for job in jobs
        if str(job.src) not in done
    ]
    records = [*extra, *finished, *pending]
    return Summary(records, str(out_dir), seconds, interrupted=True)


def stop_interrupted(summary: Summary, exc: BaseException, overwrite: bool) -> NoReturn:
    """Print an interrupted file run's summary and how to continue it, then exit 130.

    Args:
        summary: the run so far (files not finished are pending).
        exc: the interrupt; its notes say when the report could not be written.
        overwrite: ``--overwrite`` was given: a re-run with it would redo every file, so the
            way to continue is the same command without it.
    """
    show_summary(summary, quiet=True)
    for note in getattr(exc, "__notes__", ()):
        err(f"error: {note}")
    again = "the same command without --overwrite" if overwrite else "the same command again"
    err(
        "interrupted: outputs written so far are complete; to continue, run "
        f"{again} (up-to-date outputs are skipped)"
    )
    raise typer.Exit(int(ExitCode.INTERRUPTED))


_shown: dict[int, FileRecord] = {}
"""The failed records printed already (above the bar, as they happened), by id, so that the
summary prints each failure once, those the bar never saw (unreadable folders) included. Held
here, so that no id is reused by a later record while it is in this table."""


class FileProgress:
    """The callbacks of :func:`aepipe.runner.run_files` behind :func:`progress_bar`.

    Call it as ``on_record``; pass :meth:`on_page` as ``on_page``. The bar counts files, moves
    within a multi-page file page by page ("3/40 page 12/30"), and shows pages per second.

    Attributes:
        records: the records of the files finished so far, in order.
    """

    def __init__(self, progress: Any, console: Any, total: int, unit: str) -> None:
        self.progress, self.console = progress, console
        self.task = progress.add_task(f"{unit}s", total=total, rate="", page="")
        self.records: list[FileRecord] = []
        self.done = 0  # files finished
        self.pages = 0  # their pages
        self.current: dict[str, int] = {}  # pages done of files not finished yet

    @property
    def elapsed(self) -> float:
        """Seconds since the bar started."""
        return self.progress.tasks[0].elapsed or 0.0

    def __call__(self, record: FileRecord, done: int, _total: int) -> None:
        """``on_record``: a file is finished; a failure is printed above the bar at once."""
        from rich.markup import escape

        self.records.append(record)
        self.done, self.pages = done, self.pages + record.pages
        self.current.pop(record.path, None)
        if record.status == "failed":
            _shown[id(record)] = record
            self.console.print(
                f"[red]failed[/red] {escape(record.reason or record.path)}",
                highlight=False,
                markup=True,
                soft_wrap=True,
            )
        self.progress.update(self.task, completed=done, page="", rate=self._rate())

    def on_page(self, source: Path, pages_done: int, pages: int) -> None:
        """``on_page``: ``pages_done`` of the ``pages`` of ``source`` (0: unknown) went through."""
        self.current[str(source)] = pages_done
        if pages == 1:
            return  # a one-page file moves the bar when it is written
        page = f"page {pages_done}/{pages}" if pages else f"page {pages_done}"
        # Never a whole file ahead: it is done once written (on_record).
        within = min(pages_done / pages, 0.99) if pages else 0.0
        self.progress.update(self.task, completed=self.done + within, page=page, rate=self._rate())

    def _rate(self) -> str:
        pages = self.pages + sum(self.current.values())
        return f"{pages / self.elapsed:.2f} pages/s" if self.elapsed > 0 and pages else ""


@contextmanager
def progress_bar(total: int, quiet: bool, unit: str = "file") -> Iterator[FileProgress]:
    """A rich progress bar on stderr, fed by :func:`run_files`'s callbacks (:class:`FileProgress`).

    Shown only on a terminal and without ``--quiet``; per-file failures are printed (above the
    bar) as one line each, as they happen, either way.
    """
    from rich.console import Console
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
        TextColumn("{task.fields[page]}"),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )
    bar = FileProgress(progress, console, total, unit)
    with progress:
        yield bar


def require_jobs(
    planned: tuple[Sequence[Any], Sequence[FileRecord], Path],
    inputs: Sequence[Any],
    options: RunOptions,
) -> None:
    """Exit 3 with the reason when the inputs hold no file to process (before weights load).

    Args:
        planned: :func:`aepipe.runner.plan`'s jobs, other records (folders that could not be
            read: printed, one line each, and counted in the reason; ignored entries: counted,
            named with ``--list-ignored``) and output folder.
        inputs: the command line's inputs.
        options: the runner's options: ``report`` is written as a run would write it (no file
            processed); ``list_ignored``.
    """
    jobs, extra, out_dir = planned
    if jobs:
        return
    show_records(extra, options.list_ignored)
    if options.report is not None:
        from aepipe.runner import ReportError, Summary, finish_report

        summary = Summary(list(extra), str(out_dir), list_ignored=options.list_ignored)
        try:
            finish_report(options.report, summary)
        except ReportError as exc:
            err(f"error: {exc}")
    unread = sum(record.status == "failed" for record in extra)
    ignored = sum(record.status == "ignored" for record in extra)
    why = f" ({unread} folder{'' if unread == 1 else 's'} could not be read)" if unread else ""
    if ignored and not options.list_ignored:
        why += f" ({ignored} other entr{'y' if ignored == 1 else 'ies'}: --list-ignored names them)"
    fail(f"no image files found in {', '.join(map(str, inputs))}{why}", ExitCode.NOTHING_PROCESSED)


def show_records(records: Sequence[FileRecord], list_ignored: bool = False) -> None:
    """Print failures not printed yet, notes and, with ``list_ignored``, ignored entries.

    One line each; ignored entries are always in the records (and the report), counted in the
    summary line, and named only with ``--list-ignored``.
    """
    for record in records:
        if record.status == "failed" and id(record) not in _shown:
            _shown[id(record)] = record
            err(f"failed {record.reason or record.path}")
        elif record.status == "ignored" and list_ignored:
            err(f"ignored {record.path}: {record.reason}")
        elif record.status == "ok" and record.reason:
            err(f"note {record.path}: {record.reason}")


def show_summary(summary: Summary, quiet: bool) -> None:
    """Print the records' lines (:func:`show_records`), the run's notes, summary line and folder."""
    show_records(summary.records, summary.list_ignored)
    for note in summary.notes:
        err(f"note: {note}")
    err(summary.line())
    if not quiet and summary.out_dir and summary.count("ok"):
        err(f"outputs in {summary.out_dir}")


def finish_summary(summary: Summary, quiet: bool) -> NoReturn:
    """:func:`show_summary`, then exit with the run's exit code."""
    show_summary(summary, quiet)
    raise typer.Exit(int(summary.exit_code))


def run_app(build: Callable[[], typer.Typer]) -> None:
    """Entry point wrapper: build a typer app and run it; interrupts and stray exits as codes.

    SIGTERM is an interrupt, as Ctrl-C is, from the first thing this does: one line and exit
    130 wherever it comes (importing the commands, loading weights, running), not a traceback
    nor 143. Only the interpreter's start and the import of the entry module come before (a
    few hundredths of a second).

    Args:
        build: imports the commands and returns the app (the work the interrupt may cut).
    """
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        build()(standalone_mode=True)
    except KeyboardInterrupt:
        err("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    finally:
        signal.signal(signal.SIGTERM, previous)
