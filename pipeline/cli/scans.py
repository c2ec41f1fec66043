"""Scan-denoiser commands: ``aepipe train scan-denoiser``.

The user-facing ``clean-scans`` command lives in :mod:`aepipe.cli.clean` and calls the
``scan-denoiser`` stage. The training options are generated from
:class:`aepipe.train.scan_denoiser.TrainConfig` (:mod:`aepipe.cli.train_options`); nothing heavy
is imported at module level (``aepipe --help`` must stay fast).
"""

from __future__ import annotations

from pathlib import Path

import typer

from aepipe.cli.common import OverwriteShippedOpt, TrainOutOpt, cli_errors, err, train_out
from aepipe.cli.train_options import train_command, train_config


@train_command(
    "scan-denoiser",
    "aepipe.train.scan_denoiser:TrainConfig",
    defaults={"ddd": Path("../shared/data/ddd")},
)
def train_scan_denoiser(
    ctx: typer.Context,
    out: TrainOutOpt = None,
    overwrite_shipped: OverwriteShippedOpt = False,
) -> None:
    """Train the scan denoiser on DDD pairs + synthetic degraded pages (CPU, 1 thread)."""
    from aepipe.train.scan_denoiser import train

    with cli_errors():
        out = train_out(out, "scan-denoiser", overwrite_shipped)
        train(train_config(ctx), out, progress=err)
        err(f"wrote {out}")
