"""The HTTP service behind ``aepipe serve`` (FastAPI + uvicorn; the ``[serve]`` extra).

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

- ``POST /v1/clean-scan``: an image or PDF in, the cleaned page(s) out as PNG, PDF or a zip.
- ``POST /v1/denoise``: an image in, the impulse-denoised image out (PNG).
- ``POST /v1/colorize``: an image in (gray or colour), the colorized image out (PNG).
- ``GET /v1/faces?n=&seed=&colorize=&format=``: generated faces as one PNG grid or a zip.
- ``POST /v1/faces/edit?concept=smile:1&face=all``: a photo in, the whole photo out (PNG) with
  its faces edited along concept vectors (the weights of ``/v1/faces``);
  ``POST /v1/faces/reconstruct?face=all`` likewise with the faces as the VAE reconstructs them.
- ``POST /v1/faces/interpolate?steps=8&method=linear``: two photos (multipart ``a`` and ``b``)
  in, the latent walk between their faces out as one PNG strip.
- ``GET /healthz``: which stages are loaded, and how busy the server is.

Uploads are either ``multipart/form-data`` with a ``file`` field or the raw file as the request
body. Every stage is loaded once, when the app is created; model calls run on a small thread
pool of ``concurrency`` threads, at most ``queue`` more requests wait for it, and any beyond
that get ``503`` with ``Retry-After``. Bodies over ``max_upload_bytes`` get ``413`` before they
are read in full, images or PDF pages over ``max_pixels`` get ``413`` before they are decoded,
files that are not images get ``415`` and corrupt ones ``422``; every error is a JSON object
``{"error": code, "detail": message}`` and the server keeps serving.

In front of the routes, :mod:`aepipe.serve_guard` checks API keys (``401``), requests in
flight per client (``429``), the body and request deadlines (``408``, ``504``) and the body size
while it is read (``413``); :func:`uvicorn_config` adds the header deadline for slow senders.
"""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from aepipe.defaults import SEED_MAX
from aepipe.errors import AepipeError, WeightsError
from aepipe.faces_align import parse_face_choice

if TYPE_CHECKING:
    from aepipe.io import Page
    from aepipe.stage import Stage

T = TypeVar("T")


def endpoint_stages() -> dict[str, str]:
    """Endpoint key -> the registry name of the stage it runs (from :mod:`aepipe.registry`)."""
    from aepipe.registry import routes

    return {key: e.name for key, e in routes().items()}


