"""The colorizer and scan-denoiser trainers on the shared loop: a cut run resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file
from typer.testing import CliRunner

from aepipe.train.loop import checkpoint_path


def training(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["training"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert np.array_equal(wa[key].numpy(), wb[key].numpy()), key


def tiny_faces(path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 16, 16, 3), dtype=np.uint8)
    # One photo per person: the default 5 % validation split holds out 2 faces.
    files = np.array([f"P{i}/P{i}_0001.jpg" for i in range(40)])
    np.savez(path, images=images, train_files=files)
    return path


def test_colorizer_cut_by_max_steps_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    from aepipe.cli.apps import app
    from aepipe.cli.main import load_areas
    from aepipe.train.colorizer import TrainConfig, train

    data = tiny_faces(tmp_path / "faces.npz")
    kw = dict(data=data, head="classify", channels=[4, 8], val_every=3, batch_size=4)
    train(TrainConfig(**kw, max_steps=12), tmp_path / "whole")
    cut = tmp_path / "cut"
    # The 12-step schedule stopped inside it (between validations) keeps a checkpoint.
    train(TrainConfig(**kw, max_steps=7, schedule_steps=12), cut)
    assert training(cut)["steps"] == 7 and training(cut)["stopped"] == "max_steps"
    assert len(training(cut)["history"]) == 2 and checkpoint_path(cut).is_file()
    load_areas()
    args = ["train", "colorizer", "--data", data, "--out", cut, "--head", "classify"]
    args += ["--channels", "4,8", "--val-every", "3", "--batch-size", "4", "--max-steps", "12"]
    res = CliRunner().invoke(app, [*map(str, args), "--resume"])
    assert res.exit_code == 0, res.output
    assert "resuming at step 7" in res.output
    assert_same_weights(tmp_path / "whole", cut)
    assert training(tmp_path / "whole")["history"] == training(cut)["history"]
    assert training(cut)["steps"] == 12 and not checkpoint_path(cut).exists()


def test_scan_denoiser_cut_by_max_steps_resumes_to_the_uninterrupted_run(
    tmp_path: Path, one_synthetic_val_page: None
) -> None:
    import aepipe.train.scan_denoiser as mod

    tiny = dict(base=4, levels=2, convs=1, patch=32, batch_size=2, warmup=3, val_every=3)
    # Two pool pages, one replaced every 2 steps: the resumed run must re-render the pool.
    tiny |= dict(ddd=None, synthetic_pool=2, synthetic_refresh=2, ema=0.9)
    mod.train(mod.TrainConfig(**tiny, max_steps=12), tmp_path / "whole")
    cut = tmp_path / "cut"
    lines: list[str] = []
    mod.train(mod.TrainConfig(**tiny, max_steps=7, schedule_steps=12), cut, lines.append)
    assert checkpoint_path(cut).is_file() and "--max-steps" in lines[-1]
    assert [r["step"] for r in training(cut)["history"]] == [3, 6]
    resumed = mod.TrainConfig(**tiny, max_steps=12, resume=True)
    mod.train(resumed, cut, lines.append)
    assert "resuming at step 7" in "\n".join(lines)
    assert_same_weights(tmp_path / "whole", cut)
    drop = lambda rows: [{k: v for k, v in r.items() if k != "minutes"} for r in rows]  # noqa: E731
    assert drop(training(tmp_path / "whole")["history"]) == drop(training(cut)["history"])
    assert training(cut)["stopped"] == "max_steps" and not checkpoint_path(cut).exists()
