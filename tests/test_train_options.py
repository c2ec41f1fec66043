"""Training options generated from pydantic configs (``aepipe.cli.train_options``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from typer.testing import CliRunner

from aepipe.cli.common import cli_errors
from aepipe.cli.train_options import train_command, train_config


class Demo(BaseModel):
    """A config with one field of each kind a trainer uses.

    Attributes:
        seed: seeds everything; documented here, not in a Field.
    """

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="the data folder")
    width: int = Field(16, ge=4, le=128, description="network width")
    steps: int = Field(10, gt=0)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    arch: Literal["small", "big"] = "small"
    channels: list[int] = Field(default_factory=lambda: [8, 16])
    limit: int | None = Field(None, ge=16)
    freeze: bool = False
    augment: bool = True
    seed: int = 0
    command: str = ""

    @model_validator(mode="after")
    def _fit(self) -> Demo:
        if self.freeze and self.arch != "big":
            raise ValueError("--freeze needs --arch big")
        return self


def demo_app(**kw) -> tuple[typer.Typer, list[BaseModel]]:
    app = typer.Typer()
    seen: list[BaseModel] = []

    @train_command("demo", Demo, app=app, **kw)
    def demo(ctx: typer.Context, out: str = "o") -> None:
        """Train the demo."""
        with cli_errors():
            seen.append(train_config(ctx))

    @app.command("other")
    def other() -> None:
        """Keeps ``demo`` a sub-command."""

    return app, seen


def params(app: typer.Typer) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands["demo"].params}


def test_every_field_is_an_option_with_its_type_bounds_and_help() -> None:
    app, _ = demo_app()
    p = params(app)
    assert set(p) == {*Demo.model_fields, "out"} - {"command"}
    assert p["width"].opts == ["--width"] and (p["width"].min, p["width"].max) == (4, 128)
    assert p["steps"].min == 1  # gt=0 on an integer
    assert p["width"].help == "Network width." and p["seed"].help.startswith("Seeds everything")
    assert p["data"].required and not p["width"].required
    assert p["freeze"].opts == ["--freeze"] and p["freeze"].secondary_opts == []
    assert p["augment"].secondary_opts == ["--no-augment"]
    help_text = CliRunner().invoke(app, ["demo", "--help"], env={"COLUMNS": "200"}).output
    for text in ("--arch", "small", "big", "--channels", "8,16", "--limit", "--no-augment"):
        assert text in help_text, text


def test_options_left_out_are_the_configs_defaults() -> None:
    app, seen = demo_app(defaults={"data": Path("d")})
    res = CliRunner().invoke(app, ["demo"])
    assert res.exit_code == 0, res.output
    assert seen[0].model_dump(exclude={"command"}) == Demo(data=Path("d")).model_dump(
        exclude={"command"}
    )
    # Nothing else restated (a flag always has a value, its config default).
    assert seen[0].model_fields_set == {"data", "command", "freeze", "augment"}
    assert seen[0].command.startswith("aepipe ")


def test_given_options_reach_the_config() -> None:
    app, seen = demo_app()
    args = ["demo", "--data", "x", "--width", "32", "--arch", "BIG", "--channels", "4, 8,12"]
    res = CliRunner().invoke(app, [*args, "--freeze", "--no-augment", "--limit", "20"])
    assert res.exit_code == 0, res.output
    cfg = seen[0]
    assert (cfg.data, cfg.width, cfg.arch, cfg.channels) == (Path("x"), 32, "big", [4, 8, 12])
    assert (cfg.freeze, cfg.augment, cfg.limit) == (True, False, 20)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "200"], "--width"),
        (["--arch", "huge"], "--arch"),
        (["--lr", "0"], "--lr: Input should be greater than 0"),
        (["--channels", "4,x"], "--channels: Input should be a valid integer"),
        (["--freeze"], "--freeze needs --arch big"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_option(args: list[str], message: str) -> None:
    app, seen = demo_app()
    res = CliRunner().invoke(app, ["demo", "--data", "x", *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output and not seen


def test_a_new_config_field_needs_no_cli_edit() -> None:
    """The recipe's tiny trainer gets its command from its config alone."""
    from recipe_tiny.train import TrainConfig

    app = typer.Typer()

    @train_command("tiny", TrainConfig, app=app)
    def tiny(ctx: typer.Context) -> None:
        """Train the tiny generator."""

    app.command("other")(lambda: None)
    names = {p.name for p in typer.main.get_command(app).commands["tiny"].params}
    assert names == set(TrainConfig.model_fields) - {"command"}  # set by the CLI itself


