"""Faces in whole photos (issue 24): detect, align, edit and paste back; no data needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from factory import FACE_AT, FACE_FILE, face_photo
from PIL import Image

from aepipe import faces_align as fa
from aepipe.batch import ImageBatch
from aepipe.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
FACE = FACE_FILE
X0, Y0, SIDE = FACE_AT


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def _photo(face: bool = True) -> np.ndarray:
    return face_photo(FACE if face else None)


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return ImageBatch.from_numpy(arr, ["p"]).images


def _original_crop() -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(FACE).convert("L"), np.float32) / 255)


def test_finds_and_aligns_pasted_face_close_to_original() -> None:
    images = _tensor(_photo())
    faces = fa.select_faces(fa.find_faces(images), "all")
    assert len(faces) == 1 and faces[0].status == "ok"
    x, y, side = faces[0].box
    # The box sits on the face: its centre inside the pasted square's middle half.
    assert X0 + SIDE / 4 < x + side / 2 < X0 + 3 * SIDE / 4
    assert Y0 + SIDE / 4 < y + side / 2 < Y0 + 3 * SIDE / 4
    crop = fa.align_crops(images, faces)
    assert crop.shape == (1, 1, 64, 64)
    aligned = (crop[0, 0] - _original_crop()).abs().mean().item()
    # A crop 16 template px off (a quarter of the frame) is far worse than the aligned one. The
    # bound is loose because the detector's box scale varies by ~10% (benchmark: 6.7 px of 55).
    off = (crop[0, 0, :, :48] - _original_crop()[:, 16:]).abs().mean().item()
    assert aligned < 0.11 and aligned < off / 3


def test_paste_changes_only_inside_mask_and_keeps_chroma() -> None:
    images = _tensor(_photo())
    faces = fa.select_faces(fa.find_faces(images), "all")
    delta = torch.full((1, 1, 64, 64), 0.1)
    out = fa.paste_changes(images, faces, delta)
    changed = (out != images).any(1)[0]
    assert changed.any()
    ys, xs = torch.nonzero(changed, as_tuple=True)
    m = faces[0].matrix
    u = m[0][0] * xs.float() + m[0][1] * ys.float() + m[0][2]
    v = m[1][0] * xs.float() + m[1][1] * ys.float() + m[1][2]
    assert (fa._mask(u, v) > 0).all()
    # Outside the mask: bit for bit the input.
    assert torch.equal(out[0][:, ~changed], images[0][:, ~changed])
    # Colour kept: the same change on R, G and B (where nothing clipped), so R-G and B-G stay.
    inside = changed & (out[0] < 1).all(0) & (out[0] > 0).all(0)
    diff = out[0][:, inside] - images[0][:, inside]
    assert torch.allclose(diff[0], diff[1], atol=1e-6) and torch.allclose(
        diff[2], diff[1], atol=1e-6
    )


def _rolled_photo(degrees: float) -> np.ndarray:
    img = Image.open(FACE).convert("L").resize((SIDE, SIDE), Image.Resampling.BICUBIC)
    photo = _photo()
    # Roll the face (counter-clockwise in the picture) inside its square.
    rolled = np.asarray(img.rotate(degrees, resample=Image.Resampling.BICUBIC, fillcolor=128))
    photo[Y0 : Y0 + SIDE, X0 : X0 + SIDE] = rolled[..., None]
    return photo


def test_refine_recovers_roll() -> None:
    from aepipe.stage import load_stage

    mean = fa.mean_face(load_stage("face-vae"))
    faces = fa.find_faces(_tensor(_rolled_photo(8)), mean_face=mean, aligner=None)
    assert faces and faces[0].status == "ok" and faces[0].match > fa.MIN_MATCH
    (a, b, _), _ = faces[0].matrix
    # The photo->template transform turns the face back upright by the 8 degrees, give or take 4.
    assert 4 < np.degrees(np.arctan2(-b, a)) < 12


@pytest.mark.parametrize("degrees", [-12.0, 8.0])
def test_shipped_aligner_recovers_roll_and_framing(degrees: float) -> None:
    faces = fa.find_faces(_tensor(_rolled_photo(degrees)))
    ok = fa.select_faces(faces, "all")
    assert len(ok) == 1 and ok[0].score > fa.MIN_FACE_SCORE
    (a, b, _), _ = ok[0].matrix
    # Most of the roll is undone (the pasted face is a blurry VAE decode with grey corners).
    assert abs(np.degrees(np.arctan2(-b, a)) - degrees) < 5
    # The true frame: the pasted square maps onto the 64x64 template (scale 64 / SIDE).
    assert abs(np.hypot(a, b) * SIDE / 64 - 1) < 0.08


def test_no_face_and_too_small_are_reported_per_face() -> None:
    empty = fa.find_faces(_tensor(_photo(face=False)))
    assert empty == []
    faces = fa.find_faces(_tensor(_photo()), min_face=10_000)
    assert faces and faces[0].status == "too small" and "px" in faces[0].message
    assert fa.select_faces(faces, "all") == []
    result = fa.PhotoEdit(_tensor(_photo()), faces, [])
    assert "too small" in fa.face_report(result, "all")[0]
    assert "no face found" in fa.face_report(fa.PhotoEdit(result.images, [], []), "all")[0]


def test_cli_edits_whole_photo_outside_mask_unchanged(tmp_path: Path, cli) -> None:
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    res = cli(
        "faces", "edit", tmp_path / "photo.png", "--concept", "smile:+2", "--face", "largest",
        "--out", tmp_path / "e",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "face 0" in res.output and "edited" in res.output
    out = np.asarray(Image.open(tmp_path / "e" / "photo.png"))
    assert out.shape == photo.shape
    changed = (out != photo).any(-1)
    assert changed.sum() > 1000
    # Only pixels on the face move (the feathered mask reaches a little past the face's square);
    # everything else is bit for bit the input (test_paste_changes checks the mask exactly).
    rows, cols = np.nonzero(changed)
    assert rows.min() >= Y0 - 16 and rows.max() < Y0 + SIDE + 16
    assert cols.min() >= X0 - 16 and cols.max() < X0 + SIDE + 16


def test_cli_photo_without_face_fails_with_reason(tmp_path: Path, cli) -> None:
    Image.fromarray(_photo(face=False)).save(tmp_path / "empty.png")
    res = cli(
        "faces", "edit", tmp_path / "empty.png", "--concept", "smile:+1", "-o", tmp_path / "e"
    )
    assert res.exit_code == ExitCode.NOTHING_PROCESSED, res.output
    assert "nothing edited: no face found" in res.output
    assert not (tmp_path / "e" / "empty.png").exists()
    # A reconstruction that finds no face says so in its own word.
    res = cli("faces", "reconstruct", tmp_path / "empty.png", "-o", tmp_path / "r")
    assert res.exit_code == ExitCode.NOTHING_PROCESSED, res.output
    assert "nothing reconstructed: no face found" in res.output


@pytest.mark.parametrize("face", ["bogus", "-1"])
def test_cli_rejects_bad_face_choice(tmp_path: Path, cli, face: str) -> None:
    Image.fromarray(_photo()).save(tmp_path / "photo.png")
    res = cli("faces", "edit", tmp_path / "photo.png", "--concept", "smile:+1", "--face", face)
    assert res.exit_code == ExitCode.BAD_ARGS, res.output


def test_cli_reconstructs_photo_in_place(tmp_path: Path, cli) -> None:
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    res = cli("faces", "reconstruct", tmp_path / "photo.png", "--out", tmp_path / "r")
    assert res.exit_code == 0, res.output
    # It said "edited": nothing is edited, the face is reconstructed.
    assert ": reconstructed" in res.output and "edited" not in res.output, res.output
    out = np.asarray(Image.open(tmp_path / "r" / "photo.png"))
    assert out.shape == photo.shape
    changed = (out != photo).any(-1)
    rows, cols = np.nonzero(changed)
    assert changed.sum() > 1000
    assert rows.min() >= Y0 - 16 and rows.max() < Y0 + SIDE + 16
    assert cols.min() >= X0 - 16 and cols.max() < X0 + SIDE + 16
    # A 64x64 crop input is still the old behaviour: a 64x64 gray decode.
    res = cli("faces", "reconstruct", FACE, "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "c" / FACE.name).size == (64, 64)


def test_cli_reconstructs_photo_with_the_face_vqvae(tmp_path: Path, cli) -> None:
    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    args = ("--model", "face-vqvae", "--out")
    res = cli("faces", "reconstruct", tmp_path / "photo.png", *args, tmp_path / "r")
    assert res.exit_code == 0, res.output
    assert ": reconstructed" in res.output and "edited" not in res.output, res.output
    out = np.asarray(Image.open(tmp_path / "r" / "photo.png"))
    changed = (out != photo).any(-1)
    rows, cols = np.nonzero(changed)
    assert out.shape == photo.shape and changed.sum() > 1000
    assert rows.min() >= Y0 - 16 and rows.max() < Y0 + SIDE + 16
    assert cols.min() >= X0 - 16 and cols.max() < X0 + SIDE + 16
    res = cli("faces", "reconstruct", FACE, *args, tmp_path / "c")
    assert res.exit_code == 0, res.output
    crop = np.asarray(Image.open(tmp_path / "c" / FACE.name), np.float32)
    original = _original_crop().numpy() * 255
    assert crop.shape == (64, 64) and np.abs(crop - original).mean() < 12  # a close copy
    res = cli("faces", "reconstruct", FACE, "--model", "salt-pepper", "--out", tmp_path / "x")
    assert res.exit_code == 4 and "not a face model" in res.output


@pytest.mark.parametrize("roll", [-10.0, 10.0])
def test_turned_search_maps_boxes_back(roll: float) -> None:
    gray = _tensor(_photo())[0].mean(0)
    boxes = fa.detect_boxes(gray, rolls=(roll,))
    assert boxes
    x, y, side = boxes[0]
    # Turning the photo about its centre and back leaves the face centre where it was.
    assert abs(x + side / 2 - (X0 + SIDE / 2)) < 20 and abs(y + side / 2 - (Y0 + SIDE / 2)) < 20


def test_cli_edits_real_photo_face(tmp_path: Path, cli) -> None:
    photo = ROOT / "sample_inputs" / "faces" / "astronaut.png"
    res = cli("faces", "edit", photo, "--concept", "smile:+1", "--face", "0", "-o", tmp_path)
    assert res.exit_code == 0, res.output
    assert "face 0 at x=171 y=62 size=107px: edited" in res.output
    before, after = np.asarray(Image.open(photo)), np.asarray(Image.open(tmp_path / photo.name))
    assert before.shape == after.shape and (before != after).sum() > 1000


@pytest.fixture(scope="module")
def vae():
    from aepipe.stage import load_stage

    return load_stage("face-vae")


def test_core_edit_is_what_the_cli_writes(tmp_path: Path, cli, vae) -> None:
    from aepipe.core import edit_face_photo, face_concepts
    from aepipe.stages.face_generator import default_concept_dirs

    photo = _photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    res = cli(
        "faces", "edit", tmp_path / "photo.png", "--concept", "smile:+2", "-o", tmp_path / "e"
    )
    assert res.exit_code == 0, res.output
    vectors = face_concepts(["smile:+2"], default_concept_dirs())
    done = edit_face_photo(vae, ImageBatch.from_numpy(photo, ["photo"]), vectors)
    assert done.report[0].endswith(": edited"), done.report
    assert all("rejected by the face aligner" in line for line in done.report[1:])
    lib = done.batch.to_numpy(np.uint8)[0]
    np.testing.assert_array_equal(lib, np.asarray(Image.open(tmp_path / "e" / "photo.png")))
    assert (lib != photo).any(-1).sum() > 1000


def test_core_refuses_paths_as_http_concepts() -> None:
    from aepipe.core import face_concepts
    from aepipe.errors import ConfigError
    from aepipe.stages.face_generator import default_concept_dirs

    assert len(face_concepts(["smile:1", "eyeglasses"], default_concept_dirs())) == 2
    for spec in ("/etc/passwd:1", "../smile.json:1", "weights/face-vae/concepts/smile.json"):
        with pytest.raises(ConfigError):
            face_concepts([spec], default_concept_dirs(), names_only=True)


def test_cli_interpolates_faces_found_in_photos(tmp_path: Path, cli, vae) -> None:
    from aepipe.core import aligned_face

    other = ROOT / "sample_inputs" / "faces" / "vae_face_1.png"
    Image.fromarray(_photo()).save(tmp_path / "a.png")
    Image.fromarray(face_photo(other, at=(60, 40, 160))).save(tmp_path / "b.png")
    out = tmp_path / "strip.png"
    res = cli(
        "faces", "interpolate", tmp_path / "a.png", tmp_path / "b.png", "--steps", "5",
        "--out", out, "--frames", tmp_path / "f",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    strip = np.asarray(Image.open(out))
    # One row of 5 faces of 64 px with make_grid's 2 px borders.
    assert strip.shape[:2] == (68, 5 * 66 + 2)
    # The ends are the decodes of the aligned faces, not of the photos' centre crops.
    for path, frame in (
        (tmp_path / "a.png", "linear_step_00"),
        (tmp_path / "b.png", "linear_step_04"),
    ):
        batch = ImageBatch.from_numpy(np.asarray(Image.open(path)), [path.stem])
        want = vae(aligned_face(vae, batch)).to_numpy(np.uint8)[0, ..., 0]
        got = np.asarray(Image.open(tmp_path / "f" / f"{frame}.png"))
        assert np.abs(got.astype(int) - want).max() <= 1
        crop = vae(batch).to_numpy(np.uint8)[0, ..., 0]
        assert np.abs(got.astype(float) - crop).mean() > 10
    # Each aligned face is close to the face crop it was made from (its decode, at least).
    a = aligned_face(vae, ImageBatch.from_numpy(np.asarray(Image.open(tmp_path / "a.png")), ["a"]))
    assert a.size == (64, 64)
    assert (a.images[0, 0] - _original_crop()).abs().mean() < 0.11


def test_interpolate_photo_without_face_fails(tmp_path: Path, cli) -> None:
    Image.fromarray(_photo(face=False)).save(tmp_path / "empty.png")
    res = cli("faces", "interpolate", tmp_path / "empty.png", FACE, "-o", tmp_path / "s.png")
    assert res.exit_code != 0 and "no face" in res.output
    assert not (tmp_path / "s.png").exists()


def test_edit_photo_with_faces_found_before_is_the_same_edit(vae) -> None:
    from aepipe.stages.face_generator import load_concept

    images, vec = _tensor(_photo()), load_concept("smile")
    faces = fa.find_faces(images, mean_face=fa.mean_face(vae))
    found_here = fa.edit_photo(vae, images, [(vec, 1.0)], "largest")
    given = fa.edit_photo(vae, images, [(vec, 1.0)], "largest", faces=faces)
    assert given.edited == found_here.edited == [0]
    assert torch.equal(given.images, found_here.images) and not torch.equal(given.images, images)


def _tiny_aligner(seed: int = 0):
    from aepipe.models.face_aligner import FaceAligner

    torch.manual_seed(seed)
    return FaceAligner(width=4, hidden=16).eval()


def test_similarity_round_trips_and_composes() -> None:
    from aepipe.data.face_views import compose, invert
    from aepipe.models.face_aligner import corner_error, params_of, similarity

    params = torch.tensor([[3.0, -2.0, 0.2, 0.1], [0.0, 0.0, 0.0, 0.0], [-9.0, 4.0, -0.3, -0.4]])
    mats = similarity(params)
    torch.testing.assert_close(params_of(mats), params, atol=1e-5, rtol=0)
    # The centre maps to centre + shift; a zero transform is the identity.
    centre = torch.tensor([31.5, 31.5, 1.0])
    torch.testing.assert_close(mats[0] @ centre, centre[:2] + params[0, :2])
    torch.testing.assert_close(mats[1], torch.eye(2, 3))
    ident = compose(mats, invert(mats))
    assert corner_error(ident, torch.eye(2, 3).expand(3, 2, 3)).max() < 1e-4


def test_rendered_views_show_the_face_once_the_frame_is_corrected() -> None:
    from aepipe.data.face_views import ViewSampler, render
    from aepipe.models.face_aligner import params_of

    gen = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (8, 64, 64), generator=gen, dtype=torch.uint8)
    bank = torch.rand(3, 1, 128, 128, generator=gen)
    scenes = ViewSampler(faces, bank, negatives=0.0).draw(16, gen)
    scenes.window[:, 0] = 0.0  # the whole pasted square
    assert params_of(scenes.true_from_cand).abs().max() > 1  # frames start off the face
    fixed = scenes.moved(scenes.true_from_cand)
    torch.testing.assert_close(fixed.true_from_cand, torch.eye(2, 3).expand(16, 2, 3), atol=1e-4,
                               rtol=0)  # fmt: skip
    views = render(fixed, view=1.0)
    # Seen in the true frame with no enlargement, the view is the (degraded) face itself.
    assert (views - fixed.faces.clamp(0, 1)).abs().mean() < 0.02
    assert (render(scenes, view=1.0) - fixed.faces).abs().mean() > 0.05


def test_find_faces_with_an_aligner_corrects_scores_and_merges() -> None:
    images = _tensor(_photo())
    model = _tiny_aligner()
    from aepipe.batch import to_gray

    gray = to_gray(images)[0, 0]
    raw = fa.detect_boxes(gray, neighbors=fa.ALIGN_NEIGHBORS, keep_all=True)
    faces = fa.find_faces(images, aligner=model, min_score=0.0)
    assert faces and all(f.score is not None and 0 <= f.score <= 1 for f in faces)
    assert len(faces) <= len(raw) * len(fa.ALIGN_ZOOMS)
    assert [f.index for f in faces] == list(range(len(faces)))
    # Each box is the template box of the corrected frame, so it moves with the correction.
    assert all(f.box == fa.frame_box(f.matrix) for f in faces)
    for a in faces:
        assert not any(fa._same_face(a, b) for b in faces if b is not a)
    rejected = fa.find_faces(images, aligner=model, min_score=1.0)
    assert rejected and all(f.status == "not a face" and "score" in f.message for f in rejected)
    assert fa.select_faces(rejected, "all") == []


def test_keep_all_never_drops_a_candidate_under_a_larger_box() -> None:
    big, small = (0.0, 0.0, 100.0, 0), (10.0, 10.0, 40.0, 0)
    assert fa._merge_boxes([big, small]) == [big[:3]]
    assert fa._merge_boxes([big, small], keep_all=True) == [big[:3], small[:3]]
    again = (11.0, 10.0, 42.0, 1)
    assert fa._merge_boxes([big, small, again], keep_all=True)[1] == (10.5, 10.0, 41.0)


def test_train_face_aligner_writes_a_loadable_weights_folder(tmp_path: Path) -> None:
    from aepipe.train.face_aligner import TrainConfig, train
    from aepipe.weights import load_model

    rng = np.random.default_rng(0)
    files = np.array([f"P{i // 2}/P{i // 2}_000{i % 2}.jpg" for i in range(40)])
    np.savez(tmp_path / "lfw.npz", images=rng.integers(0, 256, (40, 64, 64, 3), np.uint8),
             train_files=files)  # fmt: skip
    for split in ("train", "val"):
        (tmp_path / "photos" / split).mkdir(parents=True)
        for k in range(2):
            arr = rng.integers(0, 256, (128, 160, 3), np.uint8)
            Image.fromarray(arr).save(tmp_path / "photos" / split / f"{k}.jpg")
    small = dict(width=4, hidden=16, steps=4, val_every=2, val_size=16, batch_size=8)
    cfg = TrainConfig(
        data=tmp_path / "lfw.npz", photos=tmp_path / "photos", val_fraction=0.2, **small
    )
    out = train(cfg, tmp_path / "aligner")
    model, config = load_model(out)
    assert config["stage"] == "face-aligner" and config["model_class"] == "FaceAligner"
    assert {"err_px_2", "face_auc"} <= set(config["metrics"])
    assert "aepipe train face-aligner" in (out / "MODEL_CARD.md").read_text()
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 5)


@pytest.mark.data
def test_shipped_aligner_on_validation_faces(shared_data: Path) -> None:
    """Validation people (never trained on) in val photos: two corrections land within ~2 px."""
    from aepipe.data.face_views import ViewSampler, background_bank
    from aepipe.data.faces import load_faces, split_by_person
    from aepipe.train.face_aligner import evaluate
    from aepipe.weights import load_model

    faces, files = load_faces(shared_data / "faces/lfw_64.npz", "train", with_files=True)
    val = torch.from_numpy(faces[split_by_person(files, len(faces), 0.05) :])
    bank = background_bank(shared_data / "photos/val", 1, seed=5)
    scenes = ViewSampler(val, bank).draw(256, torch.Generator().manual_seed(5))
    model, _ = load_model("face-aligner")
    m = evaluate(model, scenes, model.view)
    assert m["err_px_0"] > 8 and m["err_px_2"] < 2.5 and m["face_auc"] > 0.99, m


def test_cli_traverses_around_the_face_found_in_a_photo(tmp_path: Path, cli, vae) -> None:
    """``faces traverse --image PHOTO`` starts from the photo's aligned face (it encoded the
    centre crop of the whole picture)."""
    from aepipe.core import aligned_face

    Image.fromarray(_photo()).save(tmp_path / "a.png")
    out = tmp_path / "t.png"
    res = cli(
        "faces", "traverse", "--image", tmp_path / "a.png", "--dims", "0", "--steps", "2",
        "--span", "0", "--out", out,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cell = np.asarray(Image.open(out))[2:66, 2:66].astype(int)  # span 0: the start face itself
    batch = ImageBatch.from_numpy(np.asarray(Image.open(tmp_path / "a.png")), ["a"])
    want = vae.decode(vae.encode(aligned_face(vae, batch))).to_numpy(np.uint8)[0, ..., 0]
    assert np.abs(cell - want).max() <= 1
    crop = vae.decode(vae.encode(batch)).to_numpy(np.uint8)[0, ..., 0]
    assert np.abs(cell - crop).mean() > 10


def test_cli_vq_interpolate_aligns_the_faces_of_photos(tmp_path: Path, cli) -> None:
    """``faces vq-interpolate`` squashed a whole photo into the face frame (its centre crop);
    it finds and aligns the face first, as ``faces interpolate`` does."""
    from aepipe.core import aligned_face
    from aepipe.stage import load_stage

    Image.fromarray(_photo()).save(tmp_path / "a.png")
    out = tmp_path / "strip.png"
    args = ("faces", "vq-interpolate", tmp_path / "a.png", FACE, "--steps", "2", "-o", out)
    res = cli(*args, "--device", "cpu")
    assert res.exit_code == 0, res.output
    first = np.asarray(Image.open(out))[2:66, 2:66].astype(int)  # the strip's first face
    vq = load_stage("face-vqvae")
    batch = ImageBatch.from_numpy(np.asarray(Image.open(tmp_path / "a.png")), ["a"])
    want = vq.interpolate(aligned_face(vq, batch), aligned_face(vq, batch), 2)
    assert np.abs(first - want.to_numpy(np.uint8)[0, ..., 0]).max() <= 1
    squashed = vq(batch).to_numpy(np.uint8)[0, ..., 0]
    assert np.abs(first - squashed).mean() > 10


@pytest.mark.parametrize("command", ["interpolate", "vq-interpolate"])
def test_cli_interpolate_face_choice_is_the_toml_one(tmp_path: Path, cli, command: str) -> None:
    """--face all was taken (help: largest | N); TOML's ``face`` refused it."""
    from pydantic import ValidationError

    from aepipe.pipeline import InterpolateSource

    for face in ("all", "-1", "10000", "bogus"):
        res = cli("faces", command, FACE, FACE, "--face", face, "-o", tmp_path / "s.png")
        assert res.exit_code == ExitCode.BAD_ARGS and "--face must be largest" in res.output
        with pytest.raises(ValidationError):
            InterpolateSource(type="interpolate", a="a", b="b", face=face)
    assert not (tmp_path / "s.png").exists()


