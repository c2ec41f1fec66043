"""One contract, run over every registered stage with tiny seeded models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError, ShapeError, WeightsError
from aepipe.registry import ENTRIES
from aepipe.stage import Stage, build_config, load_stage, stage_class
from aepipe.weights import WEIGHTS_NAME

STAGES = sorted(ENTRIES)


@pytest.fixture(params=STAGES)
def stage(request: pytest.FixtureRequest) -> Stage:
    return stage_class(request.param).tiny(seed=0)


def make_batch(stage: Stage, n: int = 3, seed: int = 1) -> ImageBatch:
    gen = torch.Generator().manual_seed(seed)
    size = getattr(stage, "native_size", None) or (36, 44)
    h, w = size if isinstance(size, tuple) else (size, size)
    images = torch.rand(n, stage.input_channels[0], h, w, generator=gen)
    return ImageBatch(images, [f"im{i}" for i in range(n)], [{"k": i} for i in range(n)])


def test_output_shape_dtype_range(stage: Stage) -> None:
    batch = make_batch(stage)
    out = stage(batch)
    assert isinstance(out, ImageBatch)
    assert out.images.dtype == torch.float32
    assert out.images.ndim == 4 and len(out) == len(batch)
    assert out.channels in (1, 3)
    assert float(out.images.min()) >= 0.0 and float(out.images.max()) <= 1.0
    assert out.names == batch.names
    assert [m["k"] for m in out.meta] == [0, 1, 2]
    if not getattr(stage, "resizes", False):
        assert out.size == batch.size
    # An ordinary tensor, not an inference one: callers may edit it in place or train on it.
    assert not out.images.is_inference()
    out.images.mul_(0.5)


def test_save_load_round_trip(stage: Stage, tmp_path: Path) -> None:
    batch = make_batch(stage)
    folder = stage.save_pretrained(tmp_path / "w", training={"command": "test"})
    loaded = load_stage(folder)
    assert type(loaded) is type(stage)
    assert loaded.config == stage.config
    torch.testing.assert_close(loaded(batch).images, stage(batch).images, atol=1e-6, rtol=0)


def test_deterministic_for_seed(stage: Stage) -> None:
    batch = make_batch(stage)
    again = stage_class(stage.name).tiny(seed=0)
    torch.testing.assert_close(stage(batch).images, again(batch).images, atol=0, rtol=0)
    other = stage_class(stage.name).tiny(seed=1)
    assert not torch.equal(stage(batch).images, other(batch).images)


def test_batch_size_independent(stage: Stage) -> None:
    batch = make_batch(stage, n=4)
    whole = stage(batch).images
    parts = torch.cat([stage(b).images for b in batch.split(1)])
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=1e-4)


def test_wrong_input_types_and_shapes_are_clear(stage: Stage) -> None:
    with pytest.raises(ShapeError, match="ImageBatch"):
        stage(torch.rand(1, 1, 8, 8))  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="C = 1 or 3"):
        ImageBatch(torch.rand(1, 2, 8, 8))
    bad_c = 3 if 3 not in stage.input_channels else (1 if 1 not in stage.input_channels else None)
    if bad_c is not None:
        with pytest.raises(ShapeError, match="channel"):
            stage(ImageBatch(torch.rand(1, bad_c, 32, 32)))


def test_pixels_outside_0_1_are_refused_not_processed(stage: Stage) -> None:
    batch = make_batch(stage, n=1)
    for bad in (batch.images * 255, batch.images.clone().fill_(float("nan"))):
        with pytest.raises(ShapeError, match=r"finite values in \[0, 1\]"):
            stage(batch.replace(bad))


def test_config_rejects_unknown_keys_with_field_name(stage: Stage) -> None:
    with pytest.raises(ConfigError, match=r"\.no_such_option: unknown key"):
        build_config(stage.Config, {"no_such_option": 1}, stage.name)


def test_tampered_weights_do_not_load(stage: Stage, tmp_path: Path) -> None:
    folder = stage.save_pretrained(tmp_path / "w")
    weights = folder / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_stage(folder)
    weights.unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_stage(folder)
