"""The VQ-VAE face generator's own commands.

``aepipe train face-vqvae`` (its two training stages), ``aepipe faces vq-interpolate`` and
``aepipe faces codebook``. Sampling is ``gen-faces --model face-vqvae`` (the generator
protocol) and reconstructing a TOML ``face-vqvae`` stage, with no code here.

Nothing heavy is imported at module level (``aepipe --help`` must stay fast).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import faces_app, train_app
from aepipe.cli.common import (
    MaxStepsOpt,
    OverwriteShippedOpt,
    ResumeOpt,
    TrainOutOpt,
    check_choice,
    cli_errors,
    err,
    invocation,
    train_out,
)

_STAGES = ("vqvae", "prior", "both")


@train_app.command("face-vqvae")
def train_face_vqvae(
    stage: Annotated[
        str,
        typer.Option(
            "--stage",
            help="vqvae (autoencoder + codebook), prior (code prior on the frozen VQ-VAE in "
            "--init or --out) or both, one after the other.",
        ),
    ] = "both",
    out: TrainOutOpt = None,
    overwrite_shipped: OverwriteShippedOpt = False,
    data: Annotated[
        Path | None, typer.Option("--data", help="Face archive [default: the config's].")
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="prior: the VQ-VAE folder to start from [default: --out]."),
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    prior_epochs: Annotated[
        int | None, typer.Option("--prior-epochs", min=1, help="Epochs of the prior with both.")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option("--max-minutes", help="Budget of each stage.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    lr: Annotated[float | None, typer.Option("--lr")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=16)] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0, max=3)] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=0)] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0, max=1)] = None,
    max_steps: MaxStepsOpt = None,
    resume: ResumeOpt = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads.")] = 1,
) -> None:
    """Train the VQ-VAE face generator: the VQ-VAE, then the prior over its codes."""
    from aepipe.train.face_vqvae import TrainConfig, train

    with cli_errors():
        check_choice(stage, _STAGES, "--stage")
        target = train_out(out, "face-vqvae", overwrite_shipped)
        given = dict(
            data=data,
            init=init,
            max_minutes=max_minutes,
            batch_size=batch_size,
            lr=lr,
            limit=limit,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        common = {k: v for k, v in given.items() if v is not None}
        common.update(max_steps=max_steps, resume=resume, seed=seed, threads=threads)
        for part in ("vqvae", "prior") if stage == "both" else (stage,):
            n = prior_epochs if part == "prior" and stage == "both" else epochs
            extra = {} if n is None else {"epochs": n}
            cfg = TrainConfig(stage=part, command=invocation(), **common, **extra)
            train(cfg, target, progress=err)
        err(f"wrote {target}")


ModelOpt = Annotated[str, typer.Option("--model", help="VQ-VAE weights name or folder.")]


def _load(model: str):
    from aepipe.errors import WeightsError
    from aepipe.stage import load_stage
    from aepipe.stages.face_vqvae import FaceVQVAE

    stage = load_stage(model)
    if not isinstance(stage, FaceVQVAE):
        raise WeightsError(f"{model}: weights are for stage {stage.name!r}, not 'face-vqvae'")
    return stage


@faces_app.command("vq-interpolate")
def vq_interpolate(
    a: Annotated[Path, typer.Argument(help="First face image.", show_default=False)],
    b: Annotated[Path, typer.Argument(help="Second face image.", show_default=False)],
    steps: Annotated[int, typer.Option("--steps", min=2, max=256)] = 8,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG strip to write.")] = Path(
        "vq_interpolation.png"
    ),
    model: ModelOpt = "face-vqvae",
) -> None:
    """Walk from face A to face B in the VQ-VAE's encoder space (before quantisation)."""
    from aepipe.cli.faces import _read_one, _write_grid

    with cli_errors():
        stage = _load(model)
        _write_grid(stage.interpolate(_read_one(a), _read_one(b), steps), out, ncols=steps)
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
        _write_grid(_load(model).codebook(first, count), out)
        err(f"wrote {out}")
