"""Searchable PDFs from degraded scans: OCRmyPDF alone, with ``--clean``, with our plugin, and ours.

    .venv/bin/python benchmarks/ocr_pipeline.py --ddd ../shared/data/ddd [--synthetic 4] [--jobs N]

One multi-page PDF is built from

* DDD pages never trained on: one noisy version of each page group held out by the shipped
  scan denoiser's training run (names read from ``weights/scan-denoiser/config.json``, the
  ``aepipe.data.ddd.split_by_group`` draw; lowest Kaggle id per group), stored at 100 DPI;
  their reference text is Tesseract's text of the clean target page (``train_cleaned``);
* synthetic 300-DPI pages of known English text (rendered here in DejaVu Serif) damaged by
  ``aepipe.data.synthetic_pages.degrade`` with seeds unused in training; the reference is
  the rendered text.

The same PDF then goes, in one run, through each method as its own process (wall time
includes process start-up and model loading, as a user sees it):

* ``ocrmypdf``: OCRmyPDF's defaults;
* ``ocrmypdf --clean``: unpaper cleans the image Tesseract reads;
* ``ocrmypdf --plugin aepipe.ocrmypdf``: our denoiser cleans the image Tesseract reads;
* ``clean-scans --ocr`` (gray) and ``clean-scans --ocr --binarize``: the stored pages are the
  cleaned ones too.

Metrics: character error rate (Levenshtein distance / reference length, whitespace collapsed)
of each page's text layer, pooled over the pages of a set; wall seconds per page; output size.
Writes benchmarks/results/ocr_pipeline.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BIN = Path(sys.executable).parent
SYNTH_SEED = 7_000_000  # far from the training seeds and from scan_denoiser.py's 5_000_000
DDD_DPI = 100
SYNTH_DPI = 300

TEXT = """\
The committee met on the third of March to review the accounts of the parish. Minutes
of the previous meeting were read and signed. The treasurer reported that the repairs to
the north wall of the school had cost more than expected, and that the balance held by the
bank stood at four hundred and twelve pounds. A letter from the county surveyor asked for
a plan of the drains before the summer. Members agreed to write to the owner of the mill
about the state of the footpath along the river, which floods after heavy rain. The clerk
was asked to find the deeds of the chapel field, last seen in the vestry cupboard in 1931.
Several residents complained about the noise of lorries passing the church on market day.
The chairman thanked the volunteers who cleared the churchyard and planted new hedges by
the lane. It was resolved that the next meeting would be held in the village hall at seven
o'clock, and that the annual report would be printed and sent to every household.
Records of births, marriages and burials from 1850 to 1920 were moved to the county archive
for safe keeping, where they may be consulted by appointment on weekday mornings."""


# ---- pages ----------------------------------------------------------------------------------


def ddd_pages(ddd: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, noisy, clean target) of one noisy version per held-out page group."""
    from aepipe.data.ddd import load_pairs

    cfg = json.loads((ROOT / "weights" / "scan-denoiser" / "config.json").read_text())
    names = set(cfg["training"]["data"]["ddd_val_names"])
    first: dict[str, tuple[str, np.ndarray, np.ndarray]] = {}
    for p in load_pairs(ddd):  # sorted by numeric id, so the lowest id of a group wins
        if p.name in names and p.group not in first:
            first[p.group] = (p.name, p.dirty, p.clean)
    return sorted(first.values(), key=lambda t: int(t[0]))


def synthetic_page(index: int, lines_per_page: int = 13) -> tuple[np.ndarray, str]:
    """A degraded 300-DPI page (5.5 x 4.3 in) of ``TEXT``, word-wrapped, and the text it shows."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    from aepipe.data.synthetic_pages import degrade

    font_file = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSerif.ttf"
    font = ImageFont.truetype(str(font_file), round(10 * SYNTH_DPI / 72))
    page = Image.new("L", (1650, 1290), 255)
    draw = ImageDraw.Draw(page)
    words = TEXT.split()
    words = words[(index * 37) % len(words) :] + words  # each page starts elsewhere
    shown: list[str] = []
    while len(shown) < lines_per_page:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) < 1650 - 160:
            line = f"{line} {words.pop(0)}"
        shown.append(line)
    for i, line in enumerate(shown):
        draw.text((80, 80 + 85 * i), line, font=font, fill=0)
    rng = np.random.default_rng(np.random.SeedSequence([SYNTH_SEED, index]))
    return degrade(np.asarray(page), rng, dpi=SYNTH_DPI), " ".join(shown)


def tesseract_text(image: np.ndarray, dpi: int, work: Path) -> str:
    from PIL import Image

    path = work / "ref.png"
    Image.fromarray(image).save(path, dpi=(dpi, dpi))
    res = subprocess.run(
        ["tesseract", str(path), "-", "--dpi", str(dpi), "-l", "eng"],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout


def build_pdf(pages: list[tuple[np.ndarray, int]], path: Path, work: Path) -> None:
    """One PDF page per (image, dpi), each page sized by its own resolution (img2pdf)."""
    import img2pdf
    from PIL import Image

    files = []
    for i, (image, dpi) in enumerate(pages):
        f = work / f"page{i:03d}.png"
        Image.fromarray(image).save(f, dpi=(dpi, dpi))
        files.append(str(f))
    path.write_bytes(img2pdf.convert(files))


# ---- metrics --------------------------------------------------------------------------------


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance, one numpy row per character of ``a`` (insertions by a running minimum)."""
    if not a or not b:
        return max(len(a), len(b))
    bb = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    idx = np.arange(len(b) + 1)
    prev = idx.copy()
    for i, c in enumerate(map(ord, a), start=1):
        cand = np.empty_like(prev)
        cand[0] = i
        cand[1:] = np.minimum(prev[:-1] + (bb != c), prev[1:] + 1)
        prev = np.minimum.accumulate(cand - idx) + idx
    return int(prev[-1])


