"""Writing a benchmark's report: the Markdown table and its figures as JSON beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """A numpy scalar or array as the Python number or list it holds (for ``json.dumps``)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_report(out: Path, text: str, data: Any, indent: int = 2) -> None:
    """Write ``text`` to ``out`` and ``data`` as JSON to ``out`` with a ``.json`` suffix.

    ``docs/RESULTS.md`` includes the Markdown file and the README's results table reads the
    JSON (``benchmarks/write_results.py``, ``benchmarks/summary_table.py``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    payload = json.dumps(data, indent=indent, default=_plain) + "\n"
    out.with_suffix(".json").write_text(payload, encoding="utf-8")
