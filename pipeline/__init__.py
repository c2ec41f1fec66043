"""aepipe: an autoencoder image pipeline.

Public API (imported lazily so that ``import pipeline`` and the CLI's ``--help`` stay fast)::

    from pipeline import load_stage, apply, Pipeline, ImageBatch, read_pages, run_files, generate
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "ImageBatch": "pipeline.batch",
    "to_gray": "pipeline.batch",
    "Stage": "pipeline.stage",
    "Generator": "pipeline.stage",
    "StageConfig": "pipeline.stage",
    "load_stage": "pipeline.stage",
    "stage_class": "pipeline.stage",
    "Pipeline": "pipeline.pipeline",
    "apply": "pipeline.pipeline",
    "read_pipeline_file": "pipeline.pipeline",
    "read_pages": "pipeline.io",
    "read_image": "pipeline.io",
    "write_image": "pipeline.io",
    "run_files": "pipeline.runner",
    "generate": "pipeline.core",
    "load_generator": "pipeline.core",
    "RunOptions": "pipeline.runner",
    "AepipeError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
    "WeightsError": "pipeline.errors",
    "InputImageError": "pipeline.errors",
    "ShapeError": "pipeline.errors",
    "ExitCode": "pipeline.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