class ServeSettings(BaseModel):
    """Everything ``aepipe serve`` can be told; unknown keys are errors.

    Attributes:
        models: endpoint key (``clean-scan``, ``denoise``, ``colorize``, ``faces``) -> weights
            name or folder, or ``auto`` where the stage picks weights per image (``colorize``:
            face crops to the face model, other images to ``colorizer-photo``); an endpoint
            left out (or ``None``) answers ``503``.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
        concurrency: model calls that run at the same time (threads sharing the loaded stages).
        queue: requests that may wait for a free slot; more are refused with ``503``.
        max_upload_bytes: larger request bodies get ``413``.
        max_pixels: larger images or PDF pages get ``413`` (checked before decoding).
        max_pages: PDFs or multi-page TIFFs with more pages get ``413``.
        dpi: resolution at which PDF pages are rendered (``?format=png``, pages not editable
            in place); ``None``: each page's scan's own resolution (300 without a scan), as
            ``clean-scans`` does.
        max_faces: most faces one ``/v1/faces`` request may ask for.
        threads: torch CPU threads (``None``: torch's default).
        api_keys: keys accepted as ``Authorization: Bearer <key>``; empty: no authentication
            (the CLI allows that on loopback only). Never shown in repr or logs.
        request_timeout: seconds a request may take, body and model call included (504).
        body_timeout: seconds the whole request body may take to arrive (408; slow senders).
        header_timeout: seconds the request line and headers may take (connection closed).
        keep_alive: seconds an idle keep-alive connection stays open.
        per_client: requests one client (API key, else IP address) may have in flight; more
            get ``429`` with ``Retry-After``.
        forwarded_allow_ips: proxies whose ``X-Forwarded-For`` is trusted as the client address
            (comma-separated IPs, ``*`` for any); empty: the header is ignored.
    """

    model_config = ConfigDict(extra="forbid")

    models: dict[str, str | None] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    concurrency: int = Field(1, ge=1, le=64)
    queue: int = Field(64, ge=0, le=100_000)
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(25_000_000, ge=1)
    max_pages: int = Field(50, ge=1)
    dpi: int | None = Field(None, ge=36, le=1200)
    max_faces: int = Field(256, ge=1, le=100_000)
    threads: int | None = Field(None, ge=1, le=1024)
    api_keys: tuple[str, ...] = Field((), repr=False, exclude=True)
    request_timeout: float = Field(120.0, gt=0, le=86_400)
    body_timeout: float = Field(30.0, gt=0, le=86_400)
    header_timeout: float = Field(10.0, gt=0, le=3_600)
    keep_alive: float = Field(5.0, gt=0, le=3_600)
    per_client: int = Field(8, ge=1, le=100_000)
    forwarded_allow_ips: str = ""

    @field_validator("models")
    @classmethod
    def _known_endpoints(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        known = endpoint_stages()
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown endpoint(s) {unknown}; known: {sorted(known)}")
        return value


def default_weights(key: str) -> str | None:
    """The shipped weights an endpoint serves by default, if installed.

    ``auto`` where its stage chooses among several weights per image and all of them ship
    (``colorize``: the face or the photo model, as ``colorize --model auto``), else its
    registry entry's.
    """
    from aepipe.registry import AUTO, auto_class, routes
    from aepipe.weights import shipped_names

    entry, shipped = routes()[key], set(shipped_names())
    auto = auto_class(entry.name)
    if auto is not None and set(auto.weights) <= shipped:
        return AUTO
    return entry.weights if entry.weights in shipped else None


def load_stages(settings: ServeSettings) -> dict[str, Stage | None]:
    """Load every configured endpoint's stage once and check it is the right kind of stage.

    Raises:
        WeightsError: weights are missing, tampered with, or for another stage.
    """
    from aepipe.registry import AUTO, auto_stage
    from aepipe.stage import load_stage

    stages: dict[str, Stage | None] = {}
    for key, expected in endpoint_stages().items():
        weights = settings.models.get(key)
        if weights is None:
            stages[key] = None
            continue
        if weights == AUTO:
            stage = auto_stage(expected, settings.device)
        else:
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

    async def run(
        self, fn: Callable[..., T], *args: Any, gone: Callable[[], Awaitable[bool]] | None = None
    ) -> T:
        """Run ``fn(*args)`` on the pool once a slot is free.

        Args:
            fn: the blocking work.
            *args: its arguments.
            gone: asked once a slot is free; ``True`` (the client hung up while queued) skips
                the work, so a client that leaves frees its place instead of its model call.

        Raises:
            ApiError: 503 when ``queue`` requests are already waiting; 400 when ``gone``.
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
        try:
            hung_up = gone is not None and await gone()
        except BaseException:
            self._sem.release()
            raise
        if hung_up:
            self._sem.release()
            raise ApiError(400, "disconnected", "client went away while its request was queued")
        self.running += 1
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        # The slot is freed when the thread is done, not when the request gives up waiting
        # (a timed-out request's model call cannot be interrupted and still uses its thread).
        future.add_done_callback(self._release)
        return await asyncio.shield(future)

    def _release(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved, so a timed-out request's error is not logged twice
        self.running -= 1
        self.served += 1
        assert self._sem is not None
        self._sem.release()


# ---- decoding and encoding (run on the worker threads) -------------------------------------


def decode_upload(data: bytes, filename: str, settings: ServeSettings) -> list[Page]:
    """Decode an uploaded image or PDF into pages; :mod:`aepipe.io` checks every limit.

    Raises:
        InputImageError: its class gives the status (:func:`aepipe.core.http_status`): 413
            over the pixel or page limit, 415 not an image or PDF, 422 corrupt or empty.
    """
    from aepipe.io import decode_pages

    return list(
        decode_pages(
            data,
            Path(filename or "upload"),
            dpi=settings.dpi,
            max_pixels=settings.max_pixels,
            max_pages=settings.max_pages,
        )
    )


def _zip(files: Sequence[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in files:
            zf.writestr(name, blob)
    return buf.getvalue()


def with_overrides(stage: Stage, **updates: Any) -> Stage:
    """A stage sharing ``stage``'s model with some config fields changed (cheap; no weights copy).

    Raises:
        ConfigError: a field is unknown or out of range for this stage.
    """
    from aepipe.stage import build_config

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

    from aepipe.batch import ImageBatch

    size = getattr(stage, "native_size", None) or 64
    channels = stage.input_channels[0]
    stage(ImageBatch(torch.full((1, channels, size, size), 0.5)))


# ---- the app -------------------------------------------------------------------------------

Media = tuple[bytes, str, str]  # body, media type, file name

_UPLOAD_DOC = {
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
_ERRORS_DOC: dict[int | str, dict[str, Any]] = {
    413: {"description": "Upload over the byte, pixel or page limit."},
    415: {"description": "Not an image or PDF."},
    422: {"description": "Corrupt image or invalid parameter."},
    503: {"description": "Busy (queue full) or the stage is not loaded."},
}


class _Service:
    """What every route shares: settings, loaded stages, the limiter and the request helpers."""

    def __init__(self, settings: ServeSettings, stages: dict[str, Stage | None]) -> None:
        self.settings = settings
        self.stages = stages
        self.variants = {k: Variants(s) for k, s in stages.items() if s is not None}
        self.limiter = Limiter(settings.concurrency, settings.queue)
        self.started = time.time()

    def need(self, key: str, **overrides: Any) -> Stage:
        """The stage behind endpoint ``key`` (with per-request config overrides).

        Raises:
            ApiError: 503 when the endpoint's stage is not loaded.
        """
        if key not in self.variants:
            name = endpoint_stages()[key]
            raise ApiError(503, "not_loaded", f"no {name} weights were loaded")
        return self.variants[key].get(**overrides)

    async def upload(self, request: Request) -> tuple[bytes, str]:
        """The uploaded file's bytes and name (multipart ``file`` field or the raw body).

        Raises:
            ApiError: as :meth:`uploads`.
        """
        return (await self.uploads(request, ("file",)))[0]

    async def uploads(self, request: Request, fields: Sequence[str]) -> list[tuple[bytes, str]]:
        """The bytes and name of each file field; a lone ``file`` may also be the raw body.

        Raises:
            ApiError: 415 for a content type that is neither multipart nor a file's (or not
                multipart for several files), 400 for malformed multipart or a client gone
                mid-upload, 422 when a field is missing.
        """
        from starlette.requests import ClientDisconnect

        _UPLOADING.set(request)  # so respond() can skip the work if the client hangs up
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw_ok = tuple(fields) == ("file",)
        if ctype != "multipart/form-data" and not (
            raw_ok and (not ctype or ctype.startswith(_RAW_TYPES))
        ):
            how = (
                "send multipart/form-data with a 'file' field, or the file itself as "
                "application/octet-stream, image/* or application/pdf"
                if raw_ok
                else "send multipart/form-data with the fields " + ", ".join(map(repr, fields))
            )
            raise ApiError(415, "unsupported_media_type", f"content type {ctype!r}: {how}")
        try:
            if ctype != "multipart/form-data":
                return [(await request.body(), "upload")]
            form = await request.form(max_files=len(fields), max_fields=8)
            out = []
            for name in fields:
                file = form.get(name)
                if file is None or isinstance(file, str):
                    raise ApiError(
                        422, "no_file", f"multipart upload needs a {name!r} field holding the image"
                    )
                out.append((await file.read(), file.filename or name))
            return out
        except ClientDisconnect:
            raise ApiError(400, "disconnected", "client went away during the upload") from None
        except HTTPException as exc:  # Starlette's answer to malformed multipart
            raise ApiError(
                400, "bad_multipart", f"malformed multipart body: {exc.detail}"
            ) from None

    async def respond(self, work: Callable[[], Media]) -> Response:
        """Run ``work`` on the model threads and answer with its file."""
        request = _UPLOADING.get()
        gone = request.is_disconnected if request is not None else None
        body, media_type, name = await self.limiter.run(work, gone=gone)
        return Response(
            body,
            media_type=media_type,
            headers={"Content-Disposition": content_disposition(name)},
        )


def content_disposition(name: str) -> str:
    """The ``Content-Disposition`` of an answer: ``inline`` with the file's name.

    HTTP headers are Latin-1, so a raw ``日本.png`` would fail the answer: the name goes as an
    ASCII fallback and, when that differs, as RFC 6266's ``filename*`` in UTF-8.
    """
    from urllib.parse import quote

    ascii_name = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    header = f'inline; filename="{ascii_name}"'
    if ascii_name != name:
        header += f"; filename*=UTF-8''{quote(name, safe='')}"
    return header


# The request whose upload this task is handling (a task serves one request).
_UPLOADING: ContextVar[Request | None] = ContextVar("aepipe_uploading", default=None)

# Raw-body content types taken as a file (curl --data-binary sends the form type by default).
_RAW_TYPES = (
    "application/octet-stream",
    "application/pdf",
    "image/",
    "application/x-www-form-urlencoded",
)


def _stem(filename: str) -> str:
    return Path(filename).stem or "upload"


def create_app(
    settings: ServeSettings | None = None, stages: dict[str, Stage | None] | None = None
) -> FastAPI:
    """Build the FastAPI app; every stage is loaded here, once, before the first request.

    Each stage with an HTTP route in :mod:`aepipe.registry` gets its endpoint, built by the
    route's kind (``pages``, ``image`` or ``generate``).

    Args:
        settings: limits and which weights serve which endpoint.
        stages: already loaded stages by endpoint key (skips loading ``settings.models``).

    Raises:
        WeightsError: configured weights could not be loaded.
    """
    from aepipe import __version__
    from aepipe.registry import more_routes, routes

    settings = settings or ServeSettings()
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    stages = dict(stages) if stages is not None else load_stages(settings)
    for key in routes():
        stages.setdefault(key, None)
    for stage in stages.values():
        if stage is not None:
            warm_up(stage)
    service = _Service(settings, stages)
    app = FastAPI(
        dependencies=[Depends(_known_query)],
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
    app.state.limiter = service.limiter
    _add_guards(app, settings)
    _add_error_handlers(app)
    _add_health(app, service, __version__)
    for key, entry in routes().items():
        _ROUTE_KINDS[entry.route_kind](app, service, key)  # type: ignore[index]
    for key, kind, entry in more_routes():
        _MORE_ROUTE_KINDS[kind](app, service, entry.route, key)  # type: ignore[arg-type]
    return app


async def _known_query(request: Request) -> None:
    """Refuse query parameters the route does not take (422), as the CLI refuses an option.

    FastAPI ignores them, so ``/v1/colorize?saturation=3`` answered 200 with the defaults and a
    typo (``?binarise=true``) went unnoticed.
    """
    if not request.url.path.startswith("/v1/"):
        return  # a health probe may carry a cache-buster
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    known = {param.alias for param in dependant.query_params} if dependant else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "no query parameters"
        raise ApiError(
            422, "invalid", f"unknown query parameter(s) {unknown}; this route takes {takes}"
        )


def _add_guards(app: FastAPI, settings: ServeSettings) -> None:
    """Add the middleware of :mod:`aepipe.serve_guard`.

    The last added runs first, so a request meets: API key (401), per-client limit (429),
    deadlines (408/504), body size (413).
    """
    from aepipe.serve_guard import Auth, BodyLimit, ClientLimit, Deadline

    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes)
    app.add_middleware(
        Deadline, request_timeout=settings.request_timeout, body_timeout=settings.body_timeout
    )
    app.add_middleware(ClientLimit, per_client=settings.per_client, by_key=bool(settings.api_keys))
    app.add_middleware(Auth, keys=settings.api_keys)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _add_error_handlers(app: FastAPI) -> None:
    """Answer every error as ``{"error": code, "detail": message}``.

    The status comes from the error's class (:func:`aepipe.core.http_status`), never from its
    message text.
    """
    from aepipe.core import http_status

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

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's own answers (unknown path 404, wrong method 405) in the same shape.
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            {"error": code, "detail": str(exc.detail)}, exc.status_code, headers=exc.headers
        )

    @app.exception_handler(AepipeError)
    async def _aepipe_error(_: Request, exc: AepipeError) -> JSONResponse:
        status, code = http_status(exc) or (500, "internal")
        return JSONResponse({"error": code, "detail": public_detail(str(exc))}, status)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The traceback still goes to the server log; the client gets JSON, the server lives on.
        detail = public_detail(f"{type(exc).__name__}: {exc}")
        return JSONResponse({"error": "internal", "detail": detail}, 500)


# An absolute path of two or more parts (or a file:// URL), as the library's messages name
# files and folders; a path with spaces is caught by the server's own folders (_server_roots).
_SERVER_PATH = re.compile(r"(?:file://(?=/)|(?<![\w.:/]))/(?:[^\s/'\",()]+/)+([^\s/'\",()]*)")


def _server_roots() -> list[str]:
    """The server's folders that messages may name (longest first): weights, cwd, temp, home."""
    import sys
    import tempfile

    from aepipe.weights import shipped_weights_dir

    roots = {shipped_weights_dir(), Path.cwd(), Path(tempfile.gettempdir()), Path.home()}
    roots.add(Path(sys.prefix))
    return sorted({str(r) for r in roots if str(r) != "/"}, key=len, reverse=True)


