"""Fit and test the scan stage's photograph check (``aepipe.clean_page.is_photograph``).

The network cleans pages; a photograph filed among them has no paper and comes out with its
mid-tones whitened. The check is a logistic model over six background measures
(:func:`aepipe.clean_page.page_features`). This script fits it on the train and validation
splits only, picks the threshold there (the lowest of a few that flags no train/val
document), prints the constants that ``aepipe.clean_page`` holds and says whether they match,
then reports once on the test splits (DDD test groups, docbin test pages, photos/test), which
no choice looked at.

Documents: DDD noisy pages (train + val groups of the scan denoiser's split: 8 held out, the
last 4 of them the test), docbin pages (its train/val/test split), 60 generated degraded pages
with display type and photos on them (seeds 10000-10059, 620 x 800 px at 150 DPI, photos from
the first 60 of photos/train). Photographs: photos/train + photos/val (fit), photos/test.

Run::

    .venv/bin/python benchmarks/page_kind.py --data ../shared/data \
        --out benchmarks/results/page_kind.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

THRESHOLDS = (0.9, 0.95, 0.97, 0.99, 0.995)


def _photo_gray(path: Path) -> np.ndarray:
    """(H, W) luma in [0, 1] of a photo file, as the scan stage computes it."""
    from aepipe.io import read_image

    return read_image(path).gray().images[0, 0].numpy()


def collect(data: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features, labels (1 = photograph) and kinds of one split ("fit" = train + val, "test")."""
    from PIL import Image

    from aepipe.clean_page import page_features
    from aepipe.data import ddd, docbin
    from aepipe.data.synthetic_pages import make_pair

    train, val, test = ddd.split_three(ddd.load_pairs(data / "ddd"), 8, 4)
    names = docbin.split_pages(docbin.page_names(data / "docbin"))
    photos = {s: sorted((data / "photos" / s).glob("*.jpg")) for s in ("train", "val", "test")}
    pages: list[tuple[str, np.ndarray]] = []
    if split == "fit":
        pages += [("ddd", p.dirty / 255.0) for p in train + val]
        chosen = names["train"] + names["val"]
        pages += [
            (p.collection, p.image / 255.0) for p in docbin.load_pages(data / "docbin", chosen)
        ]
        inset = [np.asarray(Image.open(f).convert("L")) for f in photos["train"][:60]]
        for s in range(60):
            dirty, _ = make_pair(
                10_000 + s, 800, 620, dpi=150, display=True, photos=inset, photo_prob=0.8
            )
            pages.append(("generated", dirty / 255.0))
        shots = photos["train"] + photos["val"]
    else:
        pages += [("ddd", p.dirty / 255.0) for p in test]
        pages += [
            (p.collection, p.image / 255.0)
            for p in docbin.load_pages(data / "docbin", names["test"])
        ]
        shots = photos["test"]
    feats = [page_features(g) for _, g in pages] + [page_features(_photo_gray(f)) for f in shots]
    labels = [0] * len(pages) + [1] * len(shots)
    return np.array(feats), np.array(labels), [k for k, _ in pages] + ["photo"] * len(shots)


def fit(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray | float]:
    """Class-balanced logistic regression on standardised features (plain gradient descent)."""
    mean, std = x.mean(0), x.std(0)
    z = (x - mean) / std
    w, b = np.zeros(z.shape[1]), 0.0
    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    for _ in range(5000):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = (p - y) * weight
        w -= 0.1 * (z.T @ g / len(y) + 1e-3 * w)
        b -= 0.1 * g.mean()
    # Rounded as aepipe.clean_page stores them.
    return {
        "mean": np.round(mean, 5),
        "std": np.round(std, 5),
        "weights": np.round(w, 2),
        "bias": round(float(b), 2),
    }


def scores(model: dict, x: np.ndarray) -> np.ndarray:
    z = (x - model["mean"]) / model["std"]
    return 1 / (1 + np.exp(-(z @ model["weights"] + model["bias"])))


def table(p: np.ndarray, y: np.ndarray, kinds: list[str], threshold: float) -> list[str]:
    kinds_a = np.array(kinds)
    rows = ["| pages | n | flagged as photographs | highest score |", "|---|---:|---:|---:|"]
    for kind in sorted(set(kinds), key=lambda k: (k == "photo", k)):
        m = kinds_a == kind
        rows.append(f"| {kind} | {m.sum()} | {(p[m] > threshold).sum()} | {p[m].max():.3f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/page_kind.md"))
    args = ap.parse_args()

    from aepipe import clean_page as cp

    x, y, kinds = collect(args.data, "fit")
    model = fit(x, y)
    p = scores(model, x)
    threshold = next(t for t in THRESHOLDS if (p[y == 0] > t).sum() == 0)
    stored = {
        "mean": np.array(cp._PHOTO_MEAN),
        "std": np.array(cp._PHOTO_STD),
        "weights": np.array(cp._PHOTO_WEIGHTS),
        "bias": cp._PHOTO_BIAS,
    }
    match = all(np.allclose(model[k], stored[k], atol=1e-9) for k in model)
    match = match and threshold == cp.PHOTO_THRESHOLD
    xt, yt, kt = collect(args.data, "test")
    pt = scores(stored, xt)
    lines = [
        "# Scan stage: the photograph check",
        "",
        "Command: `.venv/bin/python benchmarks/page_kind.py --data ../shared/data`",
        "",
        "A page the check flags is kept as it is (not cleaned); `--clean-all` cleans it anyway.",
        f"Features: {', '.join(cp.PHOTO_FEATURES)} (`aepipe.clean_page.page_features`).",
        "",
        "Fitted on train + val: mean "
        f"{model['mean'].tolist()}, std {model['std'].tolist()}, weights "
        f"{model['weights'].tolist()}, bias {model['bias']}; threshold {threshold} (the lowest of "
        f"{list(THRESHOLDS)} that flags no train/val document).",
        f"Constants in `aepipe.clean_page` match this fit: {'yes' if match else 'NO'}.",
        "",
        "## Train + val (the fit)",
        "",
        *table(p, y, kinds, threshold),
        "",
        "## Test splits (no choice looked at them)",
        "",
        "Read once, after the features, the fit and the threshold were fixed.",
        "",
        *table(pt, yt, kt, cp.PHOTO_THRESHOLD),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
