"""Impulse-noise commands: ``aepipe denoise`` and ``aepipe train salt-pepper``.

Nothing heavy is imported at module level (``aepipe --help`` must stay fast): torch, numpy and
the stage are imported inside the command functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import app
from aepipe.cli.common import FileJob, check_choice, file_command
from aepipe.cli.train_options import add_train_command

RGB_MODES = ("per-channel", "gray")


@file_command(app, "denoise", "denoised")
def denoise(
    job: FileJob,
    model: Annotated[str, typer.Option("--model", help="Weights name or folder.")] = "salt-pepper",
    rgb: Annotated[
        str | None,
        typer.Option(
            "--rgb",
            help="Colour images: per-channel (keep colour) | gray (default: the model's; "
            "per-channel for the shipped weights).",
        ),
    ] = None,
    passes: Annotated[
        int | None,
        typer.Option(
            "--passes",
            min=1,
            max=4,
            help="Apply the model N times, for heavy noise (default: the model's; 1 for the "
            "shipped weights).",
        ),
    ] = None,
) -> None:
    """Remove salt-and-pepper (impulse) noise from images of any size (2-50% noise).

    Gray images are denoised directly; colour images channel by channel (or as gray with
    --rgb gray). Outputs keep each input's name and pixel size; up-to-date outputs are
    skipped, so an interrupted run resumes where it stopped when run again (without
    --overwrite, which redoes every file).

    Exit codes: 0 all done, 1 some files failed, 2 bad arguments, 3 nothing processed (all failed),
    4 weights could not be loaded, 130 interrupted (Ctrl-C or SIGTERM).
    """
    # Only what was given overrides the settings stored with the weights.
    overrides = {
        "rgb": None if rgb is None else check_choice(rgb, RGB_MODES, "--rgb"),
        "passes": passes,
    }
    given = {k: v for k, v in overrides.items() if v is not None}

    def load():
        from aepipe.stages.impulse_denoiser import ImpulseDenoiser

        return ImpulseDenoiser.from_pretrained(model, device=job.device, **given)

    job.run(load)


add_train_command(
    "salt-pepper",
    "aepipe.train.salt_pepper",
    help="Train the salt-and-pepper denoiser on Fashion-MNIST (CPU; the shipped run, 12 epochs "
    "on 1 thread, took 34 min: weights/salt-pepper/config.json).",
    defaults={"data": Path("../shared/data/fashion-mnist")},
)
