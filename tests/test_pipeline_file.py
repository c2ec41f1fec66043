"""Pipeline files (``aepipe run``): checked whole before any weights load, refusals in the
file's own terms, every option of the matching CLI command, and resumed generated runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pikepdf
import pytest
from pdf_factory import add_page, image_stream, page_pixels
from PIL import Image
from typer.testing import CliRunner, Result

from aepipe.errors import ConfigError, WeightsError
from aepipe.pipeline import read_pipeline_file


def cli(*args: object) -> Result:
    from aepipe.cli.main import app, load_areas

    load_areas()
    return CliRunner().invoke(app, [str(a) for a in args])


def run_toml(path: Path, text: str) -> Result:
    path.write_text(text)
    return cli("run", path, "-q")


@pytest.fixture
def no_weights_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any weights that load fail the test (every loader reads tensors through load_model)."""
    import aepipe.weights

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"weights loaded: {args[0]}")

    monkeypatch.setattr(aepipe.weights, "load_model", refuse)


# ---- generated sources: the whole file is checked before any weights load --------------------

# source lines -> (exit code, what the message says); {vae} {vqvae} {other}: weights folders.
GENERATED_REFUSALS = {
    "out is a file": ("", 2, r"p\.toml: sink\.out \S*afile cannot be made: \S*afile is a file"),
    "not a generator": (
        'weights = "{other}"',
        4,
        r"p\.toml: source\.weights: \S+: weights are for stage 'impulse-denoiser', which cannot "
        "generate",
    ),
    "temperature": (
        "temperature = 9",
        2,
        r"p\.toml: source\.temperature 9\.0: Input should be less than or equal to 3 "
        r"\(for face-generator\)",
    ),
    "sharpen": ("sharpen = 9", 2, r"p\.toml: source\.sharpen: Input should be less than or equal"),
    "face VAE only": (
        'weights = "{vqvae}"\nprior = true\nsharpen = 1',
        2,
        r"p\.toml: source\.prior, source\.sharpen: for the face VAE only",
    ),
    "concept": ('concepts = ["nope:1"]', 2, r"p\.toml: source\.concepts: .*'nope' not found"),
    "walk photo": (
        'type = "interpolate"\na = "nope.png"\nb = "nope.png"',
        2,
        r"p\.toml: source\.a: input not found: nope\.png",
    ),
    "walk weights": (
        'type = "interpolate"\na = "a.png"\nb = "b.png"\nweights = "{other}"',
        4,
        r"p\.toml: source\.weights: \S+: weights are for stage 'impulse-denoiser', not "
        "'face-generator'",
    ),
}


@pytest.mark.parametrize("case", sorted(GENERATED_REFUSALS))
def test_generated_sources_are_checked_whole_before_any_weights_load(
    case: str, tmp_path: Path, tiny_weights: dict[str, Path], no_weights_load: None
) -> None:
    """A faces source sent to a file, a non-generator, an out-of-range temperature ... gave a
    traceback or a message naming neither file nor key, after the stages' weights loaded."""
    source, code, message = GENERATED_REFUSALS[case]
    folders = {"vae": "face-generator", "vqvae": "face-vqvae", "other": "impulse-denoiser"}
    source = source.format(**{k: tiny_weights[v].as_posix() for k, v in folders.items()})
    if "type" not in source:
        source = f'type = "faces"\nn = 2\n{source}'
    if "weights" not in source:
        source += f'\nweights = "{tiny_weights["face-generator"].as_posix()}"'
    (tmp_path / "afile").write_text("in the way")
    out = "afile" if case == "out is a file" else "out"
    text = (
        f'[source]\n{source}\n\n[[stages]]\nweights = "{tiny_weights["colorizer"].as_posix()}"'
        f'\n\n[sink]\nout = "{(tmp_path / out).as_posix()}"\n'
    )
    res = run_toml(tmp_path / "p.toml", text)
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    assert re.search(message, res.output.replace("\n", " ")), res.output
    assert not (tmp_path / "out").exists()


