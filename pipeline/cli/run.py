"""``aepipe run pipeline.toml``: run a chain described in a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from aepipe.cli.apps import app
from aepipe.cli.common import (
    QuietOpt,
    cli_errors,
    err,
    finish_summary,
    progress_bar,
    require_jobs,
)

if TYPE_CHECKING:
    from aepipe.pipeline import Written


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
    from aepipe.runner import run_files

    with cli_errors():
        spec = read_pipeline_file(config)
        if not isinstance(spec.source, FolderSource):
            _report_generated(write_generated(spec), spec.sink.out)
        jobs, options = plan_files(spec, str(config))
        require_jobs(jobs, spec.source.inputs)
        pipe = Pipeline(build_stages(spec))
        with progress_bar(len(jobs), quiet) as on_record:
            summary = run_files(spec.source.inputs, pipe, options, on_record=on_record)
        finish_summary(summary, quiet)


def _report_generated(done: Written, out: str) -> NoReturn:
    """Say what a generated source wrote and kept, then exit 0."""
    from aepipe.errors import ExitCode

    kept = f", kept {len(done.skipped)} that exist (overwrite = false)" if done.skipped else ""
    err(f"wrote {len(done.written)} files to {out}{kept}")
    if done.note:
        err(f"note: {done.note}")
    raise typer.Exit(int(ExitCode.OK))
