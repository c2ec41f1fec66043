"""``aepipe run pipeline.toml``: run a chain described in a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from aepipe.cli.apps import app
from aepipe.cli.common import (
    QuietOpt,
    cli_errors,
    err,
    require_jobs,
    run_planned,
)

if TYPE_CHECKING:
    from aepipe.pipeline import PipelineSpec, Written


@app.command("run")
def run_pipeline(
    config: Annotated[Path, typer.Argument(help="Pipeline TOML file (see examples/*.toml).")],
    quiet: QuietOpt = False,
) -> None:
    """Run a pipeline file: a source (files, generated faces, a face walk), stages, a sink.

    The whole file (the source and its generator's options, every stage's config, the output
    folder) is checked before any weights load; a refusal names the file and the key.
    """
    from aepipe.pipeline import (
        FolderSource,
        Pipeline,
        build_stages,
        plan_files,
        read_pipeline_file,
        write_generated,
    )
    from aepipe.runner import plan, run_files

    with cli_errors(quiet):
        spec = read_pipeline_file(config)
        if not isinstance(spec.source, FolderSource):
            _report_generated(write_generated(spec, str(config)), spec)
        _, options = plan_files(spec, str(config))  # refusals in the file's terms
        inputs = spec.source.inputs
        planned = plan(inputs, options)
        require_jobs(planned, inputs, options)

        def start(pipe: Pipeline, bar: Any) -> Any:
            return run_files(inputs, pipe, options, on_record=bar, on_page=bar.on_page)

        run_planned(lambda: Pipeline(build_stages(spec)), start, planned, options, quiet=quiet)


def _report_generated(done: Written, spec: PipelineSpec) -> NoReturn:
    """Say what a generated source wrote where (the grid need not be in sink.out), then exit 0."""
    from aepipe.errors import ExitCode

    grid = Path(spec.sink.grid) if spec.sink.grid else None
    for line in done.report(Path(spec.sink.out), grid, "files", "overwrite = true"):
        err(line)
    raise typer.Exit(int(ExitCode.OK))
