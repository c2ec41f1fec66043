"""The one training loop every trainer runs on.

A trainer describes its model with a small :class:`TrainSpec` (the model, how to draw a training
batch, the loss, the validation score, how to write the weights folder) and a
:class:`LoopSettings` (learning rate and schedule, epochs, EMA, budgets, checkpoint). :func:`fit`
does the rest, the same way for every model: Adam steps with the scheduled rate, optional
gradient clipping and EMA weights, validation every ``val_every`` steps (default: once an
epoch), best-checkpoint selection by the validation score, early stopping, the
``--max-minutes`` / ``--max-steps`` budgets, a resumable checkpoint next to the output folder and
the final weights folder (written by the spec through :func:`aepipe.weights.save_model`, which
writes config.json, sha256 and the model card atomically).

Resuming restores the model, optimiser, EMA, best weights, history and every random stream the
spec declares, so a run cut by ``--max-steps`` and resumed ends with the same weights as one
uninterrupted run.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from aepipe.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor, nn


def cosine(total_steps: int, floor: float) -> Callable[[int], float]:
    """Learning-rate factor at a step: cosine decay from 1 to ``floor`` over ``total_steps``."""

    def factor(step: int) -> float:
        return floor + (1 - floor) * 0.5 * (
            1 + math.cos(math.pi * min(step, total_steps) / total_steps)
        )

    return factor


Precision = Literal["float32", "bfloat16"]


def precision_field() -> Any:
    """The ``precision`` option of a trainer whose loss is safe under bfloat16 autocast."""
    return Field(
        "float32",
        description="bfloat16: train under autocast (matrix products and convolutions in "
        "bfloat16, weights and optimiser in float32): faster on CPUs with AMX, by as much as "
        "the model's share of a step (measured only in short trials whose figures were not "
        "kept)",
    )


class RunFields(BaseModel):
    """The options every trainer's config takes for the run itself (not the model or data).

    Attributes:
        seed: seeds every random stream of the run.
        threads: torch CPU threads.
        command: the command line, recorded in config.json (set by the CLI, not an option).
        max_minutes: wall-clock cap.
        resume: continue from the checkpoint beside the output.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    threads: int = Field(1, ge=1, le=64)
    command: str | None = Field(None, description="the command line, recorded in config.json")
    max_minutes: float | None = Field(
        None,
        gt=0.0,
        description="wall-clock cap (a safety net; runs cut by it are not bit-reproducible)",
    )
    resume: bool = Field(False, description="continue from the checkpoint beside the output")


class EpochOrder:
    """Batches of row indices: each epoch a fresh permutation of ``n`` rows drawn from ``gen``.

    The last batch of an epoch may be short. :meth:`state` belongs in the spec's
    ``rng_state`` so a resumed run continues the same permutation.
    """

    def __init__(self, n: int, batch_size: int, gen: Any) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.order: Any = None
        self.pos = 0

    def next(self) -> Tensor:
        """The next batch's row indices, shape (B,)."""
        import torch

        if self.order is None or self.pos >= len(self.order):
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        rows = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return rows

    def state(self) -> dict[str, Any]:
        """This epoch's permutation and the place in it."""
        return {"order": self.order, "pos": self.pos}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (extra keys are ignored)."""
        self.order, self.pos = state["order"], state["pos"]


def checkpoint_path(out: Path) -> Path:
    """Where the resumable checkpoint of a run writing ``out`` lives (beside, not inside, it)."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoint.pt")