def public_detail(message: str) -> str:
    """``message`` with the server's absolute paths cut to their last part.

    The library's messages name files for a local user (``concept 'x' not found (looked in
    /srv/aepipe/weights/face-vae/concepts)``); a client of the service learns nothing from
    them but the server's layout, as ``/healthz`` keeps paths out too.

    Example:
        >>> public_detail("not found (looked in /srv/w/face-vae/concepts)")
        'not found (looked in .../concepts)'
    """
    for root in _server_roots():
        message = message.replace(f"file://{root}/", "/").replace(f"{root}/", "/x/")
    return _SERVER_PATH.sub(lambda m: f".../{m[1]}" if m[1] else "...", message)


def _add_health(app: FastAPI, service: _Service, version: str) -> None:
    @app.get("/healthz", summary="Liveness, loaded stages and load")
    async def healthz() -> dict[str, Any]:
        stages, limiter = service.stages, service.limiter
        return {
            "status": "ok",
            "version": version,
            "stages": {k: (s.name if s is not None else None) for k, s in stages.items()},
            "device": next((str(s.device) for s in stages.values() if s is not None), None),
            "running": limiter.running,
            "waiting": limiter.waiting,
            "served": limiter.served,
            "uptime_s": round(time.time() - service.started, 1),
        }


