"""Regenerate sample_inputs/faces/: gray images for the colorizer and the face tools.

* ``astronaut*.png``: scikit-image's bundled astronaut photo (Eileen Collins, NASA, public
  domain) converted to BT.601 gray, whole (512 x 512) and cropped to the face (160 x 160);
  the colour face crop goes to ``faces_color_targets/`` for side-by-side pictures.
* ``vae_face_*.png``: four 64 x 64 faces sampled from the shipped ``face-vae`` (seed 0), so no
  photo from a dataset is copied into the repository.

Run: .venv/bin/python sample_inputs/make_face_samples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage import data

from aepipe.batch import ImageBatch, to_gray
from aepipe.io import write_image
from aepipe.stage import load_stage

HERE = Path(__file__).resolve().parent
OUT = HERE / "faces"
TARGETS = HERE / "faces_color_targets"
FACE_BOX = (slice(30, 190), slice(160, 320))  # rows, columns of the face in astronaut()


def _gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 gray of an (H, W, 3) uint8 picture, through the batch type's own conversion."""
    batch = ImageBatch.from_numpy(rgb)
    return ImageBatch(to_gray(batch.images)).to_numpy()[0]


def main() -> None:
    photo = data.astronaut()
    face = np.ascontiguousarray(photo[FACE_BOX])
    write_image(_gray(photo), OUT / "astronaut.png")
    write_image(_gray(face), OUT / "astronaut_face.png")
    write_image(face, TARGETS / "astronaut_face.png")
    generator = load_stage("face-vae")
    batch = next(generator.sample(4, seed=0))
    for name, pixels in zip(range(4), batch.to_numpy(), strict=True):
        write_image(pixels, OUT / f"vae_face_{name}.png")


if __name__ == "__main__":
    main()
