"""PDF in, PDF out: what ``clean-scans`` keeps of real-world PDFs, and what it costs in size.

Runs each PDF of the corpus through the job runner behind ``clean-scans`` (``run_files``, which
edits a PDF in place through :func:`aepipe.core.clean_pdf_in_place`, with the CLI's default
options) with the shipped scan denoiser, one file at a time, over every PDF of the
corpus (OCRmyPDF's test files, fetched by ``make pdf-corpus``) and checks, per file: the text
layer (pdfium's extracted text, before and after), the form fields (names and values), every
page not edited (content streams and images byte for byte, and its rendering), the resolution of
every edited scan (its image's pixel size), and the size of the output against the input. A
file the editor refuses (over ``--max-pixels``, not a PDF) is listed with the reason.

Size targets (issue 23): files whose scans are bilevel at most 1.5x their input, gray or colour
at most 2x, median over all files written at most 1.2x.

Run::

    make pdf-corpus
    .venv/bin/python benchmarks/pdf_fidelity.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = {"bilevel": 1.5, "gray": 2.0, "color": 2.0}
MEDIAN_TARGET = 1.2


@dataclass
class Row:
    name: str
    size_in: int
    size_out: int | None = None
    edited: int = 0
    unchanged: int = 0  # cleaned, came back the same: the image kept as it was
    passed: int = 0
    rendered: int = 0
    fallback: int = 0
    chars: tuple[int, int] = (0, 0)
    text_kept: bool = True
    fields: tuple[int, int] = (0, 0)
    fields_kept: bool = True
    untouched_same: tuple[int, int] = (0, 0)  # (unchanged, pages not edited)
    resolution_kept: bool = True
    kinds: set[str] = field(default_factory=set)
    seconds: float = 0.0
    outcome: str = "ok"

    @property
    def ratio(self) -> float | None:
        return None if self.size_out is None else self.size_out / self.size_in

    @property
    def kind(self) -> str:
        """The file's class for the size targets: the widest type it had edited."""
        for k in ("color", "gray", "bilevel"):
            if k in self.kinds:
                return k
        return "-"


