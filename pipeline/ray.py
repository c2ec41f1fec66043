"""Ray Data integration: stages as callable classes for ``ray.data.Dataset.map_batches``.

Install with the ``[ray]`` extra (``pip install "aepipe[ray]"``). :class:`StageMapper` (stages
over images or files, face edits of photos included), :class:`FaceBlockMapper` (generated
faces) and :class:`FacePairMapper` (the latent walk between two photos' faces) load their weights
once, in ``__init__``, inside each Ray actor, and then map ``dict[str, np.ndarray]`` batches.
They are plain picklable classes: Ray ships the class and its constructor arguments (weights
names or paths, never loaded models) to the workers, so the same code runs on a laptop and on a
multi-node cluster. A worker uses the GPU when Ray gave it one (``num_gpus=1`` in
``map_batches``) and the CPU otherwise.

On a small cluster, give the read tasks ``num_cpus=0`` (reading bytes is I/O): actors holding
every CPU would otherwise starve them and the job would never finish.

Example:
    >>> import ray
    >>> from aepipe.ray import StageMapper
    >>> ds = ray.data.read_binary_files("scans/", include_paths=True, num_cpus=0)  # doctest: +SKIP
    >>> ds = ds.map_batches(  # doctest: +SKIP
    ...     StageMapper,
    ...     fn_constructor_kwargs={"weights": "scan-denoiser"},
    ...     compute=ray.data.ActorPoolStrategy(size=2),
    ...     batch_size=4,
    ... )
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from aepipe.defaults import DEFAULT_MAX_PIXELS
from aepipe.errors import ConfigError

if TYPE_CHECKING:
    from aepipe.batch import ImageBatch
    from aepipe.pipeline import Pipeline

StageSpecLike = dict[str, Any]


def worker_device(device: str = "auto") -> str:
    """The device a Ray worker should use.

    With ``"auto"``, inside Ray the answer is ``"cuda"`` only when Ray assigned this worker a GPU
    (``num_gpus`` > 0), so a CPU worker never takes a GPU behind the scheduler's back. Outside
    Ray, ``"auto"`` means "a GPU if there is one".

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    from aepipe.stage import resolve_device

    if device != "auto":
        return resolve_device(device)
    # Only a process that imported Ray can be a Ray worker; importing it here would set its
    # environment variables and log handlers in a plain library user's process.
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return "cuda" if ray.get_gpu_ids() else "cpu"
    return resolve_device("auto")


