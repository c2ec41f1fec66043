"""CLI module (recipe step 4): registers ``aepipe train tiny-generator`` when imported.

The registry entry names this module in ``cli=``; the command's options are generated from
``recipe_tiny.train.TrainConfig``, which is imported only when the command runs.
"""

from __future__ import annotations

from aepipe.cli.train_options import add_train_command

add_train_command(
    "tiny-generator",
    "recipe_tiny.train",
    help="Train the tiny test generator towards a gray level (seconds on a CPU).",
)
