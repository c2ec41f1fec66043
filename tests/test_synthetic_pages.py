from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aepipe.data import synthetic_pages as sp


def test_make_pair_is_deterministic_for_a_seed():
    d1, c1 = sp.make_pair(123, height=200, width=260)
    d2, c2 = sp.make_pair(123, height=200, width=260)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(c1, c2)
    _, c3 = sp.make_pair(124, height=200, width=260)
    assert not np.array_equal(c1, c3)


@pytest.mark.parametrize(("h", "w", "dpi"), [(420, 540, 100), (258, 540, 100), (300, 240, 200)])
def test_shapes_dtypes_and_text_density(h, w, dpi):
    for seed in range(3):
        dirty, clean = sp.make_pair(seed, height=h, width=w, dpi=dpi)
        assert dirty.shape == clean.shape == (h, w)
        assert dirty.dtype == clean.dtype == np.uint8
        dark = float((clean < 128).mean())
        # Real DDD targets have 9-12 % ink; synthetic layouts vary more but are never blank.
        assert 0.01 < dark < 0.35, dark
        # Clean target: white paper, near-black ink.
        assert np.median(clean) == 255
        assert clean.min() < 60
        assert np.abs(dirty.astype(int) - clean.astype(int)).mean() > 3


def test_dirty_keeps_text_readable():
    # Ink pixels must stay clearly darker than the paper around them in the dirty page.
    for seed in range(6):
        dirty, clean = sp.make_pair(seed, height=256, width=320)
        ink = clean < 60
        paper = clean == 255
        assert np.median(dirty[ink]) + 40 < np.median(dirty[paper])


def test_bilevel_clean_target():
    _, clean = sp.make_pair(5, height=200, width=300, dpi=200, bilevel=True)
    assert set(np.unique(clean).tolist()) <= {0, 255}


def test_render_and_degrade_take_a_generator():
    rng = np.random.default_rng(0)
    clean = sp.render_clean_page(rng, 180, 240, dpi=100)
    assert clean.shape == (180, 240) and clean.dtype == np.uint8
    dirty = sp.degrade(clean, rng)
    assert dirty.shape == clean.shape and dirty.dtype == np.uint8


def test_fonts_are_found():
    inv = sp.font_inventory()
    # matplotlib (a project dependency) ships DejaVu and Computer Modern fonts.
    assert inv["serif"] and inv["sans"] and inv["bold"]


def test_pair_timing_bound():
    sp.make_pair(0)  # warm caches (fonts)
    t0 = time.perf_counter()
    for seed in range(1, 4):
        sp.make_pair(seed)
    per_pair = (time.perf_counter() - t0) / 3
    assert per_pair < 1.5, per_pair  # loose: ~0.05-0.1 s measured on one core


def test_synthetic_pages_map_style_and_iterable():
    ds = sp.SyntheticPages(
        length=10, patch_size=64, seed=3, patches_per_page=4, page_sizes=[(160, 200, 100)]
    )
    assert len(ds) == 10
    dirty, clean = ds[5]
    assert dirty.shape == clean.shape == (1, 64, 64)
    assert dirty.dtype == np.float32 and dirty.min() >= 0.0 and clean.max() <= 1.0
    again = sp.SyntheticPages(
        length=10, patch_size=64, seed=3, patches_per_page=4, page_sizes=[(160, 200, 100)]
    )[5]
    np.testing.assert_array_equal(dirty, again[0])
    with pytest.raises(IndexError):
        ds[10]
    ds.set_epoch(1)
    assert not np.array_equal(ds[5][0], dirty)
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[5][0], dirty)
    it = iter(ds)
    items = [next(it) for _ in range(6)]
    assert all(d.shape == (1, 64, 64) for d, _ in items)
    assert not np.array_equal(items[0][0], items[5][0])


def test_synthetic_pages_rejects_small_pages():
    with pytest.raises(ValueError):
        sp.SyntheticPages(patch_size=256, page_sizes=[(128, 128, 100)])


def test_cli_writes_pairs(tmp_path: Path):
    assert (
        sp.main(
            ["--out", str(tmp_path), "--n", "2", "--seed", "9", "--height", "120", "--width", "160"]
        )
        == 0
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["00000_clean.png", "00000_dirty.png", "00001_clean.png", "00001_dirty.png"]
    with Image.open(tmp_path / "00001_dirty.png") as im:
        assert im.size == (160, 120) and im.mode == "L"


def test_sample_scans_have_clean_targets():
    root = Path(__file__).resolve().parents[1] / "sample_inputs"
    scans = sorted((root / "scans").iterdir())
    assert len(scans) >= 4
    for path in scans:
        if path.suffix == ".pdf":
            import pypdfium2

            pdf = pypdfium2.PdfDocument(str(path))
            n_pages = len(pdf)
            pdf.close()
            assert n_pages == 2
            for i in (1, 2):
                assert (root / "scans_clean_targets" / f"{path.stem}_p{i}.png").is_file()
            continue
        target = root / "scans_clean_targets" / f"{path.stem}.png"
        with Image.open(path) as dirty, Image.open(target) as clean:
            assert dirty.size == clean.size
            assert clean.mode == "L"
