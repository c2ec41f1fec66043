"""Colorizer commands: ``aepipe colorize`` and ``aepipe train colorizer``.

Nothing heavy is imported at module level (``aepipe --help`` must stay fast): torch, numpy and
the stage are imported inside the command functions. The standalone ``colorize`` console
script is :func:`aepipe.cli.main.colorize_main`, which runs the ``colorize`` command below.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import app
from aepipe.cli.common import FileJob, file_command
from aepipe.cli.train_options import add_train_command


class Upsample(str, Enum):
    """Choices of ``--upsample`` (the stage's ``upsample`` option)."""

    guided = "guided"
    bilinear = "bilinear"


@file_command(app, "colorize", "colorized")
def colorize(
    job: FileJob,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            help="auto (default): the face colorizer for roughly square images (aspect at most "
            "1.25) up to 96 px, and for those of 97-160 px only when a detected face is at "
            "least a third of the short side; colorizer-photo for everything else. Or a "
            "weights name or folder for all images.",
        ),
    ] = "auto",
    projection: Annotated[
        bool,
        typer.Option(
            "--projection/--no-projection",
            help="Keep the input's gray exactly (default) or output the model's raw colours.",
        ),
    ] = True,
    temperature: Annotated[
        float | None,
        typer.Option(
            "--temperature",
            min=0.05,
            max=2.0,
            help="Colour boldness of models with a classification head: lower is more vivid, "
            "1 is safest (default: the model's). Both shipped colorizers regress their colours "
            "and ignore it: use --saturation.",
        ),
    ] = None,
    saturation: Annotated[
        float | None,
        typer.Option(
            "--saturation",
            min=0.0,
            max=4.0,
            help="Gain on the colour differences within each image: above 1 more colourful, "
            "0 one tint everywhere (default: the model's).",
        ),
    ] = None,
    upsample: Annotated[
        Upsample | None,
        typer.Option(
            "--upsample",
            help="How the small chroma reaches full size: guided (colour edges follow the "
            "gray's edges) or bilinear (default: the model's).",
        ),
    ] = None,
) -> None:
    """Add colour to gray photos and faces of any size, keeping their gray exactly.

    With --model auto (default) each image gets the model made for it. Roughly square images
    (aspect at most 1.25) up to 96 px are taken as face crops (gen-faces' are 64x64) and get
    the face colorizer; from 97 to 160 px only when a face is detected that is at least a third
    of the short side (small square scene photos exist too); everything else, colorizer-photo
    (benchmarks/colorize_auto.py measures the rule). Colour inputs are
    converted to gray (BT.601) first. Chroma is predicted at the model's small resolution and
    laid onto the full-resolution gray, so outputs keep each input's name and pixel size;
    up-to-date outputs are skipped, so an interrupted run resumes when run again (without
    --overwrite, which redoes every file).

    Exit codes: 0 all done, 1 some files failed, 2 bad arguments, 3 nothing processed (all failed),
    4 weights could not be loaded, 130 interrupted (Ctrl-C or SIGTERM).
    """
    device = job.device
    overrides: dict[str, object] = {"projection": projection}
    if temperature is not None:
        overrides["temperature"] = temperature
    if saturation is not None:
        overrides["saturation"] = saturation
    if upsample is not None:
        overrides["upsample"] = upsample.value

    def load():
        from aepipe.stages.colorizer import AutoColorizer, Colorizer

        if model != "auto":
            return Colorizer.from_pretrained(model, device=device, **overrides)
        return AutoColorizer(device=device, **overrides)

    job.run(load)


add_train_command(
    "colorizer",
    "aepipe.train.colorizer",
    help="Train the StackNN colorizer on colour LFW faces or a photo folder (CPU, 1 thread).",
    defaults={"data": Path("../shared/data/faces/lfw_64.npz")},
)
