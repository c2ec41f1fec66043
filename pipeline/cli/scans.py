"""Scan-denoiser commands: ``aepipe train scan-denoiser``.

The user-facing ``clean-scans`` command lives in :mod:`aepipe.cli.clean` and calls the
``scan-denoiser`` stage. The training options are generated from
:class:`aepipe.train.scan_denoiser.TrainConfig` (:mod:`aepipe.cli.train_options`); nothing heavy
is imported at module level (``aepipe --help`` must stay fast).
"""

from __future__ import annotations

from pathlib import Path

from aepipe.cli.train_options import add_train_command

add_train_command(
    "scan-denoiser",
    "aepipe.train.scan_denoiser",
    help="Train the scan denoiser on DDD pairs + synthetic degraded pages (CPU, 1 thread).",
    defaults={"ddd": Path("../shared/data/ddd")},
)
