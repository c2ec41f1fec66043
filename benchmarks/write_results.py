"""Refresh the figures in docs/RESULTS.md and README.md from the files the benchmarks wrote.

Two kinds of blocks hold figures; everything between their markers is rewritten:

    <!-- include: benchmarks/results/salt_pepper.md -->
    ... (the file's text, headings moved down two levels) ...
    <!-- end include -->

    <!-- generated: training-history -->
    ... (a table made here: see GENERATORS) ...
    <!-- end generated -->

``training-history`` is made from ``weights/*/config.json`` (command, steps, wall time of each
shipped model's training) and ``results-table`` (README.md) from the benchmarks' JSON files by
the spec in ``benchmarks/summary_table.py``. So the figures in both files are the ones the
benchmark scripts and training runs wrote, never typed by hand; outside the blocks the text may
hold no measured figure (``hand_typed_figures``). ``--check`` only reports whether both files
are up to date and free of such figures (exit code 1 if not; the test suite runs it).

Usage: ``python benchmarks/write_results.py [--check]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import summary_table  # a sibling module

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "RESULTS.md"
README = ROOT / "README.md"
_INCLUDE = re.compile(
    r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S
)
_GENERATED = re.compile(
    r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
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


def _minutes(training: dict) -> float | None:
    """The wall time a training run recorded, in minutes (None if it recorded none)."""
    if "wall_minutes" in training:
        return float(training["wall_minutes"])
    if "wall_time_s" in training:
        return float(training["wall_time_s"]) / 60
    history = training.get("history") or [{}]
    return history[-1].get("minutes")


def _runs(training: dict) -> list[dict]:
    """A weights folder's training runs, oldest first: the runs its ``init`` chain names, or
    the named stages of a run in parts (face-vqvae: ``vqvae`` then ``prior``). A run that
    fine-tuned an earlier one of its stage lists that one's command in ``earlier_commands``
    (face-vqvae's prior); each counts as a run (its wall time was not recorded)."""
    if "command" not in training:
        parts = [part for part in training.values() if isinstance(part, dict) and "command" in part]
    else:
        parts = []
        while isinstance(training, dict) and "command" in training:
            parts.append(training)
            training = training.get("init")
        parts.reverse()
    runs = []
    for part in parts:
        runs += [{"command": command} for command in part.get("earlier_commands", [])]
        runs.append(part)
    return runs


def training_history() -> str:
    """One row per shipped weights folder: its last training command and what it recorded."""
    lines = [
        "| weights | runs | last command (all of them: model card) | wall time of the runs "
        "that recorded one (min) |",
        "|---|---:|---|---|",
    ]
    for config in sorted(ROOT.glob("weights/*/config.json")):
        name = config.parent.name
        runs = _runs(json.loads(config.read_text(encoding="utf-8")).get("training", {}))
        if not runs:
            continue
        times = [t for t in map(_minutes, runs) if t is not None]
        wall = " + ".join(f"{t:.0f}" for t in times) if times else "not recorded"
        if times and len(times) < len(runs):
            wall += f" ({len(runs) - len(times)} not recorded)"
        card = f"[`{name}`](../weights/{name}/MODEL_CARD.md)"
        lines.append(f"| {card} | {len(runs)} | `{runs[-1]['command']}` | {wall} |")
    return "\n".join(lines) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "training-history": training_history,
    "results-table": summary_table.render,
}


def render(text: str) -> str:
    """``text`` with every include and generated block refreshed."""

    def include(m: re.Match[str]) -> str:
        return m.group(1) + _included(m.group("path")) + m.group(4)

    def generate(m: re.Match[str]) -> str:
        return m.group(1) + GENERATORS[m.group("name")]() + m.group(4)

    return _GENERATED.sub(generate, _INCLUDE.sub(include, text))


# A measured figure: a decimal, a percentage, a ratio (1.5x), a number with a unit of time,
# size, rate or score, or a number straight after a metric's name. Not prose: a bound after
# <=, >=, < or > (a target), code spans (commands, settings), link targets and HTML tags. A code
# span holding a bare number (`22.51`) is prose all the same: quoting a figure does not make it
# a setting, so a setting in code carries its name (`saturation=1.8`, `--ema 0.998`).
_UNIT = r"(?:ms|s|min|h|MB|KB|KiB|MiB|GB|dB|nats|bits|Mpx/s|Mpx|pages/s|requests/s|images/s)"
_METRIC = r"(?:FID|RMSE|PSNR|SSIM|CER|NLL|AUC|ELBO|F|F-measure|p50|p90|p99)"
_FIGURE = re.compile(
    r"(?<![\w.-])[+-]?(?:\d+\.\d+(?!\.\d)|\d[\d,]*\s?%|\d+(?:\.\d+)?x\b"
    r"|\d[\d,]*\s?" + _UNIT + r"\b)|\b" + _METRIC + r":?\s+[+-]?\d"
)
_NOT_PROSE = re.compile(
    r"```.*?```|`[^`\n]*`|\]\([^)]*\)|<[a-zA-Z/!][^>\n]*>|[<>]=?\s*[+-]?\d[\d.,]*\s?%?", re.S
)
_BLOCKS = re.compile(r"<!-- (include|generated): .*?<!-- end (include|generated) -->", re.S)
_FENCED = re.compile(r"```.*?```", re.S)
_BARE_NUMBER = re.compile(r"`([+-]?\d[\d,]*(?:\.\d+)?)`")


def hand_typed_figures(text: str) -> list[str]:
    """The measured figures in ``text`` outside its include and generated blocks, each with
    the words around it (code, link targets and HTML tags are not prose; a code span holding
    only a number is)."""
    prose = _BARE_NUMBER.sub(r"\1", _FENCED.sub(" ", _BLOCKS.sub(" ", text)))
    prose = _NOT_PROSE.sub(" ", prose)
    return [
        " ".join(prose[max(0, m.start() - 30) : m.end() + 10].split())
        for m in _FIGURE.finditer(prose)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if stale")
    args = parser.parse_args(argv)
    status = 0
    for path in (RESULTS, README):
        text = path.read_text(encoding="utf-8")
        new = render(text)
        for figure in hand_typed_figures(text):
            print(f"{path.name}: a figure typed by hand, outside the generated blocks: {figure!r}")
            status = 1
        if new != text and args.check:
            print(f"{path} is out of date: run python benchmarks/write_results.py")
            status = 1
        elif new != text:
            path.write_text(new, encoding="utf-8")
            print(f"updated {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