class SharedRun(BaseModel):
    """Run options several configs share (like ``RunFields``).

    Attributes:
        seed: seeds everything, said by the base.
        threads: CPU threads.
    """

    seed: int = 0
    threads: int = 1


class WithBase(SharedRun):
    """A config documenting only its own field and re-documenting one of the base's.

    Attributes:
        width: network width.
        threads: threads, as this config says.
    """

    model_config = ConfigDict(extra="forbid")

    width: int = 16


class NoDocstring(WithBase):
    pass


@pytest.mark.parametrize("config", [WithBase, NoDocstring])
def test_options_take_help_from_a_base_class_docstring(config: type[BaseModel]) -> None:
    app = typer.Typer()

    @train_command("demo", config, app=app)
    def demo(ctx: typer.Context) -> None:
        """Train the demo."""

    app.command("other")(lambda: None)
    helps = {p.name: p.help for p in typer.main.get_command(app).commands["demo"].params}
    assert helps == {
        "seed": "Seeds everything, said by the base.",
        "threads": "Threads, as this config says.",  # the subclass's entry wins
        "width": "Network width.",
    }


def test_every_shipped_trainer_documents_the_shared_run_options() -> None:
    from aepipe.cli.train_options import ConfigSpec, config_params

    for module in ("salt_pepper", "colorizer", "scan_denoiser", "face_aligner"):
        spec = ConfigSpec(f"aepipe.train.{module}:TrainConfig")
        helps = {p.name: p.help for p in config_params(spec)}
        assert helps["seed"] == "Seeds every random stream of the run.", module
        assert helps["threads"] == "Torch CPU threads.", module


# Every option the hand-written commands had (before the options were generated): scripts, the
# Makefile and the model cards use them, so none may disappear.
OPTIONS_BEFORE = {
    "scan-denoiser": "ddd docbin docbin_fraction clean_fraction display_prob ink_level "
    "test_groups arch base levels convs fold output refine freeze_base margin init "
    "synthetic_fraction val_groups patch scale_lo scale_hi scale_prob level_aug batch_size "
    "max_steps schedule_steps resume val_every lr seed threads max_minutes",
    "colorizer": "data head model_size channels rebalance min_bin_count max_steps "
    "schedule_steps resume val_every batch_size lr w_luma seed threads max_minutes",
    "salt-pepper": "data arch max_epochs epoch_samples patience batch_size lr binary_fraction "
    "seed threads max_minutes max_steps resume",
    "face-vae": "data epochs max_minutes batch_size lr latent_dim stop_after limit max_steps "
    "resume seed threads",
    "face-vqvae": "stage data init epochs prior_epochs max_minutes batch_size lr limit "
    "temperature top_k top_p max_steps resume seed threads",
}


def test_training_commands_keep_their_options() -> None:
    from aepipe.cli.main import app, load_areas

    load_areas()
    group = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    for name, before in OPTIONS_BEFORE.items():
        options = {p.name: p.opts for p in group.commands[name].params}
        for option in before.split():
            assert options.get(option) == ["--" + option.replace("_", "-")], (name, option)


