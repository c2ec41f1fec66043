"""Regenerate sample_inputs/scans and sample_inputs/scans_clean_targets from fixed seeds.

Every file comes from ``aepipe.data.synthetic_pages.make_pair``, so the set is reproducible
byte for byte on the same library versions:

    .venv/bin/python sample_inputs/make_samples.py

The dirty pages go to ``scans/`` (inputs of the scan cleaner), their clean targets to
``scans_clean_targets/`` under the same stem (``<stem>_p1.png``, ``<stem>_p2.png`` for the
pages of the PDF).
"""

from __future__ import annotations

import io
from pathlib import Path

import img2pdf
import numpy as np
from PIL import Image

from aepipe.data.synthetic_pages import make_pair

HERE = Path(__file__).resolve().parent

# (file name, seed, height, width, dpi, bilevel clean target)
PNG_SAMPLES = [
    ("ddd_like_540x420.png", 1042, 420, 540, 100, False),
    ("ddd_like_540x258.png", 1005, 258, 540, 100, False),
    ("a4_150dpi.png", 1152, 1754, 1240, 150, True),
]
JPEG_SAMPLE = ("photo_scan_540x420.jpg", 1031, 420, 540, 100, False)
PDF_SAMPLE = ("two_pages_100dpi.pdf", (1206, 1210), 1100, 850, 100, False)


def _save_png(array: np.ndarray, path: Path, dpi: int) -> None:
    Image.fromarray(array).save(path, dpi=(dpi, dpi), optimize=True)


def main() -> None:
    scans, targets = HERE / "scans", HERE / "scans_clean_targets"
    scans.mkdir(exist_ok=True)
    targets.mkdir(exist_ok=True)
    for name, seed, h, w, dpi, bilevel in PNG_SAMPLES:
        dirty, clean = make_pair(seed, h, w, dpi, bilevel=bilevel)
        _save_png(dirty, scans / name, dpi)
        _save_png(clean, targets / name, dpi)

    name, seed, h, w, dpi, bilevel = JPEG_SAMPLE
    dirty, clean = make_pair(seed, h, w, dpi, bilevel=bilevel)
    Image.fromarray(dirty).save(scans / name, quality=80, dpi=(dpi, dpi))
    _save_png(clean, targets / (Path(name).stem + ".png"), dpi)

    name, seeds, h, w, dpi, bilevel = PDF_SAMPLE
    pages = []
    for i, seed in enumerate(seeds, start=1):
        dirty, clean = make_pair(seed, h, w, dpi, bilevel=bilevel)
        buf = io.BytesIO()
        # JPEG pages: img2pdf embeds them as they are, like a scanner's PDF; the JFIF
        # density makes the PDF page 8.5 x 11 in.
        Image.fromarray(dirty).save(buf, format="JPEG", quality=80, dpi=(dpi, dpi))
        pages.append(buf.getvalue())
        _save_png(clean, targets / f"{Path(name).stem}_p{i}.png", dpi)
    (scans / name).write_bytes(img2pdf.convert(pages, nodate=True, engine=img2pdf.Engine.internal))


if __name__ == "__main__":
    main()
