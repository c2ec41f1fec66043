"""Which input, with which settings, made each output: the record behind resume.

The file runner (and ``clean-scans --ocr``) keeps one JSON-lines file at the root of the output
folder, :data:`RECORD_NAME`. Before an output is written a *claim* line is appended (the name
is aepipe's to write), after its atomic rename a *done* line with the output's size and
modification time. Each line is one ``O_APPEND`` write, so runs writing into one folder at
the same time do not tear each other's lines; the last line for an output wins. A line::

    {"output": "sub/a.png", "source": "/abs/in/sub/a.jpg", "source_size": 1234,
     "source_mtime_ns": 1700000000000000000, "settings": "9f2c...", "size": 5678,
     "mtime_ns": 1700000000100000000}

(a claim has ``size`` and ``mtime_ns`` null, and ``replaces``: the file it found, if any).
:meth:`OutputRecord.verdict` turns a line and the file on disk into a decision, make-like: up
to date (skip), aepipe's but stale (redo) or not aepipe's (never replaced without
``--overwrite``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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


def settings_key(process: Any, options: Mapping[str, Any]) -> str | None:
    """A short digest of what decides an output's bytes, or None when ``process`` is unknown.

    Args:
        process: a :class:`~aepipe.stage.Stage` (its class, config, extras and weights count),
            a :class:`~aepipe.pipeline.Pipeline` of stages, or any other callable (None:
            "unknown", so settings are not compared).
        options: the output-affecting run options (format, JPEG quality, PDF colour, DPI, ...),
            JSON-able.
    """
    stages = getattr(process, "stages", None)
    parts = [_stage_key(s) for s in stages] if isinstance(stages, list) else [_stage_key(process)]
    if any(p is None for p in parts):
        return None
    text = json.dumps({"stages": parts, "options": dict(options)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _stage_key(stage: Any) -> dict[str, Any] | None:
    from aepipe.stage import Stage

    if not isinstance(stage, Stage):
        return None
    return {
        "class": f"{type(stage).__module__}.{type(stage).__qualname__}",
        "config": stage.config.model_dump(mode="json"),
        "extras": _digest(stage.extras),
        "weights": _weights_digest(stage.model),
    }


def _weights_digest(model: Any) -> str:
    """sha256 of a model's tensors (names, dtypes, shapes and bytes), as loaded."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 too
    return digest.hexdigest()


def _digest(value: Any) -> str:
    """sha256 of JSON-able state; tensors and arrays by their bytes."""

    def bytes_of(obj: Any) -> str:
        data = getattr(obj, "detach", None)
        array = obj.detach().cpu().numpy() if data is not None else obj
        tobytes = getattr(array, "tobytes", None)
        return hashlib.sha256(tobytes()).hexdigest() if tobytes else repr(obj)

    text = json.dumps(value, sort_keys=True, default=bytes_of)
    return hashlib.sha256(text.encode()).hexdigest()


class OutputRecord:
    """The record of one output folder: read once, appended to as outputs are written.

    Thread-safe: the runner's writer thread appends while its reader thread asks verdicts.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / RECORD_NAME
        self.lock = threading.Lock()
        self.entries: dict[str, dict[str, Any]] = {}
        self.seen: tuple[int, int] | None = None  # the file's size and mtime when last read
        self.reload()

    def reload(self) -> None:
        """Read the file again if it changed (another run may be writing to the folder)."""
        try:
            st = self.path.stat()
            seen = (st.st_size, st.st_mtime_ns)
            if seen == self.seen:
                return
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            seen, text = None, ""
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

        ``shown``: the input as the reasons name it (default its resolved path).

        Returns:
            ``(verdict, reason)``: ``missing`` (no file), ``current`` (made from this source
            as it is, with these settings, untouched since: up to date), ``stale`` (aepipe's,
            to redo: made from another input, an older version of it, with other settings,
            or changed since; the reason says why) or ``foreign`` (no record: not made by
            aepipe, never replaced without ``--overwrite``; the reason says so).
        """
        from aepipe.runner import is_complete_output

        shown = source.path if shown is None else shown
        try:
            st = target.stat()
        except OSError:
            return ("missing", None) if not target.is_symlink() else _foreign(target, shown)
        entry = self.entry(target)
        if entry is None:
            self.reload()  # a run writing into this folder at the same time may have made it
            entry = self.entry(target)
        if entry is None:
            return _foreign(target, shown)
        name = self._key(target)
        if entry.get("size") is None:
            if entry.get("replaces") == _file_id(st):  # still the file the claim found
                return "stale", f"{name} redone: an earlier run was stopped while writing it"
            # Renamed into place, then the run was killed before its done line: done now.
            entry = {**entry, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "replaces": None}
            self._append([entry])
        if (entry.get("size"), entry.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
            # Cut short by a copy, or touched: aepipe's name still, so made again.
            return "stale", f"{name} redone: it changed after it was written"
        if entry.get("source") != source.path:
            return "stale", f"{name} replaced: it was made from {entry.get('source')}"
        if (entry.get("source_size"), entry.get("source_mtime_ns")) != (
            source.size,
            source.mtime_ns,
        ):
            return "stale", f"{name} redone: made from an older version of the input"
        made_with = entry.get("settings")
        if settings is not None and made_with is not None and made_with != settings:
            return "stale", f"{name} redone: made with other settings"
        if not is_complete_output(target):
            return "stale", f"{name} redone: it was incomplete"
        return "current", None

    def claim(self, targets: Sequence[Path], source: SourceStamp, settings: str | None) -> None:
        """Record that ``targets`` are about to be written from ``source`` (before the write).

        A run killed before the rename leaves the claim: the next run redoes the output
        instead of taking it for someone else's file. The claim holds the file it found
        (``replaces``: inode, size, mtime, or null), so a file renamed into place just before
        the kill is told from the one it replaced, and kept.
        """
        lines = []
        for target in targets:
            line = self._line(target, source, settings, None)
            try:
                line["replaces"] = _file_id(target.stat())
            except OSError:
                line["replaces"] = None
            lines.append(line)
        self._append(lines)

    def done(self, targets: Sequence[Path], source: SourceStamp, settings: str | None) -> None:
        """Record ``targets`` as written from ``source``: their size and mtime as they are now."""
        lines = []
        for target in targets:
            st = target.stat()
            lines.append(self._line(target, source, settings, st))
        self._append(lines)

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
        """Append ``entries`` with one ``O_APPEND`` write, then keep them in memory."""
        if not entries:
            return
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a full disk: the torn line is skipped when read
                raise OSError(28, "No space left on device", str(self.path))
        finally:
            os.close(fd)
        with self.lock:
            for entry in entries:
                self.entries[entry["output"]] = entry


def _file_id(st: os.stat_result) -> list[int]:
    """Inode, size and mtime (ns): which file a name held (as JSON gives it back)."""
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _foreign(target: Path, shown: object) -> tuple[Verdict, str]:
    return "foreign", (
        f"{target} exists and was not made from {shown} by aepipe; use --overwrite to replace it"
    )
