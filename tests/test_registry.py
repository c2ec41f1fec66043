"""The registry's rules for a new entry: one owner per HTTP route, one class per model name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aepipe import registry
from aepipe.errors import ConfigError
from aepipe.registry import Entry

TEST_NAMES = ("x1", "x2", "x3", "x4")


@pytest.fixture(autouse=True)
def _forget_test_entries() -> Iterator[None]:
    before = dict(registry.ENTRIES)
    yield
    for name in TEST_NAMES:
        registry.ENTRIES.pop(name, None)
    assert before == registry.ENTRIES


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        # A new entry's route that is another stage's more_routes key.
        (
            Entry(name="x1", stage="a:B", route="faces/edit", route_kind="image"),
            "x1: HTTP route 'faces/edit' belongs to 'face-generator'",
        ),
        # A new entry's more_routes key that is another stage's route.
        (
            Entry(
                name="x2",
                stage="a:B",
                route="x2",
                route_kind="image",
                more_routes=(("denoise", "image"),),
            ),
            "x2: HTTP route 'denoise' belongs to 'impulse-denoiser'",
        ),
        # ... or another stage's more_routes key.
        (
            Entry(
                name="x3",
                stage="a:B",
                route="x3",
                route_kind="generate",
                more_routes=(("faces/reconstruct", "face-reconstruct"),),
            ),
            "x3: HTTP route 'faces/reconstruct' belongs to 'face-generator'",
        ),
        # One entry listing a key twice.
        (
            Entry(
                name="x4",
                stage="a:B",
                route="x4",
                route_kind="image",
                more_routes=(("x4", "image"),),
            ),
            "x4: HTTP route 'x4' is listed twice",
        ),
    ],
)
def test_register_refuses_a_route_another_stage_serves(entry: Entry, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.register(entry)
    assert entry.name not in registry.ENTRIES


def test_register_still_replaces_an_entry_by_its_own_name() -> None:
    # Re-registering a stage (a plug-in updating its entry) is not a clash with itself.
    faces = registry.ENTRIES["face-generator"]
    assert registry.register(faces) is faces and registry.ENTRIES["face-generator"] is faces


def test_register_refuses_a_model_name_another_stage_maps_elsewhere() -> None:
    # Weights record the bare class name: this entry would make load_model's lookup ambiguous.
    wrong = {"ImpulseDenoiser": "aepipe.models.invert:TinyInvert"}
    with pytest.raises(ConfigError, match="x1: model class 'ImpulseDenoiser' is already"):
        registry.register(Entry(name="x1", stage="a:B", models=wrong))
    assert "x1" not in registry.ENTRIES
    assert registry.model_class("ImpulseDenoiser").__module__ == "aepipe.models.impulse"


def test_register_accepts_a_model_name_shared_with_the_same_class() -> None:
    same = {"ImpulseDenoiser": "aepipe.models.impulse:ImpulseDenoiser"}
    registry.register(Entry(name="x2", stage="a:B", models=same))
    assert registry.model_class("ImpulseDenoiser").__name__ == "ImpulseDenoiser"
