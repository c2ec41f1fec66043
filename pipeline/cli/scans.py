"""Scan-denoiser commands: ``aepipe train scan-denoiser``.

The user-facing ``clean-scans`` command lives in the lead's runner/CLI and calls the
``scan-denoiser`` stage. Nothing heavy is imported at module level (``aepipe --help`` must stay
fast): torch, numpy and the training code are imported inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aepipe.cli.apps import train_app
from aepipe.cli.common import (
    OverwriteShippedOpt,
    ResumeOpt,
    TrainOutOpt,
    check_choice,
    cli_errors,
    err,
    invocation,
    train_out,
)


@train_app.command("scan-denoiser")
def train_scan_denoiser(
    ddd: Annotated[
        Path | None,
        typer.Option("--ddd", help="Denoising Dirty Documents folder (train/, train_cleaned/)."),
    ] = Path("../shared/data/ddd"),
    out: TrainOutOpt = None,
    overwrite_shipped: OverwriteShippedOpt = False,
    docbin: Annotated[
        Path | None,
        typer.Option("--docbin", help="docbin folder (images/, gt/): real pages, bilevel truth."),
    ] = None,
    docbin_fraction: Annotated[
        float,
        typer.Option("--docbin-fraction", min=0.0, max=1.0, help="Share of real docbin patches."),
    ] = 0.0,
    clean_fraction: Annotated[
        float,
        typer.Option(
            "--clean-fraction",
            min=0.0,
            max=1.0,
            help="Share of identity patches (clean page in, same page out).",
        ),
    ] = 0.0,
    display_prob: Annotated[
        float,
        typer.Option(
            "--display-prob",
            min=0.0,
            max=1.0,
            help="Chance a synthetic page gets large/bold type, shapes and photos.",
        ),
    ] = 0.0,
    photos: Annotated[
        Path | None,
        typer.Option("--photos", help="Folder of photographs for the display pages' photos."),
    ] = None,
    photo_prob: Annotated[
        float,
        typer.Option("--photo-prob", min=0.0, max=1.0, help="Chance a display page has a photo."),
    ] = 0.3,
    ink_level: Annotated[
        float,
        typer.Option("--ink-level", min=0.0, max=0.6, help="docbin ink: pushed below this."),
    ] = 0.2,
    test_groups: Annotated[
        int,
        typer.Option(
            "--test-groups", min=0, help="Of the --val-groups DDD pages, this many are test."
        ),
    ] = 0,
    arch: Annotated[
        str, typer.Option("--arch", help="scan-unet (ours) | classic (two-layer AE baseline).")
    ] = "scan-unet",
    base: Annotated[int, typer.Option("--base", min=4, help="ScanUNet top-level width.")] = 16,
    levels: Annotated[int, typer.Option("--levels", min=1, max=6)] = 4,
    convs: Annotated[
        int, typer.Option("--convs", min=1, max=4, help="ScanUNet conv layers per level.")
    ] = 2,
    fold: Annotated[
        int, typer.Option("--fold", min=1, max=4, help="ScanUNet input fold (1: full resolution).")
    ] = 2,
    output: Annotated[
        str, typer.Option("--output", help="ScanUNet output: sigmoid | clamp.")
    ] = "sigmoid",
    refine: Annotated[
        int,
        typer.Option(
            "--refine",
            min=0,
            max=64,
            help="ScanUNet: width of a stroke-edge correction on the output (0: none).",
        ),
    ] = 0,
    freeze_base: Annotated[
        bool,
        typer.Option(
            "--freeze-base", help="With --refine and --init: train only the new correction."
        ),
    ] = False,
    margin: Annotated[
        float,
        typer.Option(
            "--margin",
            min=0.0,
            max=0.5,
            help="With --output clamp: push pure paper/ink this far past the clamp in training.",
        ),
    ] = 0.0,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from this trained scan-denoiser weights folder (same network, or the "
            "same with --refine added; --output may differ).",
        ),
    ] = None,
    synthetic_fraction: Annotated[
        float,
        typer.Option("--synthetic-fraction", min=0.0, max=1.0, help="Share of synthetic patches."),
    ] = 0.5,
    val_groups: Annotated[
        int, typer.Option("--val-groups", min=0, help="DDD pages (x4 versions) held out.")
    ] = 8,
    patch: Annotated[int, typer.Option("--patch", min=16)] = 128,
    scale_lo: Annotated[
        float, typer.Option("--scale-lo", min=0.01, help="Random crop side / patch, low end.")
    ] = 0.6,
    scale_hi: Annotated[
        float, typer.Option("--scale-hi", min=0.01, help="Random crop side / patch, high end.")
    ] = 1.6,
    scale_prob: Annotated[
        float,
        typer.Option(
            "--scale-prob",
            min=0.0,
            max=1.0,
            help="Chance that a patch is resampled by a random scale (else native pixels).",
        ),
    ] = 1.0,
    level_aug: Annotated[
        float,
        typer.Option(
            "--level-aug", min=0.0, max=1.0, help="Chance of random ink/paper levels on a patch."
        ),
    ] = 0.5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 12,
    max_steps: Annotated[int, typer.Option("--max-steps", min=1)] = 6000,
    schedule_steps: Annotated[
        int | None,
        typer.Option(
            "--schedule-steps",
            min=1,
            help="Cosine schedule length (default --max-steps); stop early with a smaller "
            "--max-steps and the run replays the longer one's first steps, keeping a "
            "checkpoint for --resume.",
        ),
    ] = None,
    resume: ResumeOpt = False,
    val_every: Annotated[int, typer.Option("--val-every", min=1)] = 250,
    lr: Annotated[float, typer.Option("--lr")] = 2e-3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads.")] = 1,
    max_minutes: Annotated[
        float | None, typer.Option("--max-minutes", help="Wall-clock safety cap.")
    ] = None,
) -> None:
    """Train the scan denoiser on DDD pairs + synthetic degraded pages (CPU, 1 thread)."""
    from aepipe.train.scan_denoiser import TrainConfig, train

    with cli_errors():
        out = train_out(out, "scan-denoiser", overwrite_shipped)
        cfg = TrainConfig(
            ddd=ddd,
            arch=check_choice(arch, ("scan-unet", "classic"), "--arch"),  # type: ignore[arg-type]
            base=base,
            levels=levels,
            convs=convs,
            fold=fold,
            output=check_choice(output, ("sigmoid", "clamp"), "--output"),  # type: ignore[arg-type]
            refine=refine,
            freeze_base=freeze_base,
            margin=margin,
            init=init,
            synthetic_fraction=synthetic_fraction,
            val_groups=val_groups,
            test_groups=test_groups,
            docbin=docbin,
            docbin_fraction=docbin_fraction,
            clean_fraction=clean_fraction,
            display_prob=display_prob,
            photos=photos,
            photo_prob=photo_prob,
            ink_level=ink_level,
            patch=patch,
            scale_lo=scale_lo,
            scale_hi=scale_hi,
            scale_prob=scale_prob,
            level_aug=level_aug,
            batch_size=batch_size,
            max_steps=max_steps,
            schedule_steps=schedule_steps,
            resume=resume,
            val_every=val_every,
            lr=lr,
            seed=seed,
            threads=threads,
            max_minutes=max_minutes,
            command=invocation(),
        )
        train(cfg, out, progress=err)
        err(f"wrote {out}")
