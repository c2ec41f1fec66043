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
