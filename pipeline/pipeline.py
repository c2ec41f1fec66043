"""Chaining stages: :class:`Pipeline`, :func:`apply` for plain Python inputs, TOML pipeline files.

A pipeline is a source (a folder of files, or the face generator), stages, and a sink (a folder).
Batches stream through one at a time, so memory stays bounded whatever the input count.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, NoReturn

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aepipe.batch import ImageBatch
from aepipe.defaults import DEFAULT_BATCH_PIXELS, SEED_MAX
from aepipe.errors import ConfigError
from aepipe.faces_align import FaceChoice, OneFace
from aepipe.stage import build_config, format_validation_error, load_stage, stage_class

if TYPE_CHECKING:
    from aepipe.runner import RunOptions
    from aepipe.stage import Generator, Stage, StageConfig

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
    from aepipe.core import delivered_pages

    kind = _kind(items[0])
    if kind == "numpy":
        source = ImageBatch.from_numpy(list(items))
    elif kind == "pil":
        source = ImageBatch.from_pil(list(items))
    else:
        import torch

        source = ImageBatch.from_tensor(torch.stack(items))
    # Each image as apply gives it: delivered alone (a kept colour page beside a gray one).
    for page in delivered_pages(fn(source), source):
        if kind == "numpy":
            yield page.to_numpy_like(items[0])[0]
        elif kind == "pil":
            yield page.to_pil()[0]
        else:
            yield _tensor_out(page.images, items[0])[0]


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

    The result comes back in the same kind, with the pixels the CLI, TOML runs, Ray and the
    service deliver for the same input (:func:`aepipe.core.delivered`): a page the stage kept
    as it was (a clean colour page, a photograph) comes back as it came, colour and all; the
    gray result of a black-and-white input is two-level (0 and 255 in ``uint8``), as the files
    are written. An :class:`ImageBatch` is the stage contract's own type: its result is the
    stage's, as it is.

    - numpy: (H, W), (H, W, C) or (N, H, W, C) in, the same layout out (a gray result of a
      2-D input stays 2-D; a stage that adds colour adds the C axis; a batch whose images
      come back with different channels comes back RGB). ``uint8`` and ``uint16`` stay as
      they are; any float comes back ``float32`` in [0, 1].
    - PIL image: a PIL image (mode ``L`` or ``RGB``).
    - tensor: (H, W), (C, H, W) or (N, C, H, W) with C in 1..4 in
      (:meth:`ImageBatch.from_tensor`), the same layout, dtype and device out. Float tensors
      must hold values in [0, 1]; ``uint8`` tensors are read as 0..255.
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
    from aepipe.core import delivered

    kind = _kind(x)
    if isinstance(x, ImageBatch):
        return fn(x)
    if kind == "numpy":
        source = ImageBatch.from_numpy(x)
        out = delivered(fn(source), source).to_numpy_like(x)
        return out[0] if x.ndim in (2, 3) else out
    if kind == "pil":
        source = ImageBatch.from_pil(x)
        return delivered(fn(source), source).to_pil()[0]
    if kind == "tensor":
        source = ImageBatch.from_tensor(x)
        out = _tensor_out(delivered(fn(source), source).images, x)
        return out if x.ndim == 4 else out[0]
    if kind == "path":
        from aepipe.io import page_batch, read_pages

        results = []
        for page in read_pages(x):
            source = page_batch(page)
            results.append(delivered(fn(source), source))
        return results[0] if len(results) == 1 else results
    if isinstance(x, (list, tuple)):
        return [apply(fn, item) for item in x]
    raise TypeError(
        f"cannot apply a stage to {type(x).__name__}; pass a numpy array, PIL image, "
        "torch tensor, file path or ImageBatch"
    )


def _tensor_out(out: Any, like: Any) -> Any:
    """A result (N, C, H, W) in the dtype and device of the input tensor ``like``.

    A gray result of a 2-D (H, W) ``like`` comes back (N, H, W), as a 2-D array's does.
    """
    import torch

    if like.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
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
    frames: Literal["first", "all"] = "first"
    clean_born_digital: bool = False
    list_ignored: bool = False


class FacesSource(_Strict):
    """Sample faces from a generator, as ``gen-faces``."""

    type: Literal["faces"]
    n: int = Field(64, ge=1, le=100_000)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    # The ranges of temperature and sharpen are the generator config's, checked up front
    # (check_faces_source) as aepipe.core.generate checks them for every front end.
    temperature: float | None = None
    weights: str = "face-vae"
    batch_size: int = Field(64, ge=1, le=4096)
    prior: bool = False
    sharpen: float | None = None
    concepts: list[str] = Field(default_factory=list, max_length=16)
    concepts_dir: Path = Path("concepts")

    def generator_overrides(self) -> dict[str, Any]:
        """The generator config overrides ``prior`` and ``sharpen`` set, as gen-faces sets them."""
        overrides: dict[str, Any] = {"sampler": "prior"} if self.prior else {}
        if self.sharpen is not None:
            overrides["sharpen"] = self.sharpen
        return overrides


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
    jpeg_quality: int | None = Field(None, ge=1, le=95)


class PipelineSpec(_Strict):
    """A whole pipeline file."""

    source: Annotated[FolderSource | FacesSource | InterpolateSource, Field(discriminator="type")]
    stages: list[StageSpec] = Field(default_factory=list)
    sink: FolderSink


# The table a location of a validation error lies in (its integer indexes dropped), for the
# list of keys that table has.
_TABLES: dict[tuple[str, ...], tuple[str, type[BaseModel]]] = {
    (): ("a pipeline file", PipelineSpec),
    ("source", "folder"): ("a folder source", FolderSource),
    ("source", "faces"): ("a faces source", FacesSource),
    ("source", "interpolate"): ("an interpolate source", InterpolateSource),
    ("stages",): ("a [[stages]] table", StageSpec),
    ("stages", "faces"): ("a stage's faces table", FacePhotos),
    ("sink",): ("the sink", FolderSink),
}
_UNKNOWN_KEY = "unknown key (check the spelling; see the stage's documented options)"


def read_pipeline_file(path: str | os.PathLike[str], *, stages_only: bool = False) -> PipelineSpec:
    """Parse and validate a TOML pipeline file (no weights are loaded).

    Everything a run would refuse is refused here, naming the file and the key: stage config
    overrides (checked against each stage's config class), the source's generator and its
    sampling options, the output folder and grid. With ``stages_only`` (the Ray adapter, which
    runs the ``[[stages]]`` alone on workers that may not see the driver's paths) only the
    stage tables are checked beyond parsing.

    Raises:
        ConfigError: naming the file and the field.
        WeightsError: naming the file and the stage or source whose weights are missing,
            unreadable or of the wrong kind (the exit code of the CLI's ``--model``).
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
        raise ConfigError(_spec_error(exc, str(path))) from None
    if stages_only:
        for i, st in enumerate(spec.stages):
            check_stage_spec(st, f"{path}: stages.{i}")
    else:
        check_pipeline_spec(spec, str(path))
    return spec


def _spec_error(exc: ValidationError, where: str) -> str:
    """The validation error as lines naming the file and the key.

    An unknown key's line lists the keys its table has (the stage-options hint of
    :func:`~aepipe.stage.format_validation_error` is for stage configs).
    """
    tags = ("folder", "faces", "interpolate")
    lines = format_validation_error(exc, where, sep=": ", drop=tags).split("\n")
    errors = exc.errors()
    if len(lines) != len(errors):  # a message of several lines: no line to match to its error
        return "\n".join(lines)
    for i, err in enumerate(errors):
        table = tuple(str(p) for p in err["loc"][:-1] if not isinstance(p, int))
        if err["type"] == "extra_forbidden" and table in _TABLES:
            what, model = _TABLES[table]
            keys = ", ".join(model.model_fields)
            lines[i] = lines[i].replace(_UNKNOWN_KEY, f"unknown key; {what} has {keys}")
    return "\n".join(lines)


def check_pipeline_spec(spec: PipelineSpec, where: str) -> None:
    """Check a parsed pipeline file without loading weights or reading inputs.

    Args:
        spec: the parsed file.
        where: names the file in messages.

    Raises:
        ConfigError: naming ``where`` and the key.
        WeightsError: weights that are missing or cannot do what the file asks of them.
    """
    from aepipe.io import check_creatable, check_image_target

    _check_sink_fits_source(spec, where)
    # The checks gen-faces and the file runner make on their output folder, by the key's name.
    check_creatable(Path(spec.sink.out).expanduser(), f"{where}: sink.out")
    if spec.sink.grid is not None:
        check_image_target(spec.sink.grid, f"{where}: sink.grid")
    src = spec.source
    if isinstance(src, FolderSource) and not spec.stages:
        raise ConfigError(
            f"{where}: stages: a folder source needs at least one [[stages]] table "
            "(the files would only be copied)"
        )
    if isinstance(src, FacesSource):
        check_faces_source(src, f"{where}: source")
    elif isinstance(src, InterpolateSource):
        _check_walk(src, f"{where}: source")
        grid = Path(spec.sink.grid).expanduser() if spec.sink.grid else None
        check_walk_outputs(
            [src.a, src.b], grid, Path(spec.sink.out).expanduser(), src.steps, src.method,
            overwrite=spec.sink.overwrite, what=(f"{where}: sink.grid", f"{where}: sink.out"),
        )  # fmt: skip
    for i, st in enumerate(spec.stages):
        check_stage_spec(st, f"{where}: stages.{i}")
        _check_device(st.device, f"{where}: stages.{i}.device")


def _check_device(device: str, where: str) -> None:
    """Refuse a device this machine lacks, naming the key (not for Ray: its actors pick theirs)."""
    from aepipe.stage import resolve_device

    try:
        resolve_device(device)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# Sink keys that only one kind of source uses; given with another, they would be ignored.
_FOLDER_SINK_KEYS = ("format", "report", "batch_size", "jpeg_quality")
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


def _weights_class(weights: str, where: str) -> type[Stage]:
    """The stage class of a weights folder, from its ``config.json`` alone (nothing loads).

    Raises:
        WeightsError: prefixed with ``where``: the weights are missing or unreadable, or are
            helper weights (the face aligner) that no stage loads, in :func:`load_stage`'s
            words and with its exit code.
    """
    from aepipe.errors import WeightsError
    from aepipe.weights import read_config, resolve

    try:
        name = read_config(resolve(weights))["stage"]
        try:
            return stage_class(name)
        except ConfigError:
            _refused_by(load_stage, weights)
    except WeightsError as exc:  # as `--model nope`: exit code 4, not a config error
        raise WeightsError(f"{where}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _refused_by(load: Callable[[str], Any], weights: str) -> NoReturn:
    """Raise ``load``'s own refusal of ``weights``.

    Only for weights whose config already shows that ``load`` refuses them: the loaders read
    the config before any tensor, so nothing loads, and the message and exit code are theirs.
    """
    load(weights)
    raise AssertionError(f"{load.__name__} took {weights!r}")  # pragma: no cover


def check_faces_source(src: FacesSource, where: str) -> None:
    """Check a ``faces`` source as :func:`~aepipe.core.generate` would, without loading it.

    The weights must be a generator's (:func:`~aepipe.core.load_generator`'s check); the
    sampling options must fit its config (the generator's own range checks, on the config
    stored with the weights); ``prior``, ``sharpen`` and ``concepts`` need the face VAE, as
    for ``gen-faces``; concepts must be found.

    Raises:
        ConfigError: naming ``where`` (``<file>: source``) and the key.
        WeightsError: the weights are missing or cannot generate.
    """
    from aepipe.core import load_generator
    from aepipe.errors import WeightsError
    from aepipe.stage import Generator
    from aepipe.stages.face_generator import FaceGenerator

    cls = _weights_class(src.weights, f"{where}.weights")
    if not issubclass(cls, Generator):
        try:
            _refused_by(load_generator, src.weights)
        except WeightsError as exc:
            raise WeightsError(f"{where}.weights: {exc}") from None
    # Given with its default value (prior = false, concepts = []) a key asks for nothing.
    fields = type(src).model_fields
    vae_only = [
        k
        for k in ("prior", "sharpen", "concepts")
        if k in src.model_fields_set
        and getattr(src, k) != fields[k].get_default(call_default_factory=True)
    ]
    if vae_only and not issubclass(cls, FaceGenerator):
        file, sep, table = where.rpartition(": ")
        keys = ", ".join(f"{table}.{k}" for k in vae_only)
        raise ConfigError(
            f"{file}{sep}{keys}: for the face VAE only (face-generator weights, e.g. "
            f"face-vae); {src.weights!r} is a {cls.name!r} generator"
        )
    config = _generator_config(cls, src, where)
    try:
        # The generator's own range checks, those generate() makes in every front end.
        cls.sampling_option(config, "temperature", src.temperature)
        cls.sampling_option(config, "batch_size", src.batch_size)
    except ConfigError as exc:  # "temperature 9.0: ..." -> "<file>: source.temperature 9.0: ..."
        raise ConfigError(f"{where}.{exc}") from None
    _concepts(src.concepts, src.concepts_dir, src.weights, f"{where}.concepts")


def _generator_config(cls: type[Generator], src: FacesSource, where: str) -> StageConfig:
    """The config a run of ``src`` would give a generator of class ``cls`` (no tensor read).

    The one stored with the weights plus the source's overrides.

    Raises:
        ConfigError: an override (``sharpen``) is out of the config's range, naming its key.
    """
    from aepipe.weights import read_config, resolve

    stored = read_config(resolve(src.weights)).get("stage_config", {})
    return build_config(cls.Config, {**stored, **src.generator_overrides()}, where)


def _check_walk(src: InterpolateSource, where: str) -> None:
    """Check an ``interpolate`` source before loading: face VAE weights, two readable photos.

    Raises:
        ConfigError: a photo not found, naming its key.
        WeightsError: the weights are missing, unreadable or not the face VAE's (as
            :func:`~aepipe.core.load_face_vae` refuses them once loaded: exit code 4).
        InputImageError: a photo cannot be read, naming its key.
    """
    from aepipe.core import read_photo
    from aepipe.errors import AepipeError, WeightsError
    from aepipe.stages.face_generator import FaceGenerator

    cls = _weights_class(src.weights, f"{where}.weights")
    if not issubclass(cls, FaceGenerator):
        raise WeightsError(
            f"{where}.weights: {src.weights}: weights are for stage {cls.name!r}, not "
            "'face-generator' (the face VAE)"
        )
    for key in ("a", "b"):
        try:
            read_photo(getattr(src, key))  # the run's own reading, as cheap as a check
        except AepipeError as exc:
            raise type(exc)(f"{where}.{key}: {exc}") from None


def check_not_an_input(
    target: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]],
    what: str,
    instead: str = "file",
) -> None:
    """Refuse, before any work, an output file that is one of the inputs.

    Paths are compared resolved (a symlink or ``..`` names the same file), and as files (a
    hard link is the same file too). The one check of every face command that reads photos
    and writes a sheet or frames beside them, and of a walk's pipeline file.

    Args:
        target: the file to write.
        inputs: the files the command reads.
        what: how the user named ``target`` (``--out``, ``p.toml: sink.grid``).
        instead: what the message asks for instead (``file``, ``folder``).

    Raises:
        ConfigError: ``target`` is one of ``inputs``.
    """
    path = Path(target).expanduser()
    for src in inputs:
        given = Path(src).expanduser()
        if path.resolve() == given.resolve() or _same_file(path, given):
            raise ConfigError(f"{what} {path} is one of the inputs; choose another {instead}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def check_walk_outputs(
    inputs: Sequence[str | os.PathLike[str]],
    strip: Path | None,
    frames: Path | None,
    steps: int,
    method: Literal["linear", "slerp", "both"],
    *,
    overwrite: bool,
    what: tuple[str, str],
) -> None:
    """Refuse a walk's strip, or a frame it would replace, that is one of its two photos.

    For ``faces interpolate`` (``--out``, ``--frames``) and an ``interpolate`` source
    (``sink.grid``, ``sink.out``) alike. A frame that exists is kept without ``overwrite``,
    so only then can one replace a photo.

    Args:
        inputs: the two photos.
        strip: the strip (grid) file, if any.
        frames: the folder of the frames (``linear_step_00.png`` ...), if any.
        steps: frames per path.
        method: the paths walked.
        overwrite: whether existing frames are replaced.
        what: how the user named the strip and the frames folder.

    Raises:
        ConfigError: naming the output that is an input.
    """
    from aepipe.core import walk_methods
    from aepipe.stages.face_generator import walk_names

    if strip is not None:
        check_not_an_input(strip, inputs, what[0])
    if frames is None or not overwrite:
        return
    for m in walk_methods(method):
        for name in walk_names(steps):
            check_not_an_input(frames / f"{m}_{name}.png", inputs, what[1], "folder")


@contextmanager
def output_errors(what: str, target: Path) -> Iterator[None]:
    """A file or folder that cannot be written, as one line naming the option, not a traceback.

    The checks before any work (:func:`aepipe.io.check_creatable`) cannot foresee everything
    (a folder ``/proc`` refuses to root, a full disk); this names what failed when it happens.

    Raises:
        ConfigError: for an ``OSError`` raised while writing ``target``.
    """
    try:
        yield
    except OSError as exc:
        why = exc.strerror or str(exc)
        at = f": {exc.filename}" if exc.filename and Path(exc.filename) != target else ""
        raise ConfigError(f"{what} {target}: cannot write ({why}{at})") from None


def check_stage_spec(spec: StageSpec, where: str) -> None:
    """Check a stage table without loading its weights: config fields, ``faces`` concepts.

    Raises:
        ConfigError: naming ``where`` and the field.
        WeightsError: the weights are missing, unreadable, or helper weights (the face aligner).
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
    from aepipe.registry import AUTO, auto_class, auto_names, entry

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
    stage_name = _weights_class(spec.weights, f"{where}.weights").name
    if spec.stage is not None and spec.stage != stage_name:
        raise ConfigError(
            f"{where}.stage: {spec.weights!r} is a {stage_name!r} stage, not {spec.stage!r}"
        )
    return stage_name


def _concept_vectors(spec: StageSpec, where: str) -> list[Any] | None:
    """The ``faces.concepts`` vectors (``None``: reconstruct), looked up as the CLI does."""
    assert spec.faces is not None
    f = spec.faces
    return _concepts(f.concepts, f.concepts_dir, spec.weights, f"{where}.faces.concepts")


def _concepts(
    concepts: Sequence[str], concepts_dir: Path, weights: str, where: str
) -> list[Any] | None:
    """Concept vectors for ``NAME:STRENGTH`` specs (``None`` for none), found as the CLI does.

    Looked up in ``concepts_dir``, the weights' own concepts, then the shipped ones.

    Raises:
        ConfigError: a spec is malformed or not found, naming ``where``.
    """
    from aepipe.core import face_concepts
    from aepipe.stages.face_generator import default_concept_dirs

    if not concepts:
        return None
    try:
        return face_concepts(concepts, default_concept_dirs(concepts_dir, weights))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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


# ---- running a pipeline file ---------------------------------------------------------------


def run_options(spec: PipelineSpec) -> RunOptions:
    """The file runner's options for a spec with a folder source (each key is one option)."""
    from aepipe.runner import RunOptions

    src, sink = spec.source, spec.sink
    assert isinstance(src, FolderSource)
    return RunOptions(
        out_dir=Path(sink.out),
        fmt=sink.format,
        recursive=src.recursive,
        overwrite=sink.overwrite,
        dpi=src.dpi,
        max_pixels=src.max_pixels,
        batch_size=sink.batch_size,
        report=Path(sink.report) if sink.report else None,
        frames=src.frames,
        list_ignored=src.list_ignored,
        clean_born_digital=src.clean_born_digital,
        jpeg_quality=sink.jpeg_quality,
    )


# The file runner names its options as the CLI spells them; a pipeline file has keys instead.
_KEY_OF_OPTION = {
    "--out": "sink.out",
    "--report": "sink.report",
    "--format": "sink.format",
    "--jpeg-quality": "sink.jpeg_quality",
    "--batch-size": "sink.batch_size",
    "--overwrite": "sink.overwrite",
    "--dpi": "source.dpi",
    "--max-pixels": "source.max_pixels",
    "--clean-born-digital": "source.clean_born_digital",
}


def in_file_terms(message: str, where: str) -> str:
    """A runner message with the CLI options it names replaced by the file's keys.

    Example:
        >>> in_file_terms("--report r.json is a folder; give a file name", "p.toml")
        'p.toml: sink.report r.json is a folder; give a file name'
    """
    import re

    named = re.sub(r"--[a-z][a-z-]*", lambda m: _KEY_OF_OPTION.get(m[0], m[0]), message)
    return f"{where}: {named}"


def plan_files(spec: PipelineSpec, where: str) -> tuple[list[Any], RunOptions]:
    """List a folder source's files and check the sink, as the file commands do.

    Returns:
        ``(jobs, options)``: the runner's jobs (one per input file) and options.

    Raises:
        ConfigError: the runner's refusal (an input not found, an output folder inside an
            input folder, a report that would replace an input ...), naming the file's keys.
    """
    from aepipe.runner import plan

    assert isinstance(spec.source, FolderSource)
    options = run_options(spec)
    try:
        jobs, _, _ = plan(spec.source.inputs, options)
    except ConfigError as exc:
        raise ConfigError(in_file_terms(str(exc), where)) from None
    return jobs, options


def faces_source(spec: FacesSource, stages: Sequence[BatchFn] = ()) -> Iterator[ImageBatch]:
    """Batches sampled by a ``faces`` source (any generator's weights), run through ``stages``.

    The same calls as ``gen-faces``: the generator with its config overrides (``prior``,
    ``sharpen``), then :func:`~aepipe.core.generate` with the concept vectors.
    """
    from aepipe.core import generate, load_generator

    gen = load_generator(spec.weights, **spec.generator_overrides())
    vectors = _concepts(spec.concepts, spec.concepts_dir, spec.weights, "source.concepts")
    yield from generate(
        gen,
        spec.n,
        seed=spec.seed,
        temperature=spec.temperature,
        batch_size=spec.batch_size,
        stages=stages,
        **({"concepts": vectors} if vectors else {}),
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


def write_generated(spec: PipelineSpec, where: str = "pipeline file") -> Written:
    """Run a spec with a ``faces`` or ``interpolate`` source: load, generate, write.

    The grid of a walk is the strip of ``faces interpolate``: a row per path.

    Args:
        spec: the checked spec.
        where: names the file in a message about an output that cannot be written.
    """
    src, sink = spec.source, spec.sink
    stages = build_stages(spec)
    if isinstance(src, FacesSource):
        batches, ncols = faces_source(src, stages), None
    else:
        assert isinstance(src, InterpolateSource)
        batches, ncols = interpolate_source(src, stages), src.steps
    grid = Path(sink.grid) if sink.grid else None
    what = (f"{where}: sink.out", f"{where}: sink.grid")
    return write_batches(batches, Path(sink.out), grid, sink.overwrite, ncols, what=what)


class Written(NamedTuple):
    """What :func:`write_batches` did.

    Attributes:
        written: files written.
        skipped: files kept because they existed (``overwrite`` not set).
        note: why the grid is not what this run made, when it is not (else ``None``).
        others: the kept files that are not what this run made (another run's, with other
            options), a subset of ``skipped``.
    """

    written: list[Path]
    skipped: list[Path]
    note: str | None = None
    others: Sequence[Path] = ()

    def report(self, out: Path, grid: Path | None, noun: str, overwrite: str) -> list[str]:
        """What was written where and what was kept, as lines for the user.

        The one wording of ``gen-faces``, ``faces interpolate --frames`` and ``aepipe run``'s
        generated sources: the grid is named where it is (it need not be in ``out``).

        Args:
            out: the folder of the images.
            grid: the grid file asked for, if any.
            noun: what the images are (``faces``, ``frames``, ``files``).
            overwrite: how the user replaces existing files (``--overwrite``,
                ``overwrite = true``).
        """
        files = [p for p in self.written if p != grid]
        kept = [p for p in self.skipped if p != grid]
        lines = [
            f"wrote {len(files)} {noun} to {out}"
            + (f" and the grid {grid}" if grid is not None and grid in self.written else "")
            + (f"; kept {len(kept)} that exist ({overwrite} replaces them)" if kept else "")
        ]
        if self.others:
            which = "the" if len(self.others) == len(kept) else f"{len(self.others)} of the"
            lines.append(
                f"note: {which} {len(kept)} kept {noun} differ from what this run made: "
                f"another run made them, with other options ({overwrite} replaces them, or "
                "write to another folder)"
            )
        if self.note:
            lines.append(f"note: {self.note}")
        return lines


# A contact sheet shows at most this many images (as gen-faces'), so its memory is bounded.
GRID_MAX = 1024
# A kept image whose mean difference from this run's (0..255 levels) is below this is taken as
# this run's: a resumed run on a GPU may round a level differently here and there, while
# another seed, concept or temperature changes a face by far more.
KEPT_ALIKE = 0.5


def write_batches(
    batches: Iterable[ImageBatch],
    out: Path,
    grid: Path | None = None,
    overwrite: bool = False,
    ncols: int | None = None,
    what: tuple[str, str] = ("out", "grid"),
) -> Written:
    """Write generated batches as PNGs named after the batch names, plus an optional grid.

    Without ``overwrite`` an existing file (an image or the grid) is kept as it is, so a re-run
    resumes. Each kept image is compared with the one this run made: one that differs (another
    run's, with other options) is listed in :attr:`Written.others`, and then no grid is made,
    as it would show neither this run's images nor only the folder's of one run. A grid made
    on a resumed run shows the images as they are in ``out``; a kept grid is said to be one
    (:attr:`Written.note`) when images were written beside it.

    Args:
        batches: the generated batches.
        out: the folder for ``<name>.png``.
        grid: also write a contact sheet of the first :data:`GRID_MAX` images here.
        overwrite: replace existing files.
        ncols: the grid's columns (default: about square).
        what: how the user named ``out`` and ``grid``, for a file that cannot be written.

    Raises:
        ConfigError: a file cannot be written (naming ``what``).
    """
    from aepipe.io import write_image

    make_grid = grid is not None and (overwrite or not grid.exists())
    done = Written([], [], others=[])
    tiles: list[np.ndarray] = []
    for batch in batches:
        for name, pixels in zip(batch.names, batch.to_numpy(np.uint8), strict=True):
            target = out / f"{name}.png"
            if not overwrite and target.exists():
                done.skipped.append(target)
                pixels = _kept_as(target, pixels, done)
            else:
                with output_errors(what[0], out):
                    write_image(pixels, target)
                done.written.append(target)
            if make_grid and len(tiles) < GRID_MAX:
                tiles.append(pixels)
    if grid is None or not (done.written or done.skipped):
        return done
    if make_grid and done.others:
        why = f"no grid written: it would show the {len(done.others)} kept images of another run"
        return done._replace(note=why)
    if make_grid:
        with output_errors(what[1], grid):
            return _write_grid(tiles, grid, ncols, done)
    done.skipped.append(grid)
    if not done.written:
        return done
    why = f"kept the grid {grid} of an earlier run; it may not show the {len(done.written)} "
    return done._replace(note=why + "images written now (overwriting remakes both)")


def _kept_as(path: Path, made: np.ndarray, done: Written) -> np.ndarray:
    """A kept image as it is in the folder, for the grid.

    It is listed in ``done.others`` when it is not what this run made (``made``), or cannot
    be read.
    """
    from aepipe.errors import AepipeError

    try:
        kept = _read_tile(path)
    except (AepipeError, OSError):
        kept = None
    if kept is None or kept.shape != made.shape or _mean_diff(kept, made) >= KEPT_ALIKE:
        assert isinstance(done.others, list)
        done.others.append(path)
    return made if kept is None else kept


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _read_tile(path: Path) -> np.ndarray:
    """A kept image as (H, W, C) uint8, for the grid."""
    from aepipe.io import read_image

    return read_image(path).to_numpy(np.uint8)[0]


def _write_grid(tiles: list[np.ndarray], grid: Path, ncols: int | None, done: Written) -> Written:
    """Write the contact sheet of ``tiles`` (gray stays gray) and add it to ``done``."""
    from aepipe.io import make_grid, write_image

    if len({t.shape[:2] for t in tiles}) > 1:
        sizes = " and ".join(sorted({f"{t.shape[1]}x{t.shape[0]}" for t in tiles}))
        why = f"no grid written: the images in the folder are of several sizes ({sizes})"
        return done._replace(note=why)
    if len({t.shape[-1] for t in tiles}) > 1:  # gray and colour images: all in colour
        tiles = [t if t.shape[-1] == 3 else np.repeat(t, 3, -1) for t in tiles]
    write_image(make_grid(np.stack(tiles), ncols=ncols), grid)
    done.written.append(grid)
    return done
