"""One generation request through every front end gives the same pixels.

The shipped ``face-vae`` stores a default sampling temperature of 1.2; each front end must use it
when the request names none (a bug once made HTTP, TOML and Ray sample at 1.0).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.batch import ImageBatch
from pipeline.core import generate, generate_batch, load_generator
from pipeline.errors import WeightsError
from pipeline.stage import Generator, load_stage

N, SEED = 4, 3
NAMES = [f"face_{i:05d}" for i in range(N)]


@pytest.fixture(scope="module")
def expected() -> np.ndarray:
    """The library's answer: (N, 64, 64, 1) uint8 at the weights' default temperature."""
    stage = load_stage("face-vae")
    assert stage.config.temperature == 1.2  # the shipped default the front ends must keep
    batch = ImageBatch.concat(list(stage.sample(N, seed=SEED)))
    assert batch.names == NAMES
    hotter = ImageBatch.concat(list(stage.sample(N, seed=SEED, temperature=1.0)))
    assert not np.array_equal(batch.to_numpy(np.uint8), hotter.to_numpy(np.uint8))
    return batch.to_numpy(np.uint8)


def read_pngs(files: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(f)).reshape(64, 64, 1) for f in files])


def test_core_generate_equals_library(expected: np.ndarray) -> None:
    gen = load_generator("face-vae")
    assert isinstance(gen, Generator)
    one = generate_batch(gen, N, seed=SEED)
    np.testing.assert_array_equal(one.to_numpy(np.uint8), expected)
    small = ImageBatch.concat(list(generate(gen, N, seed=SEED, batch_size=3)))
    np.testing.assert_array_equal(small.to_numpy(np.uint8), expected)


def test_cli_gen_faces(expected: np.ndarray, tmp_path: Path) -> None:
    from pipeline.cli.main import app, load_areas

    load_areas()
    args = ["gen-faces", "-n", str(N), "--seed", str(SEED), "--out", str(tmp_path), "-q"]
    result = CliRunner().invoke(app, [*args, "--no-grid"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_pngs([tmp_path / f"{n}.png" for n in NAMES]), expected)


def test_toml_faces_source(expected: np.ndarray, tmp_path: Path) -> None:
    from pipeline.cli.main import app, load_areas

    load_areas()
    out = tmp_path / "out"
    toml = tmp_path / "faces.toml"
    toml.write_text(
        f'[source]\ntype = "faces"\nn = {N}\nseed = {SEED}\nbatch_size = 3\n\n'
        f'[sink]\ntype = "folder"\nout = "{out.as_posix()}"\n'
    )
    result = CliRunner().invoke(app, ["run", str(toml), "-q"])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_pngs([out / f"{n}.png" for n in NAMES]), expected)


def test_http_faces(expected: np.ndarray) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    from fastapi.testclient import TestClient

    from pipeline.serve import ServeSettings, create_app

    settings = ServeSettings(models={"faces": "face-vae"}, device="cpu")
    with TestClient(create_app(settings)) as client:
        resp = client.get("/v1/faces", params={"n": N, "seed": SEED, "format": "zip"})
    assert resp.status_code == 200, resp.text
    zf = zipfile.ZipFile(io.BytesIO(resp.content))
    assert zf.namelist() == [f"{n}.png" for n in NAMES]
    got = np.stack([np.asarray(Image.open(zf.open(f"{n}.png"))).reshape(64, 64, 1) for n in NAMES])
    np.testing.assert_array_equal(got, expected)


def test_ray_face_block_mapper(expected: np.ndarray) -> None:
    """The mapper Ray runs per block samples like the library with that block's seed."""
    pytest.importorskip("ray", reason="needs the [ray] extra")
    from pipeline.ray import FaceBlockMapper

    mapper = FaceBlockMapper("face-vae", colorizer=None, device="cpu")
    rows = {"start": np.array([0]), "count": np.array([N]), "seed": np.array([SEED])}
    out = mapper(rows)
    assert list(out["name"]) == NAMES
    np.testing.assert_array_equal(np.stack(list(out["image"])).reshape(N, 64, 64, 1), expected)


def test_a_stage_that_cannot_generate_is_refused(tmp_path: Path) -> None:
    from pipeline.stage import stage_class

    folder = stage_class("impulse-denoiser").tiny(seed=0).save_pretrained(tmp_path / "d")
    with pytest.raises(WeightsError, match="cannot generate"):
        load_generator(folder)