def _add_pages_route(app: FastAPI, service: _Service, key: str) -> None:
    """``POST /v1/<key>``: an image or PDF in, every page through the stage, PNG/PDF/zip out."""

    @app.post(
        f"/v1/{key}",
        summary="Clean a scanned page (image or PDF)",
        openapi_extra=_UPLOAD_DOC,
        responses={
            200: {
                "content": {"image/png": {}, "application/pdf": {}, "application/zip": {}},
                "description": "PNG for one page, PDF (same page sizes) or a zip of PNGs.",
            },
            **_ERRORS_DOC,
        },
        response_class=Response,
    )
    async def pages_endpoint(
        request: Request,
        format: Literal["same", "png", "pdf"] = Query(
            "same", description="same: PDF in -> PDF out, image in -> PNG (zip for many pages)."
        ),
        binarize: bool | None = Query(None, description="Bilevel (1-bit) output."),
        keep_color: bool | None = Query(None, description="Keep the colour of colour scans."),
        clean_all: bool | None = Query(
            None, description="Also clean pages already clean (clean-scans --clean-all)."
        ),
        views: int | None = Query(
            None, ge=1, le=8, description="Views of each page averaged (clean-scans --views)."
        ),
    ) -> Response:
        from aepipe.core import edits_in_place, encode_document, output_format, run_pages
        from aepipe.io import is_pdf_head
        from aepipe.stage import fit_channels

        stage = service.need(
            key,
            binarize=binarize,
            keep_color=keep_color,
            clean_pages="process" if clean_all else None,
            views=views,
        )
        data, filename = await service.upload(request)

        def work() -> Media:
            stem = _stem(filename)
            if edits_in_place("pdf" if is_pdf_head(bytes(data[:1024])) else "", format):
                # PDF in, PDF out: cleaned inside the PDF, as clean-scans does.
                return _clean_pdf(data, filename, stage, service.settings)
            pages = decode_upload(data, filename, service.settings)
            fmt = output_format(pages[0].meta.get("format", ""), format, keep_tiff=False)
            fitted = fit_channels(stage)
            files = encode_document(run_pages(fitted, pages, stem), fmt, stem, source=data)
            if fmt == "pdf":
                return files[0][1], "application/pdf", files[0][0]
            if len(files) == 1:
                return files[0][1], "image/png", f"{stem}.png"
            return _zip(files), "application/zip", f"{stem}.zip"

        return await service.respond(work)

    pages_endpoint.__name__ = key.replace("-", "_")


