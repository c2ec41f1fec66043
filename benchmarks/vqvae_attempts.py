"""What was tried for the face-vqvae's FID and speed, one row per attempt, from the reports.

Run::

    .venv/bin/python benchmarks/vqvae_attempts.py

Issue 18 asks, where FID does not reach its target, what was tried and what each gave. Every
attempt was measured by ``benchmarks/vqvae_compare.py`` (test faces, once per shipped setting),
``benchmarks/vqvae_select.py`` (validation faces, where settings were chosen) and
``benchmarks/face_sampler_floor.py`` (validation faces: the FID of reconstructions, the best a
perfect prior over those codes could give). This script measures nothing: it reads those
reports (``benchmarks/results/``) and writes the table (``vqvae_attempts.md``) that
docs/RESULTS.md includes, so the summary cannot drift from the reports.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


@dataclass(frozen=True)
class Attempt:
    """One model or sampler tried, and the reports that measured it (file names)."""

    what: str
    compare: str | None  # vqvae_compare.py's report: test FID, sampling seconds
    selects: tuple[str, ...] = ()  # vqvae_select.py's reports: best validation FID
    floor: str | None = None  # face_sampler_floor.py's report


ATTEMPTS = (
    Attempt(
        "8x8 grid (each code 8x8 px), prior in float32",
        "vqvae_compare_8x8.md",
        ("vqvae_select_8x8_earlier.md", "vqvae_select_8x8.md"),
        "face_sampler_floor_vqvae8.md",
    ),
    Attempt(
        "16x16 grid (each code 4x4 px), prior in float32 for 55 min, cut by its time cap",
        "vqvae_compare_16x16.md",
        (),
        "face_sampler_floor_vqvae16.md",
    ),
    Attempt(
        "16x16 grid, prior under bfloat16 autocast to the end of 12 epochs",
        "vqvae_compare_before_finetune.md",
        ("vqvae_select.md",),
    ),
    Attempt(
        "the same with top-p (nucleus) sampling, on validation faces only",
        None,
        ("vqvae_select_topp.md",),
    ),
    Attempt(
        "its prior fine-tuned six more epochs at a lower rate",
        "vqvae_compare_float32_attention.md",
        ("vqvae_select_finetune.md",),
    ),
    Attempt(
        "the same, sampled with the attention cache in bfloat16",
        "vqvae_compare_one_temperature.md",
        ("vqvae_select_bf16.md",),
    ),
    Attempt(
        "the same, the first row of codes drawn at temperature 1 and the rest cooler (shipped)",
        "vqvae_compare.md",
        ("vqvae_select_lead.md",),
    ),
    Attempt(
        "the same with top-k 50 or 150, on validation faces only (not adopted)",
        None,
        ("vqvae_select_lead_topk.md",),
    ),
)


def table_rows(path: Path) -> list[list[str]]:
    """The cells of every Markdown table row of a report (header and rule rows included)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def compare_figures(name: str) -> dict[str, str]:
    """Test FID, sampling seconds of the VQ-VAE and the VAE's FID from a comparison report."""
    out = {}
    for cells in table_rows(RESULTS / name):
        if cells[0].startswith("FID, ") and "samples vs" in cells[0]:
            out["test_fid"], out["vae_fid"] = cells[-1], cells[-2]
        elif cells[0].startswith("seconds to sample 64 faces"):
            out["seconds"] = cells[-1]
    return out


def best_val_fid(names: tuple[str, ...]) -> str:
    """The lowest validation FID over the sweeps of these selection reports."""
    scores = []
    for name in names:
        for cells in table_rows(RESULTS / name):
            try:
                scores.append(float(cells[-1]))
            except ValueError:  # header and rule rows
                continue
    return f"{min(scores):.1f}" if scores else ""


def floor_fid(name: str | None) -> str:
    """The reconstruction floor of a sampler-floor report."""
    if name is None:
        return ""
    rows = [c for c in table_rows(RESULTS / name) if c[0].startswith("reconstructions")]
    return rows[0][-1] if rows else ""


def build() -> tuple[list[str], list[dict]]:
    """The Markdown table and its rows as data."""
    data = []
    for a in ATTEMPTS:
        figures = compare_figures(a.compare) if a.compare else {}
        data.append(
            dict(
                attempt=a.what,
                val_fid_best=best_val_fid(a.selects),
                test_fid=figures.get("test_fid", ""),
                vae_test_fid_same_run=figures.get("vae_fid", ""),
                sample64_s=figures.get("seconds", ""),
                val_floor=floor_fid(a.floor),
                reports=[n for n in (a.compare, *a.selects, a.floor) if n],
            )
        )
    lines = [
        "| attempt | best val FID (500 samples vs 450 val faces) | test FID (1000 vs 995) "
        "| VAE test FID, same run | 64 faces (s, 2 threads) | val reconstruction floor "
        "| reports |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for d in data:
        reports = ", ".join(f"`{n}`" for n in d["reports"])
        cells = [d[k] for k in ("val_fid_best", "test_fid", "vae_test_fid_same_run")]
        cells += [d["sample64_s"], d["val_floor"]]
        lines.append(f"| {d['attempt']} | " + " | ".join(cells) + f" | {reports} |")
    return lines, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "vqvae_attempts.md")
    args = ap.parse_args()

    from report import write_report

    lines, data = build()
    head = [
        "# face-vqvae: what was tried for FID and speed",
        "",
        "Each row's figures come from the reports named in it (`benchmarks/results/`); an empty "
        "cell was not measured for that attempt. Targets: test FID at most 65, 64 faces in "
        "under 2 s.",
        "",
    ]
    text = "\n".join([*head, *lines, "", "Command: `python benchmarks/vqvae_attempts.py`", ""])
    print(text)
    write_report(args.out, text, {"attempts": data})


if __name__ == "__main__":
    main()
