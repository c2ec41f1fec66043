"""``aepipe run pipeline.toml``: run a chain described in a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import app
from aepipe.cli.common import (
    QuietOpt,
    cli_errors,
    finish_summary,
    progress_bar,
    require_jobs,
)


@app.command("run")
def run_pipeline(
    config: Annotated[Path, typer.Argument(help="Pipeline TOML file (see examples/*.toml).")],
    quiet: QuietOpt = False,
) -> None:
    """Run a pipeline file: a source (files, generated faces, a face walk), stages, a sink.

    The whole file, including every stage's config, is validated before any weights load.
    """
    from aepipe.errors import ExitCode
    from aepipe.pipeline import (
        FacesSource,
        InterpolateSource,
        Pipeline,
        build_stages,
        faces_source,
        interpolate_source,
        read_pipeline_file,
        write_batches,
    )
    from aepipe.runner import RunOptions, plan, run_files

    with cli_errors():
        spec = read_pipeline_file(config)
        sink = spec.sink
        src = spec.source
        if isinstance(src, (FacesSource, InterpolateSource)):
            if isinstance(src, FacesSource):
                batches, ncols = faces_source(src, build_stages(spec)), None
            else:  # the grid is the strip of `faces interpolate`: a row per path
                batches, ncols = interpolate_source(src, build_stages(spec)), src.steps
            grid = Path(sink.grid) if sink.grid else None
            done = write_batches(batches, Path(sink.out), grid, sink.overwrite, ncols)
            kept = (
                f", kept {len(done.skipped)} that exist (overwrite = false)" if done.skipped else ""
            )
            typer.echo(f"wrote {len(done.written)} files to {sink.out}{kept}", err=True)
            raise typer.Exit(int(ExitCode.OK))
        options = RunOptions(
            out_dir=Path(sink.out),
            fmt=sink.format,
            recursive=spec.source.recursive,
            overwrite=sink.overwrite,
            dpi=spec.source.dpi,
            max_pixels=spec.source.max_pixels,
            batch_size=sink.batch_size,
            report=Path(sink.report) if sink.report else None,
        )
        jobs, _, _ = plan(spec.source.inputs, options)
        require_jobs(jobs, spec.source.inputs)
        pipe = Pipeline(build_stages(spec))
        with progress_bar(len(jobs), quiet) as on_record:
            summary = run_files(spec.source.inputs, pipe, options, on_record=on_record)
        finish_summary(summary, quiet)
