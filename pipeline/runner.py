"""Run a stage over files and folders: the batch job behind ``clean-scans``, ``denoise`` and
``colorize``.

One bad file never costs the others: every file gets a :class:`FileRecord` (ok, skipped,
failed, ignored) with a one-line reason. Outputs are written atomically, inputs are never
touched, existing complete outputs are skipped (resume) unless ``overwrite`` is set, and pages of
the same size, from one file or from consecutive small files, are batched together.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.batch import ImageBatch
from pipeline.errors import AepipeError, ConfigError, ExitCode, InputImageError
from pipeline.io import (
    DEFAULT_DPI,
    DEFAULT_MAX_PIXELS,
    SUFFIX_OF,
    OutputFormat,
    Page,
    atomic_write,
    is_image_path,
    page_batch,
    read_pages,
    remove_stale_temps,
    write_pages,
)

Status = Literal["ok", "skipped", "failed", "ignored"]
Process = Callable[[ImageBatch], ImageBatch]


@dataclass
class RunOptions:
    """How :func:`run_files` reads, batches and writes.

    Attributes:
        out_dir: output folder; ``None`` means a sibling of the (first) input named
            ``<input>_<out_suffix>``.
        out_suffix: suffix of the default output folder's name.
        fmt: ``same`` keeps TIFF as TIFF and PDF as PDF and writes every other input as PNG
            (lossless, so no JPEG artefacts are added back); or force ``png``/``tiff``/``pdf``/``jpeg``.
        recursive: descend into sub-folders, keeping their layout under ``out_dir``.
        overwrite: replace existing outputs instead of skipping their inputs.
        dpi: resolution at which PDF pages are rendered.
        max_pixels: pages larger than this are refused before decoding.
        frames: ``first`` or ``all`` frames of animated GIF/WebP (TIFF/PDF pages are always all).
        batch_size: how many same-sized pages go through the stage at once.
        report: write a JSON report listing every file here.
        list_ignored: also list non-image files found in folders (as ``ignored``).
    """

    out_dir: Path | None = None
    out_suffix: str = "out"
    fmt: OutputFormat = "same"
    recursive: bool = False
    overwrite: bool = False
    dpi: int = DEFAULT_DPI
    max_pixels: int = DEFAULT_MAX_PIXELS
    frames: Literal["first", "all"] = "first"
    batch_size: int = 4
    report: Path | None = None
    list_ignored: bool = False


@dataclass
class FileRecord:
    """What happened to one input file."""

    path: str
    status: Status
    outputs: list[str] = field(default_factory=list)
    reason: str | None = None
    pages: int = 0
    seconds: float = 0.0


@dataclass
class Summary:
    """The outcome of a run."""

    records: list[FileRecord] = field(default_factory=list)
    out_dir: str | None = None
    seconds: float = 0.0
    interrupted: bool = False

    def count(self, status: Status) -> int:
        """Number of files with ``status``."""
        return sum(r.status == status for r in self.records)

    @property
    def pages(self) -> int:
        """Pages processed in this run."""
        return sum(r.pages for r in self.records if r.status == "ok")

    @property
    def exit_code(self) -> ExitCode:
        """The documented exit code for this outcome."""
        if self.interrupted:
            return ExitCode.INTERRUPTED
        ok, skipped, failed = self.count("ok"), self.count("skipped"), self.count("failed")
        if ok == 0 and skipped == 0:
            return ExitCode.NOTHING_PROCESSED
        return ExitCode.SOME_FAILED if failed else ExitCode.OK

    def line(self) -> str:
        """One-line human summary."""
        text = (
            f"{self.count('ok')} processed ({self.pages} pages), {self.count('skipped')} skipped "
            f"(output exists), {self.count('failed')} failed in {self.seconds:.1f} s"
        )
        return text + (" (interrupted)" if self.interrupted else "")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {
            "summary": {
                "processed": self.count("ok"),
                "skipped": self.count("skipped"),
                "failed": self.count("failed"),
                "ignored": self.count("ignored"),
                "pages": self.pages,
                "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted,
                "exit_code": int(self.exit_code),
                "out_dir": self.out_dir,
            },
            "files": [asdict(r) for r in self.records],
        }


@dataclass
class _Job:
    src: Path
    rel: Path  # path relative to its input root, for the output layout


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def default_out_dir(inputs: Sequence[Path], suffix: str) -> Path:
    """``docs/`` -> ``docs_<suffix>/``; ``a.png`` -> ``<its folder>_<suffix>/``."""
    first = Path(inputs[0]).expanduser().absolute()
    base = first if first.is_dir() else first.parent
    return base.with_name(f"{base.name}_{suffix}")


def plan(inputs: Sequence[str | os.PathLike[str]], options: RunOptions) -> tuple[list[_Job], list[FileRecord], Path]:
    """List the files to process and check the output folder before any work.

    Returns:
        ``(jobs, records of ignored/unreadable entries, out_dir)``.

    Raises:
        ConfigError: an input does not exist, or the output folder is an input folder or inside one.
    """
    paths = [Path(p).expanduser() for p in inputs]
    if not paths:
        raise ConfigError("no inputs given")
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise ConfigError(f"input not found: {', '.join(missing)}")
    out_dir = (options.out_dir or default_out_dir(paths, options.out_suffix)).expanduser().absolute()
    for p in paths:
        root = p.absolute() if p.is_dir() else p.absolute().parent
        if p.is_dir() and (out_dir == root or _inside(out_dir, root)):
            raise ConfigError(
                f"output folder {out_dir} is inside input folder {root}; choose another --out so no "
                "input can be overwritten"
            )
    jobs: list[_Job] = []
    extra: list[FileRecord] = []
    for p in paths:
        if p.is_dir():
            jobs_here, extra_here = _walk(p, options, out_dir)
            jobs += jobs_here
            extra += extra_here
        else:
            jobs.append(_Job(p, Path(p.name)))
    return jobs, extra, out_dir


def _walk(root: Path, options: RunOptions, out_dir: Path) -> tuple[list[_Job], list[FileRecord]]:
    jobs: list[_Job] = []
    extra: list[FileRecord] = []
    # os.walk does not follow symlinked folders, so symlink loops cannot recurse forever.
    for folder, dirs, files in os.walk(root, onerror=None, followlinks=False):
        here = Path(folder)
        if here.absolute() == out_dir or _inside(here.absolute(), out_dir):
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if options.recursive else []
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue
            if not is_image_path(path):
                if options.list_ignored:
                    extra.append(FileRecord(str(path), "ignored", reason="not an image file name"))
                continue
            jobs.append(_Job(path, path.relative_to(root)))
    return jobs, extra


def output_paths(job: _Job, page_meta: Sequence[dict[str, Any]] | None, options: RunOptions, out_dir: Path, pages: int = 1) -> list[Path]:
    """Where the outputs of one input go: its stem, in the same relative folder."""
    in_fmt = job.src.suffix.lower()
    fmt = options.fmt
    if fmt == "same":
        fmt = {".pdf": "pdf", ".tif": "tiff", ".tiff": "tiff"}.get(in_fmt, "png")
    base = out_dir / job.rel.parent / job.rel.stem
    if fmt in ("pdf", "tiff") or pages == 1:
        return [base.with_name(base.name + SUFFIX_OF[fmt])]
    return [base.with_name(f"{base.name}-p{i + 1:03d}{SUFFIX_OF[fmt]}") for i in range(pages)]


class _State:
    """Bookkeeping of one input file while its pages flow through the stage."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.record = FileRecord(str(job.src), "ok")
        self.t0 = time.perf_counter()
        self.decoded = False
        self.finished = False
        self.expected = 0
        self.results: dict[int, tuple[bytes, dict[str, Any]]] = {}

    @property
    def complete(self) -> bool:
        return self.decoded and len(self.results) == self.expected


