"""CONTRIBUTING.md against the code: the recipe's trainer run by the real ``aepipe train``.

``tests/recipe_tiny`` follows the recipe; here its registry entry names its CLI module, and the
console entry point (:func:`aepipe.cli.main.main`, what the ``aepipe`` script runs) trains it,
so the trainer contract the doc states and the call the CLI makes cannot drift apart.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aepipe import registry
from aepipe.cli.apps import train_app
from aepipe.cli.main import load_areas, main
from aepipe.errors import ConfigError
from aepipe.train.loop import RunFields, checkpoint_path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
NAME = "tiny-generator"


def _forget(entry_name: str, module: str) -> None:
    """Undo a test entry: its registry entry, its commands and its imported CLI module."""
    registry.ENTRIES.pop(entry_name, None)
    train_app.registered_commands[:] = [
        c for c in train_app.registered_commands if c.name != entry_name
    ]
    sys.modules.pop(module, None)


@pytest.fixture
def tiny_entry() -> Iterator[registry.Entry]:
    """Recipe step 5 for the tiny generator, with its step-4 CLI module in ``cli=``."""
    entry = registry.register(
        registry.Entry(
            name=NAME,
            stage="recipe_tiny.stage:TinyGenerator",
            models={"TinyDecoder": "recipe_tiny.model:TinyDecoder"},
            cli=("recipe_tiny.cli",),
        )
    )
    try:
        yield entry
    finally:
        _forget(NAME, "recipe_tiny.cli")


def aepipe(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """Run the ``aepipe`` console entry point with ``args``: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["aepipe", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), capsys.readouterr().err


def test_aepipe_train_runs_the_recipe_trainer_cut_and_resumed(
    tiny_entry: registry.Entry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aepipe.stage import load_stage
    from aepipe.weights import read_config

    out = tmp_path / "tiny"
    run = ("train", NAME, "--out", str(out), "--steps", "20", "--temperature", "0.25")
    code, err = aepipe(monkeypatch, capsys, *run, "--max-steps", "10")
    assert code == 0, err
    # The trainer's progress lines reach stderr: the CLI's progress= call fits its signature.
    assert "step 10 val_mse" in err and "stopping after step 10" in err
    assert checkpoint_path(out).is_file()

    code, err = aepipe(monkeypatch, capsys, *run, "--resume")
    assert code == 0, err
    assert "resuming at step 10" in err and "step 20 val_mse" in err
    assert not checkpoint_path(out).exists()  # finished: nothing left to resume
    stage = load_stage(out)
    assert stage.name == NAME and stage.config.temperature == 0.25
    training = read_config(out)["training"]
    assert training["command"].startswith(f"aepipe train {NAME} --out")
    assert training["resume"] is True and training["stopped_by"] == "max_epochs"


def test_aepipe_train_refuses_a_bad_recipe_option_in_one_line(
    tiny_entry: registry.Entry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = aepipe(monkeypatch, capsys, "train", NAME, "--max-steps", "0")
    assert code == 2 and "--max-steps" in err
    assert not (tmp_path / "runs").exists()


def _trainer_modules() -> list[str]:
    """The trainer module of every ``aepipe train`` command, the recipe's among them."""
    load_areas()
    modules = {c.cls.spec.config.partition(":")[0] for c in train_app.registered_commands}
    return sorted(modules)


def test_every_trainer_has_the_contract_contributing_states(tiny_entry: registry.Entry) -> None:
    section = DOC.partition("## 3. Training file")[2].partition("## 4.")[0]
    assert "`train(cfg, out, progress=None) -> Path`" in section
    assert "`TrainConfig(RunFields)`" in section
    named = re.findall(r"`(\w+)`", section.partition("- A spec class")[0])
    fields = {*RunFields.model_fields, "max_steps"}
    assert fields <= set(named)
    modules = _trainer_modules()
    assert "recipe_tiny.train" in modules and len(modules) >= 7  # the six trainers too
    for name in modules:
        module = importlib.import_module(name)
        params = list(inspect.signature(module.train).parameters.values())
        assert [p.name for p in params[:3]] == ["cfg", "out", "progress"], name
        assert params[2].default is None, name
        assert fields <= set(module.TrainConfig.model_fields), name


def test_contributing_counts_the_steps_it_lists() -> None:
    steps = re.findall(r"^## (\d)\. ", DOC, flags=re.MULTILINE)
    words = ["one", "two", "three", "four", "five", "six", "seven"]
    assert f"A stage is {words[len(steps) - 1]} things" in DOC
    assert steps == [str(i) for i in range(1, len(steps) + 1)]
    # The recipe has a file for each step but the registry entry (made by the tests).
    recipe = {p.name for p in (ROOT / "tests" / "recipe_tiny").glob("*.py")} - {"__init__.py"}
    assert len(recipe) == len(steps) - 1 == 4


@pytest.mark.parametrize("module", ["aepipe.cli.tyop", "recipe_tinyy.cli"])
def test_a_misspelled_registry_cli_module_is_an_error(
    module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.register(registry.Entry(name="typo-stage", stage="a:B", cli=(module,)))
    try:
        with pytest.raises(ConfigError, match=rf"'typo-stage' names CLI module '{module}'"):
            load_areas()
        code, err = aepipe(monkeypatch, capsys, "--help")
        assert code == 2
        assert err.startswith("error: ") and err.count("\n") == 1 and module in err
    finally:
        _forget("typo-stage", module)


def test_a_registry_cli_module_missing_a_dependency_raises_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_dep_cli.py").write_text("import aepipe_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register(registry.Entry(name="dep-stage", stage="a:B", cli=("needs_dep_cli",)))
    try:
        with pytest.raises(ModuleNotFoundError) as missing:
            load_areas()
        assert missing.value.name == "aepipe_no_such_dependency"
    finally:
        _forget("dep-stage", "needs_dep_cli")


def test_torch_pin_comments_agree_with_the_readme() -> None:
    # PyPI's Linux torch wheel is the CUDA build; only the extra index gives the CPU one.
    index = "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"
    names = ("README.md", "Makefile", "pyproject.toml")
    texts = {name: (ROOT / name).read_text(encoding="utf-8") for name in names}
    pins = {name: set(re.findall(r"\btorch==([\d.]+)", text)) for name, text in texts.items()}
    assert all(pins.values()) and len(set.union(*pins.values())) == 1, pins
    for name, text in texts.items():
        assert index in text, name
        assert not re.search(r"CPU wheel, pinned|torch==[\d.]+, a CPU wheel", text), name