def build_pipeline(
    weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    stages: Sequence[StageSpecLike] | None = None,
    pipeline_file: str | os.PathLike[str] | None = None,
    device: str = "auto",
    overrides: dict[str, Any] | None = None,
) -> Pipeline:
    """Load the stages named by exactly one of ``weights``, ``stages`` or ``pipeline_file``.

    Args:
        weights: one weights name/folder, or a list of them run in order.
        stages: ``[{"weights": ..., "config": {...}, "faces": {...}}, ...]``, the ``[[stages]]``
            tables of a pipeline file as Python dicts (handy on a cluster where the TOML file is
            not present); ``faces`` runs face-VAE weights on whole photos
            (:class:`~aepipe.pipeline.FacePhotos`); ``weights = "auto"`` needs ``stage``.
        pipeline_file: a TOML pipeline file; only its ``[[stages]]`` are used here (the source
            and sink are the Ray dataset's business).
        device: ``"auto"`` (see :func:`worker_device`), ``"cpu"`` or ``"cuda"``.
        overrides: stage config overrides, only with a single ``weights``.

    Raises:
        ConfigError: none or several of the three were given, or a config is invalid.
        WeightsError: weights could not be loaded.
    """
    from pydantic import ValidationError

    from aepipe.pipeline import (
        Pipeline,
        StageSpec,
        check_stage_spec,
        load_step,
        read_pipeline_file,
    )
    from aepipe.registry import AUTO
    from aepipe.stage import format_validation_error

    given = [x is not None for x in (weights, stages, pipeline_file)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of weights=, stages= or pipeline_file=")
    dev = worker_device(device)
    if pipeline_file is not None:
        specs = read_pipeline_file(pipeline_file, stages_only=True).stages
        if not specs:
            raise ConfigError(f"{pipeline_file}: stages: the pipeline file has no stages")
    elif stages is not None:
        specs = []
        for i, raw in enumerate(stages):
            try:
                specs.append(StageSpec(**raw))
            except ValidationError as exc:
                raise ConfigError(format_validation_error(exc, f"stages.{i}")) from None
    else:
        names = [weights] if isinstance(weights, (str, os.PathLike)) else list(weights or [])
        if overrides and len(names) != 1:
            raise ConfigError("stage config overrides need a single weights name; use stages=[...]")
        if AUTO in map(str, names):  # a table names the stage whose choice 'auto' is
            raise ConfigError(
                "weights='auto' needs its stage: stages=[{'weights': 'auto', 'stage': "
                "'colorizer', 'config': {...}}]"
            )
        specs = [StageSpec(weights=str(n), config=overrides or {}) for n in names]
    if pipeline_file is None:  # a pipeline file's tables were checked as it was read
        for i, spec in enumerate(specs):
            check_stage_spec(spec, f"stages.{i}")
    return Pipeline([load_step(s, device=dev, where=f"stages.{i}") for i, s in enumerate(specs)])


def _as_list(column: Any) -> list[np.ndarray]:
    """Rows of an image column: a stacked (N, ...) array or an object array of ragged images."""
    if isinstance(column, np.ndarray) and column.dtype != object:
        return list(column)
    return [np.asarray(x) for x in column]


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack same-shaped results; keep ragged ones as an object array (Ray's variable tensors)."""
    if arrays and len({(a.shape, a.dtype.str) for a in arrays}) == 1:
        return np.stack(arrays)
    out = np.empty(len(arrays), dtype=object)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


class StageMapper:
    """A stage (or a chain of them) as a Ray Data ``map_batches`` callable class.

    Two kinds of batches are accepted:

    - **images** (from ``ray.data.read_images`` or ``from_numpy``): the ``column`` column holds
      (N, H, W[, C]) arrays, or an object array of differently sized ones. The result replaces
      that column, row for row, in the same dtype (uint8 stays uint8); other columns pass through.
    - **files** (from ``ray.data.read_binary_files(include_paths=True)``): the ``bytes`` column
      holds whole files (PNG, JPEG, TIFF, PDF ...). Every page is decoded exactly as the CLI
      does, so one row per *page* comes out, with columns ``path``, ``page``, ``pages``,
      ``name`` (the output stem the CLI would use, e.g. ``scan`` or ``report-p002``), ``image``
      (uint8 H x W x C) and, with ``encode="png"``, ``png`` (the encoded page, ready to write).
      A file that cannot be read gives one row with an empty image and its reason in ``error``
      instead of failing the whole job.

    The weights are loaded once per actor in ``__init__``; the class itself is what you pass to
    ``map_batches`` (with ``fn_constructor_kwargs``), so nothing heavy is pickled.

    Args:
        weights: a weights name or folder, or a list of them to run in order.
        stages: or a list of ``{"weights": ..., "config": {...}}`` dicts (the ``[[stages]]``
            tables of a pipeline file; ``"faces": {"concepts": ["smile:1"]}`` runs a face VAE on
            whole photos, as ``aepipe faces edit``; ``{"weights": "auto", "stage": "colorizer"}``
            picks the colorizer per image, as ``colorize``).
        pipeline_file: or a TOML pipeline file whose ``[[stages]]`` to run.
        device: ``"auto"`` uses the GPU that Ray assigned (``num_gpus``) and the CPU otherwise.
        column: the image column of image batches (``read_images`` calls it ``"image"``).
        encode: ``"png"`` adds a ``png`` bytes column to file batches.
        keep_image: with ``encode="png"``, ``False`` leaves the ``image`` column out of file
            batches, so only the small encoded pages travel through the object store.
        max_batch: most images per model call (pages of one size are grouped).
        dpi: resolution at which PDF pages are rendered; ``None`` (the default, as the CLI)
            renders each page at its scan's own resolution.
        max_pixels: larger pages are refused before decoding.
        threads: torch CPU threads per actor (default: what Ray set, one per CPU it granted).
            This is ``torch.set_num_threads``, which holds for the whole process: leave it
            unset when you call the mapper in your own process.
        **overrides: stage config overrides (with a single ``weights``).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        *,
        stages: Sequence[StageSpecLike] | None = None,
        pipeline_file: str | os.PathLike[str] | None = None,
        device: str = "auto",
        column: str = "image",
        encode: Literal["none", "png"] = "none",
        keep_image: bool = True,
        max_batch: int = 8,
        dpi: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        threads: int | None = None,
        **overrides: Any,
    ) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        if encode not in ("none", "png"):
            raise ConfigError(f"encode must be 'none' or 'png'; got {encode!r}")
        from aepipe.stage import fit_channels

        # Each stage gets the channels it takes, as from every other front end.
        self.pipeline = fit_channels(
            build_pipeline(
                weights,
                stages=stages,
                pipeline_file=pipeline_file,
                device=device,
                overrides=overrides,
            )
        )
        self.column = column
        self.encode = encode
        self.keep_image = keep_image or encode != "png"
        self.max_batch = max_batch
        self.dpi = dpi
        self.max_pixels = max_pixels

    @property
    def device(self) -> str:
        """The device the (first) stage runs on."""
        return str(self.pipeline.stages[0].device)

    def process(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """Run the stages over single HW/HWC images, grouping same-shaped ones into batches.

        Args:
            images: arrays of any supported dtype, possibly of different sizes.

        Returns:
            One result per image, in order, in the input's dtype.
        """
        keys = [(a.shape, a.dtype.str) for a in images]
        order = sorted(range(len(images)), key=lambda i: (str(keys[i]), i))
        results = self.pipeline.map((images[i] for i in order), batch_size=self.max_batch)
        out: list[np.ndarray | None] = [None] * len(images)
        for i, res in zip(order, results, strict=True):
            out[i] = res
        return out  # type: ignore[return-value]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map one Ray batch (``batch_format="numpy"``) to its results."""
        if self.column in batch:
            out = dict(batch)
            out[self.column] = _stack(self.process(_as_list(batch[self.column])))
            return out
        if "bytes" in batch:
            return self._files(batch)
        raise ConfigError(
            f"batch has columns {sorted(batch)}; expected an image column {self.column!r} "
            "(read_images) or 'bytes' (read_binary_files)"
        )

    def _files(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from aepipe.core import page_name
        from aepipe.errors import AepipeError
        from aepipe.io import decode_pages, page_resolution

        paths = [
            str(p) for p in batch.get("path", [f"file_{i:05d}" for i in range(len(batch["bytes"]))])
        ]
        rows: list[dict[str, Any]] = []
        for path, data in zip(paths, batch["bytes"], strict=True):
            stem = Path(path).stem
            try:
                pages = list(
                    decode_pages(bytes(data), path, dpi=self.dpi, max_pixels=self.max_pixels)
                )
            except (AepipeError, OSError, ValueError, MemoryError) as exc:
                rows.append(
                    dict(path=path, page=0, pages=0, name=stem, pixels=None, error=str(exc))
                )
                continue
            for page in pages:
                rows.append(
                    dict(
                        path=path,
                        page=int(page.meta["page"]),
                        pages=int(page.meta.get("pages", 1)),
                        name=page_name(stem, page.meta),
                        pixels=page.pixels,
                        error="",
                        dpi=page_resolution(page.meta),  # (x, y) where they differ (a fax)
                        meta=page.meta,  # written with the page as the CLI writes it
                    )
                )
        self._run_rows([r for r in rows if r["pixels"] is not None])
        empty = np.zeros((0, 0, 1), np.uint8)
        out: dict[str, np.ndarray] = {
            "path": np.array([r["path"] for r in rows], dtype=object),
            "page": np.array([r["page"] for r in rows], dtype=np.int64),
            "pages": np.array([r["pages"] for r in rows], dtype=np.int64),
            "name": np.array([r["name"] for r in rows], dtype=object),
            "error": np.array([r["error"] for r in rows], dtype=object),
        }
        if self.keep_image:
            out["image"] = _stack([r.get("image", empty) for r in rows])
        if self.encode == "png":
            out["png"] = np.array([_encoded(r) for r in rows], dtype=object)
        return out

    def _run_rows(self, live: list[dict[str, Any]]) -> None:
        """Set each row's ``image``, or its ``error`` for a page the stages refuse.

        A refused page (a photo with no face, say) fails its own row, not the whole block.
        """
        from aepipe.errors import AepipeError

        try:
            results = self.process([r["pixels"] for r in live])
        except AepipeError as exc:
            if len(live) == 1:
                live[0]["error"] = _named(str(exc), f"{live[0]['path']} {live[0]['name']}")
                return
            for r in live:  # again one page at a time, to tell which page failed
                self._run_rows([r])
            return
        # Pages come out as uint8 whatever went in (16-bit scans are written as 8-bit by the CLI).
        for r, res in zip(live, results, strict=True):
            r["image"] = _as_written(_to_uint8(res), r["pixels"])


def _named(message: str, name: str) -> str:
    """``message`` about the one image of a batch, naming the page instead of the batch's default.

    Stages name a refused image by its batch name; a bare array's is ``image_00000``, which tells
    a Ray user nothing, so the row's file and page name take its place.
    """
    from aepipe.batch import default_name

    default = default_name(0)
    return name + message[len(default) :] if message.startswith(default) else message


def _as_written(page: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The result ``page``, or the colour ``source`` when ``page`` is just its luma.

    As the CLI writes it (:func:`aepipe.core.as_it_was`): a clean page comes back as it came.
    """
    from aepipe.batch import ImageBatch
    from aepipe.core import as_it_was

    gray = page.ndim == 2 or page.shape[-1] == 1
    if not (gray and source.ndim == 3 and source.shape[-1] == 3):
        return page
    kept = as_it_was(page.reshape(*page.shape[:2], 1), ImageBatch.from_numpy(source))
    return kept if kept.shape[-1] == 3 else page


def _encoded(row: dict[str, Any]) -> bytes:
    """A result row's page as the CLI writes it.

    PNG, 1-bit when bilevel, with its DPI, ICC profile and descriptive metadata (the page's).
    """
    from aepipe.core import encode_page
    from aepipe.io import png_with_dpi

    if "image" not in row:
        return b""
    return png_with_dpi(encode_page(row["image"], row.get("meta")), row.get("dpi") or None)


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.uint16:
        return np.rint(a.astype(np.float32) / 257.0).astype(np.uint8)
    return np.rint(np.clip(a, 0, 1) * 255.0).astype(np.uint8)


def face_blocks(n: int, seed: int = 0, block_size: int = 64) -> list[dict[str, int]]:
    """Cut ``n`` faces of ``seed`` into blocks for Ray workers.

    Every block draws its faces from the same ``seed`` at its own place in the sequence
    (:meth:`aepipe.stage.Generator.sample`'s ``first``), so the faces are those of
    ``gen-faces --n N --seed S``, whatever the block size or the number of workers. One
    exception: the VQ-VAE's prior in bfloat16 (``precision="auto"`` on a CPU or GPU with fast
    bfloat16) rounds differently at other batch sizes, and one other code drawn changes the
    face; run it with ``precision="float32"`` where faces must match across block sizes.

    Returns:
        Rows ``{"block", "start", "count", "seed"}`` for ``ray.data.from_items``.
    """
    if n < 1 or block_size < 1:
        raise ConfigError(
            f"n and block_size must be at least 1; got n={n}, block_size={block_size}"
        )
    return [
        dict(block=b, start=start, count=min(block_size, n - start), seed=seed)
        for b, start in enumerate(range(0, n, block_size))
    ]


class FaceBlockMapper:
    """Generate (and optionally colorize) images for rows made by :func:`face_blocks`.

    Any generator works (the face VAE by default): images come from
    :func:`aepipe.core.generate`, exactly as ``gen-faces`` and ``GET /v1/faces`` make them.
    Each input row ``{"block", "start", "count", "seed"}`` becomes ``count`` output rows with
    ``name`` (``face_00042``), ``seed`` and ``image`` (uint8 H x W x C): faces ``start`` ...
    of ``seed``'s sequence, as ``gen-faces`` makes them.

    Args:
        generator: weights of any generator stage (see :class:`aepipe.stage.Generator`).
        colorizer: weights of the colorizer stage, or ``None`` to keep the generator's output.
        device: as for :class:`StageMapper`.
        temperature: sampling temperature of the generator (``None``: the weights' default).
        threads: torch CPU threads per actor.
    """

    def __init__(
        self,
        generator: str | os.PathLike[str] = "face-vae",
        colorizer: str | os.PathLike[str] | None = "colorizer",
        *,
        device: str = "auto",
        temperature: float | None = None,
        threads: int | None = None,
    ) -> None:
        from aepipe.core import load_generator
        from aepipe.stage import load_stage

        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        dev = worker_device(device)
        self.generator = load_generator(generator, device=dev)
        self.colorizer = load_stage(colorizer, device=dev) if colorizer is not None else None
        self.temperature = temperature

    def faces(self, count: int, seed: int, start: int = 0) -> ImageBatch:
        """Faces ``start`` ... ``start + count - 1`` of ``seed``'s sequence."""
        from aepipe.core import generate_batch

        then = [self.colorizer] if self.colorizer is not None else []
        return generate_batch(
            self.generator,
            count,
            seed=seed,
            first=start,
            temperature=self.temperature,
            stages=then,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map rows of blocks to rows of faces."""
        names: list[str] = []
        seeds: list[int] = []
        images: list[np.ndarray] = []
        for start, count, seed in zip(batch["start"], batch["count"], batch["seed"], strict=True):
            faces = self.faces(int(count), int(seed), int(start))
            names += faces.names
            seeds += [int(seed)] * len(faces)
            images += list(faces.to_numpy(np.uint8))
        return {
            "name": np.array(names, dtype=object),
            "seed": np.array(seeds, dtype=np.int64),
            "image": _stack(images),
        }


# The mapper is not face-specific: any generator's weights work.
GeneratorMapper = FaceBlockMapper


class FacePairMapper:
    """The latent walk between the faces of two photos, for rows of photo pairs.

    Each input row holds two encoded photos, ``a`` and ``b`` (bytes: PNG, JPEG ...; e.g. from
    ``ray.data.from_items([{"a": ..., "b": ..., "name": ...}])``). Each output row has ``name``,
    ``png`` (the strip as ``aepipe faces interpolate`` writes it: a row of ``steps`` faces per
    method) and ``error`` (why a pair gave no strip, e.g. no face in ``b``; else empty). The
    work is the core's :func:`~aepipe.core.interpolate_faces`.

    Args:
        weights: face-VAE weights.
        steps: faces per path, ends included.
        method: ``linear``, ``slerp`` or ``both``.
        face: ``largest`` or a face index, in each photo.
        align: ``auto``, ``photo`` or ``crop``.
        device: as for :class:`StageMapper`.
        max_pixels: larger photos are refused before decoding (their row's ``error``).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] = "face-vae",
        *,
        steps: int = 8,
        method: Literal["linear", "slerp", "both"] = "linear",
        face: Literal["largest"] | int = "largest",
        align: Literal["auto", "photo", "crop"] = "auto",
        device: str = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        from aepipe.core import load_face_vae, walk_methods

        if not 2 <= steps <= 256:
            raise ConfigError(f"steps must be 2..256; got {steps}")
        self.stage = load_face_vae(weights, device=worker_device(device))
        self.methods = walk_methods(method)
        self.steps, self.face, self.align, self.max_pixels = steps, face, align, max_pixels

    def strip(self, a: bytes, b: bytes) -> bytes:
        """The PNG strip for one pair of encoded photos."""
        from aepipe.core import face_strip, interpolate_faces
        from aepipe.io import decode_pages, page_batch, png_bytes

        pair = [
            page_batch(next(iter(decode_pages(data, k, max_pixels=self.max_pixels))), k)
            for k, data in (("a", a), ("b", b))
        ]
        rows = interpolate_faces(
            self.stage, *pair, self.steps, self.methods, face=self.face, align=self.align
        )
        return png_bytes(face_strip(rows))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map rows of photo pairs to rows of strips."""
        from aepipe.errors import AepipeError

        names = [str(n) for n in batch.get("name", range(len(batch["a"])))]
        pngs, errors = [], []
        for a, b in zip(batch["a"], batch["b"], strict=True):
            try:
                pngs.append(self.strip(bytes(a), bytes(b)))
                errors.append("")
            except (AepipeError, OSError, ValueError) as exc:
                pngs.append(b"")
                errors.append(str(exc))
        return {
            "name": np.array(names, dtype=object),
            "png": np.array(pngs, dtype=object),
            "error": np.array(errors, dtype=object),
        }
