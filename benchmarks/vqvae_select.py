"""Choose face-vqvae's sampling defaults (temperatures, top-k, top-p) on VALIDATION faces only.

Run::

    .venv/bin/python benchmarks/vqvae_select.py --model runs/face-vqvae16 --n 500 --write

Each setting samples ``--n`` faces (seed 0) and scores their FID against the validation faces of
the train split (the person-disjoint tail the VQ-VAE and its prior were selected on; Inception
features of ``benchmarks/faces.py``, cached). With ``--write`` the setting of the lowest FID
becomes the stage default in the weights' ``config.json`` (with the sweep under
``metrics.val_sampling_sweep``). ``benchmarks/vqvae_compare.py`` then reports the test FID of
that default once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def val_faces(model_dir: Path, data: Path) -> np.ndarray:
    """uint8 (N, S, S) validation faces of the split the model was trained with."""
    from aepipe.train.face_vqvae import TrainConfig, load_split

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    fraction = config.get("training", {}).get("vqvae", {}).get("val_fraction", 0.05)
    _train, val, _cut = load_split(TrainConfig(data=data, val_fraction=fraction))
    return np.round(val.numpy()[:, 0] * 255.0).astype(np.uint8)  # the trainer's own split


def main() -> None:
    """Sweep the settings, print the table, optionally store the best one."""
    from aepipe.stage import StagePrecision, resolved_precision

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="face-vqvae")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/faces/lfw_64.npz")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperatures", default="0.8,0.9,1.0")
    ap.add_argument("--top-ks", default="0,64")
    ap.add_argument(
        "--lead-codes", default="0", help="comma list: first codes drawn at --lead-temperature"
    )
    ap.add_argument("--lead-temperature", type=float, default=1.0)
    ap.add_argument("--top-ps", default="1.0", help="nucleus sizes (1.0: off)")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=get_args(StagePrecision),
        help="the stage's precision (auto: as users get it on this CPU)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=ROOT / "runs/fid-cache")
    ap.add_argument("--write", action="store_true", help="store the best setting as default")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/vqvae_select.md", help="report"
    )
    args = ap.parse_args()

    import torch
    from faces import features, fid

    from aepipe.stages.face_vqvae import FaceVQVAE
    from aepipe.weights import resolve

    torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    folder = Path(resolve(args.model))
    ref = features(val_faces(folder, args.data), args.cache, log=log)
    sweep = []
    options = [
        dict(
            top_k=int(k),
            top_p=float(p),
            lead_codes=int(lead),
            lead_temperature=args.lead_temperature,
        )
        for lead in args.lead_codes.split(",")
        for k in args.top_ks.split(",")
        for p in args.top_ps.split(",")
    ]
    for option in options:
        stage = FaceVQVAE.from_pretrained(folder, precision=args.precision, **option)
        for temp in (float(t) for t in args.temperatures.split(",")):
            batches = stage.sample(args.n, seed=args.seed, temperature=temp)
            imgs = np.concatenate([b.to_numpy(np.uint8)[..., 0] for b in batches])
            score = fid(features(imgs, args.cache, log=log), ref)
            sweep.append({"temperature": temp, **option, "val_fid": round(score, 2)})
            log(f"T={temp} {option}: val FID {score:.1f}")
    best = min(sweep, key=lambda r: r["val_fid"])
    leads = any(r["lead_codes"] for r in sweep)
    lead_head = f" first codes at T {args.lead_temperature:g} |" if leads else ""
    lines = [
        f"| temperature |{lead_head} top-k | top-p | FID, {args.n} samples vs {len(ref)} "
        "val faces |",
        "| ---: |" + " ---: |" * (4 if leads else 3),
    ]
    for r in sweep:
        lead = f" {r['lead_codes']} |" if leads else ""
        lines.append(
            f"| {r['temperature']:g} |{lead} {r['top_k']} | {r['top_p']:g} | {r['val_fid']:.1f} |"
        )
    print("\n".join(lines))
    written = " was written as the stage default" if args.write else " is the best (not written)"
    head = [
        f"# face-vqvae sampling settings chosen on validation faces (`{args.model}`)",
        "",
        f"Lowest FID against the {len(ref)} validation faces of the train split ({args.n} "
        f"samples each, seed {args.seed}, precision {args.precision}: "
        f"{resolved_precision(args.precision, 'cpu')} on this CPU); "
        "the test faces are not read. "
        f"T = {best['temperature']:g}, first {best['lead_codes']} codes at T "
        f"{best['lead_temperature']:g}, top-k {best['top_k']}, top-p {best['top_p']:g}{written}.",
        "",
    ]
    command = "python benchmarks/vqvae_select.py " + " ".join(sys.argv[1:])
    text = "\n".join([*head, *lines, "", f"Command: `{command}`", ""])
    args.out.write_text(text, encoding="utf-8")
    if args.write:
        path = folder / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        keys = ("temperature", "lead_codes", "lead_temperature", "top_k", "top_p")
        chosen = {k: best[k] for k in keys}
        config["stage_config"].update(chosen)
        config.setdefault("metrics", {})["val_sampling_sweep"] = {
            "rule": "lowest FID against the validation faces",
            "sweep": sweep,
            "chosen": chosen,
            "precision": args.precision,
            "command": "python benchmarks/vqvae_select.py " + " ".join(sys.argv[1:]),
        }
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        log(f"chose {chosen}; wrote {path}")


if __name__ == "__main__":
    main()
