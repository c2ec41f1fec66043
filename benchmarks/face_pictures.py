"""The face-VAE pictures of docs/RESULTS.md, made with the commands the page quotes.

Run::

    .venv/bin/python benchmarks/face_pictures.py

- ``benchmarks/results/face-vae-samples-seed0.png``: ``gen-faces --n 64 --seed 0`` (its grid);
- ``benchmarks/results/face-vae-colorized-seed0.png``: ``gen-faces --n 16 --seed 0 --colorize``;
- ``benchmarks/results/face-vae-traverse.png``: ``aepipe faces traverse``.

Each picture is the shipped weights' output at their defaults (unsharp mask included), so it
goes stale whenever face-vae, its sampler settings or the colorizer change: rerun this then.
The console scripts of this interpreter's environment run in a temporary folder, one thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks/results"
BIN = Path(sys.executable).parent

PICTURES = {
    "face-vae-samples-seed0.png": (["gen-faces", "--n", "64", "--seed", "0"], "faces/grid.png"),
    "face-vae-colorized-seed0.png": (
        ["gen-faces", "--n", "16", "--seed", "0", "--colorize"],
        "faces/grid.png",
    ),
    "face-vae-traverse.png": (["aepipe", "faces", "traverse"], "traversal.png"),
}
"""Picture -> (command, the file it writes, relative to the folder it runs in)."""


def main() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, (command, made) in PICTURES.items():
        with tempfile.TemporaryDirectory() as tmp:
            quiet = ["--quiet"] if command[0] == "gen-faces" else []  # no progress bar
            subprocess.run(
                [str(BIN / command[0]), *command[1:], *quiet], cwd=tmp, env=env, check=True
            )
            shutil.copyfile(Path(tmp) / made, RESULTS / name)
        print(f"{' '.join(command)} -> benchmarks/results/{name}")


if __name__ == "__main__":
    main()