def _clean_pdf(
    data: bytes,
    filename: str,
    stage: Stage,
    settings: ServeSettings,
) -> Media:
    """A PDF upload cleaned in place by the core's PDF step (the upload's limits apply).

    Its colour follows the stage's settings, as for every front end.
    """
    from aepipe.core import clean_pdf_bytes, pdf_options

    options = pdf_options(
        max_pixels=settings.max_pixels, dpi=settings.dpi, max_pages=settings.max_pages
    )
    name = f"{_stem(filename)}.pdf"
    body, _ = clean_pdf_bytes(data, name, stage, options)
    return body, "application/pdf", name


def _add_image_route(app: FastAPI, service: _Service, key: str) -> None:
    """``POST /v1/<key>``: an image (or PDF) in, every page through the stage, PNG or zip out."""
    entry_name = endpoint_stages()[key]

    @app.post(
        f"/v1/{key}",
        summary=f"Run the {entry_name} stage on an image",
        openapi_extra=_UPLOAD_DOC,
        responses={
            200: {
                "content": {"image/png": {}, "application/zip": {}},
                "description": "PNG for one page, a zip of PNGs for several (a PDF, a TIFF).",
            },
            **_ERRORS_DOC,
        },
        response_class=Response,
    )
    async def image_endpoint(request: Request) -> Response:
        from aepipe.core import encode_document, run_pages
        from aepipe.stage import fit_channels

        stage = service.need(key)
        data, filename = await service.upload(request)

        def work() -> Media:
            pages = decode_upload(data, filename, service.settings)
            stem = _stem(filename)
            files = encode_document(run_pages(fit_channels(stage), pages, stem), "png", stem)
            if len(files) == 1:
                return files[0][1], "image/png", f"{stem}.png"
            return _zip(files), "application/zip", f"{stem}.zip"

        return await service.respond(work)

    image_endpoint.__name__ = key.replace("-", "_")


