"""Faces in photos through every front end (issue 24): TOML, Ray's mapper, HTTP.

Each front end only parses and calls the core's :class:`~aepipe.core.FaceEditor` (edit,
reconstruct) or :func:`~aepipe.core.interpolate_faces`, so one photo must give the library's
pixels everywhere. The CLI's own checks are in ``test_faces_photos.py``; real HTTP in
``test_serve_faces.py``; Ray on a real cluster in ``test_ray.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from factory import face_photo
from PIL import Image

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
OTHER = ROOT / "sample_inputs" / "faces" / "vae_face_1.png"


@pytest.fixture(scope="module")
def vae():
    from aepipe.stage import load_stage

    return load_stage("face-vae")


def library(vae, photo: np.ndarray, concepts: list[str] | None) -> np.ndarray:
    """What the library call gives: the whole photo, uint8 (H, W, C)."""
    from aepipe.core import edit_face_photo, face_concepts
    from aepipe.stages.face_generator import default_concept_dirs

    vectors = None if concepts is None else face_concepts(concepts, default_concept_dirs())
    batch = ImageBatch.from_numpy(photo, ["photo"])
    return edit_face_photo(vae, batch, vectors, align="photo").batch.to_numpy(np.uint8)[0]


def _photos(folder: Path) -> Path:
    folder.mkdir()
    Image.fromarray(face_photo()).save(folder / "photo.png")
    Image.fromarray(face_photo(None)).save(folder / "empty.png")
    return folder


def _run_toml(tmp: Path, faces: str, name: str) -> tuple[int, str, Path]:
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    load_areas()
    out, spec = tmp / f"{name}_out", tmp / f"{name}.toml"
    spec.write_text(
        f'[source]\ntype = "folder"\ninputs = ["{(tmp / "in").as_posix()}"]\n\n'
        f'[[stages]]\nweights = "face-vae"\nfaces = {faces}\n\n'
        f'[sink]\nout = "{out.as_posix()}"\nformat = "png"\n'
    )
    result = CliRunner().invoke(app, ["run", str(spec), "-q"])
    return result.exit_code, result.output, out


def test_toml_edits_and_reconstructs_photos_as_the_library(tmp_path: Path, vae) -> None:
    photo = face_photo()
    _photos(tmp_path / "in")
    code, output, out = _run_toml(tmp_path, '{ concepts = ["smile:+2"] }', "edit")
    # The photo without a face fails on its own (exit 1: some files failed), as in the CLI.
    assert code == 1 and "empty.png" in output and "no face" in output, output
    got = np.asarray(Image.open(out / "photo.png"))
    np.testing.assert_array_equal(got, library(vae, photo, ["smile:+2"]))
    assert not (out / "empty.png").exists()

    code, output, out = _run_toml(tmp_path, '{ no_face = "keep" }', "recon")
    assert code == 0, output
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "photo.png")), library(vae, photo, None)
    )
    np.testing.assert_array_equal(np.asarray(Image.open(out / "empty.png")), face_photo(None))


@pytest.mark.parametrize(
    ("weights", "faces", "message"),
    [
        ("scan-denoiser", "{}", "stages.0.faces: only for face VAE weights"),
        ("face-vae", '{ concepts = ["no-such-concept:1"] }', "stages.0.faces.concepts"),
        ("face-vae", '{ face = "everyone" }', "stages.0.faces.face"),
        ("face-vae", '{ concept = ["smile"] }', "stages.0.faces.concept"),
    ],
)
def test_toml_faces_table_is_checked_before_loading(
    tmp_path: Path, weights: str, faces: str, message: str
) -> None:
    from aepipe.pipeline import read_pipeline_file

    spec = tmp_path / "p.toml"
    spec.write_text(
        f'[source]\ntype = "folder"\ninputs = ["x"]\n\n'
        f'[[stages]]\nweights = "{weights}"\nfaces = {faces}\n\n[sink]\nout = "o"\n'
    )
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        read_pipeline_file(spec)


def test_ray_mapper_on_an_image_column_keeps_faceless_photos_when_asked(vae) -> None:
    """``read_images`` batches: same-sized photos go through the editor one at a time; file
    batches (a row error per faceless photo) run on a real cluster in ``test_ray.py``."""
    pytest.importorskip("ray", reason="needs the [ray] extra")
    from aepipe.ray import StageMapper

    photo = face_photo()
    keep = [{"weights": "face-vae", "faces": {"no_face": "keep"}}]
    rows = StageMapper(stages=keep, device="cpu")({"image": np.stack([photo, face_photo(None)])})
    np.testing.assert_array_equal(rows["image"][0], library(vae, photo, None))
    np.testing.assert_array_equal(rows["image"][1], face_photo(None))
    with pytest.raises(ConfigError, match=r"stages\.0\.faces: only for face VAE"):
        StageMapper(stages=[{"weights": "salt-pepper", "faces": {}}], device="cpu")


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    from fastapi.testclient import TestClient

    from aepipe.serve import ServeSettings, create_app

    models = {"clean-scan": None, "denoise": None, "colorize": None, "faces-vqvae": None}
    models["faces"] = "face-vae"
    settings = ServeSettings(models=models, device="cpu", max_pixels=200_000)
    with TestClient(create_app(settings)) as c:
        yield c


def test_http_reconstruct_is_the_library_call(client, vae) -> None:
    photo = face_photo()
    resp = client.post("/v1/faces/reconstruct", files={"file": ("p.png", _png(photo))})
    assert resp.status_code == 200, resp.text
    # The header is the CLI's report line: the face was reconstructed (it said "edited").
    assert resp.headers["x-aepipe-faces"].split("; ")[0].endswith(": reconstructed")
    got = np.asarray(Image.open(io.BytesIO(resp.content)))
    np.testing.assert_array_equal(got, library(vae, photo, None))
    resp = client.post("/v1/faces/reconstruct", content=_png(face_photo(None)))
    assert resp.status_code == 422 and resp.json()["error"] == "no_face"


def test_http_edit_refuses_a_huge_concept_strength(client) -> None:
    """smile:1e308 is finite, so it was accepted and painted the face black."""
    photo = _png(face_photo())
    for concept in ("smile:1e308", "smile:-11"):
        url = f"/v1/faces/edit?concept={concept}"
        resp = client.post(url, files={"file": ("p.png", photo)})
        assert resp.status_code == 422, resp.text
        assert "from -10 to 10" in resp.json()["detail"]


def test_http_interpolate_is_the_cli_strip(client, walk) -> None:
    a, b, want = walk
    files = {"a": ("a.png", _png(a)), "b": ("b.png", _png(b))}
    params = {"steps": 4, "method": "both"}
    resp = client.post("/v1/faces/interpolate", files=files, params=params)
    assert resp.status_code == 200, resp.text
    got = np.asarray(Image.open(io.BytesIO(resp.content)))
    assert got.shape == (2 * 66 + 2, 4 * 66 + 2)  # rows linear, slerp of four 64 px faces
    np.testing.assert_array_equal(got, want)


def test_http_interpolate_errors(client) -> None:
    photo = _png(face_photo())
    url = "/v1/faces/interpolate"
    resp = client.post(url, files={"a": ("a.png", photo)})
    assert resp.status_code == 422 and "'b'" in resp.json()["detail"]
    resp = client.post(url, content=photo, headers={"content-type": "image/png"})
    assert resp.status_code == 415 and "'a', 'b'" in resp.json()["detail"]
    empty = _png(face_photo(None))
    resp = client.post(url, files={"a": ("a.png", photo), "b": ("b.png", empty)})
    assert resp.status_code == 422 and resp.json()["error"] == "no_face"
    assert "b: no face to use" in resp.json()["detail"]
    resp = client.post(url, files={"a": ("a", photo), "b": ("b", photo)}, params={"steps": 1})
    assert resp.status_code == 422 and resp.json()["error"] == "invalid_parameter"
    big = _png(np.zeros((500, 500, 3), np.uint8))  # over max_pixels
    resp = client.post(url, files={"a": ("a.png", photo), "b": ("b.png", big)})
    assert resp.status_code == 413


def test_example_toml_files_are_valid() -> None:
    """The stage table of ``face-photos.toml`` runs in the TOML test above; here both examples
    parse and name files that exist."""
    from aepipe.pipeline import InterpolateSource, read_pipeline_file

    spec = read_pipeline_file(ROOT / "examples" / "face-photos.toml")
    assert spec.stages[0].faces is not None and spec.stages[0].faces.concepts == ["smile:+1"]
    assert all((ROOT / p).is_dir() for p in spec.source.inputs)
    spec = read_pipeline_file(ROOT / "examples" / "face-walk.toml")
    assert isinstance(spec.source, InterpolateSource) and spec.source.method == "both"
    assert (ROOT / spec.source.a).is_file() and (ROOT / spec.source.b).is_file()


def _cli_strip(tmp: Path, a: np.ndarray, b: np.ndarray, *opts: str) -> np.ndarray:
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    load_areas()
    for name, arr in (("a", a), ("b", b)):
        Image.fromarray(arr).save(tmp / f"{name}.png")
    args = ["faces", "interpolate", tmp / "a.png", tmp / "b.png", *opts, "-o", tmp / "s.png"]
    res = CliRunner().invoke(app, [str(x) for x in args])
    assert res.exit_code == 0, res.output
    return np.asarray(Image.open(tmp / "s.png"))


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two face photos and the CLI's strip between them (computed once for the front ends)."""
    a, b = face_photo(), face_photo(OTHER, at=(60, 40, 160))
    tmp = tmp_path_factory.mktemp("walk")
    return a, b, _cli_strip(tmp, a, b, "--steps", "4", "--method", "both")


