"""Chaining stages: :class:`Pipeline`, :func:`apply` for plain Python inputs, and TOML pipeline files.

A pipeline is a source (a folder of files, or the face generator), stages, and a sink (a folder).
Batches stream through one at a time, so memory stays bounded whatever the input count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.batch import ImageBatch
from pipeline.errors import ConfigError
from pipeline.stage import Stage, build_config, format_validation_error, load_stage, stage_class

BatchFn = Callable[[ImageBatch], ImageBatch]


class Pipeline:
    """Stages applied in order to each batch.

    Example:
        >>> from pipeline import Pipeline
        >>> pipe = Pipeline([load_stage("face-vae")])  # doctest: +SKIP
        >>> out = pipe(batch)  # doctest: +SKIP
    """

    def __init__(self, stages: Sequence[BatchFn]) -> None:
        if not stages:
            raise ConfigError("a pipeline needs at least one stage")
        self.stages = list(stages)

    def __call__(self, batch: ImageBatch) -> ImageBatch:
        """Run every stage on one batch."""
        for stage in self.stages:
            batch = stage(batch)
        return batch

    def map(self, items: Iterable[Any], batch_size: int = 16) -> Iterator[Any]:
        """Process an iterable lazily; each result comes back in the kind it went in.

        Args:
            items: ImageBatch objects, or single images (numpy arrays, PIL images, tensors,
                file paths). Consecutive single images of one size are batched together.
            batch_size: how many single images to group into one stage call.

        Yields:
            One result per item, in order.
        """
        group: list[Any] = []
        for item in items:
            if isinstance(item, ImageBatch):
                yield from (apply(self, x) for x in group)
                group.clear()
                yield self(item)
                continue
            group.append(item)
            if len(group) >= batch_size:
                yield from _apply_group(self, group)
                group.clear()
        if group:
            yield from _apply_group(self, group)


def _apply_group(fn: BatchFn, items: list[Any]) -> Iterator[Any]:
    kinds = {_kind(x) for x in items}
    shapes = {np.asarray(x).shape if _kind(x) == "numpy" else None for x in items}
    if kinds == {"numpy"} and len(shapes) == 1 and len(next(iter(shapes))) in (2, 3):
        out = fn(ImageBatch.from_numpy(list(items)))
        arrays = _from_batch(out, items[0], "numpy")
        yield from (arrays[i] for i in range(len(items)))
    else:
        yield from (apply(fn, x) for x in items)


def _kind(x: Any) -> str:
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return "tensor"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if isinstance(x, np.ndarray):
        return "numpy"
    if isinstance(x, (str, os.PathLike)):
        return "path"
    if type(x).__module__.startswith("PIL"):
        return "pil"
    return type(x).__name__


def apply(fn: BatchFn, x: Any) -> Any:
    """Run a stage (or pipeline) on a numpy array, PIL image, tensor, path or ImageBatch.

    The result comes back in the same kind: an (H, W[, C]) or (N, H, W, C) array of the input's
    dtype (uint8 stays uint8, float stays float in [0, 1]); a PIL image (or list); an (N, C, H, W)
    or (C, H, W) float tensor; for a path, an :class:`ImageBatch` of its pages.

    Example:
        >>> import numpy as np
        >>> from pipeline import apply, load_stage
        >>> clean = apply(load_stage("salt-pepper"), np.zeros((28, 28), np.uint8))  # doctest: +SKIP
    """
    kind = _kind(x)
    if isinstance(x, ImageBatch):
        return fn(x)
    if kind == "numpy":
        return _from_batch(fn(ImageBatch.from_numpy(x)), x, "numpy")
    if kind == "pil":
        return fn(ImageBatch.from_pil(x)).to_pil()[0]
    if kind == "tensor":
        single = x.ndim == 3
        t = x[None] if single else x
        out = fn(ImageBatch(t.detach().float().cpu())).images
        return out[0] if single else out
    if kind == "path":
        from pipeline.io import page_batch, read_pages

        results = [fn(page_batch(p)) for p in read_pages(x)]
        return results[0] if len(results) == 1 else results
    if isinstance(x, (list, tuple)):
        return [apply(fn, item) for item in x]
    raise TypeError(f"cannot apply a stage to {type(x).__name__}")


def _from_batch(out: ImageBatch, like: Any, kind: str) -> np.ndarray:
    arr = np.asarray(like)
    dtype = arr.dtype if arr.dtype in (np.uint8, np.uint16) else np.float32
    result = out.to_numpy(dtype)
    if arr.ndim == 2 and result.shape[-1] == 1:
        return result[0, ..., 0]
    if arr.ndim in (2, 3):
        return result[0]
    return result


# ---- pipeline files ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FolderSource(_Strict):
    """Read image/PDF files."""

    type: Literal["folder"]
    inputs: list[str] = Field(min_length=1)
    recursive: bool = False
    dpi: int = Field(300, ge=36, le=1200)
    max_pixels: int = Field(120_000_000, ge=1)


class FacesSource(_Strict):
    """Sample faces from the face VAE."""

    type: Literal["faces"]
    n: int = Field(64, ge=1, le=100_000)
    seed: int = Field(0, ge=0)
    temperature: float = Field(1.0, gt=0, le=3)
    weights: str = "face-vae"
    batch_size: int = Field(64, ge=1, le=4096)


class StageSpec(_Strict):
    """One stage: its weights and config overrides."""

    weights: str
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    config: dict[str, Any] = Field(default_factory=dict)


class FolderSink(_Strict):
    """Write results under a folder."""

    type: Literal["folder"] = "folder"
    out: str
    format: Literal["same", "png", "tiff", "pdf"] = "same"
    overwrite: bool = False
    grid: str | None = None
    report: str | None = None
    batch_size: int = Field(4, ge=1, le=4096)


class PipelineSpec(_Strict):
    """A whole pipeline file."""

    source: Annotated[FolderSource | FacesSource, Field(discriminator="type")]
    stages: list[StageSpec] = Field(default_factory=list)
    sink: FolderSink


def read_pipeline_file(path: str | os.PathLike[str]) -> PipelineSpec:
    """Parse and validate a TOML pipeline file (no weights are loaded).

    Stage config overrides are checked against each stage's config class here too, so a typo
    fails before any work with a message naming the field.

    Raises:
        ConfigError: naming the file and the field.
    """
    import tomllib

    from pipeline.weights import read_config, resolve

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        spec = PipelineSpec(**data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, str(path), sep=": ", drop=("folder", "faces"))
        ) from None
    for i, st in enumerate(spec.stages):
        try:
            stage_name = read_config(resolve(st.weights))["stage"]
        except Exception as exc:  # noqa: BLE001 - any weights problem is a config error here
            raise ConfigError(f"{path}: stages.{i}.weights: {exc}") from None
        build_config(stage_class(stage_name).Config, st.config, f"{path}: stages.{i}.config")
    return spec


def build_stages(spec: PipelineSpec) -> list[Stage]:
    """Load every stage of a validated spec."""
    return [load_stage(st.weights, device=st.device, **st.config) for st in spec.stages]


def faces_source(spec: FacesSource) -> Iterator[ImageBatch]:
    """Batches of sampled faces for a ``faces`` source."""
    from pipeline.stages.face_generator import FaceGenerator

    gen = FaceGenerator.from_pretrained(spec.weights)
    yield from gen.sample(spec.n, seed=spec.seed, temperature=spec.temperature, batch_size=spec.batch_size)


def write_batches(
    batches: Iterable[ImageBatch], out: Path, grid: Path | None = None, overwrite: bool = False
) -> list[Path]:
    """Write generated batches as PNG files named after the batch names, plus an optional grid."""
    from pipeline.io import make_grid, write_image

    written: list[Path] = []
    grid_tiles: list[np.ndarray] = []
    for batch in batches:
        arrays = batch.to_numpy(np.uint8)
        for name, pixels in zip(batch.names, arrays, strict=True):
            target = out / f"{name}.png"
            if overwrite or not target.exists():
                write_image(pixels, target)
            written.append(target)
        if grid is not None:
            grid_tiles.extend(a if a.shape[-1] == 3 else np.repeat(a, 3, -1) for a in arrays)
    if grid is not None and grid_tiles:
        write_image(make_grid(np.stack(grid_tiles)), grid)
    return written