def _add_generate_route(app: FastAPI, service: _Service, key: str) -> None:
    """``GET /v1/<key>``: images sampled by a generator (optionally colorized), grid or zip."""
    settings = service.settings

    @app.get(
        f"/v1/{key}",
        summary="Generate images (optionally colorized) as a PNG grid or a zip",
        responses={200: {"content": {"image/png": {}, "application/zip": {}}}, **_ERRORS_DOC},
        response_class=Response,
    )
    async def generate_endpoint(
        n: int = Query(16, ge=1, le=settings.max_faces, description="How many images."),
        seed: int = Query(0, ge=0, le=SEED_MAX, description="Same seed, same images."),
        colorize: bool = Query(False, description="Colorize with the colorizer stage."),
        # Its range is the generator config's (0 to 3 for the face models): aepipe.core.generate
        # checks it for every front end, a 422 here.
        temperature: float | None = Query(
            None, description="Sampling temperature (default: the weights')."
        ),
        format: Literal["grid", "zip"] = Query("grid"),
    ) -> Response:
        from aepipe.core import as_generator, generate_batch
        from aepipe.io import make_grid, png_bytes

        generator = as_generator(service.need(key), key)
        then = [service.need("colorize")] if colorize else []

        def work() -> Media:
            batch = generate_batch(generator, n, seed=seed, temperature=temperature, stages=then)
            arrays = batch.to_numpy(np.uint8)
            if format == "zip":
                names = [f"{name}.png" for name in batch.names]
                files = [(name, png_bytes(a)) for name, a in zip(names, arrays, strict=True)]
                return _zip(files), "application/zip", f"{key}_seed{seed}.zip"
            return png_bytes(make_grid(arrays)), "image/png", f"{key}_seed{seed}.png"

        return await service.respond(work)

    generate_endpoint.__name__ = key.replace("-", "_")


