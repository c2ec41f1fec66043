"""``aepipe serve``: the stages as an HTTP service (FastAPI + uvicorn, the ``[serve]`` extra)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from pipeline.cli.apps import app

_MODEL_HELP = (
    "Weights name or folder (default: the shipped weights); 'none' turns the endpoint off."
)


def _model_opt(flag: str, what: str) -> object:
    return typer.Option(flag, help=f"{what}. {_MODEL_HELP}", show_default=False)


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
_Dpi = Annotated[int, typer.Option("--dpi", min=36, max=1200, help="PDF rendering resolution.")]
_Faces = Annotated[int, typer.Option("--max-faces", min=1, help="Most images per generate call.")]
_Threads = Annotated[
    int | None, typer.Option("--threads", min=1, help="torch CPU threads [default: torch's].")
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
        str | None, _model_opt("--colorize-model", "POST /v1/colorize")
    ] = None,
    faces_model: Annotated[str | None, _model_opt("--faces-model", "GET /v1/faces")] = None,
    model: _Models = None,
    device: _Device = "auto",
    concurrency: _Concurrency = 1,
    queue: _Queue = 64,
    max_upload_mb: _UploadMb = 20.0,
    max_pixels: _Pixels = 25_000_000,
    max_pages: _Pages = 50,
    dpi: _Dpi = 150,
    max_faces: _Faces = 256,
    threads: _Threads = None,
    log_level: _LogLevel = "info",
) -> None:
    """Serve the stages over HTTP: clean-scan, denoise, colorize, faces; docs at /docs.

    Every stage loads once at start-up. Without a --*-model option an endpoint uses the shipped
    weights when present and is turned off (503) when not; a named model that cannot be loaded
    stops the server before it starts (exit code 4). Endpoints come from pipeline.registry.
    """
    from pipeline.cli.common import check_choice, cli_errors, err, fail
    from pipeline.errors import ExitCode

    device = check_choice(device, ("auto", "cpu", "cuda"), "--device")
    try:
        from pipeline.serve import ServeSettings, default_weights, endpoint_stages, run_server
    except ModuleNotFoundError as exc:
        fail(
            f"{exc.name} is not installed; install the [serve] extra: pip install 'aepipe[serve]'",
            ExitCode.BAD_ARGS,
        )
    given = {
        "clean-scan": scan_model,
        "denoise": denoise_model,
        "colorize": colorize_model,
        "faces": faces_model,
    }
    with cli_errors():
        given.update(_route_options(model or [], endpoint_stages()))
        models = _endpoint_models(given, endpoint_stages(), default_weights, err)
        settings = ServeSettings(
            models=models,
            device=device,
            concurrency=concurrency,
            queue=queue,
            max_upload_bytes=int(max_upload_mb * 1024 * 1024),
            max_pixels=max_pixels,
            max_pages=max_pages,
            dpi=dpi,
            max_faces=max_faces,
            threads=threads,
        )
        run_server(
            settings,
            host,
            port,
            log_level.lower(),
            on_ready=lambda url: err(f"stages loaded; serving on {url} (docs: {url}/docs)"),
        )


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
    from pipeline.errors import ConfigError

    out: dict[str, str] = {}
    for value in values:
        route, sep, weights = value.partition("=")
        if not sep or not weights:
            raise ConfigError(f"--model expects ROUTE=WEIGHTS (e.g. faces=runs/vae); got {value!r}")
        if route not in endpoints:
            raise ConfigError(f"--model {value}: no endpoint {route!r}; known: {sorted(endpoints)}")
        out[route] = weights
    return out
