"""Layout rules: models use no other aepipe code; training never hits weights/."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from aepipe.cli.common import train_out
from aepipe.errors import ConfigError
from aepipe.weights import shipped_weights_dir

ROOT = Path(__file__).resolve().parent.parent


def test_models_do_not_import_pipeline() -> None:
    for path in sorted((ROOT / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            # The models are aepipe.models: they may import each other, nothing else of aepipe.
            bad = [
                n
                for n in names
                if n.split(".")[0] == "aepipe" and not n.startswith("aepipe.models")
            ]
            assert not bad, f"{path.name}:{node.lineno} imports {bad}"


def train_commands() -> dict[str, click.Command]:
    from aepipe.cli.main import app, load_areas

    load_areas()
    group = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    return dict(group.commands)


def test_every_training_command_defaults_under_runs() -> None:
    commands = train_commands()
    assert {"colorizer", "salt-pepper", "face-vae", "mnist-vae", "scan-denoiser"} <= set(commands)
    for name, command in commands.items():
        params = {p.name: p for p in command.params}
        assert params["out"].default is None, name
        assert "overwrite_shipped" in params, name
        assert train_out(None, name) == Path("runs") / name


@pytest.mark.parametrize("name", ["colorizer", "salt-pepper", "face-vae"])
def test_training_into_shipped_weights_needs_the_flag(name: str) -> None:
    from aepipe.cli.main import app, load_areas

    load_areas()
    shipped = shipped_weights_dir() / name
    before = {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()}
    result = CliRunner().invoke(app, ["train", name, "--out", str(shipped)])
    assert result.exit_code == 2, result.output
    assert "--overwrite-shipped" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in shipped.iterdir()} == before
    with pytest.raises(ConfigError, match="shipped weights"):
        train_out(shipped_weights_dir(), name)
    assert train_out(shipped, name, overwrite_shipped=True) == shipped


def test_readme_starts_with_the_two_commands_and_stays_short() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```")[1]
    assert first_block.splitlines()[1:] == ["make demo", "make test"]
    assert len(text.splitlines()) <= 250


def _write_results():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "write_results", ROOT / "benchmarks/write_results.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_doc_and_readme_hold_the_current_benchmark_outputs() -> None:
    """docs/RESULTS.md's tables are the benchmark scripts' files and the README's results table
    is made from their JSON (benchmarks/write_results.py; a rerun of a benchmark shows here)."""
    module = _write_results()
    text = module.RESULTS.read_text(encoding="utf-8")
    assert text.count("<!-- include: ") >= 25
    assert "<!-- generated: training-history -->" in text
    assert module.render(text) == text, "run: python benchmarks/write_results.py"
    readme = module.README.read_text(encoding="utf-8")
    assert "<!-- generated: results-table -->" in readme
    assert module.render(readme) == readme, "run: python benchmarks/write_results.py"
    for link in ("docs/RESULTS.md", "CONTRIBUTING.md"):
        assert f"]({link}" in readme
    assert module.main(["--check"]) == 0


def test_no_figure_is_typed_by_hand_in_results_or_readme() -> None:
    """Outside the include/generated blocks, RESULTS.md and README.md state no measured figure
    (a decimal, a percentage, a ratio like 1.5x, a number with a unit, a number after a
    metric's name); bounds after <=, >=, <, > are targets, code spans are commands."""
    module = _write_results()
    for path in (module.RESULTS, module.README):
        typed = module.hand_typed_figures(path.read_text(encoding="utf-8"))
        assert typed == [], f"{path.name}: figures typed by hand: {typed}"
    for typed in (
        "RMSE 0.0271 on DDD",
        "F 82 on docbin",
        "82.83 F",
        "1.52x unpaper",
        "up 12%",
        "took 40 s",
        "RSS +18 MB",
        "FID: 62",
        "`22.51` dB",  # quoting a figure does not make it a setting
    ):
        assert module.hand_typed_figures(f"We measured {typed}.\n"), typed
    for allowed in (
        "at 300 DPI, v18, 27 pages, issue 16",
        "target <= 0.022",
        "3x3 and 64x64",
        "`--temperature 1.2`",
        "`saturation=1.8`",
        "<!-- include: a.md -->\nRMSE 0.03\n<!-- end include -->",
    ):
        assert module.hand_typed_figures(allowed) == [], allowed


def test_results_table_reads_every_figure_it_names() -> None:
    """Each README row's figures resolve in the benchmarks' JSON (or the row waits, in words,
    for a benchmark that has not written its JSON yet); a wrong path names itself."""
    table = _write_results().summary_table
    cache: dict = {}
    for row in table.ROWS:
        if row.until_run and not all(
            table._source(f.source).is_file() for f in row.figures.values()
        ):
            continue
        for name, fig in row.figures.items():
            assert isinstance(table.value(fig, cache), float), (row.stage, name)
        assert row.checks, row.stage
    bad = table.Figure("scan_real", ("ddd_test", "no such method", "rmse"))
    with pytest.raises(KeyError, match="no such method"):
        table.value(bad, cache)


def test_results_table_reads_what_the_newer_benchmarks_write(monkeypatch, tmp_path: Path) -> None:
    """The rows waiting for vqvae_compare's and faces_in_photos' JSON read the keys those
    scripts write (faces_in_photos' edit summary made by its own EditScores.summary)."""
    import sys

    table = _write_results().summary_table
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import faces_in_photos as fip
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    scores = fip.EditScores.__new__(fip.EditScores)
    scores.dp = {
        (name, s, way): [0.3 * s if way == "photo" else 0.4 * s] * 3
        for name, s in fip.EDITS
        for way in fip.WAYS
    }
    results = tmp_path / "benchmarks/results"
    results.mkdir(parents=True)
    (results / "faces_in_photos.json").write_text(
        json.dumps({"found_share": 0.89, "edit_scores": scores.summary()})
    )
    models = {
        "AE": {"fid": 91.3, "psnr_db": 23.7, "sample64_s": 0.04},
        "VAE": {"fid": 82.7, "psnr_db": 25.65, "sample64_s": 0.04},
        "VQ-VAE + prior": {"fid": 180.1, "psnr_db": 24.28, "sample64_s": 0.36},
    }
    (results / "vqvae_compare.json").write_text(json.dumps({"models": models}))
    monkeypatch.setattr(table, "ROOT", tmp_path)
    rows = {row.stage: row for row in table.ROWS}
    cells = table._cells(rows["faces in photos"], {})
    assert "89%" in cells[1] and "+0.30" in cells[1] and "+0.40" in cells[2]
    assert cells[3] == "found >= 95%: **not met**; edits within 0.05 of the crop's: **not met**"
    cells = table._cells(rows["face VQ-VAE + prior"], {})
    assert "180.1" in cells[1] and "0.36" in cells[1] and "82.7" in cells[2]
    assert cells[3] == "FID <= 65: **not met**; 64 faces < 2 s: met"
    assert table.value(table.Figure("faces_in_photos", ("found_share",)), {}) == 0.89


def test_pipeline_reference_names_every_key_of_a_pipeline_file() -> None:
    """docs/PIPELINES.md documents each table's keys; a key added to the schema must be there."""
    from aepipe import pipeline as p

    doc = (ROOT / "docs" / "PIPELINES.md").read_text(encoding="utf-8")
    # The keys in the first column of the tables (one row may name several: `a`, `b`).
    rows = [line.split("|")[1] for line in doc.splitlines() if line.startswith("| `")]
    documented = {key for cell in rows for key in re.findall(r"`(\w+)`", cell)}
    models = (p.FolderSource, p.FacesSource, p.InterpolateSource, p.StageSpec, p.FacePhotos)
    for model in (*models, p.FolderSink):
        missing = sorted(set(model.model_fields) - documented - {"type"})
        assert not missing, f"{model.__name__}: {missing} not in docs/PIPELINES.md"
    for kind in ("folder", "faces", "interpolate"):
        assert f'`type = "{kind}"`' in doc


def test_vae_training_budget_comes_from_its_config() -> None:
    from aepipe.train.vae import TrainConfig

    params = {p.name: p for p in train_commands()["face-vae"].params}
    assert params["max_minutes"].default is None  # not restated: the config decides
    assert TrainConfig.model_fields["max_minutes"].default == 120.0


def test_serve_takes_any_registered_route(tmp_path: Path) -> None:
    from aepipe.cli.main import app, load_areas

    load_areas()
    bad = CliRunner().invoke(app, ["serve", "--model", "nope=x"])
    assert bad.exit_code == 2 and "no endpoint 'nope'" in bad.output
    malformed = CliRunner().invoke(app, ["serve", "--model", "faces"])
    assert malformed.exit_code == 2 and "ROUTE=WEIGHTS" in malformed.output


@pytest.mark.parametrize(
    ("command", "config"),
    [
        ("colorizer", "aepipe.train.colorizer:TrainConfig"),
        ("salt-pepper", "aepipe.train.salt_pepper:TrainConfig"),
        ("face-vae", "aepipe.train.vae:TrainConfig"),
    ],
)
def test_training_options_do_not_drift_from_their_config(command: str, config: str) -> None:
    """An option that names a config field defaults to None (the config decides) or to the
    config's own default, so the CLI and the library train the same model."""
    import importlib

    from pydantic_core import PydanticUndefined

    module, attr = config.split(":")
    fields = getattr(importlib.import_module(module), attr).model_fields
    named = [p for p in train_commands()[command].params if p.name in fields]
    assert len(named) >= 5, command
    for param in named:
        default = fields[param.name].default
        if param.default is None or default is PydanticUndefined:
            continue
        want = str(default) if isinstance(param.default, str) else default
        assert param.default == want, (command, param.name, param.default, want)


def test_type_checkers_see_every_public_name() -> None:
    """The lazy exports and the ``TYPE_CHECKING`` imports of ``aepipe`` list the same names (a
    name only in the first is ``Any`` to a type checker)."""

    import aepipe

    tree = ast.parse((ROOT / "pipeline" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If))  # `if TYPE_CHECKING:`
    seen = {alias.asname for node in block.body for alias in node.names}
    assert seen == set(aepipe.__all__) - {"__version__"}
