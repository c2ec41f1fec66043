"""How much of a scan denoiser's DDD error a small per-pixel correction could remove.

Fits, by least squares on the DDD training pages (every ``--train-every``-th page the model was
trained on), a correction ``c - y`` of the model's output ``y`` as a function of the output, its
unclamped logit and the input ``x`` at each pixel (plus, for ``--radius`` > 0, the
``(2r+1) x (2r+1)`` neighbourhoods of ``x`` and ``y``), applied only where ``y`` is strictly
between 0 and 1. Reports the DDD validation RMSE before and after each correction, and what the
correction fitted on DDD does to the fixed synthetic validation pages of training. No network
is trained: this is the probe that motivated ``ScanUNet(refine=...)``.

Run::

    .venv/bin/python benchmarks/scan_edge_probe.py --ddd ../shared/data/ddd \
        --model runs/exp/h6-margin02-syn06
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np


def _shifts(a: np.ndarray, r: int) -> list[np.ndarray]:
    p = np.pad(a, r, mode="edge")
    h, w = a.shape
    return [
        p[r + dy : r + dy + h, r + dx : r + dx + w]
        for dy in range(-r, r + 1)
        for dx in range(-r, r + 1)
    ]


def features(z: np.ndarray, x: np.ndarray, radius: int) -> np.ndarray:
    """(H*W, F) design matrix from the logit ``z`` and input ``x`` (both (H, W) float64)."""
    y = np.clip(z, 0.0, 1.0)
    cols = [np.ones_like(z), z, x, z * z, x * x, z * x, y, y * x, y * y]
    if radius:
        cols += _shifts(x, radius) + _shifts(y, radius)
    return np.stack([c.ravel() for c in cols], axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ddd", type=Path, default=Path("../shared/data/ddd"))
    ap.add_argument("--model", default="scan-denoiser", help="weights name or folder")
    ap.add_argument("--train-every", type=int, default=2, help="training pages used for the fit")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from aepipe.batch import ImageBatch
    from aepipe.data.ddd import load_pairs
    from aepipe.train.scan_denoiser import synthetic_val_pages
    from aepipe.weights import load_model

    torch.set_num_threads(args.threads)
    model, config = load_model(args.model)
    if getattr(model, "output", None) != "clamp":
        raise SystemExit(f"{args.model}: the probe needs a ScanUNet with output='clamp'")
    held = set(config["training"]["data"]["ddd_val_names"])
    pairs = load_pairs(args.ddd)

    def run(pages: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
        out = []
        with torch.inference_mode():
            for dirty, clean in pages:
                x = ImageBatch.from_numpy(dirty).images
                z = model.unclamped(x)[0, 0].numpy().astype(np.float64)
                out.append((z, dirty / 255.0, clean / 255.0))
        return out

    train = run([(p.dirty, p.clean) for p in pairs if p.name not in held][:: args.train_every])
    val = run([(p.dirty, p.clean) for p in pairs if p.name in held])
    synth = run(synthetic_val_pages())

    def rmse(pages, w: np.ndarray | None, radius: int) -> float:
        se = n = 0.0
        for z, x, c in pages:
            y = np.clip(z, 0.0, 1.0)
            if w is not None:
                inside = (y > 0) & (y < 1)
                fixed = np.clip(y + (features(z, x, radius) @ w).reshape(z.shape), 0.0, 1.0)
                y = np.where(inside, fixed, y)
            se += float(((y - c) ** 2).sum())
            n += c.size
        return math.sqrt(se / n)

    print(f"model: {args.model}; fit on {len(train)} DDD training pages, {len(val)} held out")
    print("| correction | DDD-val RMSE | synthetic-val RMSE |")
    print("|---|---:|---:|")
    print(f"| none | {rmse(val, None, 0):.4f} | {rmse(synth, None, 0):.4f} |")
    for radius, name in ((0, "per pixel"), (1, "3x3 neighbourhood"), (2, "5x5 neighbourhood")):
        gram, rhs = 0.0, 0.0
        for z, x, c in train:
            y = np.clip(z, 0.0, 1.0)
            inside = ((y > 0) & (y < 1)).ravel()
            f = features(z, x, radius)[inside]
            gram = gram + f.T @ f
            rhs = rhs + f.T @ (c.ravel() - y.ravel())[inside]
        w = np.linalg.solve(gram + 1e-3 * np.eye(len(gram)), rhs)
        print(f"| {name} | {rmse(val, w, radius):.4f} | {rmse(synth, w, radius):.4f} |")


if __name__ == "__main__":
    main()