def _encode_page(batch: ImageBatch, index: int) -> tuple[bytes, dict[str, Any]]:
    """Keep a finished page as PNG bytes: a 500-page PDF must not be held as raw pixels."""
    from PIL import Image

    meta = batch.meta[index]
    pixels = batch.to_numpy(np.uint8)[index]
    if meta.get("bilevel"):
        image = Image.fromarray(pixels[..., 0] >= 128).convert("1")
    else:
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), meta


def run_files(
    inputs: Sequence[str | os.PathLike[str]],
    process: Process,
    options: RunOptions | None = None,
    on_record: Callable[[FileRecord, int, int], None] | None = None,
) -> Summary:
    """Run ``process`` over every page of every input file and write the results.

    Args:
        inputs: files and/or folders.
        process: the stage (or any batch -> batch callable). It receives one-size batches of
            up to ``options.batch_size`` pages as read (gray stays 1 channel, color 3).
        options: see :class:`RunOptions`.
        on_record: called after each file with ``(record, files_done, files_total)``, e.g. to
            drive a progress bar.

    Returns:
        The :class:`Summary`; ``summary.exit_code`` is the documented exit code.

    Raises:
        ConfigError: before any work, if the inputs or the output folder are unusable.
        KeyboardInterrupt: re-raised after the report is written; no partial output remains.
    """
    from PIL import Image

    options = options or RunOptions()
    t_start = time.perf_counter()
    jobs, extra, out_dir = plan(inputs, options)
    summary = Summary(records=list(extra), out_dir=str(out_dir))
    total = len(jobs)
    done = 0
    remove_stale_temps(out_dir)
    input_files = {j.src.absolute() for j in jobs}

    def finish(state: _State) -> None:
        nonlocal done
        if state.finished:
            return
        state.finished = True
        state.record.seconds = round(time.perf_counter() - state.t0, 4)
        summary.records.append(state.record)
        done += 1
        if on_record:
            on_record(state.record, done, total)

    def write(state: _State) -> None:
        pages = [state.results[i] for i in range(state.expected)]
        targets = output_paths(state.job, [m for _, m in pages], options, out_dir, len(pages))
        if any(t.absolute() in input_files for t in targets):
            raise InputImageError(f"{state.job.src}: output would overwrite an input; use another --out")
        images = [Image.open(io.BytesIO(blob)) for blob, _ in pages]
        if len(targets) == 1:
            write_pages(
                images,
                targets[0],
                dpis=[m.get("dpi") for _, m in pages],
                page_sizes_pt=[m.get("page_size_pt") for _, m in pages],
            )
        else:
            for image, (_, meta), target in zip(images, pages, targets, strict=True):
                write_pages([image], target, dpis=[meta.get("dpi")])
        state.record.outputs = [str(t) for t in targets]
        state.record.pages = len(pages)

    def stream() -> Iterator[tuple[_State, int, ImageBatch]]:
        for job in jobs:
            state = _State(job)
            if not options.overwrite:
                guess = output_paths(job, None, options, out_dir)
                if len(guess) == 1 and guess[0].is_file() and guess[0].stat().st_size > 0:
                    state.record.status = "skipped"
                    state.record.outputs = [str(guess[0])]
                    state.record.reason = "output exists (use --overwrite to replace)"
                    finish(state)
                    continue
            try:
                for index, page in enumerate(
                    read_pages(job.src, dpi=options.dpi, max_pixels=options.max_pixels, frames=options.frames)
                ):
                    state.expected = index + 1
                    yield state, index, _page_to_batch(page, job)
                state.decoded = True
            except (AepipeError, OSError, ValueError, MemoryError) as exc:
                state.record.status = "failed"
                state.record.reason = _reason(exc, job.src)
                state.decoded = True
                finish(state)
                continue
            if state.record.status != "ok":
                finish(state)  # a batch holding its pages failed while it was still being read
            elif state.complete:
                _finalise(state)

    def _finalise(state: _State) -> None:
        try:
            write(state)
        except (AepipeError, OSError, ValueError) as exc:
            state.record.status = "failed"
            state.record.reason = _reason(exc, state.job.src)
        finish(state)

    buffer: list[tuple[_State, int, ImageBatch]] = []

    def flush() -> None:
        if not buffer:
            return
        items = list(buffer)
        buffer.clear()
        live = [it for it in items if it[0].record.status == "ok"]
        if not live:
            return
        try:
            out = process(ImageBatch.concat([b for _, _, b in live]))
            results = [(s, i, out, k) for k, (s, i, _) in enumerate(live)]
        except (AepipeError, RuntimeError, ValueError, MemoryError) as exc:
            for state, _, _ in live:
                if state.record.status == "ok":
                    state.record.status = "failed"
                    state.record.reason = _reason(exc, state.job.src)
                    if state.decoded:
                        finish(state)
            return
        for state, index, out_batch, k in results:
            state.results[index] = _encode_page(out_batch, k)
            if state.complete and state.record.status == "ok":
                _finalise(state)

    try:
        for state, index, batch in stream():
            if buffer and (
                buffer[-1][2].images.shape[1:] != batch.images.shape[1:]
                or len(buffer) >= options.batch_size
            ):
                flush()
            buffer.append((state, index, batch))
        flush()
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        summary.seconds = time.perf_counter() - t_start
        if options.report:
            report = json.dumps(summary.to_json(), indent=2).encode()
            atomic_write(options.report, lambda fh: fh.write(report))
    return summary


def _page_to_batch(page: Page, job: _Job) -> ImageBatch:
    name = job.rel.with_suffix("").as_posix()
    if page.meta.get("pages", 1) > 1:
        name = f"{name}-p{page.meta['page'] + 1:03d}"
    return page_batch(page, name)


def _reason(exc: BaseException, src: Path) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        text = "out of memory (lower --batch-size or the tile size)"
    text = text.splitlines()[0] if text else text
    return text if str(src) in text else f"{src}: {text}"
