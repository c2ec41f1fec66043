"""Run a stage over files and folders: the job behind ``clean-scans``, ``denoise``, ``colorize``.

A PDF input written as PDF is cleaned inside the PDF (:func:`aepipe.core.clean_pdf_in_place`):
its scans at their own resolution and type, everything else (text layer, forms, links,
born-digital pages) kept; the report lists what happened to each of its pages.

One bad file never costs the others: every file gets a :class:`FileRecord` (ok, skipped,
failed, ignored, pending) with a one-line reason. Outputs are written atomically, inputs are
never touched, and pages of the same size, from one file or from consecutive small files, are
batched together. A full output disk stops the run (the rest is ``pending``).

Resume is make-like, from a record the runner keeps in the output folder
(:mod:`aepipe.provenance`, ``.aepipe-outputs.jsonl``: each output's input, that input's size
and modification time, a digest of the settings, and the output's own size, time and
sha256): an output made from this input as it is now, with these settings, and unchanged
since, is skipped as up to date; one aepipe made from another input, an older version of the
input, with other settings, or cut short, is redone; a file aepipe did not make, or one
changed after aepipe wrote it, is never taken as done nor replaced without ``overwrite``: its
input fails with a reason saying so. A record that cannot be written fails no output (the
summary's notes say so).

The stage runs in the calling thread; around it, a reader thread decodes the next page and a
writer thread encodes and writes the finished ones (Pillow, zlib, numpy and pdfium release the
GIL), so on a folder of pages the stage is rarely idle. Records, progress callbacks and outputs
come in the same order, with the same bytes, as if everything ran one step after another.

Safety rules, checked before any work or before each write:

* an output folder equal to an input folder, or inside one, is refused (paths are compared
  after resolving symbolic links); for file inputs, the file's own folder is refused;
* an output is never written over a file that is one of the inputs (compared by device and
  inode, so hard links and symbolic links count too);
* two inputs that would get the same output name (``scan.jpg`` and ``scan.png``) get distinct
  names: the one whose suffix matches the output keeps it, the other becomes ``scan_jpg.png``
  (on a later run, the record tells whose output a name was: ``scan.png`` made from
  ``scan.jpg`` before ``scan.png`` was added is redone from ``scan.png``);
* a file that aepipe did not make is never replaced without ``overwrite``, nor taken as done;
* ``--report`` may not name an input, nor a file inside the output folder with an image or PDF
  suffix (an output, or one of a later run);
* an output of one input never replaces another's in the same run (``m.tif`` written as PNG
  pages next to an input ``m-p001.png``): the later file fails with a reason;
* symbolic links to folders are not followed when recursing, so a link loop cannot recurse
  forever; unreadable sub-folders are reported as failed.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import queue
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

from aepipe.batch import ImageBatch
from aepipe.core import (
    EncodedPage,
    Process,
    clean_pdf_in_place,
    edits_in_place,
    encode_result,
    output_format,
    page_name,
    pdf_options,
    write_document,
)
from aepipe.defaults import DEFAULT_BATCH_PIXELS
from aepipe.errors import AepipeError, ConfigError, ExitCode, InputImageError
from aepipe.io import (
    DEFAULT_MAX_PIXELS,
    SUFFIX_OF,
    OutputFormat,
    Page,
    atomic_write,
    check_creatable,
    count_pages,
    is_image_path,
    page_batch,
    read_pages,
    remove_stale_temps,
    sniff_format,
    sniff_image,
)
from aepipe.provenance import RECORD_NAME, OutputRecord, SourceStamp, settings_key

Status = Literal["ok", "skipped", "failed", "ignored", "pending"]


@dataclass
class RunOptions:
    """How :func:`run_files` reads, batches and writes.

    Attributes:
        out_dir: output folder; ``None`` means a sibling of the (first) input named
            ``<input>_<out_suffix>``.
        out_suffix: suffix of the default output folder's name.
        fmt: ``same`` keeps TIFF as TIFF and PDF as PDF and writes every other input as PNG
            (lossless, so no JPEG artefacts are added back); or force ``png``, ``tiff``, ``pdf``
            or ``jpeg``. With a one-page format (png, jpeg), a file of several pages gives one
            output per page, ``<stem>-p001.png``, ``<stem>-p002.png`` ...; a one-page file gives
            ``<stem>.png``. A PDF written as PDF is edited in place (see the module docstring).
        recursive: descend into sub-folders, keeping their layout under ``out_dir``.
        overwrite: process every input and replace whatever has its output names. Without it,
            resume is make-like (see the module docstring): an output recorded in
            ``out_dir/.aepipe-outputs.jsonl`` as made from this input, as it is now, with
            these settings (the stage's class, config and weights, and ``fmt``,
            ``jpeg_quality``, ``pdf_color``, ``dpi``, ``frames``, ``clean_born_digital``), and
            unchanged since (same size and time, or same bytes: a copy of the folder), is
            skipped; one made from another input, an older version of it or other settings,
            or cut short, is redone; a file with no record (not made by aepipe, or made by an
            aepipe version that kept none) or changed after aepipe wrote it (a hand edit) is
            left alone and its input fails ("--overwrite replaces it"). With ``overwrite``,
            such files are first recorded as this run's to replace, so if it is stopped, the
            same run without ``overwrite`` redoes them. Page files of an older, longer
            version of an input (``doc-p003.png``) that aepipe made and nobody changed are
            removed when the input is redone.
        dpi: resolution at which PDF pages are rendered (pages written as images, and PDF pages
            that cannot be edited in place); None renders each page at its scan's own
            resolution (300 DPI for a page without a scan).
        max_pixels: pages and images larger than this are refused before decoding.
        clean_born_digital: PDF pages without a scan are rendered and cleaned too (by default
            they pass through unchanged).
        jpeg_quality: PDF scans cleaned in place are stored as JPEG at this quality; None
            keeps lossless scans lossless and JPEG scans JPEG at their own quality.
        pdf_color: colour of PDF scans cleaned in place: ``auto`` keeps colour only where
            there is coloured ink, ``keep`` keeps it, ``gray`` stores gray (or 1-bit). A
            binarizing stage's pages are stored gray whatever this says
            (:attr:`aepipe.pdf_edit.PdfEditOptions.color`).
        frames: ``first`` or ``all`` frames of animated GIF/WebP/PNG (TIFF/PDF pages are always
            all).
        batch_size: how many same-sized pages go through the stage at once.
        batch_pixels: and at most this many pixels (one page always goes; see
            :data:`aepipe.defaults.DEFAULT_BATCH_PIXELS`).
        report: write a JSON report listing every file here.
        list_ignored: name each non-image file and symbolic link to a folder found in
            folders (:attr:`Summary.list_ignored`, for the CLI's lines); they are recorded as
            ``ignored`` (in the report, and counted in the summary line) either way. A file
            without a suffix is read when its content is an image or PDF.
    """

    out_dir: Path | None = None
    out_suffix: str = "out"
    fmt: OutputFormat = "same"
    recursive: bool = False
    overwrite: bool = False
    dpi: float | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    clean_born_digital: bool = False
    jpeg_quality: int | None = None
    pdf_color: Literal["auto", "keep", "gray"] = "auto"
    frames: Literal["first", "all"] = "first"
    batch_size: int = 4
    batch_pixels: int = DEFAULT_BATCH_PIXELS
    report: Path | None = None
    list_ignored: bool = False

    def __post_init__(self) -> None:
        # A str is as good as a Path here, as it is for the inputs.
        if self.out_dir is not None:
            self.out_dir = Path(self.out_dir)
        if self.report is not None:
            self.report = Path(self.report)


@dataclass
class FileRecord:
    """What happened to one input file.

    Attributes:
        bytes_in: the input's size; bytes_out: its outputs' (files written in this run).
        edited, unchanged, passed, rendered: for a PDF edited in place, its pages cleaned in
            place, cleaned but come back the same (their images kept as they were), passed
            through unchanged (no scan) and rendered (the fallback); None otherwise, but for
            ``unchanged`` with a stage that keeps pages as they were (the scan stage's already
            clean pages and photographs).
        text_pages: with ``--ocr``, how many pages got a text layer.
        page_outcomes: for a PDF edited in place, one entry per page
            (:meth:`aepipe.pdf_edit.PageOutcome.to_json`: status, reason, kind, size, dpi,
            codecs and bytes before and after).
    """

    path: str
    status: Status
    outputs: list[str] = field(default_factory=list)
    reason: str | None = None
    pages: int = 0
    seconds: float = 0.0
    bytes_in: int | None = None
    bytes_out: int | None = None
    edited: int | None = None
    unchanged: int | None = None
    passed: int | None = None
    rendered: int | None = None
    page_outcomes: list[dict[str, Any]] | None = None
    text_pages: int | None = None


@dataclass
class Summary:
    """The outcome of a run.

    Attributes:
        interrupted: stopped by Ctrl-C or SIGTERM.
        list_ignored: the run was asked to name each ignored entry (``--list-ignored``); they
            are in ``records`` (and the report) either way.
        disk_full: stopped because the output disk (or quota) was full: the file being
            written failed, the files after it are ``pending``.
        notes: lines about the whole run, shown once after the files' (the output record
            could not be written; outputs met that the record does not list).
    """

    records: list[FileRecord] = field(default_factory=list)
    out_dir: str | None = None
    seconds: float = 0.0
    interrupted: bool = False
    disk_full: bool = False
    list_ignored: bool = False
    notes: list[str] = field(default_factory=list)

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
            f"{self.count('ok')} processed ({self.pages} page{'' if self.pages == 1 else 's'}), "
            f"{self.count('skipped')} skipped "
            f"(up to date), {self.count('failed')} failed in {self.seconds:.1f} s"
        )
        if self.count("ignored"):
            text += f", {self.count('ignored')} ignored (not images)"
        if self.interrupted:
            text += f", {self.count('pending')} not reached (interrupted)"
        elif self.disk_full:
            text += f"; stopped, the output disk is full: {self.count('pending')} not started"
        return text

    def to_json(self) -> dict[str, Any]:
        """JSON-ready report."""
        return {
            "summary": {
                "processed": self.count("ok"),
                "skipped": self.count("skipped"),
                "failed": self.count("failed"),
                "ignored": self.count("ignored"),
                "pending": self.count("pending"),
                "pages": self.pages,
                "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted,
                "disk_full": self.disk_full,
                "exit_code": int(self.exit_code),
                "out_dir": self.out_dir,
                "notes": self.notes,
            },
            "files": [asdict(r) for r in self.records],
        }


@dataclass
class _Job:
    src: Path
    rel: Path  # path relative to its input root, for the output layout
    stem: Path | None = None  # relative output path without suffix; set when names collide
    # What the input's name and first bytes say, read once a run (planning, deciding, reading
    # and writing each ask): aepipe.core's source kind, and input_kind.
    known: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def out_stem(self) -> Path:
        return self.stem if self.stem is not None else self.rel.with_suffix("")

    @property
    def source(self) -> str:
        """``aepipe.core._source_kind`` of the input (its suffix, or PDF by content), read once."""
        from aepipe.core import _source_kind

        if "source" not in self.known:
            self.known["source"] = _source_kind(self.src)
        return self.known["source"]

    @property
    def kind(self) -> str:
        """:func:`input_kind` of the input, read once."""
        if "kind" not in self.known:
            self.known["kind"] = input_kind(self.src, self.source if self.src.suffix else None)
        return self.known["kind"]


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _real(path: Path) -> Path:
    """The absolute path with symbolic links resolved (for comparisons only)."""
    return Path(os.path.realpath(path.expanduser()))


def default_out_dir(inputs: Sequence[Path], suffix: str) -> Path:
    """``docs/`` -> ``docs_<suffix>/``; ``a.png`` -> ``<its folder>_<suffix>/``.

    ``..`` and ``.`` are resolved first: ``../a.png`` run from ``docs/sub`` goes to
    ``docs_<suffix>``. Files of one folder (``docs/*.png``) share that folder's.

    Raises:
        ConfigError: the inputs lie in several folders (one default would hold the others'
            outputs too, under names they may clash on), or the folder is ``/``.
    """
    # abspath, not resolve(): ".." goes, symbolic links stay (a linked folder's outputs go
    # beside the link, where the user looks).
    bases = []
    for item in inputs:
        path = Path(os.path.abspath(Path(item).expanduser()))  # noqa: PTH100
        base = path if path.is_dir() else path.parent
        if base not in bases:
            bases.append(base)
    if len(bases) > 1:
        shown = ", ".join(str(b) for b in bases[:3]) + (" ..." if len(bases) > 3 else "")
        raise ConfigError(
            f"inputs from {len(bases)} folders ({shown}) have no one default output folder; "
            "give --out DIR"
        )
    if not bases[0].name:
        raise ConfigError(f"no output folder can be made beside {bases[0]}; give --out DIR")
    return bases[0].with_name(f"{bases[0].name}_{suffix}")


def plan(
    inputs: Sequence[str | os.PathLike[str]], options: RunOptions
) -> tuple[list[_Job], list[FileRecord], Path]:
    """List the files to process and check the output folder before any work.

    Returns:
        ``(jobs, records of ignored entries and unreadable folders, out_dir)``.

    Raises:
        ConfigError: an input does not exist; the output folder is an input folder or inside
            one (or, for a file input, is that file's folder); the report would replace an input
            or an output (see :func:`_check_report`); ``jpeg_quality`` with image-only output.
    """
    paths = [Path(p).expanduser() for p in inputs]
    if not paths:
        raise ConfigError("no inputs given")
    if options.jpeg_quality is not None and options.fmt in ("png", "tiff"):
        # It sets how PDF scans edited in place are stored; image outputs would ignore it.
        raise ConfigError(
            f"--jpeg-quality applies to PDFs written as PDF; --format {options.fmt} writes none"
        )
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise ConfigError(f"input not found: {', '.join(missing)}")
    out_dir = (
        (options.out_dir or default_out_dir(paths, options.out_suffix)).expanduser().absolute()
    )
    real_out = _real(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output folder {out_dir} exists and is not a folder")
    check_creatable(out_dir, "output folder")
    for p in paths:
        if p.is_dir():
            root = _real(p)
            if real_out == root or _inside(real_out, root):
                raise ConfigError(
                    f"output folder {out_dir} is inside input folder {p.absolute()}; choose "
                    "another --out so no input can be overwritten"
                )
        elif real_out == _real(p.absolute().parent):
            raise ConfigError(
                f"output folder {out_dir} is the folder of input {p}; choose another --out so no "
                "input can be overwritten"
            )
    jobs: list[_Job] = []
    extra: list[FileRecord] = []
    nest = _root_folders(paths)
    for p in paths:
        if p.is_dir():
            jobs_here, extra_here = _walk(p, options, real_out)
            if nest:
                for job in jobs_here:
                    job.rel = Path(nest[_real(p)]) / job.rel
            jobs += jobs_here
            extra += extra_here
        else:
            jobs.append(_Job(p, Path(p.name)))
    jobs = _once_each(jobs)
    _dedupe(jobs, options)
    if options.report is not None:
        _check_report(Path(options.report).expanduser(), jobs, out_dir)
    return jobs, extra, out_dir


def _check_report(report: Path, jobs: Sequence[_Job], out_dir: Path) -> None:
    """Refuse a ``--report`` that would replace an input, an output or the output record.

    Inside the output folder, any name with an image or PDF suffix is refused, not only this
    run's first output names: a file of several pages gets ``<stem>-p001.png`` ..., and another
    run's outputs go there too.

    Raises:
        ConfigError: the report is a folder, an input, or such a name in the output folder.
    """
    if report.is_dir():
        raise ConfigError(f"--report {report} is a folder; give a file name")
    check_creatable(report.parent, "--report folder")
    if report.exists() and _identity(report) in _identities(jobs):
        raise ConfigError(f"--report {report} is one of the inputs; choose another file")
    real = _real(report.absolute())
    if _inside(real, _real(out_dir)) and (is_image_path(report) or report.name == RECORD_NAME):
        raise ConfigError(
            f"--report {report} would replace an output in the output folder {out_dir}; "
            "choose another file (a .json name)"
        )


def _root_folders(paths: Sequence[Path]) -> dict[Path, str]:
    """Each input folder's output subfolder (its name) when several folders are given, else {}.

    ``clean-scans box1 box2 --out o`` writes ``o/box1/...`` and ``o/box2/...``: flattened, the
    boxes' ``0001.tif`` would meet in ``o`` under made-up names and a later run of one box
    would take the other's output for its own.

    Raises:
        ConfigError: two input folders have the same name (``a/scans``, ``b/scans``).
    """
    folders: dict[Path, Path] = {}
    for p in paths:
        if p.is_dir():
            folders.setdefault(_real(p), p)
    if len(folders) < 2:
        return {}
    names: dict[str, Path] = {}
    for real, given in folders.items():
        name = real.name
        if name in names:
            raise ConfigError(
                f"input folders {names[name]} and {given} have the same name, {name!r}: their "
                "outputs would share one subfolder of --out; run them separately"
            )
        names[name] = given
    return {real: real.name for real in folders}


def _once_each(jobs: list[_Job]) -> list[_Job]:
    """The jobs without repeats of one file (given twice, or in a folder and by name).

    A file found in an input folder keeps that folder's layout whatever the order of the
    arguments (``b1/a.png b1 b2`` and ``b1 b2 b1/a.png`` write the same output), at the place
    of its first mention.
    """
    first: dict[tuple[int, int] | Path, int] = {}
    kept: list[_Job] = []
    for job in jobs:
        key = _identity(job.src) or _real(job.src)
        if key not in first:
            first[key] = len(kept)
            kept.append(job)
        elif len(job.rel.parts) > len(kept[first[key]].rel.parts):
            kept[first[key]] = job  # found in a folder: its place in the layout
    return kept


def _walk(root: Path, options: RunOptions, real_out: Path) -> tuple[list[_Job], list[FileRecord]]:
    jobs: list[_Job] = []
    extra: list[FileRecord] = []

    def unreadable(exc: OSError) -> None:
        name = exc.filename or root
        why = (
            "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        )
        extra.append(FileRecord(str(name), "failed", reason=f"{name}: cannot list folder ({why})"))

    # os.walk does not follow symlinked folders, so symlink loops cannot recurse forever.
    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(folder)
        if here != root and _real(here) == real_out:
            dirs[:] = []
            continue
        if options.recursive:
            keep = []
            for d in sorted(dirs):
                if d.startswith("."):
                    continue
                if (here / d).is_symlink():
                    extra.append(
                        FileRecord(
                            str(here / d),
                            "ignored",
                            reason="symbolic link to a folder (not followed)",
                        )
                    )
                    continue
                keep.append(d)
            dirs[:] = keep
        else:
            dirs[:] = []
        for name in sorted(files):
            path = here / name
            if name.startswith("."):
                continue
            # A name without a suffix (some scanners' and exports') is told by its content.
            if not (is_image_path(path) or (not path.suffix and sniff_image(path))):
                extra.append(FileRecord(str(path), "ignored", reason="not an image file name"))
                continue
            jobs.append(_Job(path, path.relative_to(root)))
    return jobs, extra


def _may_have_pages(job: _Job, options: RunOptions) -> bool:
    """Whether ``job``'s input can hold several pages as read (else its pages are not counted).

    By the suffix first (no file is opened for the common one-page image); a name without one,
    or ``--frames all``, by the input's kind.
    """
    suffix = job.src.suffix.lower()
    if suffix in (".tif", ".tiff", ".pdf"):
        return True
    if suffix and options.frames == "first":
        return False
    kind = job.kind
    return kind == "pdf" or kind in ("tif", "tiff") or (options.frames == "all" and kind in _FRAMED)


def _out_format(job: _Job, options: RunOptions) -> str:
    return output_format(job.src, options.fmt, kind=job.source)


def _dedupe(jobs: list[_Job], options: RunOptions) -> None:
    """Give distinct output names to inputs that would share one (``a.jpg`` and ``a.png``)."""
    groups: dict[tuple[str, str], list[_Job]] = {}
    for job in jobs:
        key = (job.out_stem.as_posix(), _out_format(job, options))
        groups.setdefault(key, []).append(job)
    taken = {k[0] for k in groups}
    for (stem, fmt), members in groups.items():
        if len(members) < 2:
            continue
        keeper = next((j for j in members if j.src.suffix.lower() == SUFFIX_OF[fmt]), None)
        for job in members:
            if job is keeper:
                continue
            candidate = Path(f"{stem}_{job.src.suffix.lower().lstrip('.')}")
            n = 2
            while candidate.as_posix() in taken:
                candidate = Path(f"{stem}_{job.src.suffix.lower().lstrip('.')}{n}")
                n += 1
            taken.add(candidate.as_posix())
            job.stem = candidate
        if keeper is None:
            # No input owns the plain name; the first keeps it so it is stable across runs.
            members[0].stem = None
            taken.add(stem)


def output_paths(
    job: _Job,
    page_meta: Sequence[dict[str, Any]] | None,
    options: RunOptions,
    out_dir: Path,
    pages: int = 1,
) -> list[Path]:
    """Where the outputs of one input go: its stem, in the same relative folder.

    PDF and TIFF outputs hold every page in one file; PNG/JPEG outputs of a file with several
    pages are numbered ``<stem>-p001.png`` ...
    """
    fmt = _out_format(job, options)
    base = out_dir / job.out_stem
    if fmt in ("pdf", "tiff") or pages == 1:
        return [base.with_name(base.name + SUFFIX_OF[fmt])]
    return [
        base.with_name(page_name(base.name, {"page": i, "pages": pages}) + SUFFIX_OF[fmt])
        for i in range(pages)
    ]


_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def is_complete_output(path: Path) -> bool:
    """Whether ``path`` is a finished output: a non-empty regular file with its format's trailer.

    Outputs written by aepipe are atomic, so this mainly guards against files truncated by
    something else (a full disk during a copy, another tool).
    """
    try:
        st = path.stat()
    except OSError:
        return False
    if not path.is_file() or st.st_size == 0:
        return False
    suffix = path.suffix.lower()
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            fh.seek(max(0, st.st_size - 1024))
            tail = fh.read()
    except OSError:
        return False
    if suffix in (".tif", ".tiff"):
        if head not in (b"II*\x00", b"MM\x00*") or st.st_size <= 8:
            return False
        try:
            with path.open("rb") as fh:
                return _tiff_complete(fh, st.st_size)
        except (OSError, struct.error):
            return False
    if suffix == ".png":
        return tail.endswith(_PNG_END)
    if suffix in (".jpg", ".jpeg"):
        return b"\xff\xd9" in tail[-64:]
    if suffix == ".pdf":
        return b"%%EOF" in tail
    return True


def _tiff_complete(fh: IO[bytes], size: int) -> bool:
    """Whether every IFD of a classic TIFF, and every strip or tile they point to, is in the file.

    Reads the IFD chain and the offset tables only (a few KB for a 33 MB page), so a file cut
    short anywhere, before its IFD (libtiff writes it last) or in its image data, is caught.

    Raises:
        struct.error: a table is cut short.
    """
    order = "<" if fh.read(2) == b"II" else ">"
    fh.seek(4)
    (offset,) = struct.unpack(order + "I", fh.read(4))
    seen: set[int] = set()
    while offset:
        if offset in seen or len(seen) > 10_000 or offset + 2 > size:
            return False  # a loop, an absurd chain, or an IFD beyond the end
        seen.add(offset)
        fh.seek(offset)
        (n,) = struct.unpack(order + "H", fh.read(2))
        block = fh.read(n * 12 + 4)
        tables: dict[int, list[int]] = {}
        for i in range(n):
            tag, kind, count = struct.unpack(order + "HHI", block[i * 12 : i * 12 + 8])
            if tag in (273, 279, 324, 325):  # strip / tile offsets and byte counts
                tables[tag] = _tiff_values(
                    fh, order, (kind, count), block[i * 12 + 8 : i * 12 + 12]
                )
        starts = tables.get(273) or tables.get(324) or []
        lengths = tables.get(279) or tables.get(325) or []
        if starts and lengths and len(starts) != len(lengths):
            return False
        # (A writer may leave out the byte counts of one uncompressed strip: offsets only.)
        ends = zip(starts, lengths, strict=False)
        if any(a >= size for a in starts) or any(a + b > size for a, b in ends):
            return False
        (offset,) = struct.unpack(order + "I", block[n * 12 : n * 12 + 4])
    return True


def _tiff_values(fh: IO[bytes], order: str, kind_count: tuple[int, int], raw: bytes) -> list[int]:
    """The SHORT or LONG values of one IFD entry (inline, or at the offset it holds)."""
    kind, count = kind_count
    code = {3: "H", 4: "I"}.get(kind)
    if code is None:
        return []
    nbytes = struct.calcsize(code) * count
    if nbytes <= 4:
        data = raw[:nbytes]
    else:
        (at,) = struct.unpack(order + "I", raw)
        here = fh.tell()
        fh.seek(at)
        data = fh.read(nbytes)
        fh.seek(here)
    return list(struct.unpack(f"{order}{count}{code}", data))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _identities(jobs: Sequence[_Job]) -> set[tuple[int, int]]:
    ids = {_identity(j.src) for j in jobs}
    ids.discard(None)
    return ids  # type: ignore[return-value]


@dataclass
class _Decision:
    """What the reader decided for one input before reading it (see :meth:`_Run.decide`).

    ``do``: process it (``reason``: a note on what it replaces); ``skip``: its outputs
    ``targets`` are up to date; ``fail``: ``reason`` says why it is not processed. ``source``
    and ``settings`` go into the output record when it is written.
    """

    action: Literal["do", "skip", "fail"]
    targets: list[Path] = field(default_factory=list)
    reason: str | None = None
    source: SourceStamp | None = None
    settings: str | None = None


class _State:
    """Bookkeeping of one input file while its pages flow through the stage."""

    def __init__(self, job: _Job, decision: _Decision | None = None) -> None:
        self.job = job
        self.decision = decision or _Decision("do")
        self.record = FileRecord(str(job.src), "ok")
        self.pages_done = 0  # pages that went through the stage (on_page)
        self.t0 = time.perf_counter()
        self.decoded = False
        self.writing = False  # its outputs were handed to the writer thread
        self.finished = False
        self.expected = 0
        self.results: dict[int, EncodedPage] = {}

    @property
    def complete(self) -> bool:
        return self.decoded and len(self.results) == self.expected


Item = tuple[_State, int, ImageBatch]  # a file's state, the page's index, the page as a batch


def run_files(
    inputs: Sequence[str | os.PathLike[str]],
    process: Process,
    options: RunOptions | None = None,
    on_record: Callable[[FileRecord, int, int], None] | None = None,
    on_page: Callable[[Path, int, int], None] | None = None,
) -> Summary:
    """Run ``process`` over every page of every input file and write the results.

    Per file: unreadable inputs (empty, truncated, not an image, encrypted PDF, too many
    pixels, permission denied, ...) and pages the stage fails on are recorded as ``failed``
    with a one-line reason naming the file; every other file is still processed. When a batch
    of several pages fails, its pages are retried one by one so only the bad one fails.
    Temporary files left by a killed run are removed first.

    Resume is make-like (see :attr:`RunOptions.overwrite`): outputs recorded in
    ``<out>/.aepipe-outputs.jsonl`` as made from the input as it is now, with the same stage
    and output settings, and unchanged since, are ``skipped`` (up to date); outputs aepipe made
    from another input, an older input or other settings are redone (the record's reason says
    what was replaced), as are outputs changed since; a file at an output name that aepipe did
    not make is never replaced without ``options.overwrite``: its input is ``failed`` with a
    reason.
    Outputs written before this record existed therefore need ``overwrite`` once.

    A full output disk (``ENOSPC``, ``EDQUOT``) stops the run: that file fails ("disk full"),
    the files after it are ``pending``, no partial output remains and ``summary.disk_full``
    is set.

    Args:
        inputs: files and/or folders.
        process: the stage (or any batch -> batch callable). It receives one-size batches of
            up to ``options.batch_size`` pages as read (gray stays 1 channel, color 3) and must
            return as many images, in order, in a batch it does not change afterwards (its
            pages are encoded in a writer thread while the next batch runs). It is called
            in the calling thread only. A :class:`~aepipe.stage.Stage` or a
            :class:`~aepipe.pipeline.Pipeline` of stages, or a wrapper of stages, is part of
            the settings that decide whether an output is up to date
            (:func:`aepipe.provenance.settings_key`); any other callable counts as
            "unknown" (a change of it is not seen), the output options always count.
        options: see :class:`RunOptions`.
        on_record: called after each file with ``(record, files_done, files_total)``, e.g. to
            drive a progress bar.
        on_page: called in the calling thread after each page of a file has gone through the
            stage, with ``(source path, pages of that file done, pages of that file)``; the
            last is 0 when unknown. A PDF edited in place (its pages go through the stage
            inside the PDF editor) calls it once, when it is written, with its page count
            twice. Skipped and failed files do not call it.

    Returns:
        The :class:`Summary`; ``summary.exit_code`` is the documented exit code.

    Raises:
        ConfigError: before any work, if the inputs or the output folder are unusable.
        ReportError: after the run, when ``options.report`` could not be written; its
            ``summary`` is the run's (complete), its message one line.
        KeyboardInterrupt: re-raised after the report is written (files not finished are listed
            as ``pending``), with the run's :class:`Summary` as its ``summary``; no partial
            output remains.
    """
    from aepipe.stage import fit_channels

    options = options or RunOptions()
    t_start = time.perf_counter()
    jobs, extra, out_dir = plan(inputs, options)
    run = _Run(jobs, fit_channels(process), options, out_dir, (on_record, on_page))
    run.keyed = process
    run.summary.records = list(extra)
    try:
        run.run()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            run.summary.interrupted = True
            run.summary.records += run.unfinished("not finished (interrupted)")
            exc.summary = run.summary  # type: ignore[attr-defined]  # for the front end's line
        run.summary.notes += record_notes(run.record)
        run.summary.seconds = time.perf_counter() - t_start
        finish_report(options.report, run.summary, raising=exc)
        raise
    if run.disk_full:
        run.summary.disk_full = True
        run.summary.records += run.unfinished("not started: the output disk is full")
    run.summary.notes += record_notes(run.record)
    run.summary.seconds = time.perf_counter() - t_start
    finish_report(options.report, run.summary)
    return run.summary


class ReportError(AepipeError):
    """The run finished but its ``--report`` could not be written.

    Attributes:
        summary: the run's complete :class:`Summary` (its exit code is the run's own).
    """

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


def finish_report(
    path: str | os.PathLike[str] | None,
    summary: Summary,
    raising: BaseException | None = None,
) -> None:
    """Write ``summary`` to ``path`` (if any) once the run is over; never masks the run.

    Args:
        path: the ``--report`` file, or None.
        summary: the complete summary.
        raising: the exception ending the run (Ctrl-C) that the caller re-raises: a report
            that cannot be written is added to its notes (``__notes__``) instead of raised.

    Raises:
        ReportError: the report could not be written ("cannot write the report <path>:
            <reason>"), outside an interruption.
    """
    if path is None:
        return
    try:
        write_report(path, summary)
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        message = f"cannot write the report {path}: {why}"
        if raising is not None:
            raising.add_note(message)
            return
        raise ReportError(message, summary) from exc


def write_report(path: str | os.PathLike[str], summary: Summary) -> None:
    """Write ``summary`` as the JSON report of ``--report`` (atomically)."""
    report = json.dumps(summary.to_json(), indent=2).encode()
    atomic_write(path, lambda fh: fh.write(report))


def record_notes(record: OutputRecord) -> list[str]:
    """The run's notes on its output record: files it does not list, and a failed write."""
    notes = []
    if record.unrecorded:
        n = len(record.unrecorded)
        notes.append(
            f"{n} output{'s' * (n > 1)} exist{'s' * (n == 1)} that the output record "
            f"({RECORD_NAME}) does not list: made by another program, by aepipe before 0.2.0, "
            "or the record was removed; run once with --overwrite to replace them"
        )
    if record.unwritable is not None:
        notes.append(
            f"the output record could not be written ({record.unwritable}): a re-run will "
            "redo or refuse these outputs"
        )
    return notes


# Options that can change the output of a PDF input only (its pages' rendering, the scans
# edited in place), and formats whose files may hold several frames (--frames).
_PDF_OPTIONS = ("jpeg_quality", "pdf_color", "dpi", "clean_born_digital")
_FRAMED = ("gif", "webp", "png", "apng")


def input_kind(src: Path, source: str | None = None) -> str:
    """``pdf``, a format whose files may hold frames (``gif``, ``webp``, ``png``) or ``raster``.

    By the suffix, PDFs by content (:func:`aepipe.core.output_format`'s rule; ``source``: that
    kind when already known), and a name without a suffix by its content
    (:func:`aepipe.io.sniff_format`).
    """
    from aepipe.core import _source_kind

    if src.suffix:
        kind = source if source is not None else _source_kind(src)
    else:
        kind = sniff_format(src) or "raster"
    return kind if kind in ("pdf", *_FRAMED) else "raster"


def output_settings(options: RunOptions, kind: str | None = None) -> dict[str, Any]:
    """The options that decide an output's bytes (part of the record's settings key).

    Args:
        options: the run's options.
        kind: the input's kind (:func:`aepipe.core.output_format`'s source kind: ``pdf``,
            ``png``, ...): only the options that can change its output count, so that a
            PDF-only option (``--dpi``) does not redo a folder of PNG pages; None: all of them.
    """
    names = ["fmt", "frames", *_PDF_OPTIONS]
    if kind is not None:
        names = ["fmt"] + (["frames"] if kind in _FRAMED else [])
        names += list(_PDF_OPTIONS) if kind == "pdf" else []
    return {name: getattr(options, name) for name in names}


# Encodes and writes that may wait behind the stage before it waits for them: enough to keep
# the writer busy, few enough that finished pages (float32 on the stage's side) stay bounded.
_AHEAD = 2

Then = Callable[["Future[Any] | None"], None]


class _Reader:
    """Decodes the next page in a thread while the stage works on the current one.

    Events come in input order: ``("start", job, decision, in_place)`` (:class:`_Decision`:
    process, skip or fail it), ``("page", job, index, batch)``, ``("error", job, exc)``
    and ``("end", job)``. At most one decoded page waits ahead of the stage (a slot), so memory
    stays bounded for huge pages; a bug in the reader itself is re-raised in the caller.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.slot = threading.Semaphore(1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.work, name="aepipe-reader", daemon=True)

    def events(self) -> Iterator[tuple[Any, ...]]:
        """The events, in order; the thread is stopped and joined when this ends or closes."""
        self.thread.start()
        try:
            while (event := self.queue.get()) is not None:
                if event[0] == "crash":
                    raise event[2]
                if event[0] == "page":
                    self.slot.release()
                yield event
        finally:
            self.stop.set()
            self.thread.join()

    def work(self) -> None:
        run = self.run
        try:
            for job in run.jobs:
                if self.stop.is_set():
                    return
                decision = run.decide(job)
                todo = decision.action == "do"
                in_place = todo and edits_in_place(job.src, run.options.fmt, job.source)
                self.queue.put(("start", job, decision, in_place))
                if todo and not in_place:
                    self.read(job)
        except BaseException as exc:  # a bug here must reach the caller, not vanish
            self.queue.put(("crash", None, exc))
        finally:
            self.queue.put(None)

    def read(self, job: _Job) -> None:
        options = self.run.options
        try:
            pages = read_pages(
                job.src, dpi=options.dpi, max_pixels=options.max_pixels, frames=options.frames
            )
            for index in itertools.count():
                while not self.slot.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                try:
                    batch = _page_to_batch(next(pages), job)
                except BaseException:
                    self.slot.release()
                    raise
                self.queue.put(("page", job, index, batch))
        except StopIteration:
            self.queue.put(("end", job))
        except Exception as exc:
            self.queue.put(("error", job, exc))


class _Run:
    """One :func:`run_files` call: files -> pages -> batches through ``process`` -> outputs.

    Work handed to the writer thread is settled in submission order (:meth:`settle`): every
    callback that touches a record runs in the calling thread, and a file is finished only
    after every file before it.
    """

    def __init__(
        self,
        jobs: list[_Job],
        process: Process,
        options: RunOptions,
        out_dir: Path,
        callbacks: tuple[
            Callable[[FileRecord, int, int], None] | None, Callable[[Path, int, int], None] | None
        ] = (None, None),
    ) -> None:
        self.jobs, self.process, self.options, self.out_dir = jobs, process, options, out_dir
        self.on_record, self.on_page = callbacks
        self.record = OutputRecord(out_dir)
        self.settings_keys: dict[tuple[str, str], str] = {}  # (kind, format) -> key
        self.keyed: Any = process  # what the settings key is of (run_files: the unwrapped one)
        self.disk_full = False
        self.summary = Summary(out_dir=str(out_dir), list_ignored=options.list_ignored)
        self.done = 0
        self.input_ids = _identities(jobs)
        # Outputs of this run and their inputs: a page of m.tif (m-p001.png) must not replace
        # the output of an input named m-p001.png. Checked in the writer thread too, so locked.
        self.claimed: dict[Path, Path] = {}
        self.claim_lock = threading.Lock()
        self.finished_jobs: set[int] = set()
        self.buffer: list[Item] = []
        self.pending: deque[tuple[Future[Any] | None, Then]] = deque()
        self.front: list[tuple[Future[Any] | None, Then]] | None = None  # see settle()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="aepipe-writer")

    def run(self) -> None:
        """Stream every page, batching consecutive same-sized pages; stop on a full disk."""
        remove_stale_temps(self.out_dir)
        if self.options.overwrite:
            self.adopt()
        items = self.stream()
        try:
            for item in items:
                if self.disk_full:
                    break
                last = self.buffer[-1][2] if self.buffer else None
                pixels = item[2].images.shape[-2] * item[2].images.shape[-1]
                if last is not None and (
                    last.images.shape[1:] != item[2].images.shape[1:]
                    or len(self.buffer) >= self.options.batch_size
                    or (len(self.buffer) + 1) * pixels > self.options.batch_pixels
                ):
                    self.flush()
                self.buffer.append(item)
            if not self.disk_full:
                self.flush()
        finally:
            items.close()  # stops the reader
            try:
                # Interrupted or not, what the stage finished is written and recorded.
                self.settle(wait=True)
            finally:
                self.pool.shutdown(wait=True)

    def adopt(self) -> None:
        """Mark every planned output that exists with no record line as this run's to replace.

        So a run without ``--overwrite`` after this one is stopped redoes them, rather than
        refusing them as not aepipe's (:meth:`OutputRecord.adopt`). Best effort: a full disk
        here is met again, and reported, at the first write.
        """
        planned = []
        for job in self.jobs:
            try:
                source = SourceStamp.of(job.src)
            except OSError:
                continue
            targets = self.candidate_outputs(job)
            # An input is never replaced (the guard refuses it): not this run's to adopt.
            planned += [(t, source) for t in targets if _identity(t) not in self.input_ids]
        with contextlib.suppress(OSError):
            self.record.adopt(planned, None)  # adopted lines are redone whatever the settings

    # ---- the writer thread, settled in order ------------------------------------------------

    def later(self, future: Future[Any] | None, then: Then) -> None:
        """Call ``then(future)`` once ``future`` is done and everything before it is settled."""
        (self.pending if self.front is None else self.front).append((future, then))

    def settle(self, wait: bool = False) -> None:
        """Run the callbacks of finished work, in order; ``wait``: until none is left.

        Without ``wait``, it still waits for the oldest work once more than ``_AHEAD`` pieces
        are running or queued, so the stage never runs far ahead of the writer.
        """
        while self.pending:
            future, then = self.pending[0]
            if future is not None and not future.done() and not wait:
                busy = sum(f is not None and not f.done() for f, _ in self.pending)
                if busy <= _AHEAD:
                    return
            self.pending.popleft()
            # Work a callback queues (a file's write once its last page is encoded, a failure
            # to record) goes first, as it would have happened here in a sequential run.
            self.front = []
            try:
                then(future)
            finally:
                self.pending.extendleft(reversed(self.front))
                self.front = None

    # ---- per file ---------------------------------------------------------------------------

    def finish(self, state: _State) -> None:
        """Record ``state`` now, or after the files before it that are still being written."""
        if self.pending:
            self.later(None, lambda _future: self.close(state))
        else:
            self.close(state)

    def close(self, state: _State) -> None:
        if state.finished:
            return
        state.finished = True
        state.results.clear()
        state.record.seconds = round(time.perf_counter() - state.t0, 4)
        self.summary.records.append(state.record)
        self.finished_jobs.add(id(state.job))
        self.done += 1
        if self.on_record:
            self.on_record(state.record, self.done, len(self.jobs))

    def unfinished(self, reason: str) -> list[FileRecord]:
        """``pending`` records, with ``reason``, of the files not finished."""
        return [
            FileRecord(str(job.src), "pending", reason=reason)
            for job in self.jobs
            if id(job) not in self.finished_jobs
        ]

    def guard(self, state: _State, targets: Sequence[Path]) -> None:
        """Refuse outputs that would replace what is not this input's to replace.

        That is an input, another input's output of this run, or (without ``overwrite``) a
        file that aepipe did not make from this input.
        """
        job, decision = state.job, state.decision
        for target in targets:
            if _identity(target) in self.input_ids:
                raise InputImageError(
                    f"{job.src}: output {target} would replace an input; use another --out"
                )
        if not self.options.overwrite and decision.source is not None:
            for target in targets:
                verdict, why = self.record.verdict(
                    target, decision.source, decision.settings, job.src
                )
                if verdict == "foreign":
                    raise InputImageError(why)
        with self.claim_lock:
            for target in targets:
                other = self.claimed.get(target, job.src)
                if other != job.src:
                    raise InputImageError(
                        f"{job.src}: output {target.name} is already the output of {other}; "
                        "rename one of them (or write one file per input: --format pdf or tiff)"
                    )
            self.claimed.update(dict.fromkeys(targets, job.src))

    def recorded(self, state: _State, targets: Sequence[Path], write: Callable[[], Any]) -> None:
        """Run ``write`` (which writes ``targets``) between its claim and its done record.

        On failure, the targets it had already written are removed again (a file of several
        pages must not be left with some pages of this run), so no partial output remains.
        """
        decision = state.decision
        if decision.source is None:  # not stamped (cannot happen for a file being written)
            write()
            return
        before = {t: _identity_time(t) for t in targets}
        self.record.claim(targets, decision.source, decision.settings)
        try:
            write()
        except BaseException:
            for target in targets:
                if _identity_time(target) not in (None, before[target]):
                    target.unlink(missing_ok=True)
            raise
        self.record.done(targets, decision.source, decision.settings)

    def write(self, state: _State) -> None:
        """Write a file's pages (in the writer thread; touches only this file's record)."""
        pages = [state.results[i] for i in range(state.expected)]
        metas = [p.meta for p in pages]
        targets = output_paths(state.job, metas, self.options, self.out_dir, len(pages))
        self.guard(state, targets)
        self.recorded(state, targets, lambda: write_document(pages, targets, source=state.job.src))
        _record_outputs(state.record, state.job.src, targets)
        self.remove_leftovers(state, targets)
        state.record.pages = len(pages)
        stages = getattr(self.process, "stages", None)
        # In a longer pipeline a later stage may change what the scan stage kept: no count.
        _record_kept(state.record, metas, count=not isinstance(stages, list) or len(stages) == 1)

    def remove_leftovers(self, state: _State, targets: list[Path]) -> None:
        """Remove the page files an older version of the input had and this one does not.

        ``doc-p003.png`` of a 3-page ``doc.tif`` that now has 2 pages (or ``doc.png`` of a
        page that became several): removed when the record says aepipe made it from this
        input and it is unchanged since; otherwise left. Either way the file's record says.
        """
        source = state.decision.source
        if source is None:
            return
        single = output_paths(state.job, None, self.options, self.out_dir, 1)[0]
        page = re.compile(re.escape(single.stem) + r"-p\d{3,}" + re.escape(single.suffix))
        n = len(targets)
        now = f"the input now has {n} page{'s' * (n > 1)}"
        for old in sorted(self.record.outputs_of(source)):
            if old in targets or old.parent != single.parent or not old.is_file():
                continue
            if old != single and not page.fullmatch(old.name):
                continue  # another output of this input (another format): not a page of it
            with self.claim_lock:
                mine = self.claimed.get(old, state.job.src) == state.job.src
            if not mine or _identity(old) in self.input_ids:
                continue  # this run's output of another input, or an input: not a leftover
            if self.record.made_by_aepipe(old):
                old.unlink(missing_ok=True)
                _note(state.record, f"removed {old.name} ({now})")
            else:
                _note(state.record, f"left {old.name}: changed since aepipe wrote it ({now})")

    def edit_in_place(self, state: _State) -> None:
        """Clean a PDF inside the PDF (PDF in, PDF out) and record its pages' outcomes."""
        job, options = state.job, self.options
        try:
            targets = output_paths(job, None, options, self.out_dir, 1)
            self.guard(state, targets)
            edit = pdf_options(
                max_pixels=options.max_pixels,
                dpi=options.dpi,
                clean_born_digital=options.clean_born_digital,
                jpeg_quality=options.jpeg_quality,
                color=options.pdf_color,
            )
            outcomes: list[Any] = []

            def clean() -> None:
                outcomes.extend(clean_pdf_in_place(job.src, targets[0], self.process, edit))

            self.recorded(state, targets, clean)
        except Exception as exc:
            self.failed(state, exc)
        else:
            self._edited(state, targets, outcomes)
        self.finish(state)

    def _edited(self, state: _State, targets: list[Path], outcomes: list[Any]) -> None:
        """Record a PDF cleaned in place: its outputs, page outcomes and notes."""
        job, record = state.job, state.record
        _record_outputs(record, job.src, targets)
        record.pages = len(outcomes)
        record.page_outcomes = [o.to_json() for o in outcomes]
        record.edited, record.unchanged, record.passed, record.rendered = (
            sum(o.status == status for o in outcomes)
            for status in ("edited", "unchanged", "passed", "rendered")
        )
        _note(record, state.decision.reason)
        from aepipe.pdf_edit import is_signed

        if (record.edited or record.rendered) and is_signed(job.src):
            _note(record, "digitally signed: editing its pages invalidated the signature")
        if outcomes and record.passed == len(outcomes):
            # Written, but the stage saw nothing: say so rather than a silent copy.
            # --format png is a way out only where the format was left to us (not --ocr).
            png = (
                "--format png renders and processes whole pages; "
                if self.options.fmt == "same"
                else ""
            )
            _note(
                record,
                "no page has a scan to process (no image covers half a page), so the PDF is "
                f"as it was ({png}clean-scans: --clean-born-digital)",
            )
        if self.on_page is not None:
            self.on_page(job.src, len(outcomes), len(outcomes))

    def failed(self, state: _State, exc: BaseException) -> None:
        """Record ``state`` as failed by ``exc``; a full disk also stops the run."""
        state.record.status = "failed"
        state.record.reason = _reason(exc, state.job.src)
        if _disk_full(exc):
            state.record.reason = f"disk full: {state.record.reason}"
            self.disk_full = True

    def finalise(self, state: _State) -> None:
        """Hand a file whose pages are all encoded to the writer (none once the disk is full)."""
        if state.writing or state.finished or self.disk_full:
            return
        state.writing = True
        self.later(self.pool.submit(self.write, state), partial(self.written, state))

    def written(self, state: _State, future: Future[Any] | None) -> None:
        try:
            future.result()  # type: ignore[union-attr]
        except Exception as exc:
            self.failed(state, exc)
        else:
            _note(state.record, state.decision.reason)
        self.close(state)

    def fail(self, state: _State, exc: BaseException) -> None:
        if state.record.status == "ok":
            state.record.status = "failed"
            state.record.reason = _reason(exc, state.job.src)
            state.results.clear()
            if state.decoded:
                self.finish(state)

    def settings_for(self, job: _Job) -> str:
        """The record's settings key for ``job``: the process and the options its kind uses.

        One key per kind of input and output format, worked out once (the weights are hashed
        once each): a PDF-only option (``--dpi``) does not redo a folder of PNG pages, nor does
        ``--format png`` redo PNG inputs that are written as PNG anyway.
        """
        fmt = _out_format(job, self.options)
        kind = job.kind
        if (kind, fmt) not in self.settings_keys:
            options = {**output_settings(self.options, kind), "fmt": fmt}
            self.settings_keys[kind, fmt] = settings_key(self.keyed, options)
        return self.settings_keys[kind, fmt]

    def decide(self, job: _Job) -> _Decision:
        """Process, skip or fail ``job``, from its outputs on disk and the output record.

        Runs in the reader thread, before the input is read; the writer checks again, with
        the outputs' final names, before writing (:meth:`guard`).
        """
        try:
            source = SourceStamp.of(job.src)
        except OSError:
            return _Decision("do")  # reading it says why it cannot be read
        settings = self.settings_for(job)
        if self.options.overwrite:
            return _Decision("do", source=source, settings=settings)
        targets = self.candidate_outputs(job)
        verdicts = [self.record.verdict(t, source, settings, job.src) for t in targets]
        for target, (verdict, why) in zip(targets, verdicts, strict=True):
            if verdict == "foreign" and _identity(target) not in self.input_ids:
                return _Decision("fail", targets, why)  # an input: the guard says so
        if all(verdict == "current" for verdict, _ in verdicts):
            return _Decision("skip", targets, "up to date", source, settings)
        note = next((why for verdict, why in verdicts if verdict == "stale"), None)
        return _Decision("do", targets, note, source, settings)

    def candidate_outputs(self, job: _Job) -> list[Path]:
        """The outputs ``job`` would have: one file, or one per page where page files exist.

        Pages are counted (the header read) only when the one-page file or a first page file
        exists: a file of the one-page name (another input's, the user's) does not stand for
        the pages of a multi-page input, which never writes it.
        """
        options, out_dir = self.options, self.out_dir
        single = output_paths(job, None, options, out_dir, 1)
        if _out_format(job, options) in ("pdf", "tiff"):
            return single
        if not _may_have_pages(job, options):
            return single
        first_page = output_paths(job, None, options, out_dir, 2)[0]
        if not (single[0].exists() or first_page.exists()):
            return single
        try:
            pages = count_pages(job.src, options.frames, options.max_pixels)
        except InputImageError:
            return single
        return output_paths(job, None, options, out_dir, pages) if pages > 1 else single

    def skip(self, state: _State, found: list[Path]) -> None:
        """Record ``state`` as skipped (or failed) since its outputs ``found`` are up to date."""
        try:
            self.guard(state, found)
            state.record.status = "skipped"
            state.record.reason = "up to date (use --overwrite to redo it)"
        except InputImageError as exc:
            state.record.status = "failed"
            state.record.reason = str(exc)
        state.record.outputs = [str(t) for t in found]
        self.finish(state)

    def stream(self) -> Iterator[Item]:
        """Every page to clean, decoded ahead by a :class:`_Reader`; files are recorded here.

        Ends early once the output disk is full (the files left are pending).
        """
        events = _Reader(self).events()
        state: _State | None = None
        try:
            for event in events:
                if self.disk_full:
                    return
                kind, job = event[0], event[1]
                if kind == "start":
                    state = _State(job, event[2])
                    decision = state.decision
                    if decision.action == "skip":
                        self.skip(state, decision.targets)
                    elif decision.action == "fail":
                        state.record.status, state.record.reason = "failed", decision.reason
                        self.finish(state)
                    elif event[3]:
                        self.edit_in_place(state)
                    continue
                assert state is not None and state.job is job
                if kind == "page":
                    state.expected = event[2] + 1
                    yield state, event[2], event[3]
                    continue
                state.decoded = True
                if kind == "error":
                    state.record.status = "failed"
                    state.record.reason = _reason(event[2], job.src)
                if state.record.status != "ok":
                    self.finish(state)  # unreadable, or a batch holding its pages failed
                elif state.complete:
                    self.finalise(state)
        finally:
            events.close()

    # ---- per batch --------------------------------------------------------------------------

    def run_batch(self, items: list[Item]) -> None:
        """Run the stage on ``items`` here; their pages are encoded by the writer thread."""
        batch = ImageBatch.concat([b for _, _, b in items])
        out = self.process(batch)
        if not isinstance(out, ImageBatch) or len(out) != len(batch):
            got = len(out) if isinstance(out, ImageBatch) else type(out).__name__
            raise ValueError(f"the stage returned {got} images for {len(batch)}")
        for k, (state, index, b) in enumerate(items):
            future = self.pool.submit(encode_result, out, k, b.names[0], b)
            self.later(future, partial(self.store, state, index))
        if self.on_page is not None:
            for state, _, b in items:
                state.pages_done += 1
                self.on_page(state.job.src, state.pages_done, int(b.meta[0].get("pages") or 0))

    def store(self, state: _State, index: int, future: Future[Any] | None) -> None:
        """Keep an encoded page; a file whose pages are all there goes to the writer."""
        try:
            page = future.result()  # type: ignore[union-attr]
        except Exception as exc:
            self.fail(state, exc)
            return
        if state.record.status == "ok":
            state.results[index] = page
            if state.complete:
                self.finalise(state)

    def flush(self) -> None:
        items = list(self.buffer)
        self.buffer.clear()
        live = [it for it in items if it[0].record.status == "ok"]
        if live:
            try:
                self.run_batch(live)
            except Exception as exc:
                if len(live) == 1:
                    self.fail(live[0][0], exc)
                else:
                    # Retry one page at a time, so one bad page does not fail its batch-mates.
                    for item in live:
                        if item[0].record.status != "ok":
                            continue
                        try:
                            self.run_batch([item])
                        except Exception as single:
                            self.fail(item[0], single)
        self.settle()


def _page_to_batch(page: Page, job: _Job) -> ImageBatch:
    return page_batch(page, page_name(job.out_stem.as_posix(), page.meta))


def _record_kept(record: FileRecord, metas: Sequence[dict[str, Any]], count: bool) -> None:
    """Count the pages a stage passed through as they were, and name those it took for photos.

    The scan stage keeps already clean pages (as documented: counted, no note) and pages that
    look like photographs (a guess the user should see: a note naming them). ``count``: False
    where a later stage may have changed them (the note is about the scan stage's guess).
    """
    kept = [m.get("already_clean") or m.get("photograph") for m in metas]
    if not any(k is not None for k in kept):
        return  # a stage that does not say
    if count:
        record.unchanged = sum(bool(k) for k in kept)
    photos = [str(n) for n, m in enumerate(metas, 1) if m.get("photograph")]
    if photos:
        which = "" if len(metas) == 1 else f"page{'s' * (len(photos) > 1)} {', '.join(photos)} "
        note = f"{which}kept as it was: taken for a photograph (--clean-all cleans it)"
        record.reason = note if record.reason is None else f"{record.reason}; {note}"


def _record_outputs(record: FileRecord, src: Path, targets: Sequence[Path]) -> None:
    record.outputs = [str(t) for t in targets]
    record.bytes_in = src.stat().st_size
    record.bytes_out = sum(t.stat().st_size for t in targets)


def _reason(exc: BaseException, src: Path) -> str:
    """One line naming ``src`` and why it failed (never a traceback)."""
    text = str(exc).strip()
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's
        text = "out of memory (lower --batch-size or the tile size)"
    elif not isinstance(exc, (AepipeError, OSError, ValueError)):
        # An unexpected exception type is named, so a stage bug is not mistaken for bad input.
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = (text.splitlines() or [type(exc).__name__])[0]
    return text if str(src) in text else f"{src}: {text}"


def _note(record: FileRecord, note: str | None) -> None:
    """Add ``note`` to a record's reason (a written file's notes are joined by "; ")."""
    if note:
        record.reason = note if record.reason is None else f"{record.reason}; {note}"


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc``, or an exception it was raised from, is "no space left" (or quota)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _identity_time(path: Path) -> tuple[int, int, int] | None:
    """Device, inode and mtime (ns) of ``path``, or None: tells whether a write replaced it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns
