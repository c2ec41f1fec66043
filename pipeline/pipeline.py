"""Chaining stages: :class:`Pipeline`, :func:`apply` for plain Python inputs, TOML pipeline files.

A pipeline is a source (a folder of files, or the face generator), stages, and a sink (a folder).
Batches stream through one at a time, so memory stays bounded whatever the input count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aepipe.batch import ImageBatch, as_float01
from aepipe.defaults import DEFAULT_BATCH_PIXELS, SEED_MAX
from aepipe.errors import ConfigError, ShapeError
from aepipe.faces_align import FaceChoice, OneFace
from aepipe.stage import build_config, format_validation_error, load_stage, stage_class

BatchFn = Callable[[ImageBatch], ImageBatch]


class Pipeline:
    """Stages applied in order to each batch.

    A pipeline holds no state of its own, so one instance may be shared by several threads
    (see :func:`apply` for what that means for the stages).

    Example:
        >>> from aepipe import Pipeline, load_stage
        >>> pipe = Pipeline([load_stage("scan-denoiser")])  # doctest: +SKIP
        >>> out = pipe(batch)  # doctest: +SKIP
    """

    def __init__(self, stages: Sequence[BatchFn]) -> None:
        if not stages:
            raise ConfigError("a pipeline needs at least one stage")
        for i, stage in enumerate(stages):
            if not callable(stage):
                hint = " (load weights with aepipe.load_stage)" if isinstance(stage, str) else ""
                raise ConfigError(
                    f"stage {i} is a {type(stage).__name__}, not a batch -> batch callable{hint}"
                )
        self.stages = list(stages)

    def __call__(self, batch: Any) -> Any:
        """Run every stage on one batch.

        Args:
            batch: an :class:`ImageBatch`; anything else (numpy array, PIL image, tensor, path)
                goes through :func:`apply` and comes back in its own kind.
        """
        if not isinstance(batch, ImageBatch):
            return apply(self, batch)
        for stage in self.stages:
            batch = stage(batch)
        return batch

    def map(
        self,
        items: Iterable[Any],
        batch_size: int = 16,
        batch_pixels: int = DEFAULT_BATCH_PIXELS,
    ) -> Iterator[Any]:
        """Process an iterable lazily; each result comes back in the kind it went in.

        Only one group of at most ``batch_size`` images is held at a time, so memory stays flat
        however long ``items`` is (a generator is consumed as results are taken).

        Args:
            items: ImageBatch objects, or single images (numpy arrays, PIL images, tensors,
                file paths). Consecutive single images of one kind, size and dtype are batched
                together; 4-D arrays and tensors are taken as ready-made batches.
            batch_size: at most how many single images go into one stage call.
            batch_pixels: and at most this many pixels (one image always goes).

        Yields:
            One result per item, in order.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {batch_size}")
        group: list[Any] = []
        key: tuple[Any, ...] | None = None
        for item in items:
            k = _group_key(item)
            full = len(group) >= batch_size or (len(group) + 1) * _pixels(item) > batch_pixels
            if group and (k is None or k != key or full):
                yield from _apply_group(self, group)
                group = []
            if k is None:
                yield apply(self, item)
            else:
                group.append(item)
                key = k
        if group:
            yield from _apply_group(self, group)


def _pixels(x: Any) -> int:
    """Pixels of one single image (numpy HW/HWC, tensor CHW, PIL); 0 for anything else."""
    kind = _kind(x)
    if kind == "numpy" and x.ndim in (2, 3):
        return int(x.shape[0] * x.shape[1])
    if kind == "tensor" and x.ndim == 3:
        return int(x.shape[-2] * x.shape[-1])
    if kind == "pil":
        return int(x.size[0] * x.size[1])
    return 0


def _group_key(x: Any) -> tuple[Any, ...] | None:
    """What single images must share to go into one batch; ``None`` for non-batchable items."""
    kind = _kind(x)
    if kind == "numpy" and x.ndim in (2, 3):
        return ("numpy", x.shape, x.dtype.str)
    if kind == "tensor" and x.ndim == 3:
        return ("tensor", tuple(x.shape), str(x.dtype), str(x.device))
    if kind == "pil":
        return ("pil", x.size, x.mode)
    return None


def _apply_group(fn: BatchFn, items: list[Any]) -> Iterator[Any]:
    """Run same-keyed single images as one batch and split the result again."""
    if len(items) == 1:
        yield apply(fn, items[0])
        return
    kind = _kind(items[0])
    if kind == "numpy":
        out = fn(ImageBatch.from_numpy(list(items)))
        yield from _numpy_out(out, items[0], single=False)
    elif kind == "pil":
        yield from fn(ImageBatch.from_pil(list(items))).to_pil()
    else:
        import torch

        out = _tensor_out(fn(ImageBatch(_tensor_in(torch.stack(items)))).images, items[0])
        yield from out.unbind(0)


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

    The result comes back in the same kind:

    - numpy: (H, W), (H, W, C) or (N, H, W, C) in, the same layout out (a gray result of a
      2-D input stays 2-D; a stage that adds colour adds the C axis). ``uint8`` and ``uint16``
      stay as they are; any float comes back ``float32`` in [0, 1].
    - PIL image: a PIL image (mode ``L`` or ``RGB``).
    - tensor: (C, H, W) or (N, C, H, W) in, the same layout, dtype and device out. Float
      tensors must hold values in [0, 1]; ``uint8`` tensors are read as 0..255.
    - path (``str`` or ``Path``): every page of the file is read and processed; an
      :class:`ImageBatch` for a one-page file, or a list of them, one per page.
    - list or tuple: a list with one result per item.

    Stages run under ``torch.inference_mode`` and keep no per-call state, so one loaded stage
    may be called from several threads at once.

    Example:
        >>> import numpy as np
        >>> from aepipe import apply, load_stage
        >>> stage = load_stage("salt-pepper")  # doctest: +SKIP
        >>> clean = apply(stage, np.zeros((28, 28), np.uint8))  # doctest: +SKIP
    """
    kind = _kind(x)
    if isinstance(x, ImageBatch):
        return fn(x)
    if kind == "numpy":
        return next(_numpy_out(fn(ImageBatch.from_numpy(x)), x, single=x.ndim in (2, 3)))
    if kind == "pil":
        return fn(ImageBatch.from_pil(x)).to_pil()[0]
    if kind == "tensor":
        single = x.ndim == 3
        out = fn(ImageBatch(_tensor_in(x[None] if single else x))).images
        out = _tensor_out(out, x)
        return out[0] if single else out
    if kind == "path":
        from aepipe.io import page_batch, read_pages

        results = [fn(page_batch(p)) for p in read_pages(x)]
        return results[0] if len(results) == 1 else results
    if isinstance(x, (list, tuple)):
        return [apply(fn, item) for item in x]
    raise TypeError(
        f"cannot apply a stage to {type(x).__name__}; pass a numpy array, PIL image, "
        "torch tensor, file path or ImageBatch"
    )


def _numpy_out(out: ImageBatch, like: np.ndarray, single: bool) -> Iterator[np.ndarray]:
    """Yield the result as one array shaped like ``like`` (``single``) or one per item."""
    dtype = like.dtype if like.dtype in (np.uint8, np.uint16) else np.float32
    result = out.to_numpy(dtype)
    if like.ndim == 2 and result.shape[-1] == 1:
        result = result[..., 0]
    if single:
        yield result[0]
    elif like.ndim == 4:
        yield result
    else:
        yield from result


def _tensor_in(t: Any) -> Any:
    """A tensor as float32 in [0, 1] on the CPU (``uint8`` is scaled from 0..255)."""
    import torch

    t = t.detach()
    if t.dtype == torch.uint8:
        return t.cpu().float() / 255.0
    if not t.is_floating_point():
        raise ShapeError(f"tensor images must be float in [0, 1] or uint8; got {t.dtype}")
    # The arrays' own conversion: the same [0, 1] and finiteness check, on a view (no copy).
    return torch.from_numpy(as_float01(t.cpu().float().numpy()))


def _tensor_out(out: Any, like: Any) -> Any:
    """Bring a result tensor back to the dtype and device of the input tensor ``like``."""
    import torch

    if like.dtype == torch.uint8:
        return (out * 255.0).round().to(torch.uint8).to(like.device)
    return out.to(device=like.device, dtype=like.dtype)


# ---- pipeline files ------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FolderSource(_Strict):
    """Read image/PDF files."""

    type: Literal["folder"]
    inputs: list[str] = Field(min_length=1)
    recursive: bool = False
    dpi: int | None = Field(None, ge=36, le=1200)  # None: each scan at its own resolution
    max_pixels: int = Field(120_000_000, ge=1)


class FacesSource(_Strict):
    """Sample faces from the face VAE."""

    type: Literal["faces"]
    n: int = Field(64, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # Its range is the generator config's, checked by aepipe.core.generate for every front end.
    temperature: float | None = None
    weights: str = "face-vae"
    batch_size: int = Field(64, ge=1, le=4096)


class InterpolateSource(_Strict):
    """The latent walk between the faces of two photos, as ``aepipe faces interpolate``."""

    type: Literal["interpolate"]
    a: str
    b: str
    steps: int = Field(8, ge=2, le=256)
    method: Literal["linear", "slerp", "both"] = "linear"
    face: OneFace = "largest"
    align: Literal["auto", "photo", "crop"] = "auto"
    weights: str = "face-vae"


class FacePhotos(_Strict):
    """Run a face VAE on whole photos: find, align, edit (or reconstruct) and paste back.

    The step is the core's :class:`~aepipe.core.FaceEditor`, as ``aepipe faces edit``.
    """

    concepts: list[str] = Field(
        default_factory=list, max_length=16, description="NAME:STRENGTH; none reconstructs."
    )
    # Your concept files, searched before the shipped ones: the CLI's --concepts-dir default.
    concepts_dir: Path = Path("concepts")
    face: FaceChoice = "all"
    align: Literal["auto", "photo", "crop"] = "auto"
    no_face: Literal["fail", "keep"] = "fail"


class StageSpec(_Strict):
    """One stage: its weights and config overrides (``faces``: face-VAE weights on photos).

    ``weights = "auto"`` lets a stage that chooses among its shipped weights per image do so
    (``colorizer``: the face or the photo model, as ``colorize --model auto``); it needs
    ``stage``, which is otherwise optional and, when given, must match the weights.
    """

    weights: str
    stage: str | None = None
    # As the CLI and the service: the GPU when there is one.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    config: dict[str, Any] = Field(default_factory=dict)
    faces: FacePhotos | None = None


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

    source: Annotated[FolderSource | FacesSource | InterpolateSource, Field(discriminator="type")]
    stages: list[StageSpec] = Field(default_factory=list)
    sink: FolderSink


def read_pipeline_file(path: str | os.PathLike[str]) -> PipelineSpec:
    """Parse and validate a TOML pipeline file (no weights are loaded).

    Stage config overrides are checked against each stage's config class here too, so a typo
    fails before any work with a message naming the field.

    Raises:
        ConfigError: naming the file and the field.
        WeightsError: naming the file and the stage whose weights are missing or unreadable.
    """
    import tomllib

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
            format_validation_error(
                exc, str(path), sep=": ", drop=("folder", "faces", "interpolate")
            )
        ) from None
    _check_sink_fits_source(spec, str(path))
    if spec.sink.grid is not None:
        from aepipe.io import check_image_target

        check_image_target(spec.sink.grid, f"{path}: sink.grid")
    for i, st in enumerate(spec.stages):
        check_stage_spec(st, f"{path}: stages.{i}")
    return spec


# Sink keys that only one kind of source uses; given with another, they would be ignored.
_FOLDER_SINK_KEYS = ("format", "report", "batch_size")
_GENERATED_SINK_KEYS = ("grid",)


def _check_sink_fits_source(spec: PipelineSpec, where: str) -> None:
    """Refuse sink keys the source's kind would silently ignore.

    Raises:
        ConfigError: naming the key and what it is for.
    """
    folder = isinstance(spec.source, FolderSource)
    unused = _GENERATED_SINK_KEYS if folder else _FOLDER_SINK_KEYS
    for key in unused:
        if key in spec.sink.model_fields_set:
            what = "faces and interpolate sources" if folder else "folder sources"
            raise ConfigError(f"{where}: sink.{key}: only for {what}; remove it")


def check_stage_spec(spec: StageSpec, where: str) -> None:
    """Check a stage table without loading its weights: config fields, ``faces`` concepts.

    Raises:
        ConfigError: naming ``where`` and the field.
    """
    stage_name = _spec_stage_name(spec, where)
    build_config(stage_class(stage_name).Config, spec.config, f"{where}.config")
    if spec.faces is not None:
        if stage_name != "face-generator":
            raise ConfigError(
                f"{where}.faces: only for face VAE weights (face-generator); "
                f"{spec.weights!r} is a {stage_name!r} stage"
            )
        _concept_vectors(spec, where)


def _spec_stage_name(spec: StageSpec, where: str) -> str:
    """The stage a table runs: its ``stage`` for ``weights = "auto"``, else its weights'."""
    from aepipe.errors import WeightsError
    from aepipe.registry import AUTO, auto_class, auto_names, entry
    from aepipe.weights import read_config, resolve

    if spec.weights == AUTO:
        choosers = ", ".join(auto_names())
        if spec.stage is None:
            raise ConfigError(f"{where}.stage: weights 'auto' needs the stage ({choosers})")
        try:
            entry(spec.stage)
        except ConfigError as exc:
            raise ConfigError(f"{where}.stage: {exc}") from None
        if auto_class(spec.stage) is None:
            raise ConfigError(
                f"{where}.weights: {spec.stage!r} has no 'auto' weights choice (only {choosers}); "
                "name weights or a folder"
            )
        return spec.stage
    try:
        stage_name = read_config(resolve(spec.weights))["stage"]
    except WeightsError as exc:  # as `--model nope`: exit code 4, not a config error
        raise WeightsError(f"{where}.weights: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{where}.weights: {exc}") from None
    if spec.stage is not None and spec.stage != stage_name:
        raise ConfigError(
            f"{where}.stage: {spec.weights!r} is a {stage_name!r} stage, not {spec.stage!r}"
        )
    return stage_name


def _concept_vectors(spec: StageSpec, where: str) -> list[Any] | None:
    """The ``faces.concepts`` vectors (``None``: reconstruct), looked up as the CLI does."""
    from aepipe.core import face_concepts
    from aepipe.stages.face_generator import default_concept_dirs

    assert spec.faces is not None
    if not spec.faces.concepts:
        return None
    try:
        dirs = default_concept_dirs(spec.faces.concepts_dir, spec.weights)
        return face_concepts(spec.faces.concepts, dirs)
    except ConfigError as exc:
        raise ConfigError(f"{where}.faces.concepts: {exc}") from None


def load_step(spec: StageSpec, device: str | None = None, where: str = "stage") -> BatchFn:
    """Load one stage table: the stage itself, or the face editor around a face VAE.

    The one loader behind TOML files (:func:`build_stages`) and Ray (:mod:`aepipe.ray`); the
    table was checked before (:func:`check_stage_spec`, by :func:`read_pipeline_file` or Ray).

    Args:
        spec: the table.
        device: overrides ``spec.device`` (Ray picks the actor's device).
        where: names the table in error messages.
    """
    from aepipe.core import FaceEditor, load_face_vae
    from aepipe.registry import AUTO, auto_stage

    dev = device or spec.device
    if spec.weights == AUTO and spec.stage is not None:
        return auto_stage(spec.stage, dev, **spec.config)
    if spec.faces is None:
        return load_stage(spec.weights, device=dev, **spec.config)
    f = spec.faces
    stage = load_face_vae(spec.weights, device=dev, **spec.config)
    vectors = _concept_vectors(spec, where)
    return FaceEditor(stage, vectors, face=f.face, align=f.align, no_face=f.no_face)


