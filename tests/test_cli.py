"""The CLI through its real console scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from factory import gradient, truncated
from PIL import Image

from aepipe.io import write_image

NO_TORCH = (
    "import sys\n"
    "from aepipe.cli import main as m\n"
    "sys.argv = [{prog!r}, '--help']\n"
    "try:\n"
    "    getattr(m, {fn!r})()\n"
    "except SystemExit:\n"
    "    pass\n"
    "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
)


def run(args, env, **kw):
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.mark.parametrize(
    ("prog", "fn"),
    [
        ("aepipe", "main"),
        ("clean-scans", "clean_scans_main"),
        ("colorize", "colorize_main"),
        ("gen-faces", "gen_faces_main"),
    ],
)
def test_help_does_not_import_torch(prog, fn, cli_env):
    res = run([sys.executable, "-c", NO_TORCH.format(prog=prog, fn=fn)], cli_env)
    assert res.stdout.strip().splitlines()[-1] == "NO-TORCH", res.stderr


@pytest.mark.parametrize("prog", ["aepipe", "clean-scans"])
def test_help_is_fast_through_console_script(prog, cli_env):
    t0 = time.perf_counter()
    res = run([prog, "--help"], cli_env)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 0 and "Usage" in res.stdout
    assert elapsed < 3.0  # target is < 1 s; loose here so a loaded CI box does not flake


def test_models_lists_every_shipped_folder_in_aligned_columns(cli_env):
    from aepipe.weights import read_config, shipped_names, shipped_weights_dir

    res = run(["aepipe", "models"], cli_env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    names = shipped_names()
    assert [line.split()[0] for line in lines] == names
    for line, name in zip(lines, names, strict=True):
        cfg = read_config(shipped_weights_dir() / name)
        assert line.split()[1:3] == [cfg["stage"], cfg["model_class"]]
    # The stage column starts at one offset on every line, however long the name.
    stage_at = {line.index(line.split()[1], len(line.split()[0])) for line in lines}
    assert len(stage_at) == 1


def test_missing_input_fails_before_loading_weights(tmp_path, cli_env):
    res = run(
        ["clean-scans", str(tmp_path / "nope"), "--model", str(tmp_path / "no-weights")], cli_env
    )
    assert res.returncode == 2
    assert "input not found" in res.stderr and "Traceback" not in res.stderr


def test_bad_choice_is_exit_2(tmp_path, cli_env):
    res = run(["clean-scans", str(tmp_path), "--format", "gif"], cli_env)
    assert res.returncode == 2 and "--format" in res.stderr


def test_clean_scans_option_errors_are_exit_2_before_any_work(tmp_path, cli_env):
    write_image(gradient(), tmp_path / "a.png")
    res = run(["clean-scans", str(tmp_path / "a.png"), "--views", "9"], cli_env)
    assert res.returncode == 2 and "--views" in res.stderr
    assert not (tmp_path / "a_clean").exists() and sorted(tmp_path.iterdir()) == [
        tmp_path / "a.png"
    ]


def test_unwritable_out_or_report_is_exit_2_before_loading_weights(
    tmp_path, read_only_dir, cli_env
):
    write_image(gradient(), tmp_path / "a.png")
    no_weights = ["--model", str(tmp_path / "no-weights")]  # exit 4 if they were loaded first
    for where in (["--out", str(read_only_dir / "o")], ["--report", str(read_only_dir / "r.json")]):
        res = run(["clean-scans", str(tmp_path / "a.png"), *where, *no_weights], cli_env)
        assert res.returncode == 2, res.stderr
        assert f"cannot write into {read_only_dir}" in res.stderr and "Traceback" not in res.stderr


def test_brackets_in_file_names_and_help_are_printed_as_written(tmp_path, tiny_weights, cli_env):
    (tmp_path / "[draft].png").write_bytes(b"not a png")  # rich would take [draft] for a style
    weights = str(tiny_weights["impulse-denoiser"])
    res = run(["aepipe", "denoise", str(tmp_path / "[draft].png"), "--model", weights], cli_env)
    assert res.returncode == 3 and "[draft].png: not an image" in res.stderr, res.stderr
    res = run(["clean-scans", "--help"], {**cli_env, "COLUMNS": "200"})
    assert "(default: DIR_<suffix> beside an input folder DIR;" in res.stdout
    assert "'ocr' extra" in res.stdout


def test_output_inside_input_refused(tmp_path, cli_env):
    write_image(gradient(), tmp_path / "a.png")
    res = run(["clean-scans", str(tmp_path), "--out", str(tmp_path / "x")], cli_env)
    assert res.returncode == 2 and "inside input folder" in res.stderr


def test_bad_pipeline_file_names_the_field(tmp_path, cli_env):
    cfg = tmp_path / "p.toml"
    cfg.write_text(
        '[source]\ntype = "folder"\ninputs = ["x"]\ndpi = 5\n[sink]\nout = "o"\nfromat = "png"\n'
    )
    res = run(["aepipe", "run", str(cfg)], cli_env)
    assert res.returncode == 2
    assert "source.dpi" in res.stderr and "sink.fromat" in res.stderr


def test_clean_scans_end_to_end_with_report(tmp_path, tiny_weights, cli_env):
    docs = tmp_path / "docs"
    docs.mkdir()
    write_image(gradient(40, 50), docs / "a.png")
    write_image(gradient(33, 47, 3), docs / "b.tif")
    truncated(docs / "bad.jpg", Image.fromarray(gradient(64, 64, 3)), "JPEG")
    report = tmp_path / "r.json"
    res = run(
        [
            "clean-scans",
            str(docs),
            "--model",
            str(tiny_weights["scan-denoiser"]),
            "--report",
            str(report),
            "--device",
            "cpu",
        ],
        cli_env,
    )
    assert res.returncode == 1, res.stderr
    assert "bad.jpg" in res.stderr and "Traceback" not in res.stderr
    assert "2 processed" in res.stderr and "1 failed" in res.stderr
    out = tmp_path / "docs_clean"
    assert Image.open(out / "a.png").size == (50, 40)
    assert Image.open(out / "b.tif").size == (47, 33)
    assert Image.open(out / "b.tif").mode == "L"  # colour scans are cleaned to gray by default
    data = json.loads(report.read_text())
    assert data["summary"]["processed"] == 2 and data["summary"]["failed"] == 1
    (docs / "notes.txt").write_text("not a page")
    again = run(
        ["clean-scans", str(docs), "--model", str(tiny_weights["scan-denoiser"]), "--list-ignored"],
        cli_env,
    )
    assert "2 skipped" in again.stderr
    assert f"ignored {docs / 'notes.txt'}: not an image file name" in again.stderr


def test_clean_scans_binarize_writes_bilevel(tmp_path, tiny_weights, cli_env):
    page = np.full((40, 50), 225, np.uint8)  # grayish paper with lines of "type"
    page[8:12, 5:45] = page[20:24, 5:40] = 30
    write_image(page, tmp_path / "a.png")
    out = tmp_path / "o"
    res = run(
        [
            "clean-scans",
            str(tmp_path / "a.png"),
            "--out",
            str(out),
            "--binarize",
            "--model",
            str(tiny_weights["scan-denoiser"]),
        ],
        cli_env,
    )
    assert res.returncode == 0, res.stderr
    assert Image.open(out / "a.png").mode == "1"


def test_train_scan_denoiser_rejects_bad_options_early(tmp_path, tiny_weights, cli_env):
    # Each is caught before any synthetic page is rendered or weights are written: exit 2
    # with a message, no traceback.
    out = tmp_path / "o"
    train = ["aepipe", "train", "scan-denoiser", "--out", str(out)]
    res = run([*train, "--margin", "0.1"], cli_env)
    assert res.returncode == 2, res.stderr
    assert "--margin applies to --output clamp" in res.stderr and "Traceback" not in res.stderr
    res = run([*train, "--ddd", str(tmp_path / "nowhere")], cli_env)
    assert res.returncode == 2, res.stderr
    assert "--ddd" in res.stderr and "Traceback" not in res.stderr
    ddd = tmp_path / "ddd"
    for sub in ("train", "train_cleaned"):
        (ddd / sub).mkdir(parents=True)
        for name in range(1, 9):
            # Two clean pages (names 1-4 and 5-8), as DDD groups its noise versions.
            page = gradient(24, 32) // (1 + (name - 1) // 4)
            write_image(page, ddd / sub / f"{name}.png")
    bad_init = [*train, "--ddd", str(ddd), "--init", str(tiny_weights["scan-denoiser"])]
    res = run([*bad_init, "--val-groups", "5"], cli_env)
    assert res.returncode == 2, res.stderr
    assert "--val-groups" in res.stderr and "Traceback" not in res.stderr
    res = run([*bad_init, "--val-groups", "1"], cli_env)
    assert res.returncode == 2, res.stderr
    assert "does not match" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_training_file_errors_say_whether_data_or_output(tmp_path):
    from aepipe.cli.common import training_data_errors
    from aepipe.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="cannot write the output"), training_data_errors(out):
        (out / "missing" / "model.safetensors").open("wb")
    missing = pytest.raises(ConfigError, match="cannot read the training data")
    with missing, training_data_errors(out):
        (tmp_path / "data" / "train.npz").open("rb")


def test_file_commands_use_the_settings_stored_with_the_weights_unless_given(
    tmp_path, tiny_weights
):
    """Retrained weights may store other stage defaults (denoise passes, a binarizing scan
    model); denoise and clean-scans passed their own defaults over them, so the CLI and
    `aepipe run` gave different files for the same weights."""
    import shutil

    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    src = tmp_path / "in"
    src.mkdir()
    write_image(gradient(40, 60, seed=1), src / "a.png")

    def stored(name: str, **settings) -> str:
        folder = tmp_path / name
        shutil.copytree(tiny_weights[name], folder)
        config = json.loads((folder / "config.json").read_text())
        config["stage_config"] = {**config.get("stage_config", {}), **settings}
        (folder / "config.json").write_text(json.dumps(config))
        return str(folder)

    def out(*args) -> np.ndarray:
        dst = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        res = CliRunner().invoke(app, [*args, str(src), "--out", str(dst), "-q"])
        assert res.exit_code == 0, res.output
        return np.asarray(Image.open(dst / "a.png"))

    binarizing = stored("scan-denoiser", binarize=True, clean_pages="process")
    assert set(np.unique(out("clean-scans", "--model", binarizing)).tolist()) <= {0, 1, 255}
    assert len(np.unique(out("clean-scans", "--model", binarizing, "--no-binarize"))) > 2
    twice = stored("impulse-denoiser", passes=2)
    once = out("denoise", "--model", tiny_weights["impulse-denoiser"])
    assert not np.array_equal(out("denoise", "--model", twice), once)
    assert np.array_equal(out("denoise", "--model", twice, "--passes", "1"), once)


def test_no_clean_all_turns_a_stored_process_setting_off(tmp_path, tiny_weights):
    import shutil

    from typer.testing import CliRunner

    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas

    load_areas()
    folder = tmp_path / "w"
    shutil.copytree(tiny_weights["scan-denoiser"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["stage_config"] = {**config.get("stage_config", {}), "clean_pages": "process"}
    (folder / "config.json").write_text(json.dumps(config))
    src = tmp_path / "in"
    src.mkdir()
    clean = np.full((60, 80), 255, np.uint8)
    clean[20:26, 10:70] = 40  # gray ink: not black and white, which would stay 1-bit
    write_image(clean, src / "c.png")
    outs = {}
    for flag in ("--clean-all", "--no-clean-all"):
        dst = tmp_path / flag.strip("-")
        res = CliRunner().invoke(
            app, ["clean-scans", str(src), "--model", str(folder), flag, "--out", str(dst), "-q"]
        )
        assert res.exit_code == 0, res.output
        outs[flag] = np.asarray(Image.open(dst / "c.png").convert("L"))
    assert np.array_equal(outs["--no-clean-all"], clean)
    assert not np.array_equal(outs["--clean-all"], clean)
