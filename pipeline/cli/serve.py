"""``aepipe serve``: the stages as an HTTP service (FastAPI + uvicorn, the ``[serve]`` extra)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from aepipe.cli.apps import app

if TYPE_CHECKING:
    from aepipe.serve import ServeSettings

_MODEL_HELP = "Weights name or folder (default: the shipped weights); 'none' turns it off."
_AUTO_HELP = (
    "Weights name or folder (default: 'auto', the face or the photo colorizer per image, as "
    "colorize --model auto); 'none' turns it off."
)


def _model_opt(flag: str, what: str, help_text: str = _MODEL_HELP) -> object:
    return typer.Option(flag, help=f"{what}. {help_text}", show_default=False)


_Host = Annotated[str, typer.Option("--host", help="Interface to bind (0.0.0.0 for all).")]
_Port = Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")]
_Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")]
_Concurrency = Annotated[
    int, typer.Option("--concurrency", min=1, max=64, help="Model calls running at once.")
]
_Queue = Annotated[
    int, typer.Option("--queue", min=0, help="Requests that may wait; more get 503.")
]
_UploadMb = Annotated[
    float, typer.Option("--max-upload-mb", min=0.001, help="Larger bodies get 413.")
]
_Pixels = Annotated[int, typer.Option("--max-pixels", min=1, help="Larger images/pages get 413.")]
_Pages = Annotated[int, typer.Option("--max-pages", min=1, help="Most pages per PDF/TIFF.")]
_Dpi = Annotated[
    int | None,
    typer.Option(
        "--dpi",
        min=36,
        max=1200,
        help="Resolution for PDF pages that are rendered: an override; default: each page's "
        "scan's own DPI (300 without a scan), as clean-scans.",
        show_default=False,
    ),
]
_Faces = Annotated[int, typer.Option("--max-faces", min=1, help="Most images per generate call.")]
_Threads = Annotated[
    int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: torch's).")
]
_KeyFile = Annotated[
    Path | None,
    typer.Option(
        "--api-key-file",
        help="File of API keys, one a line (>= 16 characters each); clients send "
        "'Authorization: Bearer <key>'. Without it, keys come from $AEPIPE_API_KEYS "
        "(comma-separated). Keys are never taken on the command line.",
        show_default=False,
    ),
]
_NoAuth = Annotated[
    bool,
    typer.Option(
        "--insecure-no-auth",
        help="Allow serving a non-loopback --host without API keys (anyone who can reach the "
        "port can use it).",
    ),
]
_Timeout = Annotated[
    float,
    typer.Option(
        "--request-timeout", min=0.01, help="Seconds per request, model call included; then 504."
    ),
]
_BodyTimeout = Annotated[
    float,
    typer.Option(
        "--body-timeout", min=0.01, help="Seconds for the whole upload to arrive; then 408."
    ),
]
_HeaderTimeout = Annotated[
    float,
    typer.Option(
        "--header-timeout", min=0.01, help="Seconds for request line + headers; then closed."
    ),
]
_KeepAlive = Annotated[
    float, typer.Option("--keep-alive", min=1, help="Seconds an idle connection stays open.")
]
_PerClient = Annotated[
    int,
    typer.Option(
        "--per-client",
        min=1,
        help="Requests one client (API key, else IP) may have in flight; more get 429.",
    ),
]
_Forwarded = Annotated[
    str,
    typer.Option(
        "--forwarded-allow-ips",
        help="Proxy IPs (comma-separated) whose X-Forwarded-For is taken as the client IP; "
        "empty: ignore the header.",
    ),
]
_LogLevel = Annotated[str, typer.Option("--log-level", help="uvicorn log level.")]
_Models = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        help="ROUTE=WEIGHTS for any endpoint of the registry (repeatable), e.g. faces=runs/vae; "
        "WEIGHTS 'none' turns it off.",
    ),
]


@app.command("serve")
def serve(
    host: _Host = "127.0.0.1",
    port: _Port = 8000,
    scan_model: Annotated[str | None, _model_opt("--scan-model", "POST /v1/clean-scan")] = None,
    denoise_model: Annotated[str | None, _model_opt("--denoise-model", "POST /v1/denoise")] = None,
    colorize_model: Annotated[
        str | None, _model_opt("--colorize-model", "POST /v1/colorize", _AUTO_HELP)
    ] = None,
    faces_model: Annotated[str | None, _model_opt("--faces-model", "GET /v1/faces")] = None,
    model: _Models = None,
    device: _Device = "auto",
    concurrency: _Concurrency = 1,
    queue: _Queue = 64,
    max_upload_mb: _UploadMb = 20.0,
    max_pixels: _Pixels = 25_000_000,
    max_pages: _Pages = 50,
    dpi: _Dpi = None,
    max_faces: _Faces = 256,
    threads: _Threads = None,
    api_key_file: _KeyFile = None,
    insecure_no_auth: _NoAuth = False,
    request_timeout: _Timeout = 120.0,
    body_timeout: _BodyTimeout = 30.0,
    header_timeout: _HeaderTimeout = 10.0,
    keep_alive: _KeepAlive = 5.0,
    per_client: _PerClient = 8,
    forwarded_allow_ips: _Forwarded = "",
    log_level: _LogLevel = "info",
) -> None:
    """Serve the stages over HTTP: clean-scan, denoise, colorize, faces; docs at /docs.

    Every stage loads once at start-up. Without a --*-model option an endpoint uses the shipped
    weights when present and is turned off (503) when not; a named model that cannot be loaded
    stops the server before it starts (exit code 4). Endpoints come from aepipe.registry.

    Binding a non-loopback --host needs API keys (--api-key-file or $AEPIPE_API_KEYS) or
    --insecure-no-auth; otherwise the server refuses to start (exit code 2). Limits: bodies over
    --max-upload-mb get 413 (counted while reading), more than --max-pages pages 413, uploads
    slower than --body-timeout 408, requests over --request-timeout 504, more than --per-client
    requests in flight from one client 429, a full --queue 503. /healthz needs no key.
    """
    from aepipe.cli.common import check_choice, cli_errors, err, fail
    from aepipe.errors import ExitCode

    device = check_choice(device, ("auto", "cpu", "cuda"), "--device")
    try:
        from aepipe.serve import run_server
        from aepipe.serve_guard import check_bindable
    except ModuleNotFoundError as exc:
        fail(
            f"{exc.name} is not installed; install the [serve] extra: pip install 'aepipe[serve]'",
            ExitCode.BAD_ARGS,
        )
    with cli_errors():
        settings = _settings(locals())
        check_bindable(host, port)
        serving: list[str] = []

        def ready(url: str) -> None:
            serving.append(url)
            err(f"stages loaded; serving on {url} (docs: {url}/docs)")

        try:
            run_server(settings, host, port, log_level.lower(), on_ready=ready)
        except KeyboardInterrupt:
            if not serving:
                raise  # stopped while loading: an interrupted start, not a served stop
            # uvicorn has already shut down gracefully (SIGTERM or Ctrl-C): a normal stop.
            err("server stopped")
            raise typer.Exit(int(ExitCode.OK)) from None


# serve's options that ServeSettings takes as they are.
_SAME_SETTINGS = (
    "device",
    "concurrency",
    "queue",
    "max_pixels",
    "max_pages",
    "dpi",
    "max_faces",
    "threads",
    "request_timeout",
    "body_timeout",
    "header_timeout",
    "keep_alive",
    "per_client",
    "forwarded_allow_ips",
)


def _settings(options: Mapping[str, Any]) -> ServeSettings:
    """The server's settings from ``serve``'s options (its ``locals()``).

    Checks access first (keys or loopback), then which weights each endpoint serves.
    """
    from aepipe.cli.common import err
    from aepipe.serve import ServeSettings, default_weights, endpoint_stages

    stages = endpoint_stages()

    api_keys = _access(options["host"], options["api_key_file"], options["insecure_no_auth"])
    given = {
        "clean-scan": options["scan_model"],
        "denoise": options["denoise_model"],
        "colorize": options["colorize_model"],
        "faces": options["faces_model"],
    }
    given.update(_route_options(options["model"] or [], stages))
    return ServeSettings(
        models=_endpoint_models(given, stages, default_weights, err),
        max_upload_bytes=int(options["max_upload_mb"] * 1024 * 1024),
        api_keys=tuple(api_keys),
        **{name: options[name] for name in _SAME_SETTINGS},
    )


def _access(host: str, key_file: Path | None, insecure: bool) -> list[str]:
    """The API keys, after refusing (exit 2) a non-loopback host without keys or the flag."""
    from aepipe.cli.common import err as note
    from aepipe.cli.common import fail
    from aepipe.errors import ExitCode
    from aepipe.serve_guard import KEYS_ENV, is_loopback, load_api_keys

    keys = load_api_keys(key_file)
    if keys:
        note(f"API keys: {len(keys)} loaded; requests need 'Authorization: Bearer <key>'")
    elif not is_loopback(host):
        if not insecure:
            fail(
                f"refusing to serve {host} without API keys: anyone who can reach it could use "
                f"it. Give --api-key-file PATH or ${KEYS_ENV}, bind 127.0.0.1 (e.g. behind a "
                "reverse proxy), or pass --insecure-no-auth.",
                ExitCode.BAD_ARGS,
            )
        note(f"warning: serving {host} WITHOUT authentication (--insecure-no-auth)")
    return keys


def _endpoint_models(
    given: dict[str, str | None],
    endpoints: dict[str, str],
    default_weights: Callable[[str], str | None],
    note: Callable[[str], None],
) -> dict[str, str | None]:
    """Weights per endpoint: the option's value, ``None`` for 'none', else the shipped default."""
    models: dict[str, str | None] = {}
    for key, stage_name in endpoints.items():
        value = given.get(key)
        if value is None:
            models[key] = default_weights(key)
            if models[key] is None:
                note(f"note: no shipped {stage_name} weights; /v1/{key} is off")
        else:
            models[key] = None if value.lower() == "none" else value
    return models


def _route_options(values: list[str], endpoints: dict[str, str]) -> dict[str, str]:
    """Parse ``--model ROUTE=WEIGHTS`` options.

    Raises:
        ConfigError: a value is not ``ROUTE=WEIGHTS`` or names no endpoint.
    """
    from aepipe.errors import ConfigError

    out: dict[str, str] = {}
    for value in values:
        route, sep, weights = value.partition("=")
        if not sep or not weights:
            raise ConfigError(f"--model expects ROUTE=WEIGHTS (e.g. faces=runs/vae); got {value!r}")
        if route not in endpoints:
            raise ConfigError(f"--model {value}: no endpoint {route!r}; known: {sorted(endpoints)}")
        out[route] = weights
    return out
