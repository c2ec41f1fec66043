"""MNIST VAE likelihood benchmark: test NLL by importance sampling on binarised MNIST.

Run::

    .venv/bin/python benchmarks/mnist_nll.py --data ../shared/data/mnist --k 1000 --n-test 1000

The test images are binarised once with a fixed seed (dynamic binarisation, sampled once), and
``-log p(x)`` is estimated with ``k`` importance samples from the posterior (Burda et al.
2016); the estimate is an upper bound on the true NLL. Only ``--n-test`` test images are scored
when CPU time is short; the table gives the mean and its standard error over those images.
Literature anchors are quoted, not measured here.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ANCHORS = [
    ("VAE, MLP, 50-d (Burda et al. 2016, k=5000)", 86.76),
    ("IWAE k=50, MLP (Burda et al. 2016)", 84.78),
    ("conv VAE (issue 5 anchor)", 81.0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/mnist")
    ap.add_argument("--models", default="mnist-vae,mnist-vae-2d")
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mnist_nll.md")
    ap.add_argument("--update-weights", action="store_true")
    args = ap.parse_args()

    import torch

    from aepipe.data.idx import load_mnist_like
    from aepipe.stage import load_stage
    from aepipe.weights import resolve, update_metrics

    torch.set_num_threads(args.threads)
    images, _ = load_mnist_like(args.data, "test")
    images = images[: args.n_test]
    gen = torch.Generator().manual_seed(args.seed)
    x_all = torch.bernoulli(torch.from_numpy(images).float().div(255.0).unsqueeze(1), generator=gen)

    rows = []
    for name in [m for m in args.models.split(",") if m]:
        model = load_stage(name).model
        torch.manual_seed(args.seed)
        t0 = time.time()
        nlls, elbos = [], []
        with torch.no_grad():
            for i in range(0, len(x_all), args.batch):
                x = x_all[i : i + args.batch]
                nlls.append(model.iw_nll(x, k=args.k))
                elbos.append(model.elbo(x))
                done = i + len(x)
                if done % 200 == 0 or done == len(x_all):
                    print(
                        f"{name}: {done}/{len(x_all)} nll {torch.cat(nlls).mean():.2f} "
                        f"({time.time() - t0:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
        nll = torch.cat(nlls).double()
        elbo = torch.cat(elbos).double()
        row = {
            "model": name,
            "latent_dim": model.latent_dim,
            "nll": nll.mean().item(),
            "nll_se": (nll.std() / math.sqrt(len(nll))).item(),
            "neg_elbo": (-elbo).mean().item(),
            "k": args.k,
            "n_test": len(nll),
            "seconds": time.time() - t0,
        }
        rows.append(row)
        if args.update_weights:
            update_metrics(
                resolve(name),
                {
                    f"test_iw_nll_k{args.k}_nats": row["nll"],
                    "test_iw_nll_se": row["nll_se"],
                    "test_iw_nll_n_images": row["n_test"],
                    "test_neg_elbo_nats": row["neg_elbo"],
                },
            )

    lines = [
        "# MNIST VAE likelihood benchmark",
        "",
        f"Binarised MNIST test images (first {rows[0]['n_test'] if rows else 0}, binarised once "
        f"with seed {args.seed}); NLL by importance sampling with k = {args.k}. Lower is better.",
        "",
        "| model | latent | NLL (nats) | -ELBO (nats) | images | wall time |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} (ours) | {r['latent_dim']} | {r['nll']:.2f} +- {r['nll_se']:.2f} | "
            f"{r['neg_elbo']:.2f} | {r['n_test']} | {r['seconds']:.0f} s |"
        )
    lines += ["", "Literature anchors (quoted, not measured here; full 10k test set):", ""]
    lines += [f"- {name}: {value:.2f}" for name, value in ANCHORS]
    lines += [
        "",
        "Target: <= 84 nats.",
        "",
        f"Command: `.venv/bin/python benchmarks/mnist_nll.py {' '.join(sys.argv[1:])}`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.update_weights:
        from faces import add_card_section

        for r in rows:
            add_card_section(resolve(r["model"]) / "MODEL_CARD.md", "Benchmark (test split)", text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(
        json.dumps({"rows": rows, "anchors": ANCHORS}, indent=2) + "\n"
    )
    _ = np


if __name__ == "__main__":
    main()
