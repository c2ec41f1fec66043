"""Concept vectors: attribute reader, regression fit, shipped files, lookup and edits (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aepipe.batch import ImageBatch
from aepipe.data.attributes import check_against_archive, load_attributes
from aepipe.errors import ConfigError, ExitCode
from aepipe.stages.face_generator import (
    FaceGenerator,
    list_concepts,
    load_concept,
    save_concept,
)
from aepipe.train.concepts import FACE_CONCEPTS, ConceptSpec, fit_concepts
from aepipe.weights import shipped_weights_dir

SHIPPED = shipped_weights_dir() / "face-vae" / "concepts"


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def write_csv(path: Path, rows: list[tuple[str, int, str, int, int]]) -> Path:
    lines = ["split,index,file,Smiling,Male"]
    lines += [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_attributes_keep_splits_apart(tmp_path: Path) -> None:
    csv = write_csv(
        tmp_path / "a.csv",
        [
            ("train", 1, "B/B_0001.jpg", 1, 0),
            ("test", 0, "T/T_0001.jpg", 0, 1),
            ("train", 0, "A/A_0001.jpg", 0, 1),
        ],
    )
    train = load_attributes(csv, "train")
    assert train.index.tolist() == [0, 1] and train.files.tolist() == [
        "A/A_0001.jpg",
        "B/B_0001.jpg",
    ]
    assert train.column("smile").tolist() == [0, 1]  # alias -> Smiling
    test = load_attributes(csv, "test")
    assert test.index.tolist() == [0] and test.column("Male").tolist() == [1]
    with pytest.raises(ValueError, match="split"):
        load_attributes(csv, "all")  # type: ignore[arg-type]
    check_against_archive(train, np.array(["A/A_0001.jpg", "B/B_0001.jpg"]))
    with pytest.raises(ValueError, match="mismatch"):
        check_against_archive(train, np.array(["A/A_0001.jpg", "T/T_0001.jpg"]))
    with pytest.raises(KeyError, match="unknown attribute"):
        train.column("wings")


def test_fit_recovers_planted_direction_and_ignores_correlated_label() -> None:
    rng = np.random.default_rng(0)
    n, d = 4000, 6
    smile = (rng.random(n) < 0.4).astype(float)
    # "Male" co-occurs with NOT smiling (correlation about -0.6) and has its own direction.
    male = np.where(rng.random(n) < 0.8, 1 - smile, smile)
    e = np.eye(d)
    codes = 2.0 * smile[:, None] * e[0] + 3.0 * male[:, None] * e[1]
    codes = codes + 0.3 * rng.standard_normal((n, d))
    labels = np.stack([smile, male], 1)
    specs = {"smile": ConceptSpec("Smiling"), "male": ConceptSpec("Male")}
    fitted = fit_concepts(codes, labels, ["Smiling", "Male"], specs, ridge=0.0)
    v_smile, info = fitted["smile"]
    np.testing.assert_allclose(v_smile, 2.0 * e[0], atol=0.05)  # no gender component
    np.testing.assert_allclose(fitted["male"][0], 3.0 * e[1], atol=0.05)
    assert info["n_positive"] == int(smile.sum()) and info["regressors"] == ["Smiling", "Male"]
    # The plain difference of means would carry gender: the reason for the regression.
    naive = codes[smile == 1].mean(0) - codes[smile == 0].mean(0)
    assert abs(naive[1]) > 1.0
    # A contrast of two labels is the difference of their coefficients.
    pair = fit_concepts(codes, labels, ["Smiling", "Male"], {"x": ConceptSpec("Male", "Smiling")})
    np.testing.assert_allclose(pair["x"][0], 3.0 * e[1] - 2.0 * e[0], atol=0.1)
    with pytest.raises(KeyError, match="not in the data"):
        fit_concepts(codes, labels, ["Smiling", "Male"], {"y": ConceptSpec("Bald")})


def test_shipped_concepts_load_and_list() -> None:
    listed = {doc["name"]: doc for doc in list_concepts([SHIPPED])}
    assert set(FACE_CONCEPTS) <= set(listed)
    for name, spec in FACE_CONCEPTS.items():
        doc = listed[name]
        assert doc["attribute"] == spec.positive and "regression" in doc["method"]
        assert doc["norm"] > 0.1 and doc["n_positive"] > 50
        vec = load_concept(name, [SHIPPED])
        assert vec.shape == (128,) and bool(torch.isfinite(vec).all())
        assert (Path(doc["path"]).stat().st_size) < 16_000
    # Aliases and attribute names find the same file.
    torch.testing.assert_close(load_concept("Smiling", [SHIPPED]), load_concept("smile", [SHIPPED]))
    torch.testing.assert_close(load_concept("glasses", [SHIPPED]), load_concept("eyeglasses"))


def test_edit_changes_output_and_strength_zero_does_not(tmp_path: Path) -> None:
    stage = FaceGenerator.tiny(seed=0)
    vec = torch.tensor([3.0, -2.0, 1.0, 0.5])
    save_concept(tmp_path, "toy", vec, {"attribute": "Toy", "aliases": ["plaything"]})
    found = load_concept("plaything", [tmp_path])
    faces = ImageBatch(torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
    plain = stage(faces).images
    torch.testing.assert_close(stage.edit(faces, [(found, 0.0)]).images, plain)
    edited = stage.edit(faces, [(found, 1.0)]).images
    assert float((edited - plain).abs().mean()) > 1e-3
    sampled = next(stage.sample(4, seed=0, concepts=[(found, 1.5)])).images
    assert not torch.equal(sampled, next(stage.sample(4, seed=0)).images)
    with pytest.raises(ConfigError, match="not found"):
        load_concept("nothing", [tmp_path])


def test_cli_concepts_list_and_edit_out_of_the_box(tmp_path: Path, cli) -> None:
    from PIL import Image

    res = cli("faces", "concepts")
    assert res.exit_code == 0, res.output
    for name in FACE_CONCEPTS:
        assert name in res.output
    face = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    Image.fromarray(face).save(tmp_path / "photo.png")
    res = cli(
        "faces", "edit", tmp_path / "photo.png", "--concept", "smile:+1", "--out", tmp_path / "e"
    )
    assert res.exit_code == 0, res.output
    res = cli(
        "faces", "edit", tmp_path / "photo.png", "--concept", "smile:0", "--out", tmp_path / "z"
    )
    assert res.exit_code == 0, res.output
    smiled = np.asarray(Image.open(tmp_path / "e" / "photo.png"), dtype=float)
    same = np.asarray(Image.open(tmp_path / "z" / "photo.png"), dtype=float)
    assert np.abs(smiled - same).mean() > 0.5


def test_fit_command_refuses_shipped_folder_without_flag(cli) -> None:
    res = cli("faces", "fit-concepts", "--out", SHIPPED)
    assert res.exit_code == 2 and "overwrite-shipped" in res.output
    doc = json.loads((SHIPPED / "smile.json").read_text())
    assert "fit-concepts" in doc["command"] and doc["model_sha256"]


def test_cli_concept_lists_its_folders_and_refuses_a_taken_name(tmp_path: Path, cli) -> None:
    """``faces concepts`` showed a user's concept as ``? vs neg`` (it read ``attribute``, which
    ``faces concept`` does not write), and a second ``faces concept`` silently replaced the
    file or hid a shipped concept of the same name."""
    from PIL import Image

    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    pos, neg, cdir = tmp_path / "pos", tmp_path / "neg", tmp_path / "concepts"
    rng = np.random.default_rng(0)
    for folder, low in ((pos, 150), (neg, 0)):
        folder.mkdir()
        for i in range(2):
            pixels = rng.integers(low, low + 100, (20, 20), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")

    def concept(name: str, *extra: object):
        return cli(
            "faces", "concept", "--positive", pos, "--negative", neg, "--name", name,
            "--model", weights, "--concepts-dir", cdir, *extra,
        )  # fmt: skip

    assert concept("mine").exit_code == 0
    before = (cdir / "mine.json").read_text()
    res = cli("faces", "concepts", "--concepts-dir", cdir, "--model", weights)
    assert res.exit_code == 0, res.output
    line = next(row for row in res.output.splitlines() if row.startswith("mine "))
    assert f"{pos} vs {neg}" in line and "?" not in line
    for name, says in (("mine", "exists"), ("smile", "hide"), ("smiling", "hide")):
        res = concept(name)
        assert res.exit_code == 2 and "--overwrite" in res.output and says in res.output, name
    assert (cdir / "mine.json").read_text() == before and not (cdir / "smile.json").exists()
    assert concept("smile", "--overwrite").exit_code == 0
    torch.testing.assert_close(
        load_concept("smile", [cdir, SHIPPED]), load_concept(cdir / "smile.json")
    )
    # A concept the generator cannot apply (4 dims for face-vae's 128) leaves no folder behind.
    out = tmp_path / "faces"
    res = cli("gen-faces", "-n", 1, "--concept", cdir / "mine.json", "-o", out)
    assert res.exit_code == 2 and "dims" in res.output and not out.exists()


def _face_folders(tmp_path: Path) -> tuple[Path, Path]:
    """A positive folder of photos (one face, no face, two faces, a gen-faces grid) and a
    negative folder of two small crops."""
    from factory import FACE_FILE, face_photo
    from PIL import Image

    from aepipe.io import make_grid

    pos, neg = tmp_path / "pos", tmp_path / "neg"
    pos.mkdir()
    neg.mkdir()
    Image.fromarray(face_photo()).save(pos / "one.png")
    Image.fromarray(face_photo(None)).save(pos / "none.png")
    Image.fromarray(np.concatenate([face_photo(), face_photo()], axis=1)).save(pos / "two.png")
    face = np.asarray(Image.open(FACE_FILE).convert("L"))[None, ..., None]
    Image.fromarray(make_grid(np.repeat(face, 4, 0))[..., 0]).save(pos / "grid.png")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 100, (20, 20), dtype=np.uint8)).save(neg / f"{i}.png")
    return pos, neg


def test_cli_concept_aligns_the_face_of_each_photo_and_skips_the_rest(tmp_path: Path, cli) -> None:
    """`faces concept` encoded whole photos (a concept of backgrounds) and took a gen-faces
    grid for a face; it now aligns each photo's one face as `faces edit` does, and skips
    photos without a face, with several faces, and contact sheets, saying why."""
    from aepipe.core import aligned_face, read_photo

    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    pos, neg = _face_folders(tmp_path)
    cdir = tmp_path / "concepts"
    res = cli(
        "faces", "concept", "--positive", pos, "--negative", neg, "--name", "mine",
        "--model", weights, "--concepts-dir", cdir,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "none.png: skipped, no face found" in res.output
    assert "two.png: skipped, 2 faces found" in res.output
    assert "grid.png: skipped, a contact sheet of 2 x 2" in res.output
    doc = json.loads((cdir / "mine.json").read_text())
    assert doc["n_positive"] == 1 and doc["n_negative"] == 2 and doc["n_skipped"] == 3
    stage = FaceGenerator.from_pretrained(weights)
    face = stage.encode(aligned_face(stage, read_photo(pos / "one.png")))[0]
    crops = torch.cat([stage.encode(read_photo(p)) for p in sorted(neg.iterdir())])
    expected = face - crops.mean(0)
    torch.testing.assert_close(torch.tensor(doc["vector"]), expected, atol=2e-6, rtol=0)
    # A folder with no usable face at all is an error, and no file is written.
    (pos / "one.png").unlink()
    (pos / "two.png").unlink()
    res = cli(
        "faces", "concept", "--positive", pos, "--negative", neg, "--name", "other",
        "--model", weights, "--concepts-dir", cdir,
    )  # fmt: skip
    assert res.exit_code == 2 and "no usable face" in res.output
    assert not (cdir / "other.json").exists()


def test_contact_sheets_are_told_from_photos() -> None:
    from factory import face_photo

    from aepipe import faces_align as fa
    from aepipe.io import make_grid

    def sheet(images: np.ndarray, jpeg: bool = False) -> torch.Tensor:
        if jpeg:
            import io

            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(images).save(buf, format="JPEG", quality=85)
            images = np.asarray(Image.open(buf))
        return ImageBatch.from_numpy(images, ["x"]).images

    tiles = np.random.default_rng(0).integers(0, 200, (6, 64, 64, 3), dtype=np.uint8)
    assert fa.contact_sheet_tiles(sheet(make_grid(tiles, ncols=3))) == (2, 3)
    assert fa.contact_sheet_tiles(sheet(make_grid(tiles[:2]), jpeg=True)) == (1, 2)
    photo = face_photo()
    framed = np.pad(photo, ((20, 20), (20, 20), (0, 0)), constant_values=255)
    assert fa.contact_sheet_tiles(sheet(photo)) is None
    assert fa.contact_sheet_tiles(sheet(framed)) is None  # a print's white border: one tile
    assert fa.contact_sheet_tiles(sheet(make_grid(tiles[:1]))) is None


def test_concept_files_are_checked_against_the_weights_before_any_work(tmp_path: Path, cli) -> None:
    """A concept of the wrong size failed each photo after detection (exit 3), face-vae's
    shipped concepts were applied to any generator (face-ae: exit 0), and NaN in a file
    painted the faces black with exit 0. Each is now exit 2 when the concept is read."""
    from PIL import Image

    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    other = FaceGenerator.tiny(seed=1).save_pretrained(tmp_path / "w2")  # same size
    cdir, photos = tmp_path / "concepts", tmp_path / "photos"
    save_concept(tmp_path / "bad.json", "bad", torch.tensor([1.0, 2.0, 3.0]))
    (tmp_path / "nan.json").write_text('{"name": "nan", "vector": [NaN, 1, 2, Infinity]}')
    _, neg = _face_folders(tmp_path)
    res = cli(
        "faces", "concept", "--positive", neg, "--negative", neg, "--name", "mine",
        "--model", weights, "--concepts-dir", cdir,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    from aepipe.weights import read_config

    assert (
        json.loads((cdir / "mine.json").read_text())["model_sha256"]
        == (read_config(weights)["sha256"])
    )
    photos.mkdir()
    Image.fromarray(np.full((300, 400), 128, np.uint8)).save(photos / "p.png")
    cases = [
        (("faces", "edit", photos, "--concept", f"{tmp_path / 'bad.json'}:1"), "3 dims"),
        (("faces", "edit", photos, "--concept", "smile:1"), "smile.json: concept has 128 dims"),
        (("gen-faces", "-n", 1, "--concept", f"{tmp_path / 'nan.json'}:1"), "nan.json: not a"),
        (("gen-faces", "-n", 1, "--concept", "mine:1", "--concepts-dir", cdir), None),
        (("faces", "edit", photos, "--concept", "mine", "--concepts-dir", cdir), None),
    ]
    for k, (args, says) in enumerate(cases):
        for model, fits in ((weights, says is None), (other, False)):
            out = tmp_path / f"out{k}{model.name}"
            res = cli(*args, "--model", model, "--out", out)
            if fits:  # the no-face photo fails as a file (exit 3), after the concept loaded
                assert res.exit_code in (0, 3), res.output
                continue
            assert res.exit_code == 2, (args, res.output)
            assert (says or "fitted on other weights") in res.output, res.output
            assert not out.exists()
    out = tmp_path / "ae"
    res = cli("gen-faces", "-n", 1, "--model", "face-ae", "--concept", "smile:1", "--out", out)
    assert res.exit_code == 2 and "fitted on other weights" in res.output and not out.exists()
    res = cli("faces", "concepts", "--model", "face-ae")
    assert res.exit_code == 0 and "smile" not in res.stdout and "not listed: blond" in res.output
    res = cli("faces", "concepts", "--model", tmp_path / "nosuch")
    assert res.exit_code == ExitCode.MODEL_ERROR, res.output
    res = cli("faces", "concepts", "--model", other, "--concepts-dir", cdir)
    assert res.exit_code == 0 and "mine " not in res.stdout
