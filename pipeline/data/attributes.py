"""Reader for ``lfw_attributes.csv``: binary face attributes for the rows of ``lfw_64.npz``.

The file (see ``../shared/data/faces/README.md``, section 4) has one row per matched LFW image
with its ``split`` (``train`` / ``test``), its row ``index`` into that split of the archive, its
``file`` name and 74 labels (the 73 attributes of Kumar et al. 2009 plus the derived
``Female``), each 0 or 1. ``1`` means "clearly present"; ``0`` means absent *or weakly present*.

Train/test separation is enforced here: :func:`load_attributes` returns the rows of one split
only, and the concept fitter asks for ``"train"`` alone (the test rows are for evaluation).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Split = Literal["train", "test"]
_FIXED = ("split", "index", "file")

# Short, documented names for the attributes the shipped concepts use (``smile`` -> Smiling).
ALIASES: dict[str, str] = {
    "smile": "Smiling",
    "smiling": "Smiling",
    "glasses": "Eyeglasses",
    "eyeglasses": "Eyeglasses",
    "mustache": "Mustache",
    "moustache": "Mustache",
    "male": "Male",
    "female": "Female",
    "senior": "Senior",
    "old": "Senior",
    "youth": "Youth",
    "blond": "Blond Hair",
    "blonde": "Blond Hair",
    "hat": "Wearing Hat",
}


@dataclass(frozen=True)
class Attributes:
    """The labels of one split.

    Attributes:
        split: ``"train"`` or ``"test"``.
        index: (N,) int64 row indices into that split of ``lfw_64.npz``.
        files: (N,) file names (``Person/Person_0001.jpg``), as in the archive.
        names: the K attribute names, in file order.
        labels: (N, K) uint8 in {0, 1}.
    """

    split: str
    index: np.ndarray
    files: np.ndarray
    names: tuple[str, ...]
    labels: np.ndarray

    def column(self, name: str) -> np.ndarray:
        """(N,) labels of one attribute (exact name or an alias of :data:`ALIASES`)."""
        return self.labels[:, self.names.index(attribute_name(name, self.names))]

    def select(self, names: list[str]) -> np.ndarray:
        """(N, len(names)) float64 label matrix of the given attributes (names or aliases)."""
        cols = [self.names.index(attribute_name(n, self.names)) for n in names]
        return self.labels[:, cols].astype(np.float64)


def attribute_name(name: str, known: tuple[str, ...]) -> str:
    """Resolve an attribute name or alias (case-insensitive) to its name in the file.

    Raises:
        KeyError: the name matches no attribute (the message lists a few).
    """
    if name in known:
        return name
    lowered = {k.lower(): k for k in known}
    target = ALIASES.get(name.lower(), name).lower()
    if target in lowered:
        return lowered[target]
    raise KeyError(f"unknown attribute {name!r}; known: {', '.join(known[:12])}, ...")


def load_attributes(path: str | os.PathLike[str], split: Split) -> Attributes:
    """Read the labels of one split (no default: the caller must say which).

    Args:
        path: ``lfw_attributes.csv``.
        split: ``"train"`` (to build anything) or ``"test"`` (evaluation only).

    Returns:
        The rows of that split, sorted by ``index``.

    Raises:
        ValueError: bad split, a missing column, a label other than 0/1, a repeated index.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if tuple(header[:3]) != _FIXED:
            raise ValueError(f"{path}: first columns must be {_FIXED}; got {header[:3]}")
        rows = [r for r in reader if r and r[0] == split]
    names = tuple(header[3:])
    index = np.array([int(r[1]) for r in rows], dtype=np.int64)
    files = np.array([r[2] for r in rows])
    labels = np.array([r[3:] for r in rows], dtype=np.uint8).reshape(len(rows), len(names))
    if labels.size and labels.max() > 1:
        raise ValueError(f"{path}: labels must be 0 or 1")
    if len(np.unique(index)) != len(index):
        raise ValueError(f"{path}: repeated {split} index")
    order = np.argsort(index, kind="stable")
    return Attributes(split, index[order], files[order], names, labels[order])


def check_against_archive(attrs: Attributes, archive_files: np.ndarray | None) -> None:
    """Check that every labelled row names the same file as the archive at that index.

    Raises:
        ValueError: an index out of range or a file name that differs.
    """
    if archive_files is None:
        return
    if len(attrs.index) and attrs.index.max() >= len(archive_files):
        raise ValueError(f"{attrs.split} index {attrs.index.max()} beyond the archive")
    bad = np.nonzero(archive_files[attrs.index].astype(str) != attrs.files)[0]
    if len(bad):
        i = int(bad[0])
        raise ValueError(
            f"{attrs.split} row {attrs.index[i]}: labels are for {attrs.files[i]!r}, the archive "
            f"has {archive_files[attrs.index[i]]!r} ({len(bad)} mismatches)"
        )
