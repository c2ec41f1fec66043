"""Regenerate sample_inputs/salt-pepper/: scikit-image's bundled pictures with impulse noise.

Run: .venv/bin/python sample_inputs/make_noisy_samples.py
"""

from __future__ import annotations

from pathlib import Path

import imgaug.augmenters as iaa
import numpy as np
from skimage import data

from aepipe.io import write_image

OUT = Path(__file__).resolve().parent / "salt-pepper"
SAMPLES = {
    "camera_sp10": (data.camera, 0.10),
    "coins_sp20": (data.coins, 0.20),
    "text_sp05": (data.text, 0.05),
    "moon_sp30": (data.moon, 0.30),
}


def main() -> None:
    for i, (name, (load, density)) in enumerate(SAMPLES.items()):
        image = load()
        noisy = iaa.SaltAndPepper(density, seed=i).augment_image(image)
        write_image(np.asarray(noisy, np.uint8), OUT / f"{name}.png")
        write_image(image, OUT.parent / "salt-pepper_clean_targets" / f"{name}.png")


if __name__ == "__main__":
    main()
