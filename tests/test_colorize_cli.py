"""colorize's command line: its help says what --model auto does (fast, no model)."""

from __future__ import annotations

from typer.testing import CliRunner


def test_colorize_help_states_the_auto_rule_of_the_code() -> None:
    """The help said "face crops up to 160 px, roughly square"; the code takes squarish images
    up to 96 px as faces, and 97-160 px ones only when a face fills a third of the short side."""
    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas
    from aepipe.stages.colorizer import FACE_MAX_ASPECT, FACE_MAX_SIDE, FACE_SURE_SIDE, auto_model

    load_areas()
    res = CliRunner().invoke(app, ["colorize", "--help"], env={"COLUMNS": "400"})
    text = " ".join(res.output.split())
    assert res.exit_code == 0
    assert f"aspect at most {FACE_MAX_ASPECT:g}" in text
    assert f"up to {FACE_SURE_SIDE} px" in text
    assert f"{FACE_SURE_SIDE + 1}-{FACE_MAX_SIDE} px only when a detected face" in text
    assert "a third of the short side" in text
    # The numbers are the code's: a 96 px square is a face without looking at it.
    assert auto_model(96, 96) == "colorizer"
    assert auto_model(96, 121) == "colorizer-photo"
