"""The one training loop: resume after --max-steps, the --max-minutes stop, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_faces import fake_lfw
from test_impulse import fake_mnist

from aepipe.errors import ConfigError
from aepipe.train.loop import checkpoint_path


def impulse_config(data: Path, **kw):
    from aepipe.train.salt_pepper import TrainConfig

    # 4 steps an epoch, 3 epochs: 12 steps of a 2-block, 8-wide model on 28x28 blobs.
    tiny = dict(channels=8, dilations=[1, 2], val_size=100, val_eval=100, epoch_samples=64)
    return TrainConfig(data=data, batch_size=16, max_epochs=3, patience=3, **{**tiny, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def training(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["training"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def test_impulse_resume_after_max_steps_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from aepipe.train.salt_pepper import train

    data = fake_mnist(tmp_path / "data")
    train(impulse_config(data), tmp_path / "whole")
    cut = tmp_path / "cut"
    lines: list[str] = []
    train(impulse_config(data, max_steps=6), cut, progress=lines.append)  # mid-epoch 2
    assert training(cut)["stopped_by"] == "max_steps" and checkpoint_path(cut).is_file()
    assert len(training(cut)["history"]) == 1 and "--max-steps" in lines[-1]
    train(impulse_config(data, resume=True), cut, progress=lines.append)
    assert_same_weights(tmp_path / "whole", cut)
    mse = [[r["train_mse"] for r in training(f)["history"]] for f in (tmp_path / "whole", cut)]
    assert mse[0] == mse[1] and len(mse[0]) == 3
    assert training(cut)["stopped_by"] == "max_epochs"
    assert not checkpoint_path(cut).exists()  # a finished run leaves nothing to resume


def test_vae_resume_after_max_steps_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    from aepipe.train.vae import TrainConfig, train

    data = fake_lfw(tmp_path / "f.npz", n=40)
    kw = dict(preset="face-vae", data=data, epochs=2, warmup_epochs=0, limit=40, batch_size=16)
    train(TrainConfig(**kw), tmp_path / "whole")
    # The person-disjoint split leaves 37 train images: 3 steps an epoch; stop inside epoch 2.
    train(TrainConfig(**kw, max_steps=4), tmp_path / "cut")
    assert training(tmp_path / "cut")["epochs_run"] == 1
    train(TrainConfig(**kw, resume=True), tmp_path / "cut")
    assert_same_weights(tmp_path / "whole", tmp_path / "cut")
    runs = [training(tmp_path / name)["history"] for name in ("whole", "cut")]
    losses = [[row["train_loss"] for row in history] for history in runs]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_max_minutes_stops_after_the_validation_that_passes_it(tmp_path: Path) -> None:
    from aepipe.stage import load_stage
    from aepipe.train.salt_pepper import train

    out = tmp_path / "w"
    lines: list[str] = []
    train(impulse_config(fake_mnist(tmp_path / "d"), max_minutes=1e-6), out, lines.append)
    info = training(out)
    assert info["stopped_by"] == "max_minutes" and info["epochs_run"] == 1
    assert any("time budget" in line for line in lines)
    assert "cut by `--max-minutes`" in (out / "MODEL_CARD.md").read_text()
    assert checkpoint_path(out).is_file()  # a budget stop can be resumed
    assert load_stage(out).name == "impulse-denoiser"


def test_resume_without_a_checkpoint_is_a_config_error(tmp_path: Path) -> None:
    from aepipe.train.salt_pepper import train

    with pytest.raises(ConfigError, match="no checkpoint"):
        train(impulse_config(fake_mnist(tmp_path / "d"), resume=True), tmp_path / "w")


def test_step_based_run_with_scheduler_and_ema_resumes_exactly(tmp_path: Path) -> None:
    """The settings the scan-denoiser and colorizer ports need (AdamW, OneCycleLR, EMA,
    validation every N steps, lower score better) also resume bit-identically."""
    from recipe_tiny.train import TinySpec, TrainConfig

    from aepipe.train.loop import LoopSettings, fit

    def run(out: Path, **kw) -> list[str]:
        torch.manual_seed(0)
        settings = LoopSettings(
            lr=0.05,
            steps_per_epoch=12,
            max_epochs=1,
            optimizer=lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=1e-4),
            scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=12),
            val_every=4,
            maximize=False,
            ema=0.9,
            checkpoint=checkpoint_path(out),
            **kw,
        )
        lines: list[str] = []
        fit(TinySpec(TrainConfig(), out), settings, lines.append)
        return lines

    whole = run(tmp_path / "whole")
    assert len(whole) == 3 and all(line.startswith("step ") for line in whole)
    run(tmp_path / "cut", max_steps=6)
    run(tmp_path / "cut", resume=True)
    assert_same_weights(tmp_path / "whole", tmp_path / "cut")
    assert training(tmp_path / "whole")["history"] == training(tmp_path / "cut")["history"]


def test_ema_copy_follows_the_batch_norm_statistics() -> None:
    """The EMA averages parameters; its batch norms must use the model's running statistics,
    or the written (EMA) weights would normalise with their initial mean 0 and variance 1."""
    from aepipe.train.loop import _ema_update, _frozen_copy

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    ema = _frozen_copy(model)
    model.train()(torch.randn(4, 1, 8, 8) * 3 + 5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    _ema_update(ema, model, 0.75)
    for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(be, bm)
    assert not torch.equal(model[1].running_mean, torch.zeros(2))
    # Parameters move a quarter of the way, as the decay says.
    before = model[0].weight - 1.0
    torch.testing.assert_close(ema[0].weight, before + 0.25)


def test_resume_with_other_model_settings_names_them(tmp_path: Path) -> None:
    """A checkpoint of another model is one ConfigError naming the settings, not a torch
    size-mismatch traceback; the checkpoint stays for a resume with the right options."""
    from aepipe.train.salt_pepper import train

    data, out = fake_mnist(tmp_path / "d"), tmp_path / "w"
    train(impulse_config(data, max_steps=1), out)
    with pytest.raises(
        ConfigError, match=r"other model settings \(channels 8 in the checkpoint, 4 now\)"
    ):
        train(impulse_config(data, resume=True, channels=4), out)
    assert checkpoint_path(out).is_file()


def test_resume_of_a_checkpoint_without_hparams_compares_the_tensors(tmp_path: Path) -> None:
    from aepipe.train.salt_pepper import train

    data, out = fake_mnist(tmp_path / "d"), tmp_path / "w"
    train(impulse_config(data, max_steps=1), out)
    ckpt = torch.load(checkpoint_path(out), weights_only=True)
    del ckpt["hparams"]  # as written before checkpoints recorded them
    torch.save(ckpt, checkpoint_path(out))
    with pytest.raises(ConfigError, match=r"tensor shapes: blocks\.1\.conv1\.bias"):
        train(impulse_config(data, resume=True, dilations=[1]), out)


def test_resume_with_other_trainable_parameters_is_a_config_error(tmp_path: Path) -> None:
    from recipe_tiny.train import TinySpec, TrainConfig

    from aepipe.train.loop import LoopSettings, fit

    def run(freeze: bool, **kw) -> None:
        spec = TinySpec(TrainConfig(), tmp_path / "w")
        # As --freeze-base does to the scan denoiser's U-Net: same tensors, fewer trained.
        next(spec.model.parameters()).requires_grad_(not freeze)
        checkpoint = checkpoint_path(spec.out)
        settings = LoopSettings(0.01, 4, 1, val_every=2, checkpoint=checkpoint, **kw)
        fit(spec, settings, lambda _m: None)

    run(False, max_steps=2)
    with pytest.raises(ConfigError, match="trained other parameters"):
        run(True, resume=True)


def test_resume_with_another_one_cycle_length_is_a_config_error(tmp_path: Path) -> None:
    """OneCycleLR's length comes back from the checkpoint; a longer run would step it past
    its end and fail there, after every step before."""
    from recipe_tiny.train import TinySpec, TrainConfig

    from aepipe.train.loop import LoopSettings, fit

    def run(total: int, **kw) -> None:
        spec = TinySpec(TrainConfig(), tmp_path / "w")
        schedule = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=total)  # noqa: E731
        settings = LoopSettings(0.05, total, 1, scheduler=schedule, val_every=2, **kw)
        fit(spec, settings, lambda _m: None)

    checkpoint = checkpoint_path(tmp_path / "w")
    run(12, max_steps=4, checkpoint=checkpoint)
    with pytest.raises(ConfigError, match="schedule of 12 steps, this command's has 20"):
        run(20, resume=True, checkpoint=checkpoint)


def test_resume_with_another_rate_schedule_is_refused_and_a_constant_rate_may_go_longer(
    tmp_path: Path,
) -> None:
    """A cosine over another number of steps (--max-steps / --schedule-steps changed) would
    jump the rate mid-run; a constant rate has nothing to jump, so a run may be extended."""
    from recipe_tiny.train import TinySpec, TrainConfig

    from aepipe.train.loop import LoopSettings, cosine, fit

    def run(out: Path, total: int, factor, **kw) -> None:
        spec = TinySpec(TrainConfig(), out)
        settings = LoopSettings(
            0.05, total, 1, lr_factor=factor, val_every=2, checkpoint=checkpoint_path(out), **kw
        )
        fit(spec, settings, lambda _m: None)

    run(tmp_path / "cos", 12, cosine(12, 0.1), max_steps=4)
    with pytest.raises(ConfigError, match=r"learning rate of 0\.0\d+ at step 4.*--schedule-steps"):
        run(tmp_path / "cos", 20, cosine(20, 0.1), resume=True)
    run(tmp_path / "cos", 12, cosine(12, 0.1), resume=True)  # the same schedule goes on
    run(tmp_path / "flat", 8, lambda _step: 1.0, max_steps=4)
    run(tmp_path / "flat", 12, lambda _step: 1.0, resume=True)
    assert [row["step"] for row in training(tmp_path / "flat")["history"]][-1] == 12
