"""Impulse-noise commands: ``aepipe denoise`` and ``aepipe train salt-pepper``.

Nothing heavy is imported at module level (``aepipe --help`` must stay fast): torch, numpy and
the stage are imported inside the command functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import app
from aepipe.cli.common import (
    DEVICES,
    BatchOpt,
    DeviceOpt,
    DpiOpt,
    FormatOpt,
    FramesOpt,
    InputsArg,
    ListIgnoredOpt,
    MaxPixelsOpt,
    OutOpt,
    OverwriteOpt,
    OverwriteShippedOpt,
    QuietOpt,
    RecursiveOpt,
    ReportOpt,
    TrainOutOpt,
    check_choice,
    cli_errors,
    err,
    file_options,
    run_job,
    train_out,
)
from aepipe.cli.train_options import train_command, train_config
from aepipe.defaults import DEFAULT_MAX_PIXELS

RGB_MODES = ("per-channel", "gray")


@app.command("denoise")
def denoise(
    inputs: InputsArg,
    out: OutOpt = None,
    model: Annotated[str, typer.Option("--model", help="Weights name or folder.")] = "salt-pepper",
    rgb: Annotated[
        str, typer.Option("--rgb", help="Colour images: per-channel (keep colour) | gray.")
    ] = "per-channel",
    passes: Annotated[
        int, typer.Option("--passes", min=1, max=4, help="Apply the model N times (heavy noise).")
    ] = 1,
    fmt: FormatOpt = "same",
    dpi: DpiOpt = None,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    recursive: RecursiveOpt = False,
    report: ReportOpt = None,
    quiet: QuietOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    frames: FramesOpt = "first",
    list_ignored: ListIgnoredOpt = False,
) -> None:
    """Remove salt-and-pepper (impulse) noise from images of any size (2-50% noise).

    Gray images are denoised directly; colour images channel by channel (or as gray with
    --rgb gray). Outputs keep each input's name and pixel size; existing outputs are skipped,
    so an interrupted run resumes where it stopped.

    Exit codes: 0 all done, 1 some files failed, 2 bad arguments, 3 nothing processed,
    4 weights could not be loaded, 130 interrupted.
    """
    device = check_choice(device, DEVICES, "--device")
    rgb = check_choice(rgb, RGB_MODES, "--rgb")
    options = file_options("denoised", locals())

    def load():
        from aepipe.stages.impulse_denoiser import ImpulseDenoiser

        return ImpulseDenoiser.from_pretrained(model, device=device, rgb=rgb, passes=passes)

    run_job(inputs, load, options, quiet=quiet, unit="image")


@train_command(
    "salt-pepper",
    "aepipe.train.salt_pepper:TrainConfig",
    defaults={"data": Path("../shared/data/fashion-mnist")},
)
def train_salt_pepper(
    ctx: typer.Context,
    out: TrainOutOpt = None,
    overwrite_shipped: OverwriteShippedOpt = False,
) -> None:
    """Train the salt-and-pepper denoiser on Fashion-MNIST (CPU, about 45 min with 1 thread)."""
    from aepipe.train.salt_pepper import train

    with cli_errors():
        out = train_out(out, "salt-pepper", overwrite_shipped)
        train(train_config(ctx), out, progress=err)
        err(f"wrote {out}")
