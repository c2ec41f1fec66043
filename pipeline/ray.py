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

from aepipe.defaults import DEFAULT_BATCH_PIXELS, DEFAULT_MAX_PIXELS
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
    """Rows of an image column: a stacked (N, ...) array or an object array of ragged images.

    Rows come back as they were read: Ray keeps the rows of one column at one number of
    dimensions, so next to (H, W, C) colour images it pads a (H, W) gray one to (1, H, W)
    (leading axes of 1). Such a row, with more than 4 on its last axis, cannot be an image's
    channels and is taken back to (H, W); a (1, W, C) row with C <= 4 stays a one-pixel-high
    image (a padded gray image at most 4 pixels wide is misread so).
    """
    if isinstance(column, np.ndarray) and column.dtype != object:
        rows = list(column)
    else:
        rows = [np.asarray(x) for x in column]
    return [r[0] if r.ndim == 3 and r.shape[0] == 1 and r.shape[-1] > 4 else r for r in rows]


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
      (N, H, W[, C]) arrays, or an object array of differently sized ones (gray and colour
      images mixed; :func:`_as_list`). The result replaces that column, row for row, as
      :func:`aepipe.apply` returns it (the dtype rule of
      :meth:`~aepipe.batch.ImageBatch.to_numpy_like`: uint8 stays uint8), with the pixels every
      front end delivers (a page kept as it was comes back as it came, colour included; a
      black-and-white one stays two-level: :func:`aepipe.core.delivered_pages`). An ``error``
      column is added: empty, or why the stages refused that row (float values outside
      [0, 1], a photo with no face ...), named by its ``path`` (``include_paths=True``) or its
      place in the batch; its image is then empty ((0, 0[, C])) and one bad row does not
      fail the block. Other columns pass through.
    - **files** (from ``ray.data.read_binary_files(include_paths=True)``): the ``bytes`` column
      holds whole files (PNG, JPEG, TIFF, PDF ...). Every page is decoded exactly as the CLI
      does, so one row per *page* comes out, with columns ``path``, ``page``, ``pages``,
      ``name`` (the output stem the CLI would use, e.g. ``scan`` or ``report-p002``), ``image``
      (uint8 H x W x C: the pixels the CLI writes, a 1-bit page as 0 and 255) and, with
      ``encode="png"``, ``png`` (the encoded page, ready to write). A file that cannot be read,
      or a page the stages refuse, gives a row with an empty image and its reason in ``error``
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
        column: the image column of image batches (``read_images`` calls it ``"image"``,
            ``from_numpy`` ``"data"``).
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
            One result per image, in order, as :func:`aepipe.apply` returns it: the pixels every
            front end delivers (:func:`aepipe.core.delivered_pages`) in the input's dtype.

        Raises:
            AepipeError: the first image the stages refused (:meth:`__call__` gives each
                refused image an ``error`` instead).
        """
        rows: list[dict[str, Any]] = [
            dict(pixels=a, label=f"image {i}", error="") for i, a in enumerate(images)
        ]
        self._run_rows(rows)
        for r in rows:
            if "exc" in r:
                raise r["exc"]
        return [r["image"] for r in rows]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map one Ray batch (``batch_format="numpy"``) to its results."""
        if self.column in batch:
            return self._images(batch)
        if "bytes" in batch:
            return self._files(batch)
        raise ConfigError(
            f"batch has columns {sorted(batch)}; expected the image column {self.column!r} "
            "(set it with column=: read_images calls it 'image', from_numpy 'data') or "
            "'bytes' (read_binary_files)"
        )

    def _images(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An image batch's results in its image column, and a reason per refused row."""
        from aepipe.batch import result_dtype

        images = _as_list(batch[self.column])
        paths = batch.get("path")
        rows: list[dict[str, Any]] = [
            dict(pixels=a, label=str(paths[i]) if paths is not None else f"batch row {i}", error="")
            for i, a in enumerate(images)
        ]
        self._run_rows(rows)
        done = [r["image"] for r in rows if "image" in r]
        for r in rows:
            if "image" not in r:  # an empty image, of the column's dtype where there is one
                like = done[0] if done else r["pixels"]
                dtype = like.dtype if done else result_dtype(like.dtype)
                r["image"] = np.zeros((0, 0, *like.shape[2:3]), dtype)
        out = dict(batch)
        out[self.column] = _stack([r["image"] for r in rows])
        out["error"] = np.array([r["error"] for r in rows], dtype=object)
        return out

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
                        label=f"{path} {page_name(stem, page.meta)}",
                        pixels=page.pixels,
                        error="",
                        dpi=page_resolution(page.meta),  # (x, y) where they differ (a fax)
                        meta=page.meta,  # written with the page as the CLI writes it
                    )
                )
        self._run_rows([r for r in rows if r["pixels"] is not None], as_uint8=True)
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

    def _run_rows(self, live: list[dict[str, Any]], as_uint8: bool = False) -> None:
        """Set each row's ``image``, or its ``error`` (and ``exc``) for one the stages refuse.

        Rows of one shape and dtype go through the stages together, at most ``max_batch`` and
        :data:`~aepipe.defaults.DEFAULT_BATCH_PIXELS` pixels at a time (one always goes). A
        refused image (a photo with no face, float values outside [0, 1]) fails its own row,
        not the whole block.

        Args:
            live: rows with ``pixels`` (an HW/HWC array), ``label`` (names the row in an error)
                and, for a file's page, ``meta`` (its page meta, as the CLI runs it).
            as_uint8: results as uint8 (a file's page); else in the input's dtype.
        """
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for r in live:
            groups.setdefault((r["pixels"].shape, r["pixels"].dtype.str), []).append(r)
        for rows in groups.values():
            per_call = max(
                1, min(self.max_batch, DEFAULT_BATCH_PIXELS // _pixels(rows[0]["pixels"]))
            )
            for i in range(0, len(rows), per_call):
                self._run_group(rows[i : i + per_call], as_uint8)

    def _run_group(self, rows: list[dict[str, Any]], as_uint8: bool) -> None:
        """One stage call over same-shaped rows (see :meth:`_run_rows`)."""
        from aepipe.batch import ImageBatch
        from aepipe.core import delivered_pages
        from aepipe.errors import AepipeError

        try:
            source = ImageBatch.from_numpy(
                [r["pixels"] for r in rows], meta=[dict(r.get("meta") or {}) for r in rows]
            )
            pages = delivered_pages(self.pipeline(source), source)
        except AepipeError as exc:
            if len(rows) > 1:  # again one image at a time, to tell which one failed
                for r in rows:
                    self._run_group([r], as_uint8)
                return
            rows[0]["error"], rows[0]["exc"] = _named(str(exc), rows[0]["label"]), exc
            return
        # A file's pages come out as uint8 whatever went in (16-bit scans are written as 8-bit
        # by the CLI); an image column's as aepipe.apply returns an array.
        for r, page in zip(rows, pages, strict=True):
            r["image"] = page.to_numpy(np.uint8)[0] if as_uint8 else _like(page, r["pixels"])


def _pixels(image: np.ndarray) -> int:
    """Pixels of one HW/HWC image."""
    return max(1, int(image.shape[0]) * int(image.shape[1] if image.ndim > 1 else 1))


def _like(page: ImageBatch, source: np.ndarray) -> np.ndarray:
    """One delivered image as an array in ``source``'s dtype and layout (as apply returns it)."""
    return page.to_numpy_like(source)[0]


def _named(message: str, name: str) -> str:
    """``message`` about the one image of a batch, naming the row's image.

    Stages name a refused image by its batch name; a bare array's is ``image_00000``, which tells
    a Ray user nothing, so the row's file and page name (or row number) take its place; a
    message naming no image (a float row outside [0, 1]) gets the name in front.
    """
    from aepipe.batch import default_name

    default = default_name(0)
    if message.startswith(default):
        return name + message[len(default) :]
    return message if message.startswith(name) else f"{name}: {message}"


def _encoded(row: dict[str, Any]) -> bytes:
    """A result row's page as the CLI writes it.

    PNG, 1-bit when bilevel, with its DPI, ICC profile and descriptive metadata (the page's).
    """
    from aepipe.core import encode_page
    from aepipe.io import png_with_dpi

    if "image" not in row:
        return b""
    return png_with_dpi(encode_page(row["image"], row.get("meta")), row.get("dpi") or None)


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
