"""The HTTP service behind ``aepipe serve`` (FastAPI + uvicorn; the ``[serve]`` extra).

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /v1/clean-scan``: an image or PDF in, the cleaned page(s) out as PNG, PDF or a zip.
- ``POST /v1/denoise``: an image in, the impulse-denoised image out (PNG).
- ``POST /v1/colorize``: an image in (gray or colour), the colorized image out (PNG).
- ``GET /v1/faces?n=&seed=&colorize=&format=``: generated faces as one PNG grid or a zip.
- ``GET /healthz``: which stages are loaded, and how busy the server is.

Uploads are either ``multipart/form-data`` with a ``file`` field or the raw file as the request
body. Every stage is loaded once, when the app is created; model calls run on a small thread
pool of ``concurrency`` threads, at most ``queue`` more requests wait for it, and any beyond
that get ``503`` with ``Retry-After``. Bodies over ``max_upload_bytes`` get ``413`` before they
are read in full, images or PDF pages over ``max_pixels`` get ``413`` before they are decoded,
files that are not images get ``415`` and corrupt ones ``422``; every error is a JSON object
``{"error": code, "detail": message}`` and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import AepipeError, ConfigError, WeightsError

if TYPE_CHECKING:
    from pipeline.batch import ImageBatch
    from pipeline.io import Page
    from pipeline.stage import Stage

T = TypeVar("T")

# Endpoint key -> the registry name of the stage it runs.
ENDPOINT_STAGES = {
    "clean-scan": "scan-denoiser",
    "denoise": "impulse-denoiser",
    "colorize": "colorizer",
    "faces": "face-generator",
}


class ServeSettings(BaseModel):
    """Everything ``aepipe serve`` can be told; unknown keys are errors.

    Attributes:
        models: endpoint key (``clean-scan``, ``denoise``, ``colorize``, ``faces``) -> weights
            name or folder; an endpoint left out (or ``None``) answers ``503``.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        concurrency: model calls that run at the same time (threads sharing the loaded stages).
        queue: requests that may wait for a free slot; more are refused with ``503``.
        max_upload_bytes: larger request bodies get ``413``.
        max_pixels: larger images or PDF pages get ``413`` (checked before decoding).
        max_pages: PDFs or multi-page TIFFs with more pages get ``413``.
        dpi: resolution at which PDF pages are rendered.
        max_faces: most faces one ``/v1/faces`` request may ask for.
        threads: torch CPU threads (``None``: torch's default).
    """

    model_config = ConfigDict(extra="forbid")

    models: dict[Literal["clean-scan", "denoise", "colorize", "faces"], str | None] = Field(
        default_factory=dict
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    concurrency: int = Field(1, ge=1, le=64)
    queue: int = Field(64, ge=0, le=100_000)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(25_000_000, ge=1)
    max_pages: int = Field(50, ge=1)
    dpi: int = Field(150, ge=36, le=1200)
    max_faces: int = Field(256, ge=1, le=100_000)
    threads: int | None = Field(None, ge=1, le=1024)


def default_weights(stage_name: str) -> str | None:
    """The shipped weights for a stage: the folder named after it, else the first that fits."""
    from pipeline.weights import read_config, shipped_names, shipped_weights_dir

    names = shipped_names()
    root = shipped_weights_dir()
    if stage_name in names:
        return stage_name
    for name in names:
        try:
            if read_config(root / name)["stage"] == stage_name:
                return name
        except WeightsError:
            continue
    return None


def load_stages(settings: ServeSettings) -> dict[str, Stage | None]:
    """Load every configured endpoint's stage once and check it is the right kind of stage.

    Raises:
        WeightsError: weights are missing, tampered with, or for another stage.
    """
    from pipeline.stage import load_stage

    stages: dict[str, Stage | None] = {}
    for key, expected in ENDPOINT_STAGES.items():
        weights = settings.models.get(key)  # type: ignore[call-overload]
        if weights is None:
            stages[key] = None
            continue
        stage = load_stage(weights, device=settings.device)
        if stage.name != expected:
            raise WeightsError(f"{weights}: is a {stage.name!r} stage; {key} needs {expected!r}")
        stages[key] = stage
    return stages


class ApiError(Exception):
    """An error answered with ``status`` and a JSON body ``{"error": code, "detail": ...}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class _TooLarge(Exception):
    pass


def _json_body(status: int, code: str, detail: str) -> tuple[int, bytes]:
    import json

    return status, json.dumps({"error": code, "detail": detail}).encode()


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413, without reading them.

    A declared ``Content-Length`` over the limit is refused at once; a body that streams past
    the limit is cut off as soon as it does, so a huge upload never sits in memory.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Pass the request on, counting body bytes as they arrive."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"request body is larger than the limit of {self.limit:,} bytes"
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await _send_json(send, *_json_body(413, "too_large", message))
            return
        received = 0
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, *_json_body(413, "too_large", message))


