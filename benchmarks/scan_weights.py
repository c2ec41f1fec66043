"""Which scan-denoiser weights a throughput benchmark runs (shared by the load and Ray ones)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def resolve_model(model: str) -> tuple[str, str]:
    """A weights folder for ``model``: shipped name/folder, ``tiny``, or ``default-size``.

    ``default-size`` (also the fallback when the shipped weights are absent) is an untrained
    ScanUNet with the default architecture: the same compute per page as a default-size model.
    """
    import torch

    from aepipe.models.scan_unet import ScanUNet
    from aepipe.stage import stage_class
    from aepipe.weights import shipped_names

    if model not in ("tiny", "default-size") and (model in shipped_names() or Path(model).is_dir()):
        return model, model
    folder = Path(tempfile.mkdtemp(prefix="aepipe-bench-")) / "scan-denoiser"
    cls = stage_class("scan-denoiser")
    if model == "tiny":
        cls.tiny(seed=0).save_pretrained(folder)
        return str(folder), "tiny scan-denoiser (seed 0)"
    torch.manual_seed(0)
    cls(ScanUNet()).save_pretrained(folder)
    return str(folder), "untrained default-size ScanUNet (shipped scan-denoiser weights absent)"