# Checked by faces_align.parse_face_choice, as --face and the TOML key are (a 422 here).
_FACE_QUERY = Query("all", description="all | largest | N (index, largest first).")


async def _face_photo(
    service: _Service, request: Request, stage_key: str, vectors: Any, face: str
) -> Response:
    """A photo in, the whole photo out with its faces edited (``vectors``) or reconstructed.

    The work is the core's :class:`~aepipe.core.FaceEditor`, as for ``aepipe faces edit``;
    header ``X-Aepipe-Faces`` carries the per-face report.
    """
    from aepipe.core import FaceEditor, encode_document, run_pages

    report: list[str] = []
    step = FaceEditor(
        service.need(stage_key), vectors, face=parse_face_choice(face), align="photo",
        report=report.append,
    )  # fmt: skip
    data, filename = await service.upload(request)

    def work() -> Media:
        page = decode_upload(data, filename, service.settings)[0]
        stem = _stem(filename)
        done = run_pages(step, [page], stem)
        return encode_document(done, "png", stem)[0][1], "image/png", f"{stem}.png"

    response = await service.respond(work)
    # The editor names the photo in each line; the header is about this one photo.
    response.headers["X-Aepipe-Faces"] = "; ".join(line.split(": ", 1)[-1] for line in report)
    return response


_FACE_PHOTO_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {}},
        "description": "The whole photo at its size; header X-Aepipe-Faces: per face.",
    },
    **_ERRORS_DOC,
    422: {"description": "No usable face (reason per face), or an invalid parameter."},
}


def _face_route(
    app: FastAPI,
    key: str,
    summary: str,
    body: dict[str, Any] = _UPLOAD_DOC,
    responses: dict[int | str, dict[str, Any]] = _FACE_PHOTO_DOC,
) -> Callable[[Callable[..., Awaitable[Response]]], Callable[..., Awaitable[Response]]]:
    """Register an endpoint as ``POST /v1/<key>``, then name it after ``key``."""

    def register(
        endpoint: Callable[..., Awaitable[Response]],
    ) -> Callable[..., Awaitable[Response]]:
        app.post(
            f"/v1/{key}",
            summary=summary,
            openapi_extra=body,
            responses=responses,
            response_class=Response,
        )(endpoint)
        endpoint.__name__ = key.replace("-", "_").replace("/", "_")
        return endpoint

    return register


def _add_face_edit_route(app: FastAPI, service: _Service, stage_key: str, key: str) -> None:
    """``POST /v1/<key>``: a photo and concept edits in, the whole edited photo out (PNG).

    The stage is the one loaded for ``/v1/<stage_key>``.
    """

    @_face_route(
        app, key, "Edit the faces of a photo along concept vectors (smile, eyeglasses ...)"
    )
    async def face_edit_endpoint(
        request: Request,
        concept: Annotated[
            list[str],
            Query(min_length=1, max_length=8, description="NAME:STRENGTH, repeatable: smile:1."),
        ],
        face: str = _FACE_QUERY,
    ) -> Response:
        from aepipe.core import face_concepts
        from aepipe.stages.face_generator import default_concept_dirs

        dirs = default_concept_dirs(None, service.settings.models.get(stage_key))
        vectors = face_concepts(concept, dirs, names_only=True)
        return await _face_photo(service, request, stage_key, vectors, face)