async def _send_json(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Limiter:
    """Run blocking model work on ``concurrency`` threads with at most ``queue`` requests waiting.

    Attributes:
        running: calls executing now.
        waiting: calls waiting for a free thread.
    """

    def __init__(self, concurrency: int, queue: int) -> None:
        self.concurrency = concurrency
        self.queue = queue
        self.running = 0
        self.waiting = 0
        self.served = 0
        self._sem: asyncio.Semaphore | None = None
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="aepipe-stage")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the pool once a slot is free.

        Raises:
            ApiError: 503 when ``queue`` requests are already waiting.
        """
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.concurrency)
        if self.running >= self.concurrency and self.waiting >= self.queue:
            raise ApiError(503, "busy", f"server busy: {self.waiting} requests already waiting")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.running -= 1
            self.served += 1
            self._sem.release()


# ---- decoding and encoding (run on the worker threads) -------------------------------------


def decode_upload(data: bytes, filename: str, settings: ServeSettings) -> list[Page]:
    """Decode an uploaded image or PDF into pages, checking the limits before decoding.

    Raises:
        ApiError: 413 over the pixel or page limit, 415 not an image or PDF, 422 corrupt.
    """
    from pipeline import io as pio
    from pipeline.errors import InputImageError

    if not data:
        raise ApiError(422, "empty", "the upload is empty (0 bytes)")
    path = Path(filename or "upload")
    if data[:5] == b"%PDF-":
        _check_pdf(data, settings)
    else:
        _check_raster(data, settings)
    try:
        return list(pio.decode_pages(data, path, dpi=settings.dpi, max_pixels=settings.max_pixels))
    except InputImageError as exc:
        status = 413 if "exceeds the limit" in str(exc) else 422
        raise ApiError(
            status, "too_many_pixels" if status == 413 else "corrupt", str(exc)
        ) from None


def _check_raster(data: bytes, settings: ServeSettings) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ApiError(413, "too_many_pixels", "image header claims far too many pixels") from None
    except UnidentifiedImageError:
        raise ApiError(
            415, "unsupported", "not an image or PDF (PNG, JPEG, TIFF, BMP, WebP, GIF or PDF)"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(422, "corrupt", f"cannot read the image header ({exc})") from None
    w, h = image.size
    if w * h > settings.max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"{w}x{h} = {w * h:,} pixels exceeds the limit of {settings.max_pixels:,}",
        )
    pages = int(getattr(image, "n_frames", 1) or 1)
    if (image.format or "").upper() == "TIFF" and pages > settings.max_pages:
        raise ApiError(
            413, "too_many_pages", f"{pages} pages exceeds the limit of {settings.max_pages}"
        )


def _check_pdf(data: bytes, settings: ServeSettings) -> None:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        raise ApiError(422, "corrupt", f"cannot open the PDF ({exc})") from None
    try:
        if len(pdf) > settings.max_pages:
            raise ApiError(
                413, "too_many_pages", f"{len(pdf)} pages exceeds the limit of {settings.max_pages}"
            )
    finally:
        pdf.close()


def png_bytes(pixels: np.ndarray, dpi: float | None = None) -> bytes:
    """Encode HW/HWC uint8 (or bool for 1-bit) pixels as PNG."""
    from pipeline.io import to_pil

    buf = io.BytesIO()
    kwargs = {"dpi": (dpi, dpi)} if dpi else {}
    to_pil(pixels).save(buf, format="PNG", **kwargs)
    return buf.getvalue()


def _page_pixels(batch: ImageBatch, bilevel: bool = False) -> np.ndarray:
    """The first image of a result batch as uint8, or bool (1-bit PNG/PDF) when bilevel."""
    pixels = batch.to_numpy(np.uint8)[0]
    if bilevel or (batch.meta and batch.meta[0].get("bilevel")):
        return pixels[..., 0] >= 128
    return pixels


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def _pdf(pages: list[np.ndarray], metas: list[dict[str, Any]]) -> bytes:
    from pipeline.io import write_pages

    with tempfile.TemporaryDirectory(prefix="aepipe-serve-") as tmp:
        target = Path(tmp) / "out.pdf"
        write_pages(
            pages,
            target,
            dpis=[m.get("dpi") for m in metas],
            page_sizes_pt=[m.get("page_size_pt") for m in metas],
        )
        return target.read_bytes()


def with_overrides(stage: Stage, **updates: Any) -> Stage:
    """A stage sharing ``stage``'s model with some config fields changed (cheap; no weights copy).

    Raises:
        ConfigError: a field is unknown or out of range for this stage.
    """
    from pipeline.stage import build_config

    updates = {k: v for k, v in updates.items() if v is not None}
    if not updates:
        return stage
    config = build_config(type(stage).Config, {**stage.config.model_dump(), **updates}, stage.name)
    return type(stage)(stage.model, config, extras=stage.extras)


class Variants:
    """Per-request config variants of one loaded stage, each built once and then reused."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self._cache: dict[tuple[tuple[str, Any], ...], Stage] = {}
        self._lock = threading.Lock()

    def get(self, **updates: Any) -> Stage:
        """The stage with ``updates`` (``None`` values mean "keep the default")."""
        key = tuple(sorted((k, v) for k, v in updates.items() if v is not None))
        if not key:
            return self.stage
        with self._lock:
            if key not in self._cache:
                self._cache[key] = with_overrides(self.stage, **dict(key))
            return self._cache[key]


