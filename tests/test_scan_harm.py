"""Do no harm: the shipped scan denoiser passes clean pages through unchanged.

Small generated pages without damage (bold headlines and initials of 24-150 pt, rules, shapes,
a photo), at 150 and 300 DPI; the targets are the issue's (benchmarks/scan_real.py measures the
same on larger pages and on real ground-truth pages).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from factory import display_page

from aepipe.batch import ImageBatch
from aepipe.data.docbin import f_measure, otsu_ink
from aepipe.stages.scan_denoiser import ScanDenoiser


@pytest.fixture(scope="module")
def stage() -> ScanDenoiser:
    torch.set_num_threads(1)
    return ScanDenoiser.from_pretrained("scan-denoiser")


def clean_page(seed: int, dpi: int, bilevel: bool) -> tuple[np.ndarray, tuple | None]:
    return display_page(31_000_000, seed, dpi, (360, 320), bilevel)


def run(stage: ScanDenoiser, page: np.ndarray) -> np.ndarray:
    return stage(ImageBatch.from_numpy(page)).images[0, 0].numpy()


@pytest.mark.parametrize(("seed", "dpi"), [(0, 150), (1, 300), (2, 300)])
def test_clean_bilevel_bold_page_passes_through(stage: ScanDenoiser, seed: int, dpi: int) -> None:
    page, _ = clean_page(seed, dpi, bilevel=True)
    assert (page < 128).mean() > 0.05  # heavy ink on the page: the case that used to hollow
    out = run(stage, page)
    assert 100.0 * f_measure(otsu_ink(out), page < 128) >= 99.5


def test_clean_gray_page_with_photo_passes_through(stage: ScanDenoiser) -> None:
    from skimage.metrics import structural_similarity

    page, box = clean_page(3, 150, bilevel=False)
    out = run(stage, page)
    ref = page.astype(np.float32) / 255.0
    assert math.sqrt(float(((out - ref) ** 2).mean())) <= 0.01
    y, x, h, w = box
    out8 = np.round(out[y : y + h, x : x + w] * 255).astype(np.uint8)
    assert structural_similarity(page[y : y + h, x : x + w], out8, data_range=255) >= 0.9


def test_a_photograph_is_kept_as_it_is_and_a_scan_is_not() -> None:
    """The network whitens a photograph's mid-tones as stains: a page that looks like one (no
    paper around it) comes back unchanged, with --binarize too; --clean-all cleans it; a dirty
    scan is cleaned. Weights do not matter (a tiny seeded net)."""
    from PIL import Image

    from aepipe.clean_page import is_photograph

    root = Path(__file__).resolve().parent.parent / "sample_inputs"
    photo = np.asarray(Image.open(root / "faces" / "astronaut.png").convert("RGB"))
    scan = np.asarray(Image.open(root / "scans" / "ddd_like_540x420.png").convert("L"))
    assert not is_photograph(scan / 255.0)
    batch = ImageBatch.from_numpy(photo)
    for config in ({}, {"binarize": True}):
        out = ScanDenoiser.tiny(seed=0, **config)(batch)
        torch.testing.assert_close(out.images, batch.gray().images)  # the runner keeps its colour
        assert out.meta[0]["photograph"] and not out.meta[0]["already_clean"]
    cleaned = ScanDenoiser.tiny(seed=0, clean_pages="process")(batch)
    assert not cleaned.meta[0]["photograph"]
    assert (cleaned.images - batch.gray().images).abs().max() > 0.1
    dirty = ScanDenoiser.tiny(seed=0)(ImageBatch.from_numpy(scan))
    assert not dirty.meta[0]["photograph"]
