"""Impulse-noise commands: ``aepipe denoise`` and ``aepipe train salt-pepper``.

Nothing heavy is imported at module level (``aepipe --help`` must stay fast): torch, numpy and
the stage are imported inside the command functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import app, train_app
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
    MaxStepsOpt,
    OutOpt,
    OverwriteOpt,
    OverwriteShippedOpt,
    QuietOpt,
    RecursiveOpt,
    ReportOpt,
    ResumeOpt,
    TrainOutOpt,
    check_choice,
    cli_errors,
    err,
    file_options,
    invocation,
    run_job,
    train_out,
)
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


@train_app.command("salt-pepper")
def train_salt_pepper(
    data: Annotated[
        Path, typer.Option("--data", help="Fashion-MNIST folder (IDX .gz files).")
    ] = Path("../shared/data/fashion-mnist"),
    out: TrainOutOpt = None,
    overwrite_shipped: OverwriteShippedOpt = False,
    arch: Annotated[
        str, typer.Option("--arch", help="impulse (ours) | tutorial (Conv 64-32-16 baseline).")
    ] = "impulse",
    max_epochs: Annotated[int, typer.Option("--max-epochs", min=1)] = 18,
    epoch_samples: Annotated[int, typer.Option("--epoch-samples", min=100)] = 10000,
    patience: Annotated[int, typer.Option("--patience", min=1)] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    lr: Annotated[float, typer.Option("--lr")] = 2e-3,
    binary_fraction: Annotated[
        float, typer.Option("--binary-fraction", help="Share of images with 0/255 noise.")
    ] = 0.7,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads.")] = 1,
    max_minutes: Annotated[
        float | None, typer.Option("--max-minutes", help="Wall-clock safety cap.")
    ] = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train the salt-and-pepper denoiser on Fashion-MNIST (CPU, about 45 min with 1 thread)."""
    from aepipe.train.salt_pepper import TrainConfig, train

    with cli_errors():
        out = train_out(out, "salt-pepper", overwrite_shipped)
        cfg = TrainConfig(
            data=data,
            arch=check_choice(arch, ("impulse", "tutorial"), "--arch"),  # type: ignore[arg-type]
            max_epochs=max_epochs,
            epoch_samples=epoch_samples,
            patience=patience,
            batch_size=batch_size,
            lr=lr,
            binary_fraction=binary_fraction,
            seed=seed,
            threads=threads,
            max_minutes=max_minutes,
            max_steps=max_steps,
            resume=resume,
            command=invocation(),
        )
        train(cfg, out, progress=err)
        err(f"wrote {out}")
