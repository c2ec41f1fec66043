"""The shipped weights on sample_inputs/: behaviour with tolerances (no ../shared data needed).

Every sample input has a clean target made with it (see sample_inputs/README.md), so these tests
check that each shipped model actually improves its inputs, by margins well inside what the
shipped models measure (the measured figures are in the comments), and that outputs keep the
input's size and the colorizer keeps the input's gray.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aepipe import apply, load_stage
from aepipe.batch import LUMA_WEIGHTS

SAMPLES = Path(__file__).resolve().parents[1] / "sample_inputs"


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / 255.0


@pytest.fixture(scope="module")
def scan_denoiser():
    return load_stage("scan-denoiser")


@pytest.mark.parametrize("name", ["ddd_like_540x420.png", "ddd_like_540x258.png", "a4_150dpi.png"])
def test_scan_denoiser_cleans_sample_scans(scan_denoiser, name: str) -> None:
    dirty = _pixels(SAMPLES / "scans" / name)
    target = _float(_pixels(SAMPLES / "scans_clean_targets" / name))
    clean = apply(scan_denoiser, dirty)
    assert clean.shape == dirty.shape[:2] and clean.dtype == np.uint8
    raw = _float(dirty if dirty.ndim == 2 else dirty.mean(axis=-1))
    rmse_raw = np.sqrt(((raw - target) ** 2).mean())
    rmse = np.sqrt(((_float(clean) - target) ** 2).mean())
    # Measured with the shipped weights: 0.20 -> 0.06, 0.33 -> 0.09, 0.21 -> 0.14 (bilevel);
    # ink means 44, 32, 65 of 255.
    assert rmse < 0.8 * rmse_raw, (name, rmse_raw, rmse)
    # Paper is white and text is dark, whatever the stains were.
    assert np.median(clean) >= 245
    assert clean[target < 0.3].mean() < 110


def test_scan_denoiser_more_views_lower_the_error(scan_denoiser) -> None:
    """Averaging shifted and mirrored views (``views=4``) beats one view on noisy pages."""
    four = load_stage("scan-denoiser", views=4)
    for name in ("ddd_like_540x420.png", "ddd_like_540x258.png"):
        dirty = _pixels(SAMPLES / "scans" / name)
        target = _float(_pixels(SAMPLES / "scans_clean_targets" / name))
        rmse = [
            np.sqrt(((_float(apply(s, dirty)) - target) ** 2).mean()) for s in (scan_denoiser, four)
        ]
        # Measured: 0.0573 -> 0.0542 and 0.0461 -> 0.0443 (ratios 0.946, 0.961).
        assert rmse[1] < 0.985 * rmse[0], (name, rmse)


@pytest.mark.parametrize(
    ("name", "min_db"),
    # Measured: camera 31.7, coins 27.5, moon 30.7, text 36.9 dB (inputs 14-22 dB).
    [
        ("camera_sp10.png", 29.0),
        ("coins_sp20.png", 25.0),
        ("moon_sp30.png", 28.0),
        ("text_sp05.png", 33.0),
    ],
)
def test_salt_pepper_denoiser_on_sample_pictures(name: str, min_db: float) -> None:
    stage = load_stage("salt-pepper")
    noisy = _pixels(SAMPLES / "salt-pepper" / name)
    target = _float(_pixels(SAMPLES / "salt-pepper_clean_targets" / name))
    out = apply(stage, noisy)
    assert out.shape == noisy.shape and out.dtype == np.uint8
    psnr = 10 * np.log10(1.0 / ((_float(out) - target) ** 2).mean())
    assert psnr >= min_db, (name, psnr)


def test_colorizer_keeps_gray_and_adds_plausible_colour() -> None:
    stage = load_stage("colorizer")
    gray = _pixels(SAMPLES / "faces" / "astronaut_face.png")
    real = _float(_pixels(SAMPLES / "faces_color_targets" / "astronaut_face.png"))
    rgb = apply(stage, gray)
    assert rgb.shape == (*gray.shape, 3) and rgb.dtype == np.uint8
    luma = rgb.astype(np.float64) @ np.asarray(LUMA_WEIGHTS, np.float64)
    assert np.abs(luma - gray).mean() < 1.0  # projection on: gray kept within 8-bit rounding
    chroma = rgb.astype(np.float64) - luma[..., None]
    assert np.abs(chroma).mean() > 2.0  # it did add colour
    # Measured: 28.7 dB against the real colour photo (gray replicated: 21.9 dB).
    psnr = 10 * np.log10(1.0 / ((_float(rgb) - real) ** 2).mean())
    gray_psnr = 10 * np.log10(1.0 / ((_float(gray)[..., None] - real) ** 2).mean())
    assert psnr > gray_psnr + 3.0, (psnr, gray_psnr)


def test_face_generator_samples_faces_and_reconstructs_them() -> None:
    stage = load_stage("face-vae")
    faces = next(stage.sample(16, seed=0))
    again = next(stage.sample(16, seed=0))
    assert faces.images.shape == (16, 1, 64, 64)
    assert np.array_equal(faces.to_numpy(), again.to_numpy())
    pixels = faces.images.numpy()
    # Faces, not noise or a flat field: mid-gray on average, with structure, and all different.
    assert 0.2 < pixels.mean() < 0.8 and pixels.std() > 0.1
    assert np.abs(pixels[1:] - pixels[:-1]).mean() > 0.02
    sample = _pixels(SAMPLES / "faces" / "vae_face_0.png")
    recon = apply(stage, sample)
    psnr = 10 * np.log10(1.0 / ((_float(recon) - _float(sample)) ** 2).mean())
    assert psnr > 20.0, psnr
