"""Tests of the colorizer: colour maths, exact luma projection, stage contract, training smoke."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aepipe.batch import LUMA_WEIGHTS, ImageBatch, to_gray
from aepipe.errors import ConfigError
from aepipe.models.colorizer import (
    StackNNColorizer,
    chroma_delta,
    colorizer_loss,
    gamut_fit,
    rgb_to_ycbcr,
    soft_encode,
    ycbcr_to_rgb,
)
from aepipe.stages.colorizer import Colorizer


def luma_u8(rgb_u8: np.ndarray) -> np.ndarray:
    """BT.601 gray (float, 0..255) of uint8 (N, H, W, 3)."""
    return rgb_u8.astype(np.float64) @ np.array(LUMA_WEIGHTS)


def test_ycbcr_round_trip_and_zero_luma_delta() -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 9, 7, generator=gen)
    y, cbcr = rgb_to_ycbcr(rgb)
    assert torch.allclose(ycbcr_to_rgb(y, cbcr), rgb, atol=1e-6)
    assert torch.allclose(y, to_gray(rgb), atol=1e-7)
    delta = chroma_delta(torch.randn(2, 2, 9, 7, generator=gen))
    assert to_gray(delta).abs().max() < 1e-6


def test_gamut_fit_keeps_luma_under_extreme_chroma() -> None:
    gen = torch.Generator().manual_seed(1)
    ends = [torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)]
    y = torch.cat([*ends, torch.rand(1, 1, 4, 4, generator=gen)])
    cbcr = torch.randn(3, 2, 4, 4, generator=gen) * 2.0
    rgb = gamut_fit(y, cbcr)
    assert rgb.min() >= 0.0 and rgb.max() <= 1.0
    assert (to_gray(rgb) - y).abs().max() < 1e-5
    # Chroma that fits is left alone.
    small = torch.full((1, 2, 4, 4), 0.01)
    mid = torch.full((1, 1, 4, 4), 0.5)
    assert torch.allclose(gamut_fit(mid, small), ycbcr_to_rgb(mid, small), atol=1e-7)


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (16, 16), (33, 50), (101, 3), (64, 64)])
def test_projection_exact_for_any_size(size: tuple[int, int]) -> None:
    stage = Colorizer.tiny(seed=3)
    rng = np.random.default_rng(sum(size))
    gray = rng.integers(0, 256, size=(2, *size, 1), dtype=np.uint8)
    gray[0, 0, 0, 0], gray[1, -1, -1, 0] = 0, 255
    out = stage(ImageBatch.from_numpy(gray, names=["a", "b"]))
    assert out.channels == 3 and out.size == size and out.names == ["a", "b"]
    rgb = out.to_numpy(np.uint8)
    err = np.abs(luma_u8(rgb) - gray[..., 0])
    assert err.max() <= 0.5 + 1e-6  # each channel rounds by at most half a level
    assert err.mean() < 1.0


def test_tiny_stage_adds_colour() -> None:
    stage = Colorizer.tiny(seed=0, temperature=0.2)
    gray = np.full((1, 32, 32, 1), 128, dtype=np.uint8)
    rgb = stage(ImageBatch.from_numpy(gray)).to_numpy(np.uint8)
    assert np.abs(rgb[..., 0].astype(int) - rgb[..., 2]).max() > 0


def test_saturation_scales_colour_differences_and_keeps_luma() -> None:
    from aepipe.models.colorizer import rgb_to_ycbcr

    rng = np.random.default_rng(3)
    gray = ImageBatch.from_numpy(rng.integers(60, 200, size=(1, 24, 24, 1), dtype=np.uint8))
    chroma = {}
    for gain in (0.0, 1.0, 1.5):
        out = Colorizer.tiny(seed=1, temperature=0.5, saturation=gain)(gray)
        y, chroma[gain] = rgb_to_ycbcr(out.images)
        assert (y - gray.images).abs().max() < 1e-5  # the gain never touches the gray
    # Mid grays and this seed's small chroma never leave the gamut: the gain is exact.
    tint = chroma[0.0][..., :1, :1]
    assert torch.allclose(chroma[0.0], tint.expand_as(chroma[0.0]), atol=1e-5)  # one tint
    assert torch.allclose(tint, chroma[1.0].mean(dim=(2, 3), keepdim=True), atol=1e-3)
    assert torch.allclose(chroma[1.5], tint + 1.5 * (chroma[1.0] - tint), atol=1e-5)
    assert (chroma[1.0] - tint).abs().max() > 1e-3


def test_guided_upsampling_puts_the_colour_edge_on_the_gray_edge() -> None:
    from aepipe.models.colorizer import guided_upsample

    # A dark left half and a light right half at 64 px; the chroma, predicted at 8 px, is red
    # on the dark side and blue on the light one.
    gray = torch.full((1, 1, 64, 64), 0.8)
    gray[..., :29] = 0.2  # the edge is off the 8 px grid
    ideal = torch.where(gray < 0.5, 0.15, -0.15).expand(1, 2, 64, 64)
    small = torch.nn.functional.interpolate(ideal, size=(8, 8), mode="area")
    bilinear = torch.nn.functional.interpolate(small, size=(64, 64), mode="bilinear")
    guided = guided_upsample(small, gray, radius=1, eps=1e-3)
    assert (guided - ideal).abs().mean() < 0.5 * (bilinear - ideal).abs().mean()
    # A flat colour stays flat, whatever the gray does.
    flat = guided_upsample(torch.full((1, 2, 8, 8), 0.1), torch.rand(1, 1, 40, 56), 2, 1e-3)
    assert flat.shape == (1, 2, 40, 56) and torch.allclose(
        flat, torch.full_like(flat, 0.1), atol=1e-5
    )


def test_guided_stage_keeps_the_luma_and_differs_from_bilinear() -> None:
    rng = np.random.default_rng(4)
    gray = ImageBatch.from_numpy(rng.integers(0, 256, size=(2, 37, 53, 1), dtype=np.uint8))
    outs = {}
    for up in ("bilinear", "guided"):
        outs[up] = Colorizer.tiny(seed=1, temperature=0.5, upsample=up)(gray).images
        assert (to_gray(outs[up]) - gray.images).abs().max() < 1e-5
    assert (outs["guided"] - outs["bilinear"]).abs().max() > 1e-3


def test_colour_input_is_converted_to_gray_first() -> None:
    stage = Colorizer.tiny(seed=2)
    rng = np.random.default_rng(0)
    rgb = rng.random((1, 20, 24, 3), dtype=np.float32)
    batch = ImageBatch.from_numpy(rgb)
    out_colour = stage(batch)
    out_gray = stage(batch.gray())
    assert torch.allclose(out_colour.images, out_gray.images, atol=1e-6)
    assert (to_gray(out_colour.images) - to_gray(batch.images)).abs().max() < 1e-5


def test_projection_off_gives_rgb_of_same_size() -> None:
    stage = Colorizer.tiny(seed=0, projection=False)
    out = stage(ImageBatch.from_numpy(np.zeros((1, 30, 17, 1), dtype=np.uint8)))
    assert out.images.shape == (1, 3, 30, 17)
    assert out.images.min() >= 0 and out.images.max() <= 1


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="temperatur"):
        Colorizer.tiny(seed=0, temperatur=0.5)
    with pytest.raises(ConfigError, match="model_size"):
        Colorizer.tiny(seed=0, model_size=4)
    stage = Colorizer.tiny(seed=0, model_size=20)  # valid range, but not a multiple of 8
    with pytest.raises(ConfigError, match="multiple"):
        stage(ImageBatch.from_numpy(np.zeros((1, 8, 8, 1), dtype=np.uint8)))


def test_save_and_load_round_trip(tmp_path) -> None:
    stage = Colorizer.tiny(seed=5, temperature=0.5)
    folder = stage.save_pretrained(tmp_path / "cz")
    again = Colorizer.from_pretrained(folder)
    assert again.config.temperature == 0.5
    batch = ImageBatch.from_numpy(np.arange(48 * 40, dtype=np.uint8).reshape(1, 48, 40, 1))
    assert torch.equal(stage(batch).images, again(batch).images)


@pytest.mark.parametrize("head", ["classify", "regress"])
def test_loss_backward(head: str) -> None:
    gen = torch.Generator().manual_seed(0)
    model = StackNNColorizer((4, 8, 8), head=head, n_bins=16, bin_step=0.25)
    rgb = torch.rand(2, 3, 16, 16, generator=gen)
    y, cbcr = rgb_to_ycbcr(rgb)
    parts = colorizer_loss(model, model(y), y, cbcr, class_weights=torch.ones(16))
    parts["loss"].backward()
    assert torch.isfinite(parts["loss"]) and parts["luma"] >= 0
    assert ("class" in parts) == (head == "classify")
    assert model.stem[0].weight.grad is not None


def test_soft_encode_is_a_distribution() -> None:
    centers = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.3, 0.3]])
    q = soft_encode(torch.zeros(1, 2, 2, 2), centers, sigma=0.1, k=3)
    assert torch.allclose(q.sum(1), torch.ones(1, 2, 2))
    assert q[0, :, 0, 0].argmax() == 0 and q[0, 3].max() == 0


@pytest.mark.parametrize("head", ["classify", "regress"])
def test_train_smoke(tmp_path, head: str) -> None:
    from aepipe.train.colorizer import TrainConfig, train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8)
    files = np.array([f"P{i // 2}/P{i // 2}_{i % 2:04d}.jpg" for i in range(24)])
    data = tmp_path / "faces.npz"
    np.savez(data, images=images, train_files=files)
    cfg = TrainConfig(
        data=data,
        head=head,
        channels=[4, 8],
        max_steps=3,
        val_every=2,
        batch_size=4,
        val_fraction=0.25,
    )
    out = train(cfg, tmp_path / "w")
    stage = Colorizer.from_pretrained(out, model_size=16)
    assert stage.config.temperature in {0.2, 0.25, 0.3, 0.38, 0.5, 0.7, 1.0}
    res = stage(ImageBatch.from_numpy(images[:2, :, :, :1]))
    assert res.channels == 3
    assert (out / "MODEL_CARD.md").read_text().startswith("# Colorizer")


@pytest.mark.data
@pytest.mark.slow
def test_shipped_weights_keep_luma(shared_data) -> None:
    from aepipe.train.colorizer import load_color_faces

    images, _ = load_color_faces(shared_data / "faces" / "lfw_64.npz", "test")
    stage = Colorizer.from_pretrained("colorizer")
    out = stage(ImageBatch.from_numpy(images[:64])).to_numpy(np.uint8)
    gray = ImageBatch.from_numpy(images[:64]).gray().to_numpy(np.float32)[..., 0] * 255
    assert np.abs(luma_u8(out) - gray).mean() < 1.0
