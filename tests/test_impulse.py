"""Impulse-noise area: IDX reader, seeded salt-and-pepper noise, models, stage, CLI, training."""

from __future__ import annotations

import gzip
import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from aepipe import apply
from aepipe.batch import ImageBatch
from aepipe.data.idx import load_mnist_like, read_idx
from aepipe.data.noise import random_salt_pepper, salt_pepper
from aepipe.models.classic import ClassicDenoisingAE, TutorialAE
from aepipe.models.impulse import ImpulseDenoiser as Net
from aepipe.stage import load_stage
from aepipe.stages.impulse_denoiser import ImpulseDenoiser

ROOT = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())
    return path


def fake_mnist(folder: Path, n_train: int = 240, n_test: int = 40, seed: int = 0) -> Path:
    """A tiny MNIST-layout folder: blurry blobs on black, like the real data's true zeros."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        yy, xx = np.mgrid[:28, :28]
        cy, cx = rng.uniform(8, 20, (2, n, 1, 1))
        img = np.clip(300 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 40) - 40, 0, 255)
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", img.astype(np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    return folder


# ---- IDX ------------------------------------------------------------------------------------


def test_read_idx_round_trip_gz_and_plain(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a.gz", arr)), arr)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a", arr)), arr)


def test_read_idx_rejects_bad_files_naming_them(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x01\x02\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(ValueError, match=r"bad\.gz"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="holds 2 bytes"):
        read_idx(short)


def test_load_mnist_like(tmp_path: Path) -> None:
    folder = fake_mnist(tmp_path / "fm", n_train=12, n_test=5)
    x, y = load_mnist_like(folder, "train")
    assert x.shape == (12, 28, 28) and x.dtype == np.uint8 and y.shape == (12,)
    assert load_mnist_like(folder, "test")[0].shape == (5, 28, 28)
    with pytest.raises(FileNotFoundError):
        load_mnist_like(tmp_path, "train")


# ---- noise ----------------------------------------------------------------------------------


def test_binary_noise_is_seeded_and_only_0_or_255() -> None:
    clean = np.full((20, 32, 32), 128, np.uint8)
    a = salt_pepper(clean, 0.2, "binary", seed=3)
    np.testing.assert_array_equal(a, salt_pepper(clean, 0.2, "binary", seed=3))
    assert not np.array_equal(a, salt_pepper(clean, 0.2, "binary", seed=4))
    changed = a != clean
    assert set(np.unique(a[changed])) <= {0, 255}
    assert 0.17 < changed.mean() < 0.23
    assert (clean == 128).all()  # input untouched


def test_imgaug_noise_replaces_the_density_with_spread_values() -> None:
    clean = np.full((20, 32, 32), 128, np.uint8)
    noisy = salt_pepper(clean, 0.3, "imgaug", seed=0)
    changed = noisy != clean
    assert 0.26 < changed.mean() < 0.34
    # imgaug draws Beta(0.5, 0.5) * 255 values: most replacements are not exactly 0/255.
    assert ((noisy[changed] > 0) & (noisy[changed] < 255)).mean() > 0.5


def test_random_noise_density_range_and_kinds() -> None:
    clean = np.full((200, 16, 16), 128, np.uint8)
    noisy, is_binary = random_salt_pepper(clean, (0.1, 0.3), binary_fraction=0.5, seed=1)
    frac = (noisy != clean).reshape(200, -1).mean(1)
    assert frac.min() > 0.02 and frac.max() < 0.45 and frac.std() > 0.03
    assert 0.3 < is_binary.mean() < 0.7
    bin_vals = noisy[is_binary][noisy[is_binary] != 128]
    assert set(np.unique(bin_vals)) <= {0, 255}
    again, _ = random_salt_pepper(clean, (0.1, 0.3), binary_fraction=0.5, seed=1)
    np.testing.assert_array_equal(noisy, again)
    with pytest.raises(ValueError):
        salt_pepper(clean.astype(np.float32), 0.1)


# ---- models ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (28, 28), (37, 53)])
def test_models_take_any_size(size: tuple[int, int]) -> None:
    x = torch.rand(2, 1, *size)
    for model in (Net(channels=8, dilations=(1, 2)), TutorialAE(), ClassicDenoisingAE(channels=8)):
        with torch.no_grad():
            y = model(x)
        assert y.shape == x.shape, type(model).__name__
        assert float(y.min()) >= 0 and float(y.max()) <= 1
        rebuilt = type(model)(**model.hparams)
        assert sum(p.numel() for p in rebuilt.parameters()) == sum(
            p.numel() for p in model.parameters()
        )


def test_impulse_flags_mark_exact_extremes() -> None:
    x = torch.tensor([[[[0.0, 1.0, 0.5, 1 / 255]]]])
    inp = Net(channels=4, dilations=(1,)).inputs(x)
    assert inp.shape == (1, 3, 1, 4)
    assert inp[0, 1, 0].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert inp[0, 2, 0].tolist() == [0.0, 1.0, 0.0, 0.0]


# ---- stage ----------------------------------------------------------------------------------


def test_tiling_does_not_change_the_result() -> None:
    stage = ImpulseDenoiser.tiny(seed=0)
    batch = ImageBatch(torch.rand(1, 1, 100, 90, generator=torch.Generator().manual_seed(0)))
    whole = stage(batch).images
    tiled = ImpulseDenoiser(stage.model, {"tile": 64, "overlap": 16})(batch).images
    torch.testing.assert_close(whole, tiled, atol=1e-5, rtol=0)


def test_rgb_per_channel_and_gray() -> None:
    stage = ImpulseDenoiser.tiny(seed=0)
    rgb = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    out = stage(ImageBatch(rgb)).images
    assert out.shape == rgb.shape
    green = stage(ImageBatch(rgb[:, 1:2].contiguous())).images
    torch.testing.assert_close(out[:, 1:2], green)
    gray_stage = ImpulseDenoiser(stage.model, {"rgb": "gray"})
    assert gray_stage(ImageBatch(rgb)).images.shape == (1, 1, 20, 24)


# ---- training and CLI -----------------------------------------------------------------------


def test_train_writes_loadable_weights(tmp_path: Path) -> None:
    from aepipe.train.salt_pepper import TrainConfig, train

    data = fake_mnist(tmp_path / "data")
    lines: list[str] = []
    cfg = TrainConfig(
        data=data,
        channels=8,
        dilations=[1, 2],
        val_size=100,
        val_eval=100,
        epoch_samples=64,
        batch_size=16,
        max_epochs=2,
        patience=1,
        seed=0,
    )
    folder = train(cfg, tmp_path / "w", progress=lines.append)
    assert len(lines) >= 1 and "val_psnr" in lines[0]
    stage = load_stage(folder)
    assert isinstance(stage, ImpulseDenoiser)
    cfg_json = (folder / "config.json").read_text()
    assert '"val_images_held_out": 100' in cfg_json and '"seed": 0' in cfg_json
    assert (folder / "MODEL_CARD.md").is_file()


def test_train_tutorial_arch(tmp_path: Path) -> None:
    from aepipe.train.salt_pepper import TrainConfig, train

    cfg = TrainConfig(
        data=fake_mnist(tmp_path / "data"),
        arch="tutorial",
        val_size=100,
        val_eval=100,
        epoch_samples=32,
        batch_size=16,
        max_epochs=1,
    )
    stage = load_stage(train(cfg, tmp_path / "w"))
    assert type(stage.model).__name__ == "TutorialAE"


def test_denoise_command_on_files_and_folders(tmp_path: Path, cli_env: dict[str, str]) -> None:
    weights = ImpulseDenoiser.tiny(seed=0).save_pretrained(tmp_path / "weights")
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8)).save(inputs / "a.png")
    Image.fromarray(rng.integers(0, 256, (33, 21, 3), dtype=np.uint8)).save(inputs / "b.png")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    res = subprocess.run(
        ["aepipe", "denoise", str(inputs), "--model", str(weights), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    a, b = Image.open(out / "a.png"), Image.open(out / "b.png")
    assert a.size == (50, 40) and a.mode == "L"
    assert b.size == (21, 33) and b.mode == "RGB"


def test_bad_rgb_choice_is_exit_2(tmp_path: Path, cli_env: dict[str, str]) -> None:
    res = subprocess.run(
        ["aepipe", "denoise", str(tmp_path), "--rgb", "purple"],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=300,
    )
    assert res.returncode == 2 and "--rgb" in res.stderr


# ---- benchmark helpers ----------------------------------------------------------------------


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_sp", ROOT / "benchmarks" / "salt_pepper.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_switching_median_only_touches_extremes_and_ssim_matches_skimage() -> None:
    from skimage.metrics import structural_similarity

    bench = _bench()
    clean = np.random.default_rng(0).integers(1, 255, (3, 28, 28), dtype=np.uint8)
    noisy = salt_pepper(clean, 0.1, "binary", seed=0)
    out = np.rint(bench.switching_median(noisy) * 255).astype(np.uint8)
    keep = (noisy != 0) & (noisy != 255)
    np.testing.assert_array_equal(out[keep], noisy[keep])
    a, b = clean / 255.0, out / 255.0
    ref = [structural_similarity(a[i], b[i], data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(bench.ssim(a, b), ref, rtol=1e-6)


# ---- shipped weights on real data -----------------------------------------------------------


@pytest.mark.data
@pytest.mark.slow
def test_shipped_weights_meet_targets_on_fashion_test(shared_data: Path) -> None:
    from aepipe.train.salt_pepper import denoise_array, psnr_per_image
    from aepipe.weights import load_model

    bench = _bench()
    clean, _ = load_mnist_like(shared_data / "fashion-mnist", "test")
    clean = clean[:1000]
    target = clean / 255.0
    model, _ = load_model("salt-pepper")
    for density in (0.05, 0.1, 0.3, 0.5):
        noisy = salt_pepper(clean, density, "binary", seed=7)
        ours = psnr_per_image(denoise_array(model, noisy), target).mean()
        switching = psnr_per_image(bench.switching_median(noisy), target).mean()
        assert ours > switching, (density, ours, switching)
        if density == 0.1:
            assert ours >= 28.0


def test_solid_black_and_white_areas_pass_through() -> None:
    """Blank paper, blown highlights and black areas are exact 0s and 1s like the noise, but
    noise never makes a solid area: they come back as they went in (the shipped net turned a
    white image gray, mean 143 of 255), and an impulse inside one takes the area's value."""
    from aepipe.stages.impulse_denoiser import solid_areas

    stage = load_stage("salt-pepper")
    white = np.full((64, 64), 255, np.uint8)
    np.testing.assert_array_equal(apply(stage, white), white)
    page = np.full((60, 80), 255, np.uint8)
    page[20:40, 10:70] = 0  # a black bar
    rng = np.random.default_rng(0)
    noisy = page.copy()
    salt = (rng.random(page.shape) < 0.05) & (page == 0)
    pepper = (rng.random(page.shape) < 0.05) & (page == 255)
    noisy[salt], noisy[pepper] = 255, 0
    mask, value = solid_areas(torch.from_numpy(noisy / 255.0).float()[None, None])
    mask, value = mask[0, 0].numpy(), value[0, 0].numpy()
    assert mask[5:15, 5:75].all() and mask[25:35, 15:65].all()
    assert (value[salt & mask] == 0).all() and (value[pepper & mask] == 1).all()
    out = apply(stage, noisy)
    # Inside the areas the noise is gone and the page is exactly as it was.
    np.testing.assert_array_equal(out[5:15, 5:75], page[5:15, 5:75])
    np.testing.assert_array_equal(out[25:35, 15:65], page[25:35, 15:65])
