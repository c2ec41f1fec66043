"""Reader for the ``lfw_64.npz`` / ``olivetti_64x64.npz`` face archives (gray luma, uint8).

The archives hold uint8 images under ``images`` (train) and ``test_images`` (test); colour
archives are turned into BT.601 luma with :func:`aepipe.batch.to_gray` and rounded back to
8 bits, so the gray faces the VAE learns from are exactly what a gray PNG of them would hold.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

Split = Literal["train", "test"]
_KEYS = {"train": ("images", "train_files"), "test": ("test_images", "test_files")}


def load_faces(
    path: str | os.PathLike[str], split: Split = "train", with_files: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """Load one split of a face archive as gray uint8 images.

    Args:
        path: the ``.npz`` file (e.g. ``../shared/data/faces/lfw_64.npz``).
        split: ``"train"`` or ``"test"`` (the test split is for evaluation only).
        with_files: also return the per-image source names (None when the archive has none).

    Returns:
        (N, H, W) uint8 gray images, and the names when ``with_files`` is set.

    Raises:
        FileNotFoundError: the archive does not exist.
        KeyError: the archive lacks the split.
    """
    import torch

    from aepipe.batch import to_gray

    path = Path(path)
    if split not in _KEYS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    key, file_key = _KEYS[split]
    with np.load(path, allow_pickle=False) as data:
        if key not in data:
            raise KeyError(f"{path}: no array {key!r} (has {sorted(data.keys())})")
        images = data[key]
        files = data.get(file_key)
    if images.ndim == 4 and images.shape[-1] == 3:
        rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        # Luma in 0..255 units, rounded as an 8-bit gray file would store it.
        gray = to_gray(rgb)[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    elif images.ndim == 3:
        gray = images.astype(np.uint8, copy=False)
    else:
        raise ValueError(f"{path}: {key} has shape {images.shape}; expected (N,H,W) or (N,H,W,3)")
    return (gray, files) if with_files else gray


def person_of(file_name: str) -> str:
    """The person part of an LFW file name ``Person/Person_0001.jpg``."""
    return str(file_name).split("/", 1)[0]


def split_by_person(files: np.ndarray | None, n: int, fraction: float) -> int:
    """Index at which to cut a sorted train split into train and validation parts.

    The tail holds about ``fraction`` of the images and no person falls on both sides.

    Args:
        files: per-image source names (sorted by person) or None (cut anywhere).
        n: number of images.
        fraction: wanted size of the tail, 0..1.

    Returns:
        The cut index: ``[:cut]`` trains, ``[cut:]`` validates.
    """
    cut = round(n * (1.0 - fraction))
    if files is None or cut <= 0 or cut >= n:
        return cut
    while cut < n and person_of(files[cut]) == person_of(files[cut - 1]):
        cut += 1
    return cut