def test_cli_missing_photo_is_a_bad_argument(tmp_path: Path, cli) -> None:
    """A missing input exits 2 as in the file commands (it was 1: 'some inputs failed')."""
    nope = tmp_path / "nope.png"
    for args in (
        ("faces", "interpolate", FACE, nope),
        ("faces", "vq-interpolate", nope, FACE),
        ("faces", "traverse", "--image", nope),
    ):
        res = cli(*args, "-o", tmp_path / "s.png")
        assert res.exit_code == ExitCode.BAD_ARGS and "input not found" in res.output, args
    assert not (tmp_path / "s.png").exists()


def test_cli_edit_recursive_keeps_the_layout(tmp_path: Path, cli, tiny_weights) -> None:
    """`faces edit` had no --recursive (reconstruct and colorize have it)."""
    weights = tiny_weights["face-generator"]
    nested = tmp_path / "in" / "sub"
    nested.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(nested / "a.png")
    concept = tmp_path / "c.json"
    concept.write_text('{"name": "c", "vector": [1, 0, 0, 0]}')
    args = ("faces", "edit", tmp_path / "in", "--concept", f"{concept}:1", "--model", weights)
    res = cli(*args, "--out", tmp_path / "flat")
    assert res.exit_code != 0 and not (tmp_path / "flat" / "sub" / "a.png").exists()
    res = cli(*args, "--recursive", "--out", tmp_path / "deep")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "deep" / "sub" / "a.png").size == (16, 16)