@dataclass
class LoopSettings:
    """How :func:`fit` trains; every trainer fills one from its config.

    Attributes:
        lr: Adam learning rate at factor 1.
        steps_per_epoch: optimiser steps in one epoch.
        max_epochs: epochs run at most (the LR schedule may span more).
        lr_factor: multiplier of ``lr`` at a (0-based) step.
        optimizer: builds the optimiser from the trainable parameters (None: Adam at ``lr``).
        scheduler: builds a torch LR scheduler on the optimiser, stepped after every step; it
            replaces ``lr_factor`` (for schedules that also move momentum, like OneCycleLR).
        val_every: steps between validations (None: once an epoch).
        maximize: whether a higher validation score is better.
        patience: validations without improvement before stopping early (None: never).
        ema: EMA decay (None: no EMA); validation and the written weights then use the EMA.
        clip_grad: max gradient norm (None: no clipping).
        max_minutes: wall-clock budget, checked where ``minutes_checked`` says.
        minutes_checked: "validation" (stop after the validation that passes the budget) or
            "step" (validate and stop right after the step that passes it).
        max_steps: stop after this many steps in all (a resumed run counts earlier ones).
        write_each_best: also write the weights folder on every improvement, so an interrupted
            run leaves the best model so far.
        checkpoint: file for the resumable checkpoint (None: none).
        resume: continue from ``checkpoint``.
        precision: "bfloat16" runs the forward pass and loss under CPU/GPU autocast (matrix
            products and convolutions in bfloat16, weights, gradients and the optimiser in
            float32): faster on CPUs with AMX (short trials, figures not kept). Validation
            stays float32.
    """

    lr: float
    steps_per_epoch: int
    max_epochs: int
    lr_factor: Callable[[int], float] = lambda _step: 1.0
    optimizer: Callable[[list[Any]], Any] | None = None
    scheduler: Callable[[Any], Any] | None = None
    val_every: int | None = None
    maximize: bool = True
    patience: int | None = None
    ema: float | None = None
    clip_grad: float | None = None
    max_minutes: float | None = None
    minutes_checked: Literal["validation", "step"] = "validation"
    max_steps: int | None = None
    write_each_best: bool = False
    checkpoint: Path | None = None
    resume: bool = False
    precision: Precision = "float32"


@dataclass
class Run:
    """The state of a run that specs read (all of it goes into the checkpoint)."""

    step: int = 0
    epoch: int = 0
    validations: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=dict)
    best_score: float | None = None
    best_epoch: int = 0
    best_step: int = 0
    best_validation: int = 0
    best_metrics: dict[str, Any] = field(default_factory=dict)
    stopped_by: str = "max_epochs"
    minutes_before: float = 0.0
    started: float = field(default_factory=time.monotonic)
    epoch_started: float = field(default_factory=time.time)

    def minutes(self) -> float:
        """Wall minutes of the run so far, earlier sessions of a resumed run included."""
        return self.minutes_before + (time.monotonic() - self.started) / 60

    def improves(self, score: float | None, maximize: bool = True) -> bool:
        """Whether ``score`` beats the best so far (None never does)."""
        if score is None:
            return False
        if self.best_score is None:
            return True
        return score > self.best_score if maximize else score < self.best_score


@dataclass
class Check:
    """One validation's outcome.

    Attributes:
        row: the history entry.
        score: the validation score (None: not eligible for best-checkpoint selection).
        line: the progress line.
        metrics: recorded in config.json if this becomes the best checkpoint.
    """

    row: dict[str, Any]
    score: float | None
    line: str
    metrics: dict[str, Any] = field(default_factory=dict)


class TrainSpec(Protocol):
    """What a trainer tells the loop about its model.

    Attributes:
        model: the module being trained (built, with its initialisation seeded, by the spec).
    """

    model: nn.Module

    def draw(self, step: int) -> Any:
        """The training batch of ``step``, drawn from the spec's own seeded streams."""

    def loss(self, model: nn.Module, batch: Any, step: int) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss and numbers to sum over the epoch (for the history row)."""

    def validate(self, model: nn.Module, run: Run) -> Check:
        """Score the model (in eval mode) on the validation data."""

    def rng_state(self) -> dict[str, Any]:
        """Everything random (generators, data order) to restore on resume."""

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`rng_state` returned."""

    def write(self, model: nn.Module, run: Run, final: bool) -> Path:
        """Write the weights folder (``final``: the run is over, ``model`` holds the best)."""


