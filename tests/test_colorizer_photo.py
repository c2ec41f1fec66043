"""Tests of the photo colorizer (weights/colorizer-photo) and of ``colorize``'s model choice."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from aepipe import apply
from aepipe.batch import LUMA_WEIGHTS, ImageBatch
from aepipe.stages.colorizer import FACE_MODEL, PHOTO_MODEL, Colorizer, auto_model


@pytest.fixture(scope="module")
def photo() -> Colorizer:
    return Colorizer.from_pretrained(PHOTO_MODEL)


def sky_scene(h: int, w: int) -> np.ndarray:
    """uint8 (h, w) gray 'landscape': a smooth bright sky gradient over a darker textured ground."""
    rng = np.random.default_rng(0)
    y = np.linspace(0.0, 1.0, h)[:, None] * np.ones((1, w))
    sky = 200 - 40 * y
    ground = 70 + 25 * rng.standard_normal((h, w))
    img = np.where(y < 0.55, sky, ground)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def chroma_levels(rgb_u8: np.ndarray) -> np.ndarray:
    """BT.601 (Cb, Cr) of uint8 (..., 3) in 8-bit levels, (..., 2)."""
    x = rgb_u8.astype(np.float64)
    y = x @ np.array(LUMA_WEIGHTS)
    return np.stack([(x[..., 2] - y) / 1.772, (x[..., 0] - y) / 1.402], axis=-1)


def test_shipped_photo_colorizer_loads(photo: Colorizer) -> None:
    # Regression head + saturation gain, reading the frozen ImageNet trunk (chosen on val).
    assert photo.model.head_kind == "regress" and photo.config.saturation > 1.0
    assert photo.model.context is not None
    assert photo.config.projection
    assert photo.config.model_size % photo.model.factor == 0
    card = (Path(__file__).parents[1] / "weights" / PHOTO_MODEL / "MODEL_CARD.md").read_text()
    assert "photos" in card and "test/" in card


@pytest.mark.parametrize("size", [(37, 53), (121, 67), (300, 451)])
def test_photo_colorizer_keeps_luma_at_odd_sizes(photo: Colorizer, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, size=(1, *size, 1), dtype=np.uint8)
    gray[0, : size[0] // 2] = sky_scene(size[0] // 2, size[1])[..., None]
    out = photo(ImageBatch.from_numpy(gray)).to_numpy(np.uint8)
    assert out.shape == (1, *size, 3)
    err = np.abs(out.astype(np.float64) @ np.array(LUMA_WEIGHTS) - gray[..., 0])
    assert err.max() <= 1.0


def test_photo_colorizer_is_not_a_uniform_tint(photo: Colorizer) -> None:
    gray = sky_scene(96, 144)
    out = photo(ImageBatch.from_numpy(gray[None, ..., None])).to_numpy(np.uint8)[0]
    c = chroma_levels(out)
    # Measurable colour, and not one tint laid everywhere: sky and ground get clearly different
    # chroma (the face colorizer, a near-uniform pink here, differs by under 5 levels), and the
    # sky is the bluer of the two (Cb is the blue-difference channel).
    assert np.linalg.norm(c, axis=-1).mean() > 3.0
    sky, ground = c[:40].reshape(-1, 2).mean(0), c[-40:].reshape(-1, 2).mean(0)
    assert np.linalg.norm(sky - ground) > 10.0
    assert sky[0] > ground[0] + 5.0


def test_auto_model_rule() -> None:
    from PIL import Image

    assert auto_model(64, 64) == FACE_MODEL
    assert auto_model(160, 130) == FACE_MODEL  # size alone (no pixels given)
    assert auto_model(64, 128) == PHOTO_MODEL  # not square
    assert auto_model(200, 200) == PHOTO_MODEL  # larger than a face crop
    assert auto_model(3000, 4000) == PHOTO_MODEL
    # Between 96 and 160 px a squarish image is a face crop only if a face fills it.
    root = Path(__file__).resolve().parent.parent / "sample_inputs" / "faces"
    face = np.asarray(Image.open(root / "astronaut_face.png").convert("L"), np.float32) / 255
    assert auto_model(*face.shape, torch.from_numpy(face)) == FACE_MODEL
    sky = torch.linspace(0.2, 0.9, 128)[:, None].expand(128, 140).contiguous()  # no face
    assert auto_model(128, 140, sky) == PHOTO_MODEL


def test_auto_colorizer_splits_a_batch_by_the_model_each_image_needs() -> None:
    from aepipe.batch import ImageBatch
    from aepipe.stages.colorizer import AutoColorizer

    used = []

    def load(weights):
        def stage(batch):
            used.append((weights, list(batch.names)))
            return batch.replace(batch.images.expand(-1, 3, -1, -1) * 0 + len(weights) / 100)

        return stage

    root = Path(__file__).resolve().parent.parent / "sample_inputs" / "faces"
    face = np.asarray(Image.open(root / "astronaut_face.png").convert("L").resize((128, 128)))
    sky = np.tile(np.linspace(50, 230, 128, dtype=np.uint8)[:, None], (1, 128))
    batch = ImageBatch.from_numpy([face, sky, face], names=["f1", "s", "f2"])
    out = AutoColorizer(load=load)(batch)
    assert sorted(used) == [(FACE_MODEL, ["f1", "f2"]), (PHOTO_MODEL, ["s"])]
    assert out.names == ["f1", "s", "f2"]  # in the batch's order
    assert [round(float(v), 2) for v in out.images[:, 0, 0, 0]] == [0.09, 0.15, 0.09]


@pytest.fixture
def cli():
    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_colorize_cli_picks_the_model_per_image(tmp_path: Path, cli, photo: Colorizer) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    face = np.random.default_rng(2).integers(0, 256, size=(64, 64), dtype=np.uint8)
    scene = sky_scene(180, 240)
    Image.fromarray(face).save(inp / "face.png")
    Image.fromarray(scene).save(inp / "scene.png")
    face_stage = Colorizer.from_pretrained(FACE_MODEL)

    res = cli("colorize", inp, "--out", tmp_path / "auto", "--quiet")
    assert res.exit_code == 0, res.output
    got = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / "auto").glob("*.png")}
    assert np.array_equal(got["face"], apply(face_stage, face))
    assert np.array_equal(got["scene"], apply(photo, scene))
    # An explicit --model applies to every image.
    res = cli("colorize", inp, "--out", tmp_path / "faces", "--model", FACE_MODEL, "--quiet")
    assert res.exit_code == 0, res.output
    scene_face = np.asarray(Image.open(tmp_path / "faces" / "scene.png"))
    assert np.array_equal(scene_face, apply(face_stage, scene))
    assert not np.array_equal(scene_face, got["scene"])
    # --upsample overrides the model's chroma upsampling (the shipped photo model's is guided).
    res = cli("colorize", inp / "scene.png", "-o", tmp_path / "bl", "--upsample", "bilinear", "-q")
    assert res.exit_code == 0, res.output
    bilinear = Colorizer.from_pretrained(PHOTO_MODEL, upsample="bilinear")
    scene_bl = np.asarray(Image.open(tmp_path / "bl" / "scene.png"))
    assert np.array_equal(scene_bl, apply(bilinear, scene))
    assert not np.array_equal(scene_bl, got["scene"])


def test_http_colorize_picks_the_model_per_image_like_the_cli(photo: Colorizer) -> None:
    """The service's default for POST /v1/colorize is the weights name ``auto``: the same
    per-image choice (:class:`~aepipe.stages.colorizer.AutoColorizer`) as ``colorize``."""
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    import io

    from fastapi.testclient import TestClient

    from aepipe.errors import ConfigError
    from aepipe.registry import auto_stage
    from aepipe.serve import ServeSettings, create_app, default_weights

    assert default_weights("colorize") == "auto"
    assert default_weights("denoise") == "salt-pepper"  # stages without a choice: as before
    with pytest.raises(ConfigError, match="no 'auto' weights choice"):
        auto_stage("impulse-denoiser")
    face = np.random.default_rng(2).integers(0, 256, size=(64, 64), dtype=np.uint8)
    scene = sky_scene(120, 200)
    face_stage = Colorizer.from_pretrained(FACE_MODEL)
    settings = ServeSettings(models={"colorize": "auto"}, device="cpu")
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").json()["stages"]["colorize"] == "colorizer"
        for gray, stage in ((face, face_stage), (scene, photo)):
            buf = io.BytesIO()
            Image.fromarray(gray).save(buf, format="PNG")
            resp = client.post("/v1/colorize", files={"file": ("x.png", buf.getvalue())})
            assert resp.status_code == 200, resp.text
            got = np.asarray(Image.open(io.BytesIO(resp.content)))
            want = apply(stage, gray)
            np.testing.assert_array_equal(got, want)


def test_toml_and_ray_take_weights_auto_like_the_cli(tmp_path: Path, cli) -> None:
    """A ``[[stages]]`` table (TOML file or Ray ``stages=``) with ``weights = "auto"`` and its
    ``stage`` runs the same per-image choice as ``colorize``; bad tables fail before loading."""
    from aepipe.errors import ConfigError
    from aepipe.pipeline import StageSpec, check_stage_spec
    from aepipe.ray import StageMapper
    from aepipe.stage import load_stage

    face = np.random.default_rng(2).integers(0, 256, size=(64, 64), dtype=np.uint8)
    scene = sky_scene(120, 200)
    inp = tmp_path / "in"
    inp.mkdir()
    Image.fromarray(face).save(inp / "face.png")
    Image.fromarray(scene).save(inp / "scene.png")
    # The shipped example (its paths moved to this test's folders) runs the per-image choice.
    text = (Path(__file__).resolve().parents[1] / "examples" / "colorize.toml").read_text()
    text = text.replace('"sample_inputs/faces"', f'"{inp.as_posix()}"')
    text = text.replace('"demo_out/', f'"{tmp_path.as_posix()}/')
    (tmp_path / "auto.toml").write_text(text)
    res = cli("run", tmp_path / "auto.toml")
    assert res.exit_code == 0, res.output
    # Ray's stages= takes the same table, with options for both models.
    table = {"weights": "auto", "stage": "colorizer", "config": {"saturation": 1.5}}
    from_ray = StageMapper(stages=[table]).process([face, scene])
    for i, (name, gray, weights) in enumerate(
        (("face", face, FACE_MODEL), ("scene", scene, PHOTO_MODEL))
    ):
        for got, options in (
            (np.asarray(Image.open(tmp_path / "pipeline_colorized" / f"{name}.png")), {}),
            (from_ray[i], {"saturation": 1.5}),
        ):
            stage = Colorizer.from_pretrained(weights, **options)
            want = apply(stage, gray)
            np.testing.assert_array_equal(got, want)
    bad = {
        "weights 'auto' needs the stage \\(colorizer\\)": {"weights": "auto"},
        "no 'auto' weights choice": {"weights": "auto", "stage": "scan-denoiser"},
        "unknown stage 'colourizer'": {"weights": "auto", "stage": "colourizer"},
        "'salt-pepper' is a 'impulse-denoiser' stage, not 'colorizer'": {
            "weights": "salt-pepper",
            "stage": "colorizer",
        },
        "saturation": {"weights": "auto", "stage": "colorizer", "config": {"saturation": -1}},
    }
    for message, table in bad.items():
        with pytest.raises(ConfigError, match=message):
            check_stage_spec(StageSpec(**table), "stages.0")
    with pytest.raises(ConfigError, match="'stage': 'colorizer'"):
        StageMapper("auto")
    # The library's loader points to the choice instead of "no weights folder 'auto'".
    with pytest.raises(ConfigError, match=r"registry\.auto_stage"):
        load_stage("auto")


def _photo_folder(root: Path, rng: np.random.Generator, splits=(("train", 6), ("val", 2))) -> Path:
    """Random-pixel colour photos of two sizes in ``root/<split>/``."""
    for split, n in splits:
        (root / split).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 256, size=(24, 24 + 8 * (i % 2), 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / f"p{i}.png")
    return root


def _tiny_config(data: Path, **options):
    """A training config small enough for a test: 4-8 channels, 16 px, a few steps."""
    from aepipe.train.colorizer import TrainConfig

    base = dict(head="classify", channels=[4, 8], model_size=16, max_steps=3, val_every=2)
    return TrainConfig(data=data, batch_size=4, **(base | options))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_train_on_a_photo_folder(tmp_path: Path, precision: str) -> None:
    from aepipe.train.colorizer import train

    rng = np.random.default_rng(3)
    photos = _photo_folder(tmp_path / "photos", rng, (("train", 6), ("val", 2), ("test", 1)))
    (photos / "test" / "p0.png").write_bytes(b"not read")  # test/ is never read
    ema = 0.5 if precision == "bfloat16" else None  # the EMA copy has the batch norms too
    cfg = _tiny_config(photos, precision=precision, ema=ema)
    out = train(cfg, tmp_path / "w")
    stage = Colorizer.from_pretrained(out)
    assert stage.config.model_size == 16
    card = (out / "MODEL_CARD.md").read_text()
    assert "Colour photographs" in card
    assert ("bfloat16 autocast" in card) == (precision == "bfloat16")
    assert ("moving average (decay 0.5)" in card) == (ema is not None)
    saved = json.loads((out / "config.json").read_text())
    assert saved["training"]["config"]["precision"] == precision
    res = stage(ImageBatch.from_numpy(rng.integers(0, 256, size=(1, 30, 41, 1), dtype=np.uint8)))
    assert res.channels == 3 and res.size == (30, 41)


def test_train_with_context_writes_a_model_whose_trunk_is_a_part(tmp_path: Path) -> None:
    """context='inception': features of a fixed crop bank; the trunk is stored as a part."""
    from aepipe.train.colorizer import CONTEXT_WEIGHTS, train
    from aepipe.weights import WEIGHTS_NAME, load_model

    rng = np.random.default_rng(5)
    photos = _photo_folder(tmp_path / "photos", rng, (("train", 3), ("val", 2)))
    cfg = _tiny_config(
        photos, max_steps=2, context="inception", context_crops=2, context_channels=4
    )
    out = train(cfg, tmp_path / "w")
    saved = json.loads((out / "config.json").read_text())
    assert saved["parts"] == {"context": CONTEXT_WEIGHTS}
    assert saved["model_kwargs"]["context"] == "inception"
    # The colorizer's own file holds no trunk tensors (the part's folder does).
    assert (out / WEIGHTS_NAME).stat().st_size < 100_000
    model, _ = load_model(out)
    trunk, _ = load_model(CONTEXT_WEIGHTS)
    for k, v in trunk.state_dict().items():
        assert np.array_equal(model.context.state_dict()[k].numpy(), v.numpy()), k
    stage = Colorizer.from_pretrained(out, precision="float32")
    gray = rng.integers(0, 256, size=(1, 40, 57, 1), dtype=np.uint8)
    res = stage(ImageBatch.from_numpy(gray)).to_numpy(np.uint8)[0]
    luma = res.astype(np.float64) @ np.array(LUMA_WEIGHTS)
    assert np.abs(luma - gray[0, ..., 0]).max() <= 0.5 + 1e-6


def test_context_needs_photos_and_a_present_part(tmp_path: Path) -> None:
    from aepipe.errors import ConfigError, WeightsError
    from aepipe.train.colorizer import TrainConfig, train
    from aepipe.weights import load_model, resolve

    with pytest.raises(ConfigError, match="needs a photo folder"):
        train(TrainConfig(data=tmp_path / "faces.npz", context="inception"), tmp_path / "w")
    # A weights folder whose part is gone names the part and the missing folder.
    folder = tmp_path / "copy"
    shutil.copytree(resolve(PHOTO_MODEL), folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["parts"] = {"context": str(tmp_path / "nowhere")}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="part 'context': no weights folder"):
        load_model(folder)


def test_selected_setting_goes_into_the_card(tmp_path: Path) -> None:
    """benchmarks/colorizer_photo.py --select-setting rewrites the trainer's card to say what
    the folder's config now does (and replaces its own section on a rerun)."""
    import sys

    folder = str(Path(__file__).resolve().parent.parent / "benchmarks")
    sys.path.insert(0, folder)
    try:
        from colorizer_photo import card_with_setting, parse_upsamples, upsample_label
    finally:
        sys.path.remove(folder)
    card = "# C\n\n## Model\n- Stage defaults: {'saturation': 1.0}.\n\n## Limits\n- few\n"
    once = card_with_setting(card, {"saturation": 1.8}, "rule: saturation 1.8")
    assert "- Stage defaults: {'saturation': 1.8}." in once and "1.0" not in once
    assert once.index("## Stage setting") < once.index("## Limits")
    twice = card_with_setting(once, {"saturation": 2.0}, "rule: saturation 2.0")
    assert twice.count("## Stage setting") == 1 and "saturation 1.8" not in twice
    assert twice.endswith("## Limits\n- few\n")
    # The chroma upsamplings it sweeps: each names every stage option it sets, so a chosen
    # row can go into the config as it is.
    ups = parse_upsamples("bilinear,guided:2:0.01")
    assert [upsample_label(u) for u in ups] == ["bilinear", "guided (r 2, eps 0.01)"]
    assert all(Colorizer.tiny(**u).config.upsample == u["upsample"] for u in ups)
    with pytest.raises(argparse.ArgumentTypeError, match="guided:RADIUS:EPS"):
        parse_upsamples("guided:2")


def test_auto_colorizer_refuses_a_bad_device_or_option_before_any_image() -> None:
    """Its models load on first use; a device or option they would refuse fails at once
    (colorize --device cuda without a GPU failed every file, exit 3 instead of 2)."""
    import torch

    from aepipe.errors import ConfigError
    from aepipe.stages.colorizer import AutoColorizer

    with pytest.raises(ConfigError, match="saturation"):
        AutoColorizer(device="cpu", saturation=99.0)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            AutoColorizer(device="cuda")
