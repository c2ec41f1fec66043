"""OCR benchmark: Tesseract's character error rate on raw, unpaper-cleaned, Otsu-binarized and
our cleaned pages, against Tesseract's text of the clean target page.

Sets: the DDD test split (``split_three(pairs, 8, 4, seed 0)``, see ``scan_real.py``) and
synthetic 300-DPI pages (seeds unused in training). On the synthetic pages the reference is
Tesseract's reading of the clean rendered page too (the generator does not return its text),
so the CER measures what the damage, and each cleaner, adds to OCR errors.

Needs ``tesseract`` (Debian: ``apt-get install -y tesseract-ocr tesseract-ocr-eng``); not part of
the default test run. Run::

    .venv/bin/python benchmarks/scan_ocr.py --weights scan-denoiser --weights runs/real/r1
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import scan_denoiser as sd  # noqa: E402  (a sibling script: its baselines)
from report import write_report  # noqa: E402  (a sibling module)

from aepipe.data.docbin import otsu_ink  # noqa: E402

OCR_SEED = 17_000_000


def ocr(page: np.ndarray, dpi: int) -> str:
    """Tesseract's text of a uint8 page (English, automatic page segmentation)."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.png"
        Image.fromarray(page).save(path, dpi=(dpi, dpi))
        res = subprocess.run(
            ["tesseract", str(path), "-", "-l", "eng", "--dpi", str(dpi)],
            capture_output=True,
            text=True,
            check=True,
            env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"},
        )
    return " ".join(res.stdout.split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(hyp: str, ref: str) -> float:
    return edit_distance(hyp, ref) / max(len(ref), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ddd", type=Path, default=ROOT.parent / "shared" / "data" / "ddd")
    ap.add_argument("--weights", action="append", help="our weights; repeat to compare")
    ap.add_argument(
        "--views", action="append", type=int, help="stage views of our nets (default 1); repeat"
    )
    ap.add_argument("--n-synthetic", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scan_ocr.md")
    args = ap.parse_args(argv)

    import torch

    from aepipe.data.ddd import load_pairs, split_three
    from aepipe.data.synthetic_pages import make_pair
    from aepipe.stages.scan_denoiser import ScanDenoiser

    torch.set_num_threads(1)
    _, _, test = split_three(load_pairs(args.ddd), 8, 4, 0)
    sets = {
        "DDD test": [(p.name, p.dirty, p.clean, 100) for p in test],
        "synthetic 300 DPI": [
            (f"s{i}", *make_pair(OCR_SEED + i, 1400, 1100, 300), 300)
            for i in range(args.n_synthetic)
        ],
    }
    methods: dict[str, sd.Method] = {
        "raw scan": sd.raw,
        "Otsu (global)": lambda d, dpi: (~otsu_ink(d / 255.0)).astype(np.float32),
        "unpaper (OCRmyPDF args)": sd.unpaper,
    }
    for w in args.weights or ["scan-denoiser"]:
        for views in args.views or [1]:
            label = f"**ScanUNet `{w}`**" + ("" if views == 1 else f", {views} views")
            methods[label] = sd.stage_method(ScanDenoiser.from_pretrained(w, views=views))
    table: dict[str, dict[str, float]] = {m: {} for m in methods}
    for sname, pages in sets.items():
        refs = [ocr(clean, dpi) for _n, _d, clean, dpi in pages]
        for m, fn in methods.items():
            errs = []
            for (_n, dirty, _c, dpi), ref in zip(pages, refs, strict=True):
                out = np.round(np.clip(fn(dirty, dpi), 0, 1) * 255).astype(np.uint8)
                errs.append(cer(ocr(out, dpi), ref))
            table[m][sname] = 100.0 * float(np.mean(errs))
            print(sname, m, round(table[m][sname], 2), flush=True)
    lines = [
        "# OCR: Tesseract character error rate (%) against Tesseract on the clean page",
        "",
        f"Command: `.venv/bin/python benchmarks/{Path(__file__).name} "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + "`",
        "",
        "Mean per-page CER (%), lower is better. "
        + ", ".join(f"{s}: {len(p)} pages" for s, p in sets.items())
        + ". Tesseract "
        + subprocess.run(["tesseract", "--version"], capture_output=True, text=True)
        .stdout.split("\n")[0]
        .split()[-1]
        + ", English, one thread.",
        "",
        "| method | " + " | ".join(sets) + " |",
        "|---|" + "---:|" * len(sets),
        *(f"| {m} | " + " | ".join(f"{r[s]:.2f}" for s in sets) + " |" for m, r in table.items()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(args.out, text, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
