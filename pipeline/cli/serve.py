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


@app.command("serve")
def serve(
    host: Annotated[
        str, typer.Option("--host", help="Interface to bind (0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    scan_model: Annotated[str | None, _model_opt("--scan-model", "POST /v1/clean-scan")] = None,
    denoise_model: Annotated[str | None, _model_opt("--denoise-model", "POST /v1/denoise")] = None,
    colorize_model: Annotated[
        str | None, _model_opt("--colorize-model", "POST /v1/colorize")
    ] = None,
    faces_model: Annotated[str | None, _model_opt("--faces-model", "GET /v1/faces")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda.")] = "auto",
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=64, help="Model calls running at once.")
    ] = 1,
    queue: Annotated[
        int, typer.Option("--queue", min=0, help="Requests that may wait; more get 503.")
    ] = 64,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Larger bodies get 413.")
    ] = 20.0,
    max_pixels: Annotated[
        int, typer.Option("--max-pixels", min=1, help="Larger images/pages get 413.")
    ] = 25_000_000,
    max_pages: Annotated[
        int, typer.Option("--max-pages", min=1, help="Most pages per PDF/TIFF.")
    ] = 50,
    dpi: Annotated[
        int, typer.Option("--dpi", min=36, max=1200, help="PDF rendering resolution.")
    ] = 150,
    max_faces: Annotated[
        int, typer.Option("--max-faces", min=1, help="Most faces per request.")
    ] = 256,
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, help="torch CPU threads [default: torch's].")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve the stages over HTTP: clean-scan, denoise, colorize, faces; docs at /docs.

    Every stage loads once at start-up. Without a --*-model option an endpoint uses the shipped
    weights when present and is turned off (503) when not; a named model that cannot be loaded
    stops the server before it starts (exit code 4).
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
    models = _endpoint_models(given, endpoint_stages(), default_weights, err)
    with cli_errors():
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
