"""Run one generation request through every front end and read back the pixels.

Used by the tests that check that the library, ``gen-faces``, a TOML ``faces`` source,
``GET /v1/<route>`` and Ray's block mapper give the same images for the same request.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner


def _gray(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image)
    return arr.reshape(*arr.shape[:2], 1)


def read_pngs(folder: Path, names: list[str]) -> np.ndarray:
    return np.stack([_gray(Image.open(folder / f"{n}.png")) for n in names])


def library(weights: str | Path, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Names and (N, H, W, 1) uint8 pixels from the generator's own ``sample``."""
    from aepipe.batch import ImageBatch
    from aepipe.stage import load_stage

    batch = ImageBatch.concat(list(load_stage(weights).sample(n, seed=seed)))
    return batch.names, batch.to_numpy(np.uint8)


def cli(weights: str | Path, n: int, seed: int, out: Path, names: list[str]) -> np.ndarray:
    from aepipe.cli.main import app, load_areas

    load_areas()
    args = ["gen-faces", "-n", str(n), "--seed", str(seed), "--out", str(out), "-q"]
    result = CliRunner().invoke(app, [*args, "--no-grid", "--model", str(weights)])
    assert result.exit_code == 0, result.output
    return read_pngs(out, names)


def toml(weights: str | Path, n: int, seed: int, tmp: Path, names: list[str]) -> np.ndarray:
    from aepipe.cli.main import app, load_areas

    load_areas()
    out, spec = tmp / "toml_out", tmp / "gen.toml"
    spec.write_text(
        f'[source]\ntype = "faces"\nn = {n}\nseed = {seed}\nbatch_size = 3\n'
        f'weights = "{Path(weights).as_posix() if Path(weights).exists() else weights}"\n\n'
        f'[sink]\ntype = "folder"\nout = "{out.as_posix()}"\n'
    )
    result = CliRunner().invoke(app, ["run", str(spec), "-q"])
    assert result.exit_code == 0, result.output
    return read_pngs(out, names)


def http(weights: str | Path, route: str, n: int, seed: int, names: list[str]) -> np.ndarray:
    from fastapi.testclient import TestClient

    from aepipe.serve import ServeSettings, create_app

    settings = ServeSettings(models={route: str(weights)}, device="cpu")
    with TestClient(create_app(settings)) as client:
        resp = client.get(f"/v1/{route}", params={"n": n, "seed": seed, "format": "zip"})
    assert resp.status_code == 200, resp.text
    zf = zipfile.ZipFile(io.BytesIO(resp.content))
    assert zf.namelist() == [f"{name}.png" for name in names]
    return np.stack([_gray(Image.open(zf.open(f"{name}.png"))) for name in names])


def ray_mapper(weights: str | Path, n: int, seed: int, names: list[str]) -> np.ndarray:
    """What a Ray actor computes for one block of ``n`` images with that block's seed."""
    from aepipe.ray import FaceBlockMapper

    mapper = FaceBlockMapper(str(weights), colorizer=None, device="cpu")
    out = mapper({"start": np.array([0]), "count": np.array([n]), "seed": np.array([seed])})
    assert list(out["name"]) == names
    return np.stack([a.reshape(*a.shape[:2], 1) for a in out["image"]])


def assert_every_front_end_matches(
    weights: str | Path, route: str, n: int, seed: int, tmp: Path, expected: tuple[list, np.ndarray]
) -> None:
    """CLI, TOML, HTTP and Ray give exactly the library's ``expected`` (names, pixels)."""
    names, pixels = expected
    got = {
        "cli": cli(weights, n, seed, tmp / "cli", names),
        "toml": toml(weights, n, seed, tmp, names),
        "http": http(weights, route, n, seed, names),
        "ray": ray_mapper(weights, n, seed, names),
    }
    for front_end, images in got.items():
        assert images.shape == pixels.shape, front_end
        np.testing.assert_array_equal(images, pixels, err_msg=front_end)