def test_toml_interpolate_source_and_ray_pair_mapper_give_the_cli_strip(
    tmp_path: Path, walk
) -> None:
    from typer.testing import CliRunner

    from aepipe.cli.main import app, load_areas

    a, b, want = walk
    for name, image in (("a", a), ("b", b)):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    out = tmp_path / "walk"
    spec = tmp_path / "walk.toml"
    spec.write_text(
        f'[source]\ntype = "interpolate"\na = "{(tmp_path / "a.png").as_posix()}"\n'
        f'b = "{(tmp_path / "b.png").as_posix()}"\nsteps = 4\nmethod = "both"\n\n'
        f'[sink]\nout = "{out.as_posix()}"\ngrid = "{(tmp_path / "grid.png").as_posix()}"\n'
    )
    load_areas()
    res = CliRunner().invoke(app, ["run", str(spec), "-q"])
    assert res.exit_code == 0, res.output
    names = sorted(p.stem for p in out.glob("*.png"))
    assert names == sorted(f"{m}_step_{i:02d}" for m in ("linear", "slerp") for i in range(4))
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    np.testing.assert_array_equal(grid[..., 0] if grid.ndim == 3 else grid, want)

    pytest.importorskip("ray", reason="needs the [ray] extra")
    from aepipe.ray import FacePairMapper

    mapper = FacePairMapper(steps=4, method="both", device="cpu")
    pairs = {"a": [_png(a), _png(a)], "b": [_png(b), _png(face_photo(None))], "name": ["p", "q"]}
    rows = mapper({k: np.array(v, dtype=object) for k, v in pairs.items()})
    assert list(rows["name"]) == ["p", "q"] and rows["error"][0] == ""
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rows["png"][0]))), want)
    assert rows["png"][1] == b"" and "b: no face to use" in rows["error"][1]
