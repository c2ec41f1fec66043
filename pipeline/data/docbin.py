"""Reader for ``docbin``: real degraded archive pages with hand-made 1-bit ground truth.

The folder (``images/NAME.png`` 8-bit gray scans, ``gt/NAME.png`` 1-bit, black = ink) holds 93
pages of eight collections (H-DIBCO 2010-2018, DIBCO 2017, Bickley diary, Persian heritage);
the collection is the file-name prefix before the first ``_``.

Split (:func:`split_pages`): by page within each collection, so every collection is scored on
pages no training run saw. Per collection, the page names are sorted and permuted by a fixed
seed (16, the issue number; not tuned); the first quarter (rounded half up, at least 1) is
**test**, the next page **val**, the rest **train**. Test pages are for the final benchmark
only: nothing (checkpoint, hyper-parameter, threshold) is chosen on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DocbinPage",
    "collection_of",
    "f_measure",
    "load_pages",
    "otsu_ink",
    "page_names",
    "split_pages",
]

SPLIT_SEED = 16
TEST_FRACTION = 0.25


@dataclass(frozen=True)
class DocbinPage:
    """One real page.

    Attributes:
        name: file stem, e.g. ``"DIBCO2017_H03"``.
        collection: the prefix, e.g. ``"DIBCO2017"``.
        image: (H, W) uint8 gray scan, 255 = white.
        ink: (H, W) bool ground truth, True = ink.
    """

    name: str
    collection: str
    image: np.ndarray
    ink: np.ndarray


def collection_of(name: str) -> str:
    """The collection a page name belongs to (its prefix before the first ``_``)."""
    return name.split("_", 1)[0]


def page_names(root: str | Path) -> list[str]:
    """Sorted stems of the pages that have both a scan and a ground truth.

    Raises:
        FileNotFoundError: the folder lacks ``images/`` or ``gt/``.
    """
    root = Path(root)
    for sub in ("images", "gt"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub}: missing (expected the docbin layout)")
    return sorted(
        p.stem for p in (root / "images").glob("*.png") if (root / "gt" / p.name).is_file()
    )


def split_pages(names: list[str]) -> dict[str, list[str]]:
    """Split page names into ``train``, ``val`` and ``test`` by page within each collection.

    Args:
        names: page stems (any order).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each sorted. A pure function of the
        names: adding a collection does not move the pages of another.
    """
    by_coll: dict[str, list[str]] = {}
    for n in sorted(names):
        by_coll.setdefault(collection_of(n), []).append(n)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for coll, members in sorted(by_coll.items()):
        seed = [SPLIT_SEED, *coll.encode()]
        order = [members[i] for i in np.random.default_rng(seed).permutation(len(members))]
        n_test = max(1, int(len(members) * TEST_FRACTION + 0.5))
        out["test"] += order[:n_test]
        out["val"] += order[n_test : n_test + 1]
        out["train"] += order[n_test + 1 :]
    return {k: sorted(v) for k, v in out.items()}


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def load_pages(root: str | Path, names: list[str] | None = None) -> list[DocbinPage]:
    """Read pages (all, or the given names) with their ground truth.

    Raises:
        FileNotFoundError: a folder or a page is missing.
        ValueError: a scan and its ground truth differ in size.
    """
    root = Path(root)
    pages = []
    for name in page_names(root) if names is None else names:
        image = _read(root / "images" / f"{name}.png")
        gt = _read(root / "gt" / f"{name}.png")
        if image.shape != gt.shape:
            raise ValueError(f"{name}: scan {image.shape} and ground truth {gt.shape} differ")
        pages.append(DocbinPage(name, collection_of(name), image, gt < 128))
    return pages


def f_measure(pred_ink: np.ndarray, true_ink: np.ndarray) -> float:
    """DIBCO F-measure (a fraction in [0, 1]) of a predicted ink mask against the true one."""
    tp = float(np.logical_and(pred_ink, true_ink).sum())
    fp = float(np.logical_and(pred_ink, ~true_ink).sum())
    fn = float(np.logical_and(~pred_ink, true_ink).sum())
    if tp == 0:
        return 0.0
    p, r = tp / (tp + fp), tp / (tp + fn)
    return 2 * p * r / (p + r)


def otsu_ink(img: np.ndarray) -> np.ndarray:
    """Ink mask (True = dark) of a float page in [0, 1] by Otsu's global threshold."""
    from skimage.filters import threshold_otsu

    if float(img.max() - img.min()) < 1e-6:
        return np.zeros(img.shape, bool) if img.mean() > 0.5 else np.ones(img.shape, bool)
    return img <= threshold_otsu(img)
