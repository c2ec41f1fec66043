"""Which input, with which settings, made each output: the record behind resume.

The file runner (and ``clean-scans --ocr``) keeps one JSON-lines file at the root of the output
folder, :data:`RECORD_NAME`. Before an output is written a *claim* line is appended (the name
is aepipe's to write), after its atomic rename a *done* line with the output's size,
modification time and sha256. Each line is one ``O_APPEND`` write, so runs writing into one
folder at the same time do not tear each other's lines; the last line for an output wins::

    {"output": "sub/a.png", "source": "/abs/in/sub/a.jpg", "source_size": 1234,
     "source_mtime_ns": 1700000000000000000, "settings": "9f2c...", "size": 5678,
     "mtime_ns": 1700000000100000000, "sha256": "5e1f..."}

(a claim has ``size`` and ``mtime_ns`` null, and ``replaces``: the file it found, if any; an
``--overwrite`` run's *adopted* claim, ``"adopted": true``, marks a file it found with no
line as its own to replace).
:meth:`OutputRecord.verdict` turns a line and the file on disk into a decision, make-like: up
to date (skip), aepipe's but stale (redo) or not aepipe's (never replaced without
``--overwrite``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from aepipe.weights import sha256_file

RECORD_NAME = ".aepipe-outputs.jsonl"

Verdict = Literal["missing", "current", "stale", "foreign"]


@dataclass(frozen=True)
class SourceStamp:
    """An input as it was when its outputs were planned: resolved path, size, mtime (ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, src: Path) -> SourceStamp:
        """Stamp ``src`` now (symbolic links followed).

        Raises:
            OSError: ``src`` cannot be stat'ed.
        """
        st = src.stat()
        return cls(os.path.realpath(src), st.st_size, st.st_mtime_ns)