def _add_face_reconstruct_route(app: FastAPI, service: _Service, stage_key: str, key: str) -> None:
    """``POST /v1/<key>``: a photo in, the whole photo out with its faces as the VAE sees them."""

    @_face_route(app, key, "Reconstruct the faces of a photo through the face VAE (what it keeps)")
    async def face_reconstruct_endpoint(request: Request, face: str = _FACE_QUERY) -> Response:
        return await _face_photo(service, request, stage_key, None, face)


_PAIR_DOC = {
    "requestBody": {
        "required": True,
        "description": "multipart/form-data with two files: `a` (start) and `b` (end).",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "a": {"type": "string", "format": "binary"},
                        "b": {"type": "string", "format": "binary"},
                    },
                    "required": ["a", "b"],
                }
            }
        },
    }
}


def _add_face_interpolate_route(app: FastAPI, service: _Service, stage_key: str, key: str) -> None:
    """``POST /v1/<key>``: two photos in, the latent walk between their faces out (PNG strip)."""

    @_face_route(
        app,
        key,
        "Walk the latent space from the face in photo a to the face in photo b",
        body=_PAIR_DOC,
        responses={
            200: {"content": {"image/png": {}}, "description": "One row of faces per method."},
            **_ERRORS_DOC,
            422: {"description": "No usable face in a or b (reason per face), or bad parameter."},
        },
    )
    async def face_interpolate_endpoint(
        request: Request,
        steps: int = Query(8, ge=2, le=256, description="Faces on the path, ends included."),
        method: Literal["linear", "slerp", "both"] = Query("linear"),
        face: str = Query("largest", description="largest | N, in each photo."),
    ) -> Response:
        from aepipe.core import face_strip, interpolate_faces, walk_methods
        from aepipe.io import page_batch, png_bytes

        stage = service.need(stage_key)
        methods = walk_methods(method)
        choice = parse_face_choice(face, one=True)
        files = await service.uploads(request, ("a", "b"))

        def work() -> Media:
            a, b = (
                page_batch(decode_upload(data, name, service.settings)[0], _stem(name))
                for data, name in files
            )
            rows = interpolate_faces(stage, a, b, steps, methods, face=choice)
            return png_bytes(face_strip(rows)), "image/png", "interpolation.png"

        return await service.respond(work)


_ROUTE_KINDS: dict[str, Callable[[FastAPI, _Service, str], None]] = {
    "pages": _add_pages_route,
    "image": _add_image_route,
    "generate": _add_generate_route,
}
_MORE_ROUTE_KINDS: dict[str, Callable[[FastAPI, _Service, str, str], None]] = {
    "face-edit": _add_face_edit_route,
    "face-reconstruct": _add_face_reconstruct_route,
    "face-interpolate": _add_face_interpolate_route,
}


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
    uvicorn.Server(uvicorn_config(app, settings, host, port, log_level)).run()


def uvicorn_config(
    app: Any, settings: ServeSettings, host: str, port: int, log_level: str = "info"
) -> Any:
    """The uvicorn config ``aepipe serve`` runs ``app`` with.

    h11 with a header deadline, the keep-alive timeout, ``X-Forwarded-For`` trusted only from
    ``forwarded_allow_ips``, and a connection backstop beyond our own queue (uvicorn answers
    503 past it).
    """
    import uvicorn

    from aepipe.serve_guard import header_timeout_protocol

    trusted = settings.forwarded_allow_ips.strip()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=header_timeout_protocol(settings.header_timeout),
        timeout_keep_alive=max(1, round(settings.keep_alive)),
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        limit_concurrency=settings.concurrency + settings.queue + 64,
        server_header=False,
    )
