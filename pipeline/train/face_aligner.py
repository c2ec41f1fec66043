"""Train the face aligner: LFW train crops placed into train photos, candidate frames perturbed.

Every step draws fresh scenes (:mod:`aepipe.data.face_views`): a train face in a train-split
background photo, seen in a candidate frame off the true LFW framing by a detector-like error
(shift up to 14 template px, scale 0.67-1.5x, roll up to 25 degrees, or a small error as after a
first correction), or a negative (background only, or a frame far off the face). The network
learns the correction (:class:`aepipe.models.face_aligner.FaceAligner`) and a face logit.
Validation uses the person-disjoint tail of the train split (the face VAE's validation people)
in ``photos/val`` backgrounds, and scores what inference does: two corrections in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field

from aepipe.train.loop import Check, LoopSettings, Run, RunFields, checkpoint_path, cosine, fit

WEIGHTS_NAME = "face-aligner"


class TrainConfig(RunFields):
    """Settings of one face-aligner run (all recorded in the weights' config.json)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(Path("../shared/data/faces/lfw_64.npz"), description="LFW 64x64 archive")
    photos: Path = Field(Path("../shared/data/photos"), description="folder with train/ and val/")
    val_fraction: float = Field(
        0.05, gt=0, lt=0.5, description="person-disjoint tail of train held out (as the face VAE)"
    )
    width: int = Field(16, ge=4, le=64, description="channels of the first block")
    hidden: int = Field(128, ge=16, le=1024)
    view: float = Field(1.25, ge=1.0, le=2.0, description="input field of view / template")
    batch_size: int = Field(64, ge=2, le=1024)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    steps: int = Field(8000, ge=1, le=1_000_000, description="optimiser steps (cosine schedule)")
    val_every: int = Field(500, ge=1)
    val_size: int = Field(1024, ge=16, le=20000, description="fixed validation scenes")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps in all")


class _AlignerSpec:
    """The aligner as the training loop sees it (``aepipe.train.loop.TrainSpec``)."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        import torch

        from aepipe.data.face_views import ViewSampler, background_bank
        from aepipe.data.faces import load_faces, split_by_person
        from aepipe.models.face_aligner import FaceAligner

        self.cfg, self.out = cfg, out
        faces, files = load_faces(cfg.data, "train", with_files=True)
        cut = split_by_person(files, len(faces), cfg.val_fraction)
        faces = torch.from_numpy(faces)
        self.n_train, self.n_val = cut, len(faces) - cut
        self.sampler = ViewSampler(faces[:cut], background_bank(cfg.photos / "train", 3, cfg.seed))
        val = ViewSampler(faces[cut:], background_bank(cfg.photos / "val", 2, cfg.seed + 1))
        fixed = torch.Generator().manual_seed(cfg.seed + 1)
        self.val_scenes = val.draw(cfg.val_size, fixed)
        self.gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.model = FaceAligner(width=cfg.width, hidden=cfg.hidden, view=cfg.view)
        self.lr_factor = cosine(cfg.steps, 0.02)

    def draw(self, step: int) -> tuple[Any, Any, Any]:
        from aepipe.data.face_views import render
        from aepipe.models.face_aligner import FaceAligner, params_of

        scenes = self.sampler.draw(self.cfg.batch_size, self.gen)
        crops = render(scenes, self.cfg.view, self.gen)
        target = FaceAligner.to_units(params_of(scenes.true_from_cand))
        return crops, target, scenes.is_face

    def loss(self, model: Any, batch: Any, step: int) -> tuple[Any, dict[str, float]]:
        """Huber loss of the correction on faces, plus the face / not-face cross-entropy."""
        from torch.nn import functional as F

        crops, target, is_face = batch
        out = model(crops)
        reg = F.smooth_l1_loss(out[:, :4], target, beta=0.1, reduction="none").sum(1)
        reg = (reg * is_face).sum() / is_face.sum().clamp(min=1)
        cls = F.binary_cross_entropy_with_logits(out[:, 4], is_face)
        loss = reg + 0.5 * cls
        return loss, {"loss": loss.item(), "reg": reg.item(), "cls": cls.item(), "steps": 1}

    def validate(self, model: Any, run: Run) -> Check:
        m = evaluate(model, self.val_scenes, self.cfg.view)
        sums = run.sums
        n = max(1, sums.get("steps", 1))
        row = {"step": run.step, "train_loss": round(sums.get("loss", 0) / n, 4), **m}
        line = (
            f"step {run.step}: err px {m['err_px_1']:.2f} -> {m['err_px_2']:.2f} "
            f"(<=3 px {m['within_3px']:.1%}), face AUC {m['face_auc']:.4f}"
            f"{' *' if run.improves(m['err_px_2'], maximize=False) else ''}"
        )
        return Check(row, m["err_px_2"], line, m)

    def rng_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])

    def write(self, model: Any, run: Run, final: bool) -> Path:
        import torch

        from aepipe.weights import save_model

        cfg = self.cfg
        training = {
            "command": cfg.command,
            "config": cfg.model_dump(mode="json"),
            "train_faces": self.n_train,
            "val_faces": self.n_val,
            "steps_run": run.step,
            "best_step": run.best_step,
            # The loop says max_epochs for a one-epoch run; here that epoch is the --steps schedule.
            "stopped_by": "steps" if run.stopped_by == "max_epochs" else run.stopped_by,
            "wall_time_s": round(run.minutes() * 60, 1),
            "history": run.history,
            "torch": torch.__version__,
        }
        metrics = run.best_metrics or {}
        return save_model(
            model, self.out, stage="face-aligner", model_kwargs=dict(model.hparams),
            training=training, metrics=metrics, card=model_card(cfg, training, metrics),
        )  # fmt: skip


def evaluate(model: Any, scenes: Any, view: float) -> dict[str, float]:
    """Corner error (template px) after one and two corrections, and the face-logit AUC."""
    import torch

    from aepipe.data.face_views import compose, render
    from aepipe.models.face_aligner import corner_error, similarity

    model.eval()
    face = scenes.is_face > 0
    with torch.no_grad():
        out1 = model(render(scenes, view))
        fix1 = similarity(model.to_params(out1))
        moved = scenes.moved(fix1)
        out2 = model(render(moved, view))
        total = compose(similarity(model.to_params(out2)), fix1)
    model.train()
    ident = torch.eye(2, 3).expand_as(total)
    err0 = corner_error(ident, scenes.true_from_cand)[face]
    err1 = corner_error(fix1, scenes.true_from_cand)[face]
    err2 = corner_error(total, scenes.true_from_cand)[face]
    return {
        "err_px_0": round(float(err0.mean()), 3),
        "err_px_1": round(float(err1.mean()), 3),
        "err_px_2": round(float(err2.mean()), 3),
        "within_3px": round(float((err2 <= 3).float().mean()), 4),
        "face_auc": round(auc(out1[:, 4], face), 4),
    }


def auc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``labels`` (rank statistic)."""
    import torch

    ranks = torch.empty(len(scores))
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=torch.float32)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def model_card(cfg: TrainConfig, training: dict[str, Any], metrics: dict[str, Any]) -> str:
    """MODEL_CARD.md text."""
    return f"""# face-aligner

A {cfg.width}-channel, four-block CNN that takes a 64x64 gray crop of a photo in a candidate
frame (field of view {cfg.view:g}x the LFW template) and predicts the similarity transform to
the LFW deep-funnelled framing the face VAE was trained on (shift, scale, roll) and whether the
frame holds a face. `aepipe.faces_align` applies it a few times in a row to each cascade
candidate (`ALIGN_PASSES`), then keeps candidates with a high face probability (`MIN_FACE_SCORE`).

- Training: `{training.get("command") or "aepipe train face-aligner"}`
  ({training["steps_run"]} steps of {cfg.batch_size}, {training["wall_time_s"]:.0f} s, seed
  {cfg.seed}, {cfg.threads} thread(s)); stopped by: {_stop_words(training["stopped_by"])}.
- Data: {training["train_faces"]} LFW train faces (`{cfg.data}`, person-disjoint from the
  {training["val_faces"]} validation faces, the face VAE's split) placed into `photos/train`
  backgrounds at random; validation in `photos/val`. No test face or photo was used.
- Validation ({cfg.val_size} fixed scenes, 20% negatives), template px of corner error:
  {metrics.get("err_px_0", "?")} before, {metrics.get("err_px_1", "?")} after one correction,
  {metrics.get("err_px_2", "?")} after two ({metrics.get("within_3px", 0):.1%} within 3 px);
  face / not-face AUC {metrics.get("face_auc", "?")}.
- Limits: upright-ish frontal faces (roll within about 25 degrees of the candidate), LFW-like
  framing and demographics; trained on gray luma only.
"""


def train(cfg: TrainConfig, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Train and write the ``face-aligner`` weights folder at ``out``."""
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = _AlignerSpec(cfg, Path(out))
    settings = LoopSettings(
        lr=cfg.lr,
        steps_per_epoch=cfg.steps,
        max_epochs=1,
        lr_factor=spec.lr_factor,
        val_every=cfg.val_every,
        maximize=False,
        max_minutes=cfg.max_minutes,
        minutes_checked="step",
        max_steps=cfg.max_steps,
        write_each_best=True,
        checkpoint=checkpoint_path(Path(out)),
        resume=cfg.resume,
    )
    fit(spec, settings, progress or (lambda _msg: None))
    return Path(out)


def _stop_words(stopped_by: str) -> str:
    return "the end of its --steps schedule" if stopped_by == "steps" else stopped_by