def fit(spec: TrainSpec, s: LoopSettings, say: Callable[[str], None]) -> Run:
    """Train ``spec.model`` as ``s`` says, write the weights folder and return the run.

    Raises:
        ConfigError: if ``s.resume`` is set and there is no checkpoint to resume, or it holds
            another model than ``spec.model`` (other hyper-parameters, tensor shapes or
            trainable parameters).
    """
    import torch

    model = spec.model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = s.optimizer(params) if s.optimizer else torch.optim.Adam(params, lr=s.lr)
    sched = s.scheduler(opt) if s.scheduler else None
    ema = _frozen_copy(model) if s.ema is not None else None
    scored = ema if ema is not None else model
    state = (model, opt, sched, ema)
    run, best_state = Run(), None
    if s.resume:
        run, best_state = _load_checkpoint(s, spec, state)
        say(f"resuming at step {run.step} (epoch {run.epoch}) from {s.checkpoint}")
    total = s.max_epochs * s.steps_per_epoch
    val_every = s.val_every or s.steps_per_epoch
    device = next(model.parameters()).device.type
    model.train()
    while run.step < total:
        batch = spec.draw(run.step)
        if sched is None:
            for group in opt.param_groups:
                group["lr"] = s.lr * s.lr_factor(run.step)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=s.precision == "bfloat16"):
            loss, stats = spec.loss(model, batch, run.step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if s.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip_grad)
        opt.step()
        if sched is not None:
            sched.step()
        run.step += 1
        if ema is not None:
            _ema_update(ema, model, min(s.ema, (1 + run.step) / (10 + run.step)))
        for key, value in stats.items():
            run.sums[key] = run.sums.get(key, 0.0) + value
        timed_out = s.minutes_checked == "step" and _over(s.max_minutes, run)
        if run.step % val_every == 0 or run.step == total or timed_out:
            best_state = _validate(spec, s, run, scored, best_state, say)
            _save_checkpoint(s, spec, run, state, best_state)
            model.train()
            if run.stopped_by != "max_epochs":
                break
        if s.max_steps is not None and run.step >= s.max_steps:
            run.stopped_by = "max_steps"
            say(f"stopping after step {run.step} (--max-steps); resume with --resume")
            _save_checkpoint(s, spec, run, state, best_state)
            break
    if best_state is not None:
        scored.load_state_dict(best_state)
    scored.eval()
    spec.write(scored, run, final=True)
    if s.checkpoint is not None and run.stopped_by in ("max_epochs", "early_stopping"):
        s.checkpoint.unlink(missing_ok=True)  # finished: nothing left to resume
    return run


def _validate(
    spec: TrainSpec,
    s: LoopSettings,
    run: Run,
    scored: nn.Module,
    best_state: dict[str, Any] | None,
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    """Validate, keep the best weights, and set ``run.stopped_by`` if a stop rule fires."""
    run.epoch = math.ceil(run.step / s.steps_per_epoch)
    run.validations += 1
    scored.eval()
    check = spec.validate(scored, run)
    run.history.append(check.row)
    say(check.line)
    if run.improves(check.score, s.maximize):
        run.best_score, run.best_metrics = check.score, check.metrics
        run.best_epoch, run.best_step, run.best_validation = run.epoch, run.step, run.validations
        best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        if s.write_each_best:
            spec.write(scored, run, final=False)
    run.sums, run.epoch_started = {}, time.time()
    if s.patience is not None and run.validations - run.best_validation >= s.patience:
        run.stopped_by = "early_stopping"
    elif _over(s.max_minutes, run):
        run.stopped_by = "max_minutes"
        say(f"time budget of {s.max_minutes} min reached after step {run.step}")
    return best_state


def _over(max_minutes: float | None, run: Run) -> bool:
    return max_minutes is not None and run.minutes() > max_minutes


def _frozen_copy(model: nn.Module) -> nn.Module:
    import copy

    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    import torch

    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1.0 - decay)
        # Buffers are the model's own (batch-norm statistics are already running averages):
        # left at their initial values, the copy's batch norms would undo the training.
        for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
            be.copy_(bm)


def _save_checkpoint(
    s: LoopSettings,
    spec: TrainSpec,
    run: Run,
    state: tuple[nn.Module, Any, Any, nn.Module | None],
    best_state: dict[str, Any] | None,
) -> None:
    """Write everything a resume needs, atomically (a kill leaves the previous checkpoint)."""
    import torch

    from aepipe.io import atomic_write

    if s.checkpoint is None:
        return
    model, opt, sched, ema = state
    saved = {k: v for k, v in asdict(run).items() if k not in ("started", "epoch_started")}
    saved["minutes_before"] = run.minutes()
    buf = io.BytesIO()
    torch.save(
        {
            "run": saved,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "best": best_state,
            "rng": spec.rng_state(),
            "torch_rng": torch.get_rng_state(),
            "hparams": _plain(getattr(model, "hparams", None)),
        },
        buf,
    )
    atomic_write(s.checkpoint, lambda fh: fh.write(buf.getvalue()))