def settings_key(process: Any, options: Mapping[str, Any]) -> str:
    """A short digest of what decides an output's bytes.

    The output options always count. ``process`` counts for what it is known to be:

    * a :class:`~aepipe.stage.Stage`: its class, config, extras and weights;
    * a :class:`~aepipe.pipeline.Pipeline`, or any object with a ``stages`` list: each of them;
    * an object offering ``settings_key_parts()`` (the protocol for wrappers of stages): what
      that returns, JSON-able (tensors and arrays by their bytes), e.g. the stage's own
      :func:`settings_key` and the wrapper's options;
    * any other object of a class (a wrapper such as ``AutoColorizer`` or ``FaceEditor``):
      its class and its public attributes (a Stage by its key; other callables, such as
      report callbacks, and None left out) and its private :func:`functools.partial` attributes (a
      loader's weights name and options); caches and other private state do not count;
    * anything else (a plain function, a lambda, a wrapper holding something that cannot be
      told by value): ``"unknown"``, so a change of it is not seen, while the options still are.

    Args:
        process: the stage or callable the run applies.
        options: the output-affecting run options (format, JPEG quality, PDF colour, DPI, ...),
            JSON-able.
    """
    stages = getattr(process, "stages", None)
    parts = [_stage_key(s) for s in stages] if isinstance(stages, list) else [_stage_key(process)]
    text = json.dumps({"stages": parts, "options": dict(options)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


UNKNOWN = "unknown"
"""The key part of a process that cannot be told by value (see :func:`settings_key`)."""


def _stage_key(stage: Any) -> Any:
    """The key part of one stage or wrapper of stages, or :data:`UNKNOWN`."""
    from aepipe.stage import Stage

    if isinstance(stage, Stage):
        return {
            "class": _class_name(stage),
            "config": stage.config.model_dump(mode="json"),
            "extras": _strict_digest(stage.extras, strict=False),
            "weights": _weights_digest(stage.model),
        }
    parts = getattr(stage, "settings_key_parts", None)
    if callable(parts):
        try:
            return {"class": _class_name(stage), "parts": _strict_digest(parts())}
        except TypeError:
            return UNKNOWN
    stages = getattr(stage, "stages", None)
    if isinstance(stages, list):
        return {"class": _class_name(stage), "stages": [_stage_key(s) for s in stages]}
    return _wrapper_key(stage)


def _wrapper_key(obj: Any) -> Any:
    """A wrapper's class and value-like attributes (see :func:`settings_key`), or UNKNOWN."""
    from aepipe.stage import Stage

    attrs = getattr(obj, "__dict__", None)
    if not isinstance(attrs, dict) or inspect.isroutine(obj) or isinstance(obj, (type, partial)):
        return UNKNOWN  # a function, a class, a partial: nothing to tell by value
    key: dict[str, Any] = {"class": _class_name(obj)}
    for name, value in sorted(attrs.items()):
        if isinstance(value, partial):
            func = getattr(value.func, "__qualname__", "<lambda>")
            if "<lambda>" in func or "<locals>" in func:
                return UNKNOWN  # a loader told by name only where the name says what it does
            value = [getattr(value.func, "__module__", ""), func, value.args, value.keywords]
        elif name.startswith("_"):
            continue  # a cache (loaded stages) or other state
        elif isinstance(value, Stage) or hasattr(value, "stages"):
            value = _stage_key(value)
        elif callable(value) or value is None:
            continue  # a callback (progress, report lines) or none: not the pixels
        try:
            key[name] = _strict_digest(value)
        except TypeError:
            return UNKNOWN
    return key


def _class_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _strict_digest(value: Any, strict: bool = True) -> str:
    """sha256 of JSON-able state, tensors and arrays by their bytes.

    Raises:
        TypeError: ``value`` holds anything else (it cannot be told by value), when
            ``strict``; otherwise such a part counts by its ``repr``.
    """

    def bytes_of(obj: Any) -> str:
        array = obj.detach().cpu().numpy() if hasattr(obj, "detach") else obj
        if not hasattr(array, "tobytes") or not hasattr(array, "dtype"):
            if not strict:
                return repr(obj)
            raise TypeError(f"{type(obj).__name__} is not JSON-able")
        return f"{array.dtype}{array.shape}" + hashlib.sha256(array.tobytes()).hexdigest()

    text = json.dumps(value, sort_keys=True, default=bytes_of)
    return hashlib.sha256(text.encode()).hexdigest()


def _weights_digest(model: Any) -> str:
    """sha256 of a model's tensors (names, dtypes, shapes and bytes), as loaded."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 too
    return digest.hexdigest()


class OutputRecord:
    """The record of one output folder: read once, appended to as outputs are written.

    Thread-safe: the runner's writer thread appends while its reader thread asks verdicts.
    A record that cannot be written (a read-only file, permissions) fails no output: the
    outputs are still written, :attr:`unwritable` says why (a full disk still raises).

    Attributes:
        unrecorded: outputs met that exist with no line in the record (another program's
            files, those of aepipe before 0.2.0, or the record was removed).
        unwritable: why the record could not be written, or None.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / RECORD_NAME
        self.lock = threading.Lock()
        # Held while the file is read or appended to, so that this process's own appends
        # never look like another's (which would make the next verdict read it all again).
        self.io_lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}
        self.seen: tuple[int, int] | None = None  # the file's size and mtime when last read
        self.unrecorded: set[str] = set()
        self.unwritable: str | None = None
        self.reload()

    def reload(self) -> None:
        """Read the file again if another process changed it (this one's own appends do not)."""
        with self.io_lock:
            try:
                st = self.path.stat()
                seen = (st.st_size, st.st_mtime_ns)
                if seen == self.seen:
                    return
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                seen, text = None, ""
            self._parse(text, seen)

    def _parse(self, text: str, seen: tuple[int, int] | None) -> None:
        entries: dict[str, dict[str, Any]] = {}
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a full disk or a crash: as if not written
            if isinstance(entry, dict) and isinstance(entry.get("output"), str):
                entries[entry["output"]] = entry
        with self.lock:
            self.entries, self.seen = entries, seen

    def _key(self, target: Path) -> str:
        return Path(os.path.relpath(target, self.out_dir)).as_posix()

    def entry(self, target: Path) -> dict[str, Any] | None:
        """The last line recorded for ``target``, if any."""
        with self.lock:
            return self.entries.get(self._key(target))

    def verdict(
        self, target: Path, source: SourceStamp, settings: str | None, shown: object = None
    ) -> tuple[Verdict, str | None]:
        """What to do about ``target`` for an input stamped ``source`` with ``settings``.

        ``shown``: the input as the reasons name it (default its resolved path). An output
        whose size or time changed is compared by content (sha256): the same bytes (a copy
        of the folder) are aepipe's still; other bytes are the user's unless the file is cut
        short (smaller than written and not whole: redone). An input moved with its dates
        (same name, size and time; nothing left at the recorded path) is the same source.

        Returns:
            ``(verdict, reason)``: ``missing`` (no file), ``current`` (made from this source
            as it is, with these settings, unchanged since: up to date), ``stale`` (aepipe's,
            to redo: made from another input, an older version of it, with other settings,
            cut short, or adopted by an ``--overwrite`` run that was stopped; the reason says
            why) or ``foreign`` (no record, or changed after aepipe wrote it: never replaced
            without ``--overwrite``; the reason says so).
        """
        try:
            st = target.stat()
        except OSError:
            return ("missing", None) if not target.is_symlink() else self._foreign(target)
        entry = self.entry(target)
        if entry is None:
            self.reload()  # a run writing into this folder at the same time may have made it
            entry = self.entry(target)
        if entry is None:
            return self._foreign(target)
        name = self._key(target)
        if entry.get("size") is None:
            if entry.get("replaces") == _file_id(st):  # still the file the claim found
                if entry.get("adopted"):
                    return "stale", f"{name} redone: an --overwrite run was stopped before it"
                return "stale", f"{name} redone: an earlier run was stopped while writing it"
            # Renamed into place, then the run was killed before its done line: done now.
            entry = {**entry, "size": None, "sha256": None, "replaces": None}
            entry = self._refreshed(target, entry)
        if (entry.get("size"), entry.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            changed = self._changed(target, entry)
            if changed is not None:
                return changed
            entry = self._refreshed(target, entry)
        return self._compare(target, entry, source, settings)

    def _changed(self, target: Path, entry: dict[str, Any]) -> tuple[Verdict, str] | None:
        """The verdict on an output whose size or time changed; None: the same bytes still."""
        from aepipe.runner import is_complete_output

        name = self._key(target)
        size = entry.get("size")
        # Cut short (a copy or a full disk): smaller than written, and not a whole file. A
        # whole file of other bytes (an edit, a BigTIFF, a JPEG trailer) is the user's, below.
        if (
            not is_complete_output(target)
            and isinstance(size, int)
            and target.stat().st_size < size
        ):
            return "stale", f"{name} redone: it was incomplete"
        recorded = entry.get("sha256")
        if recorded is None:  # a line without a digest: as aepipe 0.2.0's first lines were
            return "stale", f"{name} redone: it changed after it was written"
        try:
            if sha256_file(target) == recorded:
                return None
        except OSError:
            pass
        return "foreign", f"{target} was changed after aepipe wrote it; --overwrite replaces it"

    def _compare(
        self, target: Path, entry: dict[str, Any], source: SourceStamp, settings: str | None
    ) -> tuple[Verdict, str | None]:
        """The verdict on aepipe's unchanged output: its source and settings against these."""
        from aepipe.runner import is_complete_output

        name = self._key(target)
        same_stamp = (entry.get("source_size"), entry.get("source_mtime_ns")) == (
            source.size,
            source.mtime_ns,
        )
        recorded_source = str(entry.get("source"))
        if recorded_source != source.path:
            # A folder moved (its dates kept) holds the same inputs; a copy beside it does not.
            # Moved, not merely alike: the recorded input is gone from where it was.
            moved = (
                same_stamp
                and Path(recorded_source).name == Path(source.path).name
                and not Path(recorded_source).exists()
            )
            if not moved:
                return "stale", f"{name} replaced: it was made from {recorded_source}"
            # Recorded at its new place, so the outputs of this input are found by it next time
            # (the page files an input that loses pages leaves are removed by that).
            with contextlib.suppress(OSError):
                self._append([{**entry, "source": source.path}])
        if not same_stamp:
            return "stale", f"{name} redone: made from an older version of the input"
        made_with = entry.get("settings")
        if settings is not None and made_with is not None and made_with != settings:
            return "stale", f"{name} redone: made with other settings"
        if not is_complete_output(target):
            return "stale", f"{name} redone: it was incomplete"
        return "current", None

    def _refreshed(self, target: Path, entry: dict[str, Any]) -> dict[str, Any]:
        """``entry`` with the file's size, time and digest now, recorded (never raises)."""
        try:
            st = target.stat()
            digest = entry.get("sha256") or sha256_file(target)
        except OSError:
            return entry
        entry = {**entry, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
        with contextlib.suppress(OSError):  # a full disk: the next run hashes it again
            self._append([entry])
        return entry

    def _foreign(self, target: Path) -> tuple[Verdict, str]:
        self.unrecorded.add(self._key(target))
        return "foreign", (
            f"{target} exists and aepipe has no record of making it; --overwrite replaces it"
        )

    def claim(self, targets: Sequence[Path], source: SourceStamp, settings: str | None) -> None:
        """Record that ``targets`` are about to be written from ``source`` (before the write).

        A run killed before the rename leaves the claim: the next run redoes the output
        instead of taking it for someone else's file. The claim holds the file it found
        (``replaces``: inode, size, mtime, or null), so a file renamed into place just before
        the kill is told from the one it replaced, and kept.
        """
        self._append([self._claim_line(t, source, settings) for t in targets])

    def adopt(self, planned: Sequence[tuple[Path, SourceStamp]], settings: str | None) -> int:
        """Mark existing outputs without a line as aepipe's to replace (an ``--overwrite`` run).

        One append for the whole run, before any work: if the run is stopped, the outputs
        it had not reached yet are redone by a run without ``--overwrite`` (as stale: "an
        --overwrite run was stopped before it") instead of refused as not aepipe's.

        Args:
            planned: every output the run may write, with its input's stamp.
            settings: the run's settings key.

        Returns:
            How many outputs were adopted.
        """
        lines = []
        for target, source in planned:
            if self.entry(target) is None and target.is_file():
                lines.append({**self._claim_line(target, source, settings), "adopted": True})
        self._append(lines)
        return len(lines)

    def done(self, targets: Sequence[Path], source: SourceStamp, settings: str | None) -> None:
        """Record ``targets`` as written from ``source``: their size, time and sha256 now."""
        lines = []
        for target in targets:
            st = target.stat()
            line = self._line(target, source, settings, st)
            line["sha256"] = sha256_file(target)
            lines.append(line)
        self._append(lines)

    def made_by_aepipe(self, target: Path) -> bool:
        """Whether ``target`` is, byte for byte, what the record's done line says aepipe made."""
        entry = self.entry(target)
        if entry is None or entry.get("size") is None:
            return False
        try:
            st = target.stat()
            if (entry["size"], entry.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
                return True
            return entry.get("sha256") is not None and sha256_file(target) == entry["sha256"]
        except OSError:
            return False

    def outputs_of(self, source: SourceStamp) -> list[Path]:
        """The outputs whose last line names ``source``'s path (made, or claimed, from it)."""
        with self.lock:
            names = [n for n, e in self.entries.items() if e.get("source") == source.path]
        return [self.out_dir / n for n in names]

    def _claim_line(
        self, target: Path, source: SourceStamp, settings: str | None
    ) -> dict[str, Any]:
        line = self._line(target, source, settings, None)
        try:
            line["replaces"] = _file_id(target.stat())
        except OSError:
            line["replaces"] = None
        return line

    def _line(
        self, target: Path, source: SourceStamp, settings: str | None, st: os.stat_result | None
    ) -> dict[str, Any]:
        return {
            "output": self._key(target),
            "source": source.path,
            "source_size": source.size,
            "source_mtime_ns": source.mtime_ns,
            "settings": settings,
            "size": None if st is None else st.st_size,
            "mtime_ns": None if st is None else st.st_mtime_ns,
        }

    def _append(self, entries: list[dict[str, Any]]) -> None:
        """Append ``entries`` with one ``O_APPEND`` write, then keep them in memory.

        A record that cannot be written is marked :attr:`unwritable` (the lines are kept in
        memory for this run); only a full disk or quota raises.

        Raises:
            OSError: ENOSPC or EDQUOT.
        """
        if not entries:
            return
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode()
        with self.io_lock:  # a reload in between would drop these lines from memory
            with self.lock:
                for entry in entries:
                    self.entries[entry["output"]] = entry
            if self.unwritable is None:
                self._write(data)

    def _write(self, data: bytes) -> None:
        """Append ``data``, with :attr:`io_lock` held (see :meth:`_append`)."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                written = os.write(fd, data)
                if written != len(data):  # a full disk: the torn line is skipped when read
                    raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
                after = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.unwritable = exc.strerror or str(exc) or type(exc).__name__
            return
        with self.lock:
            # Our own lines need no reload; only when nobody else wrote in between (the size
            # grew by exactly ours) is the file as read, plus them.
            before = self.seen[0] if self.seen is not None else 0
            if after.st_size == before + len(data):
                self.seen = (after.st_size, after.st_mtime_ns)


def _file_id(st: os.stat_result) -> list[int]:
    """Inode, size and mtime (ns): which file a name held (as JSON gives it back)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]
