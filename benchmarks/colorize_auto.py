"""Which colorizer ``colorize --model auto`` picks: face crops vs photos of scenes.

Counts, per set, the images :func:`aepipe.stages.colorizer.auto_model` sends to the face
colorizer: LFW faces (the last 300 of the train split, and the 995 test faces) at their 64 px
and upscaled to 128 and 160 px (face crops cut from a scan), and the photos of
``photos/train`` + ``photos/val`` and ``photos/test``. The rule's face check (a face filling a
third of the short side) was set before the test rows were read.

Run::

    .venv/bin/python benchmarks/colorize_auto.py --data ../shared/data \
        --out benchmarks/results/colorize_auto.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _gray(rgb: np.ndarray):
    """(H, W) luma of an (H, W, 3) uint8 image, as AutoColorizer computes it."""
    from aepipe.batch import ImageBatch

    return ImageBatch.from_numpy(rgb).gray().images[0, 0]


def _faces_row(name: str, faces: np.ndarray, side: int) -> str:
    from PIL import Image

    from aepipe.stages.colorizer import FACE_MODEL, auto_model

    hits = 0
    for face in faces:
        img = (
            face
            if side == 64
            else np.asarray(Image.fromarray(face).resize((side, side), Image.BICUBIC))
        )
        hits += auto_model(side, side, _gray(img)) == FACE_MODEL
    return f"| {name} at {side} px | {len(faces)} | {hits} | face colorizer |"


def _photos_row(name: str, files: list[Path]) -> str:
    from PIL import Image

    from aepipe.stages.colorizer import FACE_MODEL, auto_model

    hits = 0
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        hits += auto_model(*rgb.shape[:2], _gray(rgb)) == FACE_MODEL
    return f"| {name} | {len(files)} | {hits} | photo colorizer |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/colorize_auto.md"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    lfw = np.load(args.data / "faces" / "lfw_64.npz")
    photos = {s: sorted((args.data / "photos" / s).glob("*.jpg")) for s in ("train", "val", "test")}
    rows = [
        "| images | n | sent to the face colorizer | right model |",
        "|---|---:|---:|---|",
        *(
            _faces_row("LFW train faces (last 300)", lfw["images"][-300:], s)
            for s in (64, 128, 160)
        ),
        _photos_row("photos train + val", photos["train"] + photos["val"]),
        *(_faces_row("LFW test faces", lfw["test_images"], s) for s in (64, 128, 160)),
        _photos_row("photos test", photos["test"]),
    ]
    text = "\n".join(
        [
            "# colorize --model auto: which colorizer it picks",
            "",
            "Command: `.venv/bin/python benchmarks/colorize_auto.py --data ../shared/data`",
            "",
            "Rule (`aepipe.stages.colorizer.auto_model`): an image longer than 160 px or not",
            "squarish goes to the photo colorizer; one of at most 96 px to the face colorizer;",
            "between, the face colorizer only when a face fills a third of its short side. The",
            "test rows were read after the rule was fixed on the train/val rows.",
            "",
            *rows,
            "",
        ]
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
