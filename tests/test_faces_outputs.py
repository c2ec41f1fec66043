"""Where the face commands and generated pipeline files write: an output that is an input, a
folder that cannot be made, what the report says was written where, and kept files of another
run (CLI and ``aepipe run`` alike; tiny seeded weights, fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from aepipe.errors import ConfigError
from aepipe.pipeline import read_pipeline_file
from aepipe.stages.face_generator import FaceGenerator


def cli(*args: object) -> Result:
    from aepipe.cli.main import app, load_areas

    load_areas()
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_refusal(res: Result, message: str) -> None:
    """Exit 2 with ``message`` and no traceback (typer's exit, not an exception)."""
    assert res.exit_code == 2, res.output
    assert message in res.output, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """``a.png`` and ``b.png`` (20x20 gray crops), ``link.png`` -> a.png, an empty ``sub``."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(
            tmp_path / f"{name}.png"
        )
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "sub").mkdir()
    return tmp_path


# ---- an output that is one of the inputs -------------------------------------------------------


def test_face_commands_refuse_to_write_over_an_input_photo(photos: Path) -> None:
    """`faces interpolate a.png b.png --out a.png` and `faces traverse --image b.png --out
    b.png` wrote their sheet over the photo (exit 0). The check comes before the weights load:
    the missing --model would otherwise be exit 4."""
    a, b = photos / "a.png", photos / "b.png"
    before = {p: p.read_bytes() for p in (a, b)}
    walk = ("faces", "interpolate", a, b, "--model", photos / "no-weights")
    frames = photos / "frames"
    frames.mkdir()
    (frames / "linear_step_00.png").symlink_to(a)
    cases = [
        ((*walk, "--out", a), f"--out {a} is one of the inputs; choose another file"),
        ((*walk, "--out", photos / "sub" / ".." / "link.png"), "is one of the inputs"),
        (
            (*walk, "--out", photos / "s.png", "--frames", frames, "--overwrite"),
            f"--frames {frames / 'linear_step_00.png'} is one of the inputs; choose another folder",
        ),
        (
            ("faces", "traverse", "--image", b, "--out", b, "--model", photos / "no-weights"),
            f"--out {b} is one of the inputs",
        ),
        (
            ("faces", "vq-interpolate", a, b, "--out", b, "--model", photos / "no-weights"),
            f"--out {b} is one of the inputs",
        ),
    ]
    for args, message in cases:
        one_line_refusal(cli(*args), message)
    assert {p: p.read_bytes() for p in (a, b)} == before
    assert not (photos / "s.png").exists()


def test_walk_pipeline_file_refuses_a_grid_or_frame_that_is_an_input(
    photos: Path, tiny_weights: dict[str, Path]
) -> None:
    """An interpolate source's sink.grid (or, with overwrite = true, a frame in sink.out) that
    is one of its photos was written over it; refused as the CLI refuses it, by the key."""
    w = tiny_weights["face-generator"].as_posix()
    spec = photos / "p.toml"
    (photos / "linear_step_00.png").write_bytes((photos / "a.png").read_bytes())

    def write(a: str, out: Path, grid: Path) -> None:
        spec.write_text(
            f'[source]\ntype = "interpolate"\na = "{(photos / a).as_posix()}"\n'
            f'b = "{(photos / "b.png").as_posix()}"\nsteps = 2\nweights = "{w}"\n\n'
            f'[sink]\nout = "{out.as_posix()}"\ngrid = "{grid.as_posix()}"\noverwrite = true\n'
        )

    write("a.png", photos / "walk", photos / "link.png")
    with pytest.raises(ConfigError) as info:
        read_pipeline_file(spec)
    link = (photos / "link.png").as_posix()
    assert str(info.value) == f"{spec}: sink.grid {link} is one of the inputs; choose another file"
    # Frames go into the photos' own folder, and the first one is named like photo a.
    write("linear_step_00.png", photos, photos / "g.png")
    one_line_refusal(
        cli("run", spec, "-q"),
        f"sink.out {photos / 'linear_step_00.png'} is one of the inputs; choose another folder",
    )


# ---- output folders that cannot be made ---------------------------------------------------------


def test_face_outputs_that_cannot_be_made_are_refused_before_any_work(tmp_path: Path) -> None:
    """A file in the way of --out, --frames, --concepts-dir or fit-sampler's --out ended in a
    NotADirectoryError traceback, after the work (86 s of it for fit-sampler); gen-faces named
    its default grid's --grid, an option the user had not given."""
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    afile = tmp_path / "afile"
    afile.write_text("x")
    photo = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(photo)
    gen = ("gen-faces", "--n", 2, "--model", weights)
    cases = [
        ((*gen, "--no-grid", "--out", afile / "faces"), "--out"),
        ((*gen, "--out", afile / "faces"), "--out"),
        (
            (
                "faces",
                "interpolate",
                photo,
                photo,
                "--out",
                tmp_path / "s.png",
                "--frames",
                afile / "fr",
                "--model",
                weights,
            ),
            "--frames",
        ),
        (
            (
                "faces",
                "concept",
                "--positive",
                tmp_path,
                "--negative",
                tmp_path,
                "--name",
                "x",
                "--concepts-dir",
                afile / "cd",
                "--model",
                weights,
            ),
            "--concepts-dir",
        ),
        (("faces", "fit-sampler", "--out", afile / "fs", "--model", weights), "--out"),
        (("vae", "scatter", "--out", afile / "s.png", "--model", weights), "--out"),
    ]
    for args, option in cases:
        res = cli(*args)
        one_line_refusal(res, f"{option} {afile}")
        assert f"cannot be made: {afile} is a file" in res.output, res.output
    assert not (tmp_path / "s.png").exists()


def test_gen_faces_into_a_read_only_folder_is_refused(tmp_path: Path, read_only_dir: Path) -> None:
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    res = cli("gen-faces", "--n", 2, "--no-grid", "--model", weights, "--out", read_only_dir / "x")
    one_line_refusal(res, f"cannot write into {read_only_dir}")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_a_folder_that_refuses_only_when_written_is_one_line(
    tmp_path: Path, tiny_weights: dict[str, Path]
) -> None:
    """sink.out = "/proc/nope/x" passes the checks made before the work when run as root (root
    may write anywhere, /proc refuses new folders): a raw FileNotFoundError traceback then.
    Now one line naming the key (or the option), whichever check catches it."""
    w = tiny_weights["face-generator"].as_posix()
    spec = tmp_path / "p.toml"
    spec.write_text(
        f'[source]\ntype = "faces"\nn = 2\nweights = "{w}"\n\n[sink]\nout = "/proc/nope/x"\n'
    )
    one_line_refusal(cli("run", spec, "-q"), f"{spec}: sink.out /proc/nope/x")
    res = cli("gen-faces", "--n", 2, "--model", w, "--out", "/proc/nope/x")
    one_line_refusal(res, "--out /proc/nope/x")


# ---- what was written where, and kept files of another run -------------------------------------


def test_pipeline_file_says_where_the_grid_was_written(
    tmp_path: Path, tiny_weights: dict[str, Path]
) -> None:
    """`aepipe run examples/faces.toml` said "wrote 17 files to demo_out/pipeline_faces", a
    folder of 16: the 17th was the grid beside it. Now worded as gen-faces words it."""
    w = tiny_weights["face-generator"].as_posix()
    out, grid, spec = tmp_path / "out", tmp_path / "grid.png", tmp_path / "p.toml"
    spec.write_text(
        f'[source]\ntype = "faces"\nn = 3\nweights = "{w}"\n\n'
        f'[sink]\nout = "{out.as_posix()}"\ngrid = "{grid.as_posix()}"\n'
    )
    res = cli("run", spec, "-q")
    assert res.exit_code == 0, res.output
    assert f"wrote 3 files to {out.as_posix()} and the grid {grid.as_posix()}" in res.output
    assert len(list(out.iterdir())) == 3 and grid.is_file()


def test_kept_faces_of_another_run_are_said_to_be_and_make_no_grid(tmp_path: Path) -> None:
    """gen-faces --seed 1 then gen-faces --concept smile:1.5 into the same folder kept the
    first run's faces, said only "kept 16 that exist" and drew them as the new grid: a grid
    of unedited faces for an edit. Kept faces are now compared with the ones this run made:
    another run's are said to be, and no grid is drawn of them. A true resume (same options)
    still draws the grid of the folder."""
    weights = FaceGenerator.tiny(seed=0).save_pretrained(tmp_path / "w")
    out = tmp_path / "faces"

    def gen(*extra: object) -> str:
        res = cli("gen-faces", "--model", weights, "--out", out, "--n", 4, *extra)
        assert res.exit_code == 0, res.output
        return res.output

    gen("--grid", tmp_path / "first.png")
    (out / "face_00002.png").unlink()
    said = gen()  # a resume: the three kept faces are this run's
    assert "wrote 1 faces" in said and "kept 3 that exist" in said and "differ" not in said
    assert (out / "grid.png").read_bytes() == (tmp_path / "first.png").read_bytes()

    # Another run's faces (other options: here, the negatives of these) in the folder.
    for path in out.glob("face_*.png"):
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    (out / "grid.png").unlink()
    faces = {p.name: p.read_bytes() for p in out.iterdir()}
    said = gen()
    assert "wrote 0 faces" in said and "kept 4 that exist (--overwrite replaces them)" in said
    assert "note: the 4 kept faces differ from what this run made: another run made them" in said
    assert "note: no grid written: it would show the 4 kept images of another run" in said
    assert {p.name: p.read_bytes() for p in out.iterdir()} == faces  # and no grid.png

    (out / "face_00003.png").unlink()
    said = gen()  # one written now beside three of another run: no grid either
    assert "wrote 1 faces" in said and "the 3 kept faces differ" in said
    assert not (out / "grid.png").exists()
    said = gen("--overwrite")
    assert "wrote 4 faces" in said and "and the grid" in said and "differ" not in said
    assert (out / "grid.png").read_bytes() == (tmp_path / "first.png").read_bytes()


def test_fit_sampler_does_not_replace_the_shipped_weights_unasked(tmp_path: Path) -> None:
    """`faces fit-sampler --out weights/face-vae` rewrote the shipped folder without the
    --overwrite-shipped every training command asks for; refused before the data is read."""
    from aepipe.weights import shipped_weights_dir

    target = shipped_weights_dir() / "face-vae"
    before = (target / "config.json").read_bytes()
    res = cli("faces", "fit-sampler", "--out", target, "--data", tmp_path / "no-data.npz")
    one_line_refusal(res, "is inside the shipped weights")
    assert (target / "config.json").read_bytes() == before
