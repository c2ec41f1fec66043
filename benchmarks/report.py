"""Writing a benchmark's report: the Markdown table and its figures as JSON beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_report(out: Path, text: str, data: Any, indent: int = 2) -> None:
    """Write ``text`` to ``out`` and ``data`` as JSON to ``out`` with a ``.json`` suffix.

    ``docs/RESULTS.md`` includes the Markdown file (``benchmarks/write_results.py``).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(data, indent=indent) + "\n", encoding="utf-8")
