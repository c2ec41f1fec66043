"""Default limits shared by the I/O and the CLI (import-light: no numpy, no torch)."""

from __future__ import annotations

# 7,000 x 10,000 (a page at 600 DPI) fits under the default; a 100,000^2 header does not.
DEFAULT_MAX_PIXELS = 120_000_000
DEFAULT_DPI = 300
