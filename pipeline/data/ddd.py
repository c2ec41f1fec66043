"""Reader for the Denoising Dirty Documents (DDD) pages, with a leak-free page-group split.

The folder layout is Kaggle's: ``train/N.png`` (noisy), ``train_cleaned/N.png`` (target) and
``test/N.png`` (noisy, no targets), all 8-bit gray. The 144 training pairs are only 36 distinct
pages, each under 4 noise backgrounds; the 4 versions share a byte-identical clean image. Pairs
are therefore grouped by a hash of the clean pixels, and a split keeps whole groups on one side:
otherwise a validation page's text has been seen in training and the score is a lie.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["DDDPair", "load_pairs", "load_test", "split_by_group", "split_three"]


@dataclass(frozen=True)
class DDDPair:
    """One training page.

    Attributes:
        name: the Kaggle id (file stem), e.g. ``"101"``.
        dirty: (H, W) uint8 noisy scan, 255 = white.
        clean: (H, W) uint8 cleaned target.
        group: hex digest of the clean pixels; the 4 noise versions of a page share it.
    """

    name: str
    dirty: np.ndarray
    clean: np.ndarray
    group: str


def _read_gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _sort_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), path.stem) if path.stem.isdigit() else (1 << 30, path.stem)


def load_pairs(root: str | Path) -> list[DDDPair]:
    """Read every ``train/N.png`` with its ``train_cleaned/N.png``.

    Args:
        root: the DDD folder (holding ``train/`` and ``train_cleaned/``).

    Returns:
        Pairs sorted by numeric id.

    Raises:
        FileNotFoundError: if a folder or a page's clean target is missing.
        ValueError: if a pair's two images differ in size.
    """
    root = Path(root)
    train, cleaned = root / "train", root / "train_cleaned"
    for folder in (train, cleaned):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (expected the DDD layout)")
    pairs = []
    for path in sorted(train.glob("*.png"), key=_sort_key):
        target = cleaned / path.name
        if not target.is_file():
            raise FileNotFoundError(f"{target}: clean target of {path} is missing")
        dirty, clean = _read_gray(path), _read_gray(target)
        if dirty.shape != clean.shape:
            raise ValueError(f"{path}: size {dirty.shape} differs from its target {clean.shape}")
        digest = hashlib.sha1(clean.tobytes() + str(clean.shape).encode()).hexdigest()[:16]
        pairs.append(DDDPair(path.stem, dirty, clean, digest))
    return pairs


def load_test(root: str | Path) -> list[tuple[str, np.ndarray]]:
    """Read the unlabelled ``test/N.png`` pages as ``(name, (H, W) uint8)``."""
    folder = Path(root) / "test"
    return [(p.stem, _read_gray(p)) for p in sorted(folder.glob("*.png"), key=_sort_key)]


def split_by_group(
    pairs: list[DDDPair], val_groups: int, seed: int = 0
) -> tuple[list[DDDPair], list[DDDPair]]:
    """Split pairs into (train, val) with all versions of a page on the same side.

    Args:
        pairs: from :func:`load_pairs`.
        val_groups: number of distinct pages (groups) held out; 0 holds out nothing.
        seed: the groups held out are a seeded draw from the sorted group ids, so the split
            does not depend on file order.

    Returns:
        ``(train, val)`` lists of pairs.
    """
    groups = sorted({p.group for p in pairs})
    if not 0 <= val_groups < len(groups) or (val_groups == 0 and not groups):
        raise ValueError(f"val_groups must be in [0, {len(groups) - 1}]; got {val_groups}")
    rng = np.random.default_rng(seed)
    held = {groups[i] for i in rng.permutation(len(groups))[:val_groups]}
    return [p for p in pairs if p.group not in held], [p for p in pairs if p.group in held]


def split_three(
    pairs: list[DDDPair], val_groups: int, test_groups: int, seed: int = 0
) -> tuple[list[DDDPair], list[DDDPair], list[DDDPair]]:
    """Split pairs into (train, val, test) by page group.

    The held-out groups are exactly those of ``split_by_group(pairs, val_groups, seed)``; the
    last ``test_groups`` of them (in the seeded draw's order) become the test split. So a net
    trained with the two-way split of the same seed and ``val_groups`` never saw a test page in
    training (it may have been chosen on them: say so where it is scored).

    Returns:
        ``(train, val, test)`` lists of pairs.
    """
    if not 0 <= test_groups < max(val_groups, 1):
        raise ValueError(f"test_groups must be in [0, val_groups - 1]; got {test_groups}")
    groups = sorted({p.group for p in pairs})
    train, _ = split_by_group(pairs, val_groups, seed)
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    test = set(order[val_groups - test_groups : val_groups])
    val = set(order[: val_groups - test_groups])
    return train, [p for p in pairs if p.group in val], [p for p in pairs if p.group in test]