def warm_up(stage: Stage) -> None:
    """Run one small batch so lazy set-up (memory layout, caches) happens before serving.

    Stages that prepare themselves on their first call would otherwise do it while other
    requests are already running on other threads.
    """
    import torch

    from pipeline.batch import ImageBatch

    size = getattr(stage, "native_size", None) or 64
    channels = stage.input_channels[0]
    stage(ImageBatch(torch.full((1, channels, size, size), 0.5)))


# ---- the app -------------------------------------------------------------------------------

Media = tuple[bytes, str, str]  # body, media type, file name


def create_app(
    settings: ServeSettings | None = None, stages: dict[str, Stage | None] | None = None
) -> FastAPI:
    """Build the FastAPI app; every stage is loaded here, once, before the first request.

    Args:
        settings: limits and which weights serve which endpoint.
        stages: already loaded stages by endpoint key (skips loading ``settings.models``).

    Raises:
        WeightsError: configured weights could not be loaded.
    """
    from pipeline import __version__
    from pipeline.io import make_grid, page_batch

    settings = settings or ServeSettings()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    stages = dict(stages) if stages is not None else load_stages(settings)
    for key in ENDPOINT_STAGES:
        stages.setdefault(key, None)
    for stage in stages.values():
        if stage is not None:
            warm_up(stage)
    scan_variants = Variants(stages["clean-scan"]) if stages["clean-scan"] is not None else None
    limiter = Limiter(settings.concurrency, settings.queue)
    started = time.time()

    app = FastAPI(
        title="aepipe",
        version=__version__,
        description=(
            "Clean scanned pages, remove impulse noise, colorize and generate faces.\n\n"
            f"Limits: bodies up to {settings.max_upload_bytes:,} bytes, images and PDF pages up "
            f"to {settings.max_pixels:,} pixels, {settings.max_pages} pages, {settings.max_faces} "
            'faces per request. Errors are JSON objects `{"error": code, "detail": message}`.'
        ),
    )
    app.state.settings = settings
    app.state.stages = stages
    app.state.limiter = limiter
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return JSONResponse({"error": exc.code, "detail": exc.detail}, exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"error": "invalid_parameter", "detail": detail}, 422)

    @app.exception_handler(AepipeError)
    async def _aepipe_error(_: Request, exc: AepipeError) -> JSONResponse:
        status = 422 if isinstance(exc, (ConfigError, ValueError)) else 500
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The traceback still goes to the server log; the client gets JSON, the server lives on.
        return JSONResponse({"error": "internal", "detail": f"{type(exc).__name__}: {exc}"}, 500)

    def need(key: str) -> Stage:
        stage = stages.get(key)
        if stage is None:
            raise ApiError(503, "not_loaded", f"no {ENDPOINT_STAGES[key]} weights were loaded")
        return stage

    async def upload(request: Request) -> tuple[bytes, str]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            file = form.get("file")
            if file is None or isinstance(file, str):
                raise ApiError(
                    422, "no_file", "multipart upload needs a 'file' field holding the image"
                )
            return await file.read(), file.filename or "upload"
        return await request.body(), "upload"

    upload_doc = {
        "requestBody": {
            "required": True,
            "description": "multipart/form-data with a `file` field, or the raw file as the body.",
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }
    errors_doc: dict[int | str, dict[str, Any]] = {
        413: {"description": "Upload over the byte, pixel or page limit."},
        415: {"description": "Not an image or PDF."},
        422: {"description": "Corrupt image or invalid parameter."},
        503: {"description": "Busy (queue full) or the stage is not loaded."},
    }

    def respond(media: Media) -> Response:
        body, media_type, name = media
        return Response(
            body,
            media_type=media_type,
            headers={"Content-Disposition": f'inline; filename="{name}"'},
        )

    def stem_of(filename: str) -> str:
        return Path(filename).stem or "upload"

    @app.get("/healthz", summary="Liveness, loaded stages and load")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "version": __version__,
            "stages": {k: (s.name if s is not None else None) for k, s in stages.items()},
            "device": next((str(s.device) for s in stages.values() if s is not None), None),
            "running": limiter.running,
            "waiting": limiter.waiting,
            "served": limiter.served,
            "uptime_s": round(time.time() - started, 1),
        }

    @app.post(
        "/v1/clean-scan",
        summary="Clean a scanned page (image or PDF)",
        openapi_extra=upload_doc,
        responses={
            200: {
                "content": {"image/png": {}, "application/pdf": {}, "application/zip": {}},
                "description": "PNG for one page, PDF (same page sizes) or a zip of PNGs.",
            },
            **errors_doc,
        },
        response_class=Response,
    )
    async def clean_scan(
        request: Request,
        format: Literal["same", "png", "pdf"] = Query(
            "same", description="same: PDF in -> PDF out, image in -> PNG (zip for many pages)."
        ),
        binarize: bool | None = Query(None, description="Bilevel (1-bit) output."),
        keep_color: bool | None = Query(None, description="Keep the colour of colour scans."),
    ) -> Response:
        need("clean-scan")
        stage = scan_variants.get(binarize=binarize, keep_color=keep_color)
        data, filename = await upload(request)
        is_pdf = data[:5] == b"%PDF-"

        def work() -> Media:
            pages = decode_upload(data, filename, settings)
            results = [stage(page_batch(p)) for p in pages]
            bilevel = bool(getattr(stage.config, "binarize", False))
            pixels = [_page_pixels(r, bilevel) for r in results]
            metas = [p.meta for p in pages]
            stem = stem_of(filename)
            fmt = format if format != "same" else ("pdf" if is_pdf else "png")
            if fmt == "pdf":
                return _pdf(pixels, metas), "application/pdf", f"{stem}.pdf"
            if len(pixels) == 1:
                return png_bytes(pixels[0], metas[0].get("dpi")), "image/png", f"{stem}.png"
            files = {
                f"{stem}-p{i + 1:03d}.png": png_bytes(px, m.get("dpi"))
                for i, (px, m) in enumerate(zip(pixels, metas, strict=True))
            }
            return _zip(files), "application/zip", f"{stem}.zip"

        return respond(await limiter.run(work))

    def image_endpoint(key: str, path: str, summary: str) -> None:
        @app.post(
            path,
            summary=summary,
            openapi_extra=upload_doc,
            responses={200: {"content": {"image/png": {}}}, **errors_doc},
            response_class=Response,
        )
        async def endpoint(request: Request) -> Response:
            stage = need(key)
            data, filename = await upload(request)

            def work() -> Media:
                page = decode_upload(data, filename, settings)[0]
                batch = page_batch(page)
                if batch.channels not in stage.input_channels:
                    batch = batch.gray() if 1 in stage.input_channels else batch.rgb()
                pixels = _page_pixels(stage(batch))
                return png_bytes(pixels), "image/png", f"{stem_of(filename)}.png"

            return respond(await limiter.run(work))

        endpoint.__name__ = key.replace("-", "_")

    image_endpoint("denoise", "/v1/denoise", "Remove impulse (salt-and-pepper) noise from an image")
    image_endpoint(
        "colorize", "/v1/colorize", "Colorize a gray image (a colour image is made gray first)"
    )

    @app.get(
        "/v1/faces",
        summary="Generate faces (optionally colorized) as a PNG grid or a zip",
        responses={200: {"content": {"image/png": {}, "application/zip": {}}}, **errors_doc},
        response_class=Response,
    )
    async def faces(
        n: int = Query(16, ge=1, le=settings.max_faces, description="How many faces."),
        seed: int = Query(0, ge=0, le=2**63 - 1, description="Same seed, same faces."),
        colorize: bool = Query(False, description="Colorize with the colorizer stage."),
        temperature: float | None = Query(
            None, gt=0, le=3, description="Sampling temperature (default: the weights')."
        ),
        format: Literal["grid", "zip"] = Query("grid"),
    ) -> Response:
        generator = need("faces")
        colorizer = need("colorize") if colorize else None

        def work() -> Media:
            from pipeline.core import generate_batch

            then = [colorizer] if colorizer is not None else []
            batch = generate_batch(generator, n, seed=seed, temperature=temperature, stages=then)
            arrays = batch.to_numpy(np.uint8)
            if format == "zip":
                files = {f"face_{i:05d}.png": png_bytes(a) for i, a in enumerate(arrays)}
                return _zip(files), "application/zip", f"faces_seed{seed}.zip"
            return png_bytes(make_grid(arrays)), "image/png", f"faces_seed{seed}.png"

        return respond(await limiter.run(work))

    return app


def run_server(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Load the stages, then serve with uvicorn until interrupted.

    Args:
        settings: see :class:`ServeSettings`.
        host: interface to bind; ``127.0.0.1`` keeps the service local.
        port: TCP port.
        log_level: uvicorn's log level.
        on_ready: called with the base URL once the stages are loaded, before serving.
    """
    import uvicorn

    app = create_app(settings)
    if on_ready:
        on_ready(f"http://{host}:{port}")
    # A backstop beyond our own queue: uvicorn answers 503 past this many open connections.
    limit = settings.concurrency + settings.queue + 64
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=limit)