def test_a_face_whose_frame_did_not_settle_is_not_a_face() -> None:
    """Texture on old-looking photos (a statue, buildings, scratches) scored >= 0.99 and was
    edited as a face; the aligner's frame on it was still moving at its last correction. On
    validation photos (clean, sepia, noisy gray) dropping frames that moved more than
    MAX_RESIDUAL px cut false faces per photo 1.05 -> 0.44 on sepia prints for one real face."""
    still = fa.FaceBox(0, (10.0, 10.0, 60.0), score=0.999, residual=0.4)
    moving = fa.FaceBox(1, (200.0, 10.0, 60.0), score=1.0, residual=fa.MAX_RESIDUAL + 0.5)
    fa.judge([still, moving], fa.MIN_FACE_SCORE, 0.0)
    assert still.status == "ok"
    assert moving.status == "not a face" and "did not settle" in moving.message
    lines = fa.face_report(fa.PhotoEdit(torch.zeros(1, 3, 8, 8), [still, moving], [0]), "all")
    assert "1 whose frame did not settle" in lines[-1]
    # The real face of a photo still passes: its frame settles well inside the limit.
    found = fa.find_faces(_tensor(_photo()))
    assert found[0].status == "ok" and found[0].residual < fa.MAX_RESIDUAL / 3
