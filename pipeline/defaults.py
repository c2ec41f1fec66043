"""Default limits shared by the I/O and the CLI (import-light: no numpy, no torch)."""

from __future__ import annotations

# 7,000 x 10,000 (a page at 600 DPI) fits under the default; a 100,000^2 header does not.
DEFAULT_MAX_PIXELS = 120_000_000
DEFAULT_DPI = 300
# At most this many pixels per model call, whatever the batch size asks (one image always
# goes): twelve 12-MP photos at once took 6 GB in the colorizer, and a CPU gains nothing from
# batching large pages. The runner, Pipeline.map and Ray share it.
DEFAULT_BATCH_PIXELS = 16_000_000
# The largest seed a generator takes (a CPU torch.Generator seed is a signed 64-bit int); every
# front end checks against it (aepipe.core.check_seed, the TOML and HTTP ranges).
SEED_MAX = 2**63 - 1
