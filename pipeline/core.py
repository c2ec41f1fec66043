"""The job core that every front end (CLI, TOML pipelines, Ray, HTTP) calls.

Front ends parse their inputs, call a function here and map the outcome (an exit code, an HTTP
status from the error class). Nothing that decides what a result looks like lives in a front end.

Generation: :func:`generate` asks any :class:`~pipeline.stage.Generator` for
``sample(n, seed=..., temperature=None)`` (``None``: the weights' default) and passes each batch
through the following stages, so ``gen-faces``, a TOML ``faces`` source, Ray's
:class:`~pipeline.ray.FaceBlockMapper` and ``GET /v1/faces`` give the same pixels for one request.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.errors import WeightsError

if TYPE_CHECKING:
    from pipeline.batch import ImageBatch
    from pipeline.stage import Generator, Stage


def as_generator(stage: Stage, where: str | os.PathLike[str]) -> Generator:
    """Return ``stage`` if it follows the generator protocol.

    Raises:
        WeightsError: the weights at ``where`` are for a stage that cannot sample.
    """
    from pipeline.stage import Generator

    if not isinstance(stage, Generator):
        raise WeightsError(f"{where}: weights are for stage {stage.name!r}, which cannot generate")
    return stage


def load_generator(
    name_or_path: str | os.PathLike[str], device: str = "cpu", **overrides: Any
) -> Generator:
    """Load any generator stage from a weights folder (shipped name or path).

    Raises:
        WeightsError: the weights are missing, broken, or for a stage that cannot generate.
        ConfigError: an override is unknown or out of range.
    """
    from pipeline.stage import load_stage

    return as_generator(load_stage(name_or_path, device=device, **overrides), name_or_path)


def generate(
    generator: Generator,
    n: int,
    *,
    seed: int = 0,
    temperature: float | None = None,
    batch_size: int | None = None,
    stages: Sequence[Stage] = (),
    **options: Any,
) -> Iterator[ImageBatch]:
    """Sample ``n`` images and run each batch through ``stages`` (e.g. a colorizer).

    Args:
        generator: any stage following the generator protocol.
        n: number of images.
        seed: the same seed gives the same images on any device and with any batch size.
        temperature: ``None`` keeps the weights' default (face-vae: 1.2).
        batch_size: images per batch; ``None``: the generator config's.
        stages: stages applied to every batch, in order.
        **options: generator-specific extras passed to ``sample`` (e.g. ``concepts``).

    Yields:
        Batches named ``face_00000`` ... (the generator's names) on the CPU.
    """
    for batch in generator.sample(
        n, seed=seed, temperature=temperature, batch_size=batch_size, **options
    ):
        for stage in stages:
            batch = stage(batch)
        yield batch


def generate_batch(generator: Generator, n: int, **kwargs: Any) -> ImageBatch:
    """:func:`generate` as one batch (for requests that answer with all images at once)."""
    from pipeline.batch import ImageBatch

    batches = list(generate(generator, n, batch_size=n, **kwargs))
    return ImageBatch.concat(batches) if len(batches) > 1 else batches[0]