# ---- refusals name the file's keys, not the CLI's options -------------------------------------


def folder_toml(tmp_path: Path, weights: Path, sink: str = "", source: str = "") -> str:
    return (
        f'[source]\ntype = "folder"\ninputs = ["{(tmp_path / "in").as_posix()}"]\n{source}\n'
        f'[[stages]]\nweights = "{weights.as_posix()}"\n\n[sink]\n{sink}\n'
    )


def test_file_refusals_name_the_files_keys(tmp_path: Path, tiny_weights: dict[str, Path]) -> None:
    """The runner's refusals named --out, --report; a source typo pointed to the stage's
    options; a folder without stages did not name the file."""
    (tmp_path / "in").mkdir()
    Image.fromarray(page_pixels(40, 30)).save(tmp_path / "in" / "a.png")
    w = tiny_weights["impulse-denoiser"]
    out = f'out = "{(tmp_path / "out").as_posix()}"\n'
    cases = {
        f'out = "{(tmp_path / "in" / "sub").as_posix()}"': "choose another sink.out so no input",
        f'{out}report = "{(tmp_path / "in" / "a.png").as_posix()}"': (
            r"p\.toml: sink\.report \S+a\.png is one of the inputs"
        ),
        f'{out}report = "{tmp_path.as_posix()}"': r"p\.toml: sink\.report \S+ is a folder",
        f'{out}format = "png"\njpeg_quality = 80': (
            r"p\.toml: sink\.jpeg_quality applies to PDFs written as PDF; sink\.format png"
        ),
    }
    for sink, message in cases.items():
        res = run_toml(tmp_path / "p.toml", folder_toml(tmp_path, w, sink))
        assert res.exit_code == 2 and "--" not in res.output, res.output
        assert re.search(message, res.output), res.output
    spec = tmp_path / "typo.toml"
    typos = {
        ("recursiv = true", ""): r"source\.recursiv: unknown key; a folder source has type, "
        "inputs, recursive, dpi",
        ("", "bogus = 1"): r"sink\.bogus: unknown key; the sink has type, out, format",
    }
    for (source, sink), message in typos.items():
        spec.write_text(folder_toml(tmp_path, w, out + sink, source))
        with pytest.raises(ConfigError, match=message):
            read_pipeline_file(spec)
    spec.write_text(folder_toml(tmp_path, w, out).replace("weights =", "wieghts ="))
    with pytest.raises(ConfigError, match=r"stages\.0\.wieghts: unknown key; a \[\[stages\]\]"):
        read_pipeline_file(spec)
    spec.write_text(folder_toml(tmp_path, w, out).replace("[[stages]]", "[extra]"))
    with pytest.raises(ConfigError, match=r"typo\.toml: extra: unknown key; a pipeline file has"):
        read_pipeline_file(spec)
    spec.write_text(folder_toml(tmp_path, w, out).split("[[stages]]")[0] + f"[sink]\n{out}")
    with pytest.raises(ConfigError, match=r"typo\.toml: stages: a folder source needs at least"):
        read_pipeline_file(spec)


def test_helper_weights_as_a_stage_are_refused_as_load_stage_refuses_them(tmp_path: Path) -> None:
    """``weights = "face-aligner"`` said "unknown stage" (exit 2); the library's loader says
    what the weights are (a WeightsError: exit 4). Both now say the latter."""
    from aepipe import load_stage

    with pytest.raises(WeightsError) as loader:
        load_stage("face-aligner")
    (tmp_path / "in").mkdir()
    text = folder_toml(tmp_path, Path("face-aligner"), f'out = "{tmp_path.as_posix()}/o"')
    res = run_toml(tmp_path / "p.toml", text)
    assert res.exit_code == 4, res.output
    assert f"p.toml: stages.0.weights: {loader.value}" in res.output.replace("\n", ""), res.output


# ---- every option of the matching CLI command, byte for byte ----------------------------------