def page_texts(pdf: Path) -> list[str]:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    try:
        return [p.get_textpage().get_text_range() for p in doc]
    finally:
        doc.close()


def cer(refs: list[str], hyps: list[str]) -> float:
    dist = sum(levenshtein(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True))
    return dist / max(1, sum(len(normalize(r)) for r in refs))


# ---- methods --------------------------------------------------------------------------------


def methods(jobs: int) -> dict[str, list[str]]:
    ocr = [str(BIN / "ocrmypdf"), "-j", str(jobs), "-q"]
    clean = [str(BIN / "clean-scans"), "--ocr", "-q", "--overwrite"]
    return {
        "ocrmypdf": ocr,
        "ocrmypdf --clean (unpaper)": [*ocr, "--clean"],
        "ocrmypdf --plugin aepipe.ocrmypdf": [*ocr, "--plugin", "aepipe.ocrmypdf"],
        "clean-scans --ocr": clean,
        "clean-scans --ocr --binarize": [*clean, "--binarize"],
    }


def run_method(name: str, cmd: list[str], src: Path, work: Path, env: dict) -> tuple[Path, float]:
    out_dir = work / re.sub(r"\W+", "_", name)
    out_dir.mkdir()
    if cmd[0].endswith("clean-scans"):
        args, out = [*cmd, str(src), "--out", str(out_dir)], out_dir / src.with_suffix(".pdf").name
    else:
        out = out_dir / "out.pdf"
        args = [*cmd, str(src), str(out)]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, env=env, capture_output=True)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--ddd", type=Path, required=True, help="the DDD folder (train/, train_cleaned/)"
    )
    ap.add_argument("--synthetic", type=int, default=4, help="synthetic 300-DPI pages")
    ap.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="OCRmyPDF -j of the ocrmypdf rows (default: one per CPU, as clean-scans --ocr uses)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch/OMP threads per process")
    args = ap.parse_args()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pages, refs, sets = [], [], []
        ddd = ddd_pages(args.ddd)
        for _name, dirty, clean in ddd:
            pages.append((dirty, DDD_DPI))
            refs.append(tesseract_text(clean, DDD_DPI, work))
            sets.append("ddd")
        for i in range(args.synthetic):
            dirty, text = synthetic_page(i)
            pages.append((dirty, SYNTH_DPI))
            refs.append(text)
            sets.append("synthetic")
        src = work / "degraded.pdf"
        build_pdf(pages, src, work)
        rows = []
        for name, cmd in methods(args.jobs).items():
            out, seconds = run_method(name, cmd, src, work, env)
            hyps = page_texts(out)
            assert len(hyps) == len(pages), f"{name}: {len(hyps)} pages out of {len(pages)}"
            row = {"method": name, "s_per_page": seconds / len(pages), "bytes": out.stat().st_size}
            for s in ("ddd", "synthetic"):
                keep = [i for i, x in enumerate(sets) if x == s]
                row[f"cer_{s}"] = cer([refs[i] for i in keep], [hyps[i] for i in keep])
            row["cer_all"] = cer(refs, hyps)
            rows.append(row)
            print(json.dumps(row), flush=True)
        meta = {
            "ddd_pages": [n for n, _, _ in ddd],
            "synthetic_pages": args.synthetic,
            "input_bytes": src.stat().st_size,
            "jobs": args.jobs,
            "threads": args.threads,
            "command": " ".join(["benchmarks/ocr_pipeline.py", *sys.argv[1:]]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        }
    write_results(rows, meta)


def write_results(rows: list[dict], meta: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ocr_pipeline.json").write_text(json.dumps({"rows": rows, **meta}, indent=2) + "\n")
    n = len(meta["ddd_pages"]) + meta["synthetic_pages"]
    lines = [
        "# Searchable PDFs from degraded scans (benchmarks/ocr_pipeline.py)",
        "",
        f"One {n}-page PDF ({meta['input_bytes'] / 1024:.0f} KiB): {len(meta['ddd_pages'])} DDD "
        f"pages at {DDD_DPI} DPI (ids {', '.join(meta['ddd_pages'])}: one noisy version of each "
        "page group held out by the shipped scan denoiser's training), reference = Tesseract's "
        f"text of the clean target; {meta['synthetic_pages']} synthetic {SYNTH_DPI}-DPI pages of "
        "known English text degraded by `aepipe.data.synthetic_pages.degrade`, reference = "
        "the rendered text. CER = edit distance / reference length, whitespace collapsed, "
        "pooled over pages. Time = wall seconds of the whole process / pages "
        f"(OCRmyPDF -j {meta['jobs']}; clean-scans --ocr uses OCRmyPDF's default of one worker "
        f"per CPU; {meta['threads']} torch/OMP thread(s) per process; "
        f"{meta['machine']}).",
        "",
        "| method | CER DDD | CER synthetic | CER all | s/page | output KiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['method']}` | {r['cer_ddd']:.3f} | {r['cer_synthetic']:.3f} | "
            f"{r['cer_all']:.3f} | {r['s_per_page']:.2f} | {r['bytes'] / 1024:.0f} |"
        )
    lines += ["", f"Command: `.venv/bin/python {meta['command']}`", ""]
    (RESULTS / "ocr_pipeline.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