def _load_checkpoint(
    s: LoopSettings, spec: TrainSpec, state: tuple[nn.Module, Any, Any, nn.Module | None]
) -> tuple[Run, dict[str, Any] | None]:
    import torch

    if s.checkpoint is None or not s.checkpoint.is_file():
        raise ConfigError(f"--resume: no checkpoint {s.checkpoint} to resume from")
    # weights_only: a checkpoint holds tensors and plain data only, nothing is unpickled.
    ckpt = torch.load(s.checkpoint, map_location="cpu", weights_only=True)
    model, opt, sched, ema = state
    _check_same_model(s.checkpoint, ckpt, model)
    _load_with_layout(model, ckpt["model"])
    if ema is not None:
        _load_with_layout(ema, ckpt["ema"])
    try:
        opt.load_state_dict(ckpt["optimizer"])
    except ValueError:
        # Same tensors, other trainable ones (e.g. --freeze-base given or dropped).
        raise ConfigError(
            f"--resume: the checkpoint {s.checkpoint} trained other parameters than this "
            "command would; resume with the options it was started with, or start afresh "
            "without --resume"
        ) from None
    run = Run(**ckpt["run"])
    if sched is not None:
        sched.load_state_dict(ckpt["scheduler"])
        _check_same_schedule(s, sched)
    else:
        _check_same_rate(s, opt, run.step)
    spec.set_rng_state(ckpt["rng"])
    torch.set_rng_state(ckpt["torch_rng"])
    run.stopped_by = "max_epochs"  # whatever stopped the last session, this one goes on
    return run, ckpt["best"]


def _plain(value: Any) -> Any:
    """``value`` with tuples as lists, as it compares after a round trip through a checkpoint."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``"key A in the checkpoint, B now"`` for each key whose values differ."""
    return [
        f"{key} {saved.get(key, 'missing')} in the checkpoint, {now.get(key, 'missing')} now"
        for key in sorted(saved.keys() | now.keys(), key=str)
        if saved.get(key) != now.get(key)
    ]


def _check_same_model(path: Path, ckpt: dict[str, Any], model: nn.Module) -> None:
    """Refuse a checkpoint of another model than the command builds, naming what differs.

    Raises:
        ConfigError: the stored hyper-parameters or the tensors' names or shapes differ.
    """
    advice = "resume with the options it was started with, or start afresh without --resume"
    saved, now = ckpt.get("hparams"), _plain(getattr(model, "hparams", None))
    if isinstance(saved, dict) and isinstance(now, dict) and saved != now:
        raise ConfigError(
            f"--resume: the checkpoint {path} was made with other model settings "
            f"({'; '.join(_differences(saved, now))}); {advice}"
        )
    # Older checkpoints store no hyper-parameters, and a model may derive its size from the
    # data (the colorizer's bins): the tensors themselves tell a different model apart.
    stored = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    diff = _differences(stored, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    if diff:
        more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
        raise ConfigError(
            f"--resume: the checkpoint {path} holds a model of other settings than this "
            f"command's (tensor shapes: {'; '.join(diff[:3])}{more}); {advice}"
        )


def _check_same_schedule(s: LoopSettings, sched: Any) -> None:
    """Refuse a scheduler of fixed length (OneCycleLR) restored with another length.

    Its length comes from the checkpoint, so the loop would step it past its end and fail
    there, after all the steps before.
    """
    stored, total = getattr(sched, "total_steps", None), s.steps_per_epoch * s.max_epochs
    if stored is not None and stored != total:
        raise ConfigError(
            f"--resume: the checkpoint {s.checkpoint} was made with a schedule of {stored} "
            f"steps, this command's has {total}; resume with the options it was started with "
            "(--schedule-steps, or --max-steps where that sets the schedule)"
        )


def _check_same_rate(s: LoopSettings, opt: Any, step: int) -> None:
    """Refuse a resume whose learning-rate schedule would have set another rate by now.

    The checkpoint's optimiser holds the rate of its last step; this command's schedule must
    give the same there, or the run changes course mid-way (a cosine over another number of
    steps, another ``--lr``). A constant rate may be resumed for longer.
    """
    if step == 0 or not opt.param_groups:
        return
    stored, now = opt.param_groups[0]["lr"], s.lr * s.lr_factor(step - 1)
    if not math.isclose(stored, now, rel_tol=1e-6, abs_tol=1e-12):
        raise ConfigError(
            f"--resume: the checkpoint {s.checkpoint} trained at a learning rate of {stored:.3g} "
            f"at step {step}, this command's schedule gives {now:.3g} there (another --lr, "
            "--max-steps or --schedule-steps); resume with the options it was started with"
        )


def _load_with_layout(module: nn.Module, state: dict[str, Any]) -> None:
    """Load ``state`` and give every tensor the memory layout it was saved with.

    A spec may switch the model's layout while training (``channels_last`` for faster CPU
    convolutions); a resumed run must compute with the same layout, or its float sums differ.
    """
    import torch

    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        saved = state.get(name)
        if saved is not None and saved.stride() != tensor.stride():
            tensor.data = torch.empty_strided(
                saved.shape, saved.stride(), dtype=tensor.dtype, device=tensor.device
            )
    module.load_state_dict(state)