def _pdf_with_a_scan_and_a_drawing(path: Path) -> None:
    pdf = pikepdf.new()
    scan = image_stream(pdf, page_pixels(200, 260, paper=225))
    add_page(pdf, (144, 187.2), [(scan, "144 0 0 187.2 0 0")])
    add_page(pdf, (72, 72), vector=True)
    pdf.save(path)


def _pdf_content(path: Path) -> list[tuple[bytes, list[bytes]]]:
    """Each page's content stream and images' raw bytes (the /ID and dates may differ)."""
    with pikepdf.open(path) as pdf:
        return [
            (p.Contents.read_raw_bytes(), [i.read_raw_bytes() for i in p.get_images().values()])
            for p in pdf.pages
        ]


def _report_rows(path: Path, out: Path) -> list[dict]:
    rows = json.loads(path.read_text())["files"]
    for row in rows:
        row.pop("seconds")
        row["outputs"] = [Path(o).relative_to(out).as_posix() for o in row["outputs"]]
        for page in row.get("page_outcomes") or []:
            page.pop("seconds", None)
    return rows


def test_toml_folder_options_give_the_cli_commands_files(
    tmp_path: Path, tiny_weights: dict[str, Path]
) -> None:
    """frames, list_ignored, clean_born_digital and jpeg_quality: the CLI had them, TOML not."""
    inp = tmp_path / "in"
    inp.mkdir()
    frames = [Image.fromarray(page_pixels(48, 40, seed=i)) for i in range(3)]
    frames[0].save(inp / "anim.gif", save_all=True, append_images=frames[1:])
    _pdf_with_a_scan_and_a_drawing(inp / "doc.pdf")
    (inp / "notes.txt").write_text("not an image")
    w = tiny_weights["scan-denoiser"]
    res = cli(
        *("clean-scans", inp, "--out", tmp_path / "cli", "--model", w, "--batch-size", "4"),
        *("--report", tmp_path / "cli.json", "--frames", "all", "--list-ignored"),
        *("--clean-born-digital", "--jpeg-quality", "80", "-q"),
    )
    assert res.exit_code == 0, res.output
    source = 'frames = "all"\nlist_ignored = true\nclean_born_digital = true\n'
    sink = (
        f'out = "{(tmp_path / "toml").as_posix()}"\n'
        f'report = "{(tmp_path / "toml.json").as_posix()}"\njpeg_quality = 80\n'
    )
    toml = run_toml(tmp_path / "p.toml", folder_toml(tmp_path, w, sink, source))
    assert toml.exit_code == 0, toml.output
    assert "ignored" in toml.output and "notes.txt" in toml.output, toml.output
    # Not the runner's hidden output record (.aepipe-outputs.jsonl) beside them.
    names = sorted(p.name for p in (tmp_path / "cli").glob("[!.]*"))
    assert names == ["anim-p001.png", "anim-p002.png", "anim-p003.png", "doc.pdf"]
    assert sorted(p.name for p in (tmp_path / "toml").glob("[!.]*")) == names
    for name in names[:3]:
        assert (tmp_path / "toml" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert _pdf_content(tmp_path / "toml" / "doc.pdf") == _pdf_content(tmp_path / "cli" / "doc.pdf")
    rows = _report_rows(tmp_path / "toml.json", tmp_path / "toml")
    assert rows == _report_rows(tmp_path / "cli.json", tmp_path / "cli")
    doc = next(r for r in rows if r["path"].endswith("doc.pdf"))
    # The drawing went through the stage (without clean_born_digital it is "passed").
    assert [p["status"] for p in doc["page_outcomes"]] == ["edited", "unchanged"]
    assert doc["page_outcomes"][0]["codec_out"].endswith("DCTDecode")
    assert any(r["status"] == "ignored" and r["path"].endswith("notes.txt") for r in rows)


def test_toml_faces_options_give_gen_faces_files(
    tmp_path: Path, tiny_weights: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """prior, sharpen and concepts (with concepts_dir): gen-faces had them, TOML not. The
    grid of gray faces is gray, as gen-faces' (it was written RGB)."""
    import torch

    from aepipe import load_stage
    from aepipe.stages.face_generator import save_concept

    w = tiny_weights["face-generator"]
    save_concept(tmp_path / "mine", "blink", torch.ones(load_stage(w).latent_dim))
    res = cli(
        *("gen-faces", "-n", "5", "--seed", "3", "--model", w, "--batch-size", "2"),
        *("--prior", "--sharpen", "1.5", "--concept", "blink:0.5"),
        *("--concepts-dir", tmp_path / "mine", "--out", tmp_path / "cli", "-q"),
        *("--grid", tmp_path / "cli_grid.png"),
    )
    assert res.exit_code == 0, res.output

    def toml(name: str, options: str) -> Path:
        text = (
            f'[source]\ntype = "faces"\nn = 5\nseed = 3\nweights = "{w.as_posix()}"\n'
            f"batch_size = 2\n{options}\n[sink]\n"
            f'out = "{(tmp_path / name).as_posix()}"\n'
            f'grid = "{(tmp_path / f"{name}_grid.png").as_posix()}"\n'
        )
        result = run_toml(tmp_path / f"{name}.toml", text)
        assert result.exit_code == 0, result.output
        return tmp_path / name

    import aepipe.core

    configs = []
    real = aepipe.core.load_generator

    def spy(*args: object, **kwargs: object) -> object:
        generator = real(*args, **kwargs)
        configs.append(generator.config)
        return generator

    monkeypatch.setattr(aepipe.core, "load_generator", spy)
    mine = (tmp_path / "mine").as_posix()
    concepts = f'concepts = ["blink:0.5"]\nconcepts_dir = "{mine}"\n'
    got = toml("toml", f"prior = true\nsharpen = 1.5\n{concepts}")
    assert (configs[-1].sampler, configs[-1].sharpen) == ("prior", 1.5)
    names = [f"face_{i:05d}.png" for i in range(5)]
    assert sorted(p.name for p in got.iterdir()) == names
    for name in names:
        assert (got / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert (tmp_path / "toml_grid.png").read_bytes() == (tmp_path / "cli_grid.png").read_bytes()
    assert Image.open(tmp_path / "toml_grid.png").mode == "L"
    # The concept moved the faces (the tiny model's prior is its fit: prior alone changes none).
    plain, moved = toml("plain", ""), toml("moved", concepts)
    assert (plain / names[0]).read_bytes() != (moved / names[0]).read_bytes()


# ---- resumed runs: the grid shows the faces in the folder --------------------------------------


def test_a_grid_made_on_a_resumed_run_shows_the_kept_faces(
    tmp_path: Path, tiny_weights: dict[str, Path]
) -> None:
    """overwrite = false kept the old faces but drew a missing grid from the new settings'
    faces: a grid of faces that are not in the folder. A resumed run draws the folder's faces;
    kept faces of another run (other options) are said to be, and no grid is drawn of them."""
    w = tiny_weights["face-generator"].as_posix()
    out, grid = tmp_path / "out", tmp_path / "grid.png"

    def run(temperature: float) -> Result:
        text = (
            f'[source]\ntype = "faces"\nn = 4\ntemperature = {temperature}\nweights = "{w}"\n\n'
            f'[sink]\nout = "{out.as_posix()}"\ngrid = "{grid.as_posix()}"\n'
        )
        return run_toml(tmp_path / "p.toml", text)

    assert run(1.0).exit_code == 0
    first = grid.read_bytes()
    faces = {p.name: p.read_bytes() for p in out.iterdir()}
    grid.unlink()
    (out / "face_00000.png").unlink()
    res = run(1.0)
    assert res.exit_code == 0 and "wrote 1 files" in res.output and "kept 3" in res.output
    assert "differ" not in res.output, res.output
    assert grid.read_bytes() == first
    assert {p.name: p.read_bytes() for p in out.iterdir()} == faces
    # The other way round: a kept grid beside faces written now is said to be one.
    (out / "face_00001.png").unlink()
    res = run(1.0)
    assert res.exit_code == 0 and "wrote 1 files" in res.output, res.output
    assert "note: kept the grid" in res.output and "1 images written now" in res.output
    assert grid.read_bytes() == first
    # Another run's faces kept (the tiny model's faces at temperature 0 are its mean face).
    grid.unlink()
    res = run(0.0)
    assert res.exit_code == 0 and "kept 4 that exist (overwrite = true replaces them)" in res.output
    assert "kept files differ from what this run made" in res.output, res.output
    assert "no grid written" in res.output and not grid.exists()


def test_write_batches_makes_no_grid_of_faces_of_several_sizes(tmp_path: Path) -> None:
    from aepipe.batch import ImageBatch
    from aepipe.pipeline import write_batches

    def batch(size: int, names: list[str]) -> ImageBatch:
        return ImageBatch.from_numpy(np.zeros((len(names), size, size, 1), np.uint8), names)

    # A kept 8 px image of another run beside this run's 16 px ones: not this run's.
    write_batches([batch(8, ["a"])], tmp_path, None)
    done = write_batches([batch(16, ["a", "b"])], tmp_path, tmp_path / "grid.png")
    assert not (tmp_path / "grid.png").exists() and done.written == [tmp_path / "b.png"]
    assert done.others == [tmp_path / "a.png"]
    assert done.note is not None and "kept images of another run" in done.note
    # One run's batches of several sizes.
    done = write_batches([batch(8, ["c"]), batch(16, ["d"])], tmp_path / "o", tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists() and len(done.written) == 2
    assert done.note is not None and "several sizes (16x16 and 8x8)" in done.note


def test_face_vae_keys_given_with_their_defaults_are_accepted_for_other_weights(
    tiny_weights: dict[str, Path],
) -> None:
    """prior = false or concepts = [] asks for nothing; only a value that does something is
    for the face VAE only."""
    from aepipe.pipeline import FacesSource, check_faces_source

    vqvae = tiny_weights["face-vqvae"].as_posix()
    check_faces_source(
        FacesSource(type="faces", n=2, weights=vqvae, prior=False, concepts=[]), "p.toml: source"
    )
    with pytest.raises(ConfigError, match=r"source\.prior: for the face VAE only"):
        check_faces_source(
            FacesSource(type="faces", n=2, weights=vqvae, prior=True), "p.toml: source"
        )


def test_a_pdf_named_without_a_suffix_is_a_pdf_as_a_string_or_a_path(tmp_path: Path) -> None:
    from aepipe.core import edits_in_place, output_format

    (tmp_path / "Doc").write_bytes(b"%PDF-1.4\n%%EOF\n")  # capitals: not lowercased away
    for source in (tmp_path / "Doc", str(tmp_path / "Doc")):
        assert output_format(source, "same") == "pdf" and edits_in_place(source, "same")
    assert output_format("png", "same") == "png"  # a decoded format stays a format


def test_a_device_this_machine_lacks_is_refused_naming_the_key(
    tmp_path: Path, tiny_weights: dict[str, Path], no_weights_load: None
) -> None:
    """`device = "cuda"` on a machine without a GPU said only "device 'cuda' was asked for ...",
    not which file and table; it is refused with the rest of the file, before weights load."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "in").mkdir()
    Image.fromarray(page_pixels(40, 30)).save(tmp_path / "in" / "a.png")
    out = f'out = "{(tmp_path / "out").as_posix()}"\n'
    text = folder_toml(tmp_path, tiny_weights["impulse-denoiser"], out).replace(
        "[sink]", 'device = "cuda"\n[sink]'
    )
    res = run_toml(tmp_path / "p.toml", text)
    assert res.exit_code == 2, res.output
    assert re.search(r"p\.toml: stages\.0\.device: device 'cuda' was asked for", res.output)
    assert not (tmp_path / "out").exists()
