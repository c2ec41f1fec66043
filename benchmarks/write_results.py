"""Refresh the benchmark tables in docs/RESULTS.md from the files the benchmarks wrote.

docs/RESULTS.md holds include markers::

    <!-- include: benchmarks/results/salt_pepper.md -->
    ... (the file's text, headings moved down two levels) ...
    <!-- end include -->

This script replaces what is between each pair with the current file, so the figures in
docs/RESULTS.md are the ones the benchmark scripts wrote, never typed by hand. ``--check`` only
reports whether docs/RESULTS.md is up to date (exit code 1 if not; the test suite runs it).

Usage: ``python benchmarks/write_results.py [--check]``
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "RESULTS.md"
_INCLUDE = re.compile(
    r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S
)


def _included(path: str) -> str:
    """A benchmark's output as it appears in docs/RESULTS.md: headings two levels down,
    links made relative to docs/."""
    text = (ROOT / path).read_text(encoding="utf-8").strip()
    text = re.sub(r"^(#{1,4}) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", text, flags=re.M)
    text = re.sub(r"\]\((?!https?:|#)([^)]+)\)", lambda m: f"](../{_under(path, m)})", text)
    return text + "\n"


def _under(path: str, match: re.Match[str]) -> str:
    """A link target of ``path`` (relative to its own folder) as a path from the repository."""
    return Path(os.path.normpath(Path(path).parent / match.group(1))).as_posix()


def render(text: str) -> str:
    """``text`` with every include block refreshed from its file."""

    def refresh(m: re.Match[str]) -> str:
        return m.group(1) + _included(m.group("path")) + m.group(4)

    return _INCLUDE.sub(refresh, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    text = RESULTS.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{RESULTS} is out of date: run python benchmarks/write_results.py")
            return 1
        return 0
    if new != text:
        RESULTS.write_text(new, encoding="utf-8")
        print(f"updated {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