def test_help_of_aepipe_imports_no_trainer() -> None:
    code = (
        "import sys\n"
        "from aepipe.cli import main as m\n"
        "sys.argv = ['aepipe', 'train', '--help']\n"
        "try:\n"
        "    m.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(k for k in sys.modules if k.startswith('aepipe.train')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip().splitlines()[-1] == "[]", res.stderr


def test_training_commands_refuse_missing_data_and_bad_out_before_training(tmp_path) -> None:
    """Exit 2 with one line, not a traceback (and not after training, for --out)."""
    from aepipe.cli.apps import app as main_app
    from aepipe.cli.main import load_areas

    load_areas()  # registers every training command, as the console script does

    a_file = tmp_path / "afile"
    a_file.write_text("x")
    nodata = str(tmp_path / "nodata")
    cases = [
        (["salt-pepper", "--data", nodata], "cannot read the training data"),
        (["face-vae", "--data", nodata], "cannot read the training data"),
        (["face-vqvae", "--data", nodata], "cannot read the training data"),
        (["scan-denoiser", "--out", str(a_file)], "is a file; training writes a weights folder"),
        (["salt-pepper", "--out", str(a_file / "sub")], f"{a_file} is a file"),
        (["scan-denoiser", "--scale-lo", "2", "--scale-hi", "1"], "--scale-lo must be at most"),
    ]
    for args, message in cases:
        out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
        res = CliRunner().invoke(main_app, ["train", *args, *out])
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output and "Traceback" not in res.output, (args, res.output)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["salt-pepper", "--density-lo", "0.6", "--density-hi", "0.5"], "--density-lo (0.6) must"),
        (
            ["salt-pepper", "--dilations", "1,-1"],
            "--dilations: Input should be greater than or equal to 1 (entry 2 is -1)",
        ),
        (["salt-pepper", "--dilations", ","], "--dilations: List should have at least 1 item"),
        (["salt-pepper", "--val-eval", "200", "--val-size", "100"], "--val-eval (200) must be"),
        (["colorizer", "--channels", "0,8"], "--channels: Input should be greater than or equal"),
        (["colorizer", "--channels", "16"], "--channels: List should have at least 2 items"),
        (["colorizer", "--schedule-steps", "2", "--max-steps", "5"], "--schedule-steps (2) must"),
        (["face-vae", "--init", "face-vae", "--latent-dim", "8"], "drop --latent-dim"),
    ],
)
def test_training_options_that_clash_fail_before_the_data_loads(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """Exit 2 with one line from the config; the data folder does not exist, so a check made
    only after loading would say 'cannot read the training data' instead."""
    from aepipe.cli.apps import app as main_app
    from aepipe.cli.main import load_areas

    load_areas()
    nodata = ["--data", str(tmp_path / "nodata")] if args[0] != "scan-denoiser" else []
    res = CliRunner().invoke(main_app, ["train", *args, *nodata, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_training_into_an_unwritable_folder_fails_before_the_data_loads(
    read_only_dir: Path,
) -> None:
    """Exit 2 with one line naming the folder (it trained, then died saving its first
    checkpoint); the data folder does not exist, so the check came before loading."""
    from aepipe.cli.apps import app as main_app
    from aepipe.cli.main import load_areas

    load_areas()
    out = read_only_dir / "m"
    args = ["train", "salt-pepper", "--data", str(read_only_dir / "nodata"), "--out", str(out)]
    res = CliRunner().invoke(main_app, args)
    assert res.exit_code == 2, res.output
    assert f"--out {out}: cannot write into {read_only_dir}" in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_training_without_the_train_extra_says_what_to_install(monkeypatch) -> None:
    """A library install leaves imgaug and OpenCV out: `aepipe train` names the extra."""
    from aepipe.cli import train_options
    from aepipe.errors import ConfigError

    monkeypatch.setattr(train_options, "TRAIN_EXTRA", ("cv2", "no_such_module_for_this_test"))
    with pytest.raises(ConfigError, match=r"no_such_module_for_this_test.*aepipe\[train\]"):
        train_options._trainer("aepipe.train.salt_pepper")
