"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

The IDX header is: two zero bytes, a type code, the number of dimensions, then one big-endian
uint32 size per dimension, followed by the data in C order.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np

# IDX type code -> numpy dtype; multi-byte types are big-endian in the file.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# File stems of the MNIST-like layout, per split.
_SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed).

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.

    Returns:
        The array with the shape stored in the header, in native byte order
        (uint8 (N, 28, 28) for MNIST images, uint8 (N,) for labels).

    Raises:
        ValueError: if the file is not a well-formed IDX file (the message names it).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header_end != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes) but the file "
            f"holds {len(raw) - header_end} bytes of data"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header_end).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {stem}.gz or {stem}")


def load_mnist_like(
    folder: str | os.PathLike[str], split: Literal["train", "test"]
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of an MNIST-layout folder (MNIST, Fashion-MNIST, ...).

    Args:
        folder: folder holding ``train-images-idx3-ubyte.gz`` etc. (gzip or plain).
        split: ``"train"`` or ``"test"`` (``t10k-*`` files).

    Returns:
        ``(images, labels)``: uint8 (N, 28, 28) and uint8 (N,).

    Raises:
        FileNotFoundError: if a file of the split is missing.
        ValueError: if the files are malformed or their counts differ.
    """
    if split not in _SPLIT_STEMS:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    folder = Path(folder)
    img_stem, lbl_stem = _SPLIT_STEMS[split]
    images = read_idx(_find(folder, img_stem))
    labels = read_idx(_find(folder, lbl_stem))
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{folder}: {img_stem} must hold uint8 (N, H, W); got {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{folder}: {images.shape[0]} images but labels of shape {labels.shape}")
    return images, labels
