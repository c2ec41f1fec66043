"""The VQ-VAE face generator's own commands.

``aepipe train face-vqvae`` (its two training stages), ``aepipe faces vq-interpolate`` and
``aepipe faces codebook``. Sampling is ``gen-faces --model face-vqvae`` (the generator
protocol) and reconstructing ``aepipe faces reconstruct --model face-vqvae`` (the face
commands' own), with no code here.

Nothing heavy is imported at module level (``aepipe --help`` must stay fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import faces_app
from aepipe.cli.common import (
    OverwriteShippedOpt,
    TrainOutOpt,
    check_choice,
    cli_errors,
    err,
    image_target,
    train_out,
    training_data_errors,
)
from aepipe.cli.faces import AlignOpt, DeviceOpt, OneFaceOpt, PhotoA, PhotoB, StepsOpt
from aepipe.cli.train_options import train_command, train_config

_STAGES = ("vqvae", "prior", "both")


@train_command("face-vqvae", "aepipe.train.face_vqvae:TrainConfig", skip=("stage",))
def train_face_vqvae(
    ctx: typer.Context,
    stage: Annotated[
        str,
        typer.Option(
            "--stage",
            help="vqvae (autoencoder + codebook), prior (code prior on the frozen VQ-VAE in "
            "--init or --out) or both, one after the other.",
        ),
    ] = "both",
    prior_epochs: Annotated[
        int | None, typer.Option("--prior-epochs", min=1, help="Epochs of the prior with both.")
    ] = None,
    out: TrainOutOpt = None,
    overwrite_shipped: OverwriteShippedOpt = False,
) -> None:
    """Train the VQ-VAE face generator: the VQ-VAE, then the prior over its codes."""
    from aepipe.train.face_vqvae import train

    with cli_errors():
        check_choice(stage, _STAGES, "--stage")
        target = train_out(out, "face-vqvae", overwrite_shipped)
        for part in ("vqvae", "prior") if stage == "both" else (stage,):
            # With both, the prior runs --prior-epochs (default: the config's), not --epochs.
            epochs = {"epochs": prior_epochs} if part == "prior" and stage == "both" else {}
            with training_data_errors():
                train(train_config(ctx, stage=part, **epochs), target, progress=err)
        err(f"wrote {target}")


ModelOpt = Annotated[str, typer.Option("--model", help="VQ-VAE weights name or folder.")]


def _load(model: str, device: str = "cpu"):
    from aepipe.errors import WeightsError
    from aepipe.stage import load_stage
    from aepipe.stages.face_vqvae import FaceVQVAE

    stage = load_stage(model, device=device)
    if not isinstance(stage, FaceVQVAE):
        raise WeightsError(f"{model}: weights are for stage {stage.name!r}, not 'face-vqvae'")
    return stage


@faces_app.command("vq-interpolate")
def vq_interpolate(
    a: PhotoA,
    b: PhotoB,
    steps: StepsOpt = 8,
    face: OneFaceOpt = "largest",
    align: AlignOpt = "auto",
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG strip to write.")] = Path(
        "vq_interpolation.png"
    ),
    model: ModelOpt = "face-vqvae",
    device: DeviceOpt = "cpu",
) -> None:
    """Walk from face A to face B in the VQ-VAE's encoder space (before quantisation).

    A and B may be ordinary photos: the chosen face of each is found and aligned to the
    model's framing first (as faces interpolate does); face crops (--align crop) are
    centre-cropped.
    """
    from aepipe.cli.faces import _face_choice, _read_one, _resolve_device, _write_grid

    align = check_choice(align, ("auto", "photo", "crop"), "--align")
    choice = _face_choice(face, one=True)
    with cli_errors():
        from aepipe.core import aligned_face
        from aepipe.pipeline import check_not_an_input

        image_target(out, "--out")
        check_not_an_input(out, [a, b], "--out")
        stage = _load(model, _resolve_device(device))
        ends = [aligned_face(stage, _read_one(p), face=choice, align=align) for p in (a, b)]
        _write_grid(stage.interpolate(*ends, steps), out, ncols=steps)
        err(f"wrote {out}")


@faces_app.command("codebook")
def codebook(
    first: Annotated[int, typer.Option("--first", min=0, help="First code shown.")] = 0,
    count: Annotated[int, typer.Option("--count", min=1, max=4096)] = 64,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG sheet to write.")] = Path(
        "codebook.png"
    ),
    model: ModelOpt = "face-vqvae",
) -> None:
    """What each VQ-VAE code looks like: a grid filled with that one code, decoded."""
    from aepipe.cli.faces import _write_grid

    with cli_errors():
        image_target(out, "--out")
        _write_grid(_load(model).codebook(first, count), out)
        err(f"wrote {out}")
