"""Exceptions raised by aepipe and the CLI exit codes they map to.

Kept free of heavy imports so the CLI can map failures to exit codes without loading torch.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Documented process exit codes of every aepipe command."""

    OK = 0
    """Every input was processed (or skipped because its output already existed)."""
    SOME_FAILED = 1
    """At least one input failed; the others were processed."""
    BAD_ARGS = 2
    """The command line or a config file was invalid; nothing was done."""
    NOTHING_PROCESSED = 3
    """No input could be processed (none found, or all failed)."""
    MODEL_ERROR = 4
    """Weights could not be loaded (missing, tampered, or not matching their config)."""
    SETUP_ERROR = 5
    """An optional tool the command needs is not installed (Tesseract, Ghostscript, OCRmyPDF)."""
    INTERRUPTED = 130
    """Stopped by Ctrl-C or SIGTERM; finished outputs are complete, nothing partial remains."""


class AepipeError(Exception):
    """Base class of every error aepipe raises on purpose."""


class ConfigError(AepipeError, ValueError):
    """A stage or pipeline config is invalid. The message names the field."""


class WeightsError(AepipeError):
    """A weights folder is missing, tampered with, or does not fit its config."""


class InputImageError(AepipeError):
    """One input file cannot be read as an image. The message names the file and the reason."""


class UnsupportedInputError(InputImageError):
    """The input is not an image or PDF aepipe reads (HTTP 415)."""


class InputTooLargeError(InputImageError):
    """The input is over a size limit, found from its header before decoding (HTTP 413)."""


class TooManyPixelsError(InputTooLargeError):
    """An image or page has more pixels than the limit."""


class TooManyPagesError(InputTooLargeError):
    """A PDF or multi-page TIFF has more pages than the limit."""


class NoFaceError(InputImageError):
    """A photo has no face that can be edited (none found, or every one too small or unselected).

    The message gives the reason per face (HTTP 422).
    """


class ShapeError(AepipeError, ValueError):
    """A batch does not have the shape or value range a stage needs."""
