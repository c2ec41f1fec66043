"""CONTRIBUTING.md's recipe, followed once: a new generator from a model file, a stage file, a
training file and one registry entry (``tests/recipe_tiny``), with no front-end change.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import frontends
import numpy as np
import pytest

from aepipe import registry
from aepipe.stage import load_stage
from aepipe.weights import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

N, SEED, ROUTE = 5, 2, "tiny"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Recipe step 4: the one registry entry (a plug-in registers it; a built-in stage adds it
    # to pipeline/registry.py).
    registry.register(
        registry.Entry(
            name="tiny-generator",
            stage="recipe_tiny.stage:TinyGenerator",
            models={"TinyDecoder": "recipe_tiny.model:TinyDecoder"},
            route=ROUTE,
            route_kind="generate",
        )
    )
    from recipe_tiny.train import TrainConfig, train

    try:
        yield train(TrainConfig(steps=30, temperature=0.5), tmp_path_factory.mktemp("w") / "tiny")
    finally:
        registry.ENTRIES.pop("tiny-generator")


def test_training_writes_a_weights_folder_that_loads(weights: Path) -> None:
    assert {CONFIG_NAME, WEIGHTS_NAME, CARD_NAME} <= {p.name for p in weights.iterdir()}
    stage = load_stage(weights)
    assert stage.name == "tiny-generator" and stage.config.temperature == 0.5
    batch = next(stage.sample(4, seed=0))
    # Trained towards gray 0.7 from a random start: the mean moved there.
    assert abs(float(batch.images.mean()) - 0.7) < 0.1
    again = stage(batch)
    np.testing.assert_array_equal(again.images.numpy(), batch.images.numpy())


def test_every_front_end_samples_the_new_generator_alike(weights: Path, tmp_path: Path) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    pytest.importorskip("ray", reason="needs the [ray] extra")
    names, pixels = frontends.library(weights, N, SEED)
    assert pixels.shape == (N, 8, 8, 1)
    cooler = next(load_stage(weights).sample(N, seed=SEED, temperature=1.0))
    assert not np.array_equal(cooler.to_numpy(np.uint8), pixels)  # the stored 0.5 is used
    frontends.assert_every_front_end_matches(weights, ROUTE, N, SEED, tmp_path, (names, pixels))


def test_aepipe_serve_offers_the_new_route(weights: Path) -> None:
    from aepipe.cli.serve import _endpoint_models, _route_options
    from aepipe.serve import endpoint_stages

    endpoints = endpoint_stages()
    assert endpoints[ROUTE] == "tiny-generator"
    given = _route_options([f"{ROUTE}={weights}"], endpoints)
    models = _endpoint_models(given, endpoints, lambda key: None, lambda note: None)
    assert models[ROUTE] == str(weights)
