"""aepipe: an autoencoder image pipeline.

Public API (imported lazily so that ``import aepipe`` and the CLI's ``--help`` stay fast)::

    from aepipe import load_stage, apply, Pipeline, ImageBatch, read_pages, run_files, generate
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aepipe._version import __version__

if TYPE_CHECKING:  # what type checkers see; at run time the names load on first use
    from aepipe.batch import ImageBatch as ImageBatch
    from aepipe.batch import to_gray as to_gray
    from aepipe.core import edit_face_photo as edit_face_photo
    from aepipe.core import face_concepts as face_concepts
    from aepipe.core import generate as generate
    from aepipe.core import interpolate_faces as interpolate_faces
    from aepipe.core import load_generator as load_generator
    from aepipe.errors import AepipeError as AepipeError
    from aepipe.errors import ConfigError as ConfigError
    from aepipe.errors import ExitCode as ExitCode
    from aepipe.errors import InputImageError as InputImageError
    from aepipe.errors import ShapeError as ShapeError
    from aepipe.errors import WeightsError as WeightsError
    from aepipe.io import read_image as read_image
    from aepipe.io import read_pages as read_pages
    from aepipe.io import write_image as write_image
    from aepipe.pipeline import Pipeline as Pipeline
    from aepipe.pipeline import apply as apply
    from aepipe.pipeline import read_pipeline_file as read_pipeline_file
    from aepipe.runner import RunOptions as RunOptions
    from aepipe.runner import run_files as run_files
    from aepipe.stage import Generator as Generator
    from aepipe.stage import Stage as Stage
    from aepipe.stage import StageConfig as StageConfig
    from aepipe.stage import load_stage as load_stage
    from aepipe.stage import stage_class as stage_class

_EXPORTS = {
    "ImageBatch": "aepipe.batch",
    "to_gray": "aepipe.batch",
    "Stage": "aepipe.stage",
    "Generator": "aepipe.stage",
    "StageConfig": "aepipe.stage",
    "load_stage": "aepipe.stage",
    "stage_class": "aepipe.stage",
    "Pipeline": "aepipe.pipeline",
    "apply": "aepipe.pipeline",
    "read_pipeline_file": "aepipe.pipeline",
    "read_pages": "aepipe.io",
    "read_image": "aepipe.io",
    "write_image": "aepipe.io",
    "run_files": "aepipe.runner",
    "generate": "aepipe.core",
    "load_generator": "aepipe.core",
    "edit_face_photo": "aepipe.core",
    "interpolate_faces": "aepipe.core",
    "face_concepts": "aepipe.core",
    "RunOptions": "aepipe.runner",
    "AepipeError": "aepipe.errors",
    "ConfigError": "aepipe.errors",
    "WeightsError": "aepipe.errors",
    "InputImageError": "aepipe.errors",
    "ShapeError": "aepipe.errors",
    "ExitCode": "aepipe.errors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'aepipe' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
