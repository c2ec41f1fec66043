"""Pure ``nn.Module`` definitions and losses for aepipe.

Nothing here reads files, parses configs, knows about the CLI or imports ``pipeline``. The
classes are found by name through ``aepipe.registry`` (each stage's entry lists its models),
so a weights folder can name the class it needs.
"""

from __future__ import annotations

# ITU-R BT.601 luma weights: the gray that the colorizer must preserve and that every gray
# conversion in the project uses (``aepipe.batch`` re-exports them), so "gray of the output
# equals the input" is well defined. Here so that models never import from ``pipeline``.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