def page_texts(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    try:
        return [doc[i].get_textpage().get_text_range() for i in range(len(doc))]
    finally:
        doc.close()


def form_fields(path: Path) -> list[tuple[str, str]]:
    import pikepdf

    def walk(nodes: Any, prefix: str) -> list[tuple[str, str]]:
        out = []
        for node in nodes:
            name = prefix + str(node.get("/T", ""))
            out.append((name, str(node.get("/V", ""))))
            if "/Kids" in node:
                out += walk(node.Kids, name + ".")
        return out

    with pikepdf.open(path) as pdf:
        acro = pdf.Root.get("/AcroForm")
        return walk(acro.get("/Fields", []), "") if acro is not None else []


def page_fingerprint(pdf: Any, index: int) -> tuple[bytes, list[bytes]]:
    """A page's content bytes and its images' raw bytes."""
    import pikepdf

    page = pdf.pages[index]
    contents = page.obj.get("/Contents")
    if contents is None:
        data = b""
    elif isinstance(contents, pikepdf.Array):
        data = b"".join(c.read_raw_bytes() for c in contents)
    else:
        data = contents.read_raw_bytes()
    images = [im.read_raw_bytes() for im in page.get_images().values()]
    return data, images


def image_sizes(pdf: Any, index: int) -> list[tuple[int, int]]:
    return sorted((int(im.Width), int(im.Height)) for im in pdf.pages[index].get_images().values())


def render(path: Path, index: int) -> np.ndarray:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    try:
        w, h = doc[index].get_size()
        scale = min(1.0, 1500.0 / max(w, h))  # enough to see any change, cheap on posters
        return np.array(doc[index].render(scale=scale).to_numpy(), copy=True)
    finally:
        doc.close()


def compare(src: Path, out: Path, row: Row, outcomes: list[Any]) -> None:
    import pikepdf

    before, after = page_texts(src), page_texts(out)
    row.chars = (sum(len(t.strip()) for t in before), sum(len(t.strip()) for t in after))
    row.text_kept = before == after
    fb, fa = form_fields(src), form_fields(out)
    row.fields, row.fields_kept = (len(fb), len(fa)), fb == fa
    same = total = 0
    with pikepdf.open(src) as a, pikepdf.open(out) as b:
        for o in outcomes:
            i = o.page - 1
            if o.status in ("edited", "unchanged"):
                row.resolution_kept &= image_sizes(a, i) == image_sizes(b, i)
                continue
            if o.status == "rendered":
                # Rendered at the page's largest image's own resolution: no coarser than it.
                biggest = max(image_sizes(a, i), key=lambda s: s[0] * s[1], default=(0, 0))
                row.resolution_kept &= o.size[0] * o.size[1] >= biggest[0] * biggest[1]
                continue
            total += 1
            unchanged = page_fingerprint(a, i) == page_fingerprint(b, i)
            same += unchanged and np.array_equal(render(src, i), render(out, i))
    row.untouched_same = (same, total)


def run_file(path: Path, process: Any, options: Any, workdir: Path) -> Row:
    """One PDF through ``run_files`` (the ``clean-scans`` path) with ``RunOptions`` ``options``."""
    from dataclasses import replace

    from aepipe.pdf_edit import PageOutcome
    from aepipe.runner import run_files

    row = Row(path.name, path.stat().st_size)
    out = workdir / path.name
    start = time.perf_counter()
    summary = run_files([path], process, replace(options, out_dir=workdir, overwrite=True))
    row.seconds = time.perf_counter() - start
    (record,) = summary.records
    if record.status != "ok":
        row.outcome = f"refused: {str(record.reason).replace(str(path), path.name)}"[:120]
        return row
    outcomes = [PageOutcome(**o) for o in record.page_outcomes]
    row.size_out = out.stat().st_size
    for o in outcomes:
        setattr(row, o.status, getattr(row, o.status) + 1)
        if o.status in ("edited", "unchanged", "rendered"):
            row.kinds.add(o.kind)
    fallbacks = sorted({o.reason for o in outcomes if o.status in ("rendered", "fallback")})
    layered = sum(o.reason.startswith("mixed raster") for o in outcomes)
    if layered:
        row.outcome = f"{layered} mixed-raster page(s) cleaned layer by layer"
    if fallbacks:
        row.outcome = "rendered: " + "; ".join(fallbacks)
    compare(path, out, row, outcomes)
    out.unlink()
    return row


def yes(flag: bool) -> str:
    return "yes" if flag else "**NO**"


def table(rows: list[Row], command: str) -> str:
    lines = [
        "# PDF fidelity: clean-scans on PDFs (edited in place) with the scan denoiser",
        "",
        f"Command: `{command}` (corpus: OCRmyPDF 17.13.0 tests/resources, `make pdf-corpus`).",
        "Pages: edited in place / cleaned but came back the same (image kept as it was) / passed",
        "through unchanged / rendered (the fallback for pages that cannot be edited in place: the",
        "cleaned rendering replaces the picture, the text stays).",
        "Unchanged: pages not cleaned whose content, images and rendering are identical.",
        "",
        "| file | in KB | out KB | ratio | kind | pages e/u/p/r | text chars before/after "
        "| fields | unchanged | resolution | s | outcome |",
        "|---|---:|---:|---:|---|---|---|---|---|---|---:|---|",
    ]
    for r in rows:
        out_kb = f"{r.size_out / 1024:.1f}" if r.size_out is not None else "-"
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        if r.size_out is None:
            text = fields = same = res = "-"
        else:
            text = f"{r.chars[0]}/{r.chars[1]} {yes(r.text_kept)}"
            fields = f"{r.fields[0]}/{r.fields[1]} {yes(r.fields_kept)}"
            same = f"{r.untouched_same[0]}/{r.untouched_same[1]}"
            res = yes(r.resolution_kept) if r.edited or r.unchanged or r.rendered else "-"
        lines.append(
            f"| {r.name} | {r.size_in / 1024:.1f} | {out_kb} | {ratio} | {r.kind} "
            f"| {r.edited}/{r.unchanged}/{r.passed}/{r.rendered} | {text} | {fields} | {same} "
            f"| {res} | {r.seconds:.1f} | {r.outcome} |"
        )
    lines += ["", *summary(rows)]
    return "\n".join(lines) + "\n"


def summary(rows: list[Row]) -> list[str]:
    written = [r for r in rows if r.ratio is not None]
    lines = ["## Summary", ""]
    for kind, limit in TARGETS.items():
        ratios = [r.ratio for r in written if r.kind == kind]
        if not ratios:
            continue
        over = [f"{r.name} {r.ratio:.2f}" for r in written if r.kind == kind and r.ratio > limit]
        lines.append(
            f"- {kind} files: {len(ratios)}, ratio max {max(ratios):.2f}, median "
            f"{statistics.median(ratios):.2f} (target <= {limit}): "
            + ("met" if not over else "**not met**: " + ", ".join(over))
        )
    median = statistics.median([r.ratio for r in written])
    lines.append(
        f"- median ratio over the {len(written)} files written: {median:.2f} (target <= "
        f"{MEDIAN_TARGET}): {'met' if median <= MEDIAN_TARGET else '**not met**'}"
    )
    ocred = [r for r in written if r.chars[0]]
    lines.append(
        f"- text layer kept: {sum(r.text_kept for r in ocred)}/{len(ocred)} files with text; "
        f"form fields kept: {sum(r.fields_kept for r in written if r.fields[0])}/"
        f"{sum(1 for r in written if r.fields[0])} files with fields"
    )
    pages = sum(r.untouched_same[1] for r in written)
    lines.append(
        f"- pages not edited that are unchanged: {sum(r.untouched_same[0] for r in written)}/"
        f"{pages}; files edited or rendered with every scan at its own resolution: "
        f"{sum(r.resolution_kept for r in written if r.edited or r.unchanged or r.rendered)}/"
        f"{sum(1 for r in written if r.edited or r.unchanged or r.rendered)}"
    )
    lines.append(
        f"- pages edited / came back the same / passed / rendered / left for a fallback: "
        f"{sum(r.edited for r in rows)} / {sum(r.unchanged for r in rows)}"
        f" / {sum(r.passed for r in rows)} / {sum(r.rendered for r in rows)} / "
        f"{sum(r.fallback for r in rows)}; files refused: "
        f"{sum(1 for r in rows if r.size_out is None)}"
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("tests/pdf_corpus"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/pdf_fidelity.md"))
    ap.add_argument("--model", default="scan-denoiser", help="weights name or folder")
    ap.add_argument("--max-pixels", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from aepipe import load_stage
    from aepipe.io import atomic_write
    from aepipe.runner import RunOptions

    torch.set_num_threads(args.threads)
    files = sorted(args.corpus.glob("*.pdf"))
    if not files:
        raise SystemExit(f"no PDFs in {args.corpus}; run `make pdf-corpus` first")
    stage = load_stage(args.model)
    options = RunOptions() if args.max_pixels is None else RunOptions(max_pixels=args.max_pixels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            row = run_file(path, stage, options, Path(tmp))
            print(f"{row.name}: {row.ratio or 0:.2f}x {row.outcome} ({row.seconds:.1f} s)")
            rows.append(row)
    command = "python benchmarks/pdf_fidelity.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None
    )
    text = table(rows, command)
    atomic_write(args.out, lambda fh: fh.write(text.encode()))
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
