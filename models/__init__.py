"""Pure ``nn.Module`` definitions and losses for aepipe.

Nothing here reads files, parses configs or knows about the CLI. Models are looked up by
class name through :data:`MODEL_CLASSES` so a weights folder can name the class it needs
without the loader growing an if/elif chain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# ITU-R BT.601 luma weights: the gray that the colorizer must preserve and that every gray
# conversion in the project uses (``pipeline.batch`` re-exports them), so "gray of the output
# equals the input" is well defined. Here so that models never import from ``pipeline``.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Class name -> "module:attribute". Imported lazily so that importing ``models`` stays cheap
# and one broken optional model cannot stop the others from loading.
_MODEL_PATHS: dict[str, str] = {
    "ScanUNet": "models.scan_unet:ScanUNet",
    "ClassicDenoisingAE": "models.classic:ClassicDenoisingAE",
    "ImpulseDenoiser": "models.impulse:ImpulseDenoiser",
    "TutorialAE": "models.classic:TutorialAE",
    "ConvVAE": "models.vae:ConvVAE",
    "StackNNColorizer": "models.colorizer:StackNNColorizer",
}


def model_class(name: str) -> type[nn.Module]:
    """Return the ``nn.Module`` class registered under ``name``.

    Raises:
        KeyError: with the list of known names, if ``name`` is not registered.
    """
    try:
        target = _MODEL_PATHS[name]
    except KeyError:
        known = ", ".join(sorted(_MODEL_PATHS))
        raise KeyError(f"unknown model class {name!r}; known: {known}") from None
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def model_names() -> list[str]:
    """Names of all registered model classes."""
    return sorted(_MODEL_PATHS)
