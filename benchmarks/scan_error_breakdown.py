"""Where a scan denoiser's DDD error comes from: ink, stroke edges or background.

For the held-out DDD validation pages (the groups named in the model's config.json) and, to
tell under- from over-fitting, every ``--train-every``-th training page, this prints the
pooled RMSE, the share of the squared error on ink pixels (clean < 0.5), on the ring of
``--ring`` pixels around the ink and on the rest of the page, and the mean signed error on
ink pixels (output minus clean: positive means the output ink is lighter than the target).

Run::

    .venv/bin/python benchmarks/scan_error_breakdown.py --ddd ../shared/data/ddd \
        --model scan-denoiser
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np


def breakdown(model, pages, ring: int) -> dict[str, float]:
    """Error statistics of ``model`` over (dirty, clean) uint8 pages."""
    import torch
    from scipy.ndimage import binary_dilation

    se = {"ink": 0.0, "edge": 0.0, "background": 0.0}
    bias_sum, ink_count, count = 0.0, 0, 0
    with torch.inference_mode():
        for dirty, clean in pages:
            x = torch.from_numpy(dirty.astype(np.float32) / 255.0)[None, None]
            y = model(x).clamp(0, 1)[0, 0].numpy().astype(np.float64)
            c = clean.astype(np.float64) / 255.0
            err = y - c
            ink = c < 0.5
            near = binary_dilation(ink, iterations=ring)
            se["ink"] += float((err[ink] ** 2).sum())
            se["edge"] += float((err[near & ~ink] ** 2).sum())
            se["background"] += float((err[~near] ** 2).sum())
            bias_sum += float(err[ink].sum())
            ink_count += int(ink.sum())
            count += c.size
    total = sum(se.values())
    out = {"rmse": math.sqrt(total / count), "ink_bias": bias_sum / max(ink_count, 1)}
    out.update({f"share_{k}": v / total for k, v in se.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ddd", type=Path, default=Path("../shared/data/ddd"))
    ap.add_argument("--model", default="scan-denoiser", help="weights name or folder")
    ap.add_argument("--ring", type=int, default=2, help="width of the stroke-edge ring (px)")
    ap.add_argument("--train-every", type=int, default=7, help="training pages sampled")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from aepipe.data.ddd import load_pairs
    from aepipe.weights import load_model

    torch.set_num_threads(args.threads)
    model, config = load_model(args.model)
    held = set(config["training"]["data"]["ddd_val_names"])
    pairs = load_pairs(args.ddd)
    sets = {
        f"ddd-val ({len(held)} pages)": [(p.dirty, p.clean) for p in pairs if p.name in held],
        f"ddd-train (every {args.train_every}th page)": [
            (p.dirty, p.clean) for p in pairs if p.name not in held
        ][:: args.train_every],
    }
    print(f"model: {args.model}; ring {args.ring} px")
    print("| set | RMSE | ink share | edge share | background share | ink bias |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, pages in sets.items():
        r = breakdown(model, pages, args.ring)
        print(
            f"| {name} | {r['rmse']:.4f} | {r['share_ink']:.0%} | {r['share_edge']:.0%} | "
            f"{r['share_background']:.0%} | {r['ink_bias']:+.4f} |"
        )


if __name__ == "__main__":
    main()