def build_stages(spec: PipelineSpec) -> list[BatchFn]:
    """Load every stage of a validated spec."""
    return [load_step(st, where=f"stages.{i}") for i, st in enumerate(spec.stages)]


def faces_source(spec: FacesSource, stages: Sequence[BatchFn] = ()) -> Iterator[ImageBatch]:
    """Batches sampled by a ``faces`` source (any generator's weights), run through ``stages``."""
    from aepipe.core import generate, load_generator

    gen = load_generator(spec.weights)
    yield from generate(
        gen,
        spec.n,
        seed=spec.seed,
        temperature=spec.temperature,
        batch_size=spec.batch_size,
        stages=stages,
    )


def interpolate_source(
    spec: InterpolateSource, stages: Sequence[BatchFn] = ()
) -> Iterator[ImageBatch]:
    """One batch per path of an ``interpolate`` source, run through ``stages``.

    Frames are named ``linear_step_00`` ...; the walk is the core's
    :func:`~aepipe.core.interpolate_faces`; ``stages`` may colorize it, say.
    """
    from aepipe.core import (
        interpolate_faces,
        load_face_vae,
        named_by_method,
        read_photo,
        walk_methods,
    )

    vae = load_face_vae(spec.weights)
    methods = walk_methods(spec.method)
    a, b = read_photo(spec.a), read_photo(spec.b)
    rows = interpolate_faces(vae, a, b, spec.steps, methods, face=spec.face, align=spec.align)
    for row in named_by_method(rows, methods):
        for stage in stages:
            row = stage(row)
        yield row


class Written(NamedTuple):
    """What :func:`write_batches` did: files written, and files kept because they existed."""

    written: list[Path]
    skipped: list[Path]


def write_batches(
    batches: Iterable[ImageBatch],
    out: Path,
    grid: Path | None = None,
    overwrite: bool = False,
    ncols: int | None = None,
) -> Written:
    """Write generated batches as PNGs named after the batch names, plus an optional grid.

    Without ``overwrite`` an existing file (a face or the grid) is kept as it is: a re-run
    resumes, and never mixes a new grid with old faces.

    ``ncols``: the grid's columns (default: about square).
    """
    from aepipe.io import make_grid, write_image

    done = Written([], [])
    grid_tiles: list[np.ndarray] = []
    for batch in batches:
        arrays = batch.to_numpy(np.uint8)
        for name, pixels in zip(batch.names, arrays, strict=True):
            target = out / f"{name}.png"
            if overwrite or not target.exists():
                write_image(pixels, target)
                done.written.append(target)
            else:
                done.skipped.append(target)
        if grid is not None:
            grid_tiles.extend(a if a.shape[-1] == 3 else np.repeat(a, 3, -1) for a in arrays)
    if grid is not None and grid_tiles:
        if overwrite or not grid.exists():
            write_image(make_grid(np.stack(grid_tiles), ncols=ncols), grid)
            done.written.append(grid)
        else:
            done.skipped.append(grid)
    return done
