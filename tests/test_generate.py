"""One generation request through every front end gives the same pixels.

The shipped ``face-vae`` stores a default sampling temperature of 1.2; each front end must use it
when the request names none (a bug once made HTTP, TOML and Ray sample at 1.0).
"""

from __future__ import annotations

from pathlib import Path

import frontends
import numpy as np
import pytest

from aepipe.batch import ImageBatch
from aepipe.core import generate, generate_batch, load_generator
from aepipe.errors import ConfigError, WeightsError
from aepipe.stage import Generator, load_stage, stage_class

N, SEED = 4, 3


@pytest.fixture(scope="module")
def expected() -> tuple[list[str], np.ndarray]:
    """The library's answer at the weights' default temperature: names, (N, 64, 64, 1) uint8."""
    stage = load_stage("face-vae")
    assert stage.config.temperature == 1.2  # the shipped default the front ends must keep
    names, pixels = frontends.library("face-vae", N, SEED)
    assert names == [f"face_{i:05d}" for i in range(N)]
    hotter = ImageBatch.concat(list(stage.sample(N, seed=SEED, temperature=1.0)))
    assert not np.array_equal(pixels, hotter.to_numpy(np.uint8))
    return names, pixels


def test_core_generate_equals_library(expected: tuple[list[str], np.ndarray]) -> None:
    gen = load_generator("face-vae")
    assert isinstance(gen, Generator)
    np.testing.assert_array_equal(generate_batch(gen, N, seed=SEED).to_numpy(np.uint8), expected[1])
    small = ImageBatch.concat(list(generate(gen, N, seed=SEED, batch_size=3)))
    np.testing.assert_array_equal(small.to_numpy(np.uint8), expected[1])
    # Zero images: nothing to yield (the fitted mixture sampler once failed on it); a batch of
    # none is refused with a typed error.
    assert list(generate(gen, 0, seed=SEED)) == []
    with pytest.raises(ConfigError, match="n >= 1"):
        generate_batch(gen, 0)


def test_cli_toml_http_and_ray_equal_library(
    expected: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    pytest.importorskip("ray", reason="needs the [ray] extra")
    frontends.assert_every_front_end_matches("face-vae", "faces", N, SEED, tmp_path, expected)


def test_a_stage_that_cannot_generate_is_refused(tmp_path: Path) -> None:
    folder = stage_class("impulse-denoiser").tiny(seed=0).save_pretrained(tmp_path / "d")
    with pytest.raises(WeightsError, match="cannot generate"):
        load_generator(folder)
    # Also with sampling overrides (gen-faces passes batch_size): the kind is checked first.
    with pytest.raises(WeightsError, match="cannot generate"):
        load_generator(folder, batch_size=2)


def test_every_front_end_takes_the_generator_configs_temperature_range(tmp_path: Path) -> None:
    """One range for every front end, the stage config's (0 to 3): gen-faces took 0 but TOML
    and HTTP refused it; 3.5 is refused everywhere before anything is written."""
    from aepipe.stages.face_generator import FaceGenerator

    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    stage = load_stage(weights)
    want = ImageBatch.concat(list(stage.sample(2, seed=1, temperature=0))).to_numpy(np.uint8)
    names = ["face_00000", "face_00001"]

    def run(args: list[str]) -> tuple[int, str]:
        from typer.testing import CliRunner

        from aepipe.cli.main import app, load_areas

        load_areas()
        res = CliRunner().invoke(app, args)
        return res.exit_code, res.output

    def toml(temperature: float, out: Path) -> tuple[int, str]:
        spec = tmp_path / f"{out.name}.toml"
        spec.write_text(
            f'[source]\ntype = "faces"\nn = 2\nseed = 1\ntemperature = {temperature}\n'
            f'weights = "{weights.as_posix()}"\n\n'
            f'[sink]\ntype = "folder"\nout = "{out.as_posix()}"\n'
        )
        return run(["run", str(spec), "-q"])

    gen = ["gen-faces", "-n", "2", "--seed", "1", "--model", str(weights), "--no-grid", "-q"]
    assert run([*gen, "--temperature", "0", "--out", str(tmp_path / "c0")])[0] == 0
    np.testing.assert_array_equal(frontends.read_pngs(tmp_path / "c0", names), want)
    assert toml(0, tmp_path / "t0")[0] == 0
    np.testing.assert_array_equal(frontends.read_pngs(tmp_path / "t0", names), want)
    for code, output in (
        run([*gen, "--temperature", "3.5", "--out", str(tmp_path / "c1")]),
        toml(3.5, tmp_path / "t1"),
    ):
        assert code == 2 and "temperature 3.5: Input should be less than or equal to 3" in output, (
            output
        )
    assert not (tmp_path / "c1").exists() and not (tmp_path / "t1").exists()
    with pytest.raises(ConfigError, match="temperature"):
        generate(stage, 2, temperature=-0.5)  # at the call, not when the first batch is drawn

    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    from fastapi.testclient import TestClient

    from aepipe.serve import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(models={"faces": str(weights)}))) as client:
        query = {"n": 2, "seed": 1, "format": "zip"}
        assert client.get("/v1/faces", params={**query, "temperature": 0}).status_code == 200
        bad = client.get("/v1/faces", params={**query, "temperature": 3.5})
        assert bad.status_code == 422 and "temperature" in bad.text


def test_seeds_out_of_range_are_refused_by_every_front_end(tmp_path: Path) -> None:
    """gen-faces once died with a traceback (torch's overflow) where HTTP answered 422."""
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas
    from aepipe.core import SEED_MAX
    from aepipe.stages.face_generator import FaceGenerator

    stage = FaceGenerator.tiny(seed=0)
    assert len(next(iter(generate(stage, 1, seed=SEED_MAX)))) == 1
    for seed in (SEED_MAX + 1, -1):
        with pytest.raises(ConfigError, match="seed must be a whole number from 0 to 2"):
            generate(stage, 1, seed=seed)
    load_areas()
    weights = stage.save_pretrained(tmp_path / "w")
    out = tmp_path / "faces"
    args = ["gen-faces", "--seed", "99999999999999999999999", "--model", str(weights), "-o"]
    res = CliRunner().invoke(app, [*args, str(out)])
    assert res.exit_code == 2 and "seed must be" in res.output, res.output
    assert not out.exists()


@pytest.mark.parametrize("name", ["face-generator", "face-vqvae"])
def test_a_batch_size_below_one_is_refused_not_replaced_or_empty(name: str) -> None:
    generator = stage_class(name).tiny(seed=0)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="batch_size"):
            generate(generator, 3, batch_size=bad)
        with pytest.raises(ConfigError, match="batch_size"):
            next(iter(generator.sample(3, batch_size=bad)))
    assert sum(len(b) for b in generate(generator, 3, batch_size=2)) == 3


def test_one_batch_of_more_images_than_a_generator_call_takes() -> None:
    """GET /v1/faces answers with one batch; n beyond the config's batch_size (8192) works."""
    generator = stage_class("face-generator").tiny(seed=0)
    assert len(generate_batch(generator, 9000)) == 9000
