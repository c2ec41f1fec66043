"""Train the face-vqvae generator in two stages on the one training loop.

1. ``vqvae``: encoder, EMA codebook and decoder on the LFW train faces (gray luma, the face VAE's
   reader and person-disjoint validation tail), loss ``MSE(x, x_hat) + beta * commitment``,
   random horizontal flips. Selected by validation MSE; codebook usage and perplexity are
   reported at each validation.
2. ``prior``: the causal transformer over the code grids of the training faces and their
   mirror images (encoded once, the VQ-VAE frozen), cross-entropy; selected by validation
   bits per face.

Both stages write the same weights folder (one model holds both parts): ``prior`` starts from
the folder that ``vqvae`` wrote (``init``, default ``out``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aepipe.train.loop import (
    Check,
    EpochOrder,
    LoopSettings,
    Precision,
    Run,
    checkpoint_path,
    cosine,
    fit,
    precision_field,
)

NAME = "face-vqvae"
MODEL = dict(
    size=64,
    channels=[64, 128, 128],
    res_blocks=2,
    num_codes=512,
    code_dim=64,
    decay=0.99,
    prior_dim=128,
    prior_layers=4,
    prior_heads=4,
)


class TrainConfig(BaseModel):
    """Settings of one face-vqvae training stage.

    Attributes:
        stage: ``vqvae`` (autoencoder + codebook), ``prior`` (the code prior, VQ-VAE frozen).
        data: the face archive (train split used).
        init: for ``prior``: the folder the ``vqvae`` stage wrote (default: ``out``).
        epochs: epochs of this stage (the cosine schedule spans them).
        max_minutes: wall-clock budget of this stage.
        batch_size: images (or code grids) per step.
        lr: Adam learning rate.
        commitment: weight of the commitment loss.
        grid: side of the code grid for ``vqvae`` (8: three halvings of the 64-px face,
            16: two, so each code covers 4x4 pixels instead of 8x8: sharper faces, and a
            prior over 256 codes instead of 64).
        num_codes: codebook size for ``vqvae``.
        val_fraction: part of the train split held out (person-disjoint).
        limit: use only the first ``limit`` training images (smoke tests).
        max_steps: stop after this many steps (a checkpoint is kept to resume).
        resume: continue from the checkpoint beside ``out``.
        temperature: default sampling temperature stored with the weights.
        top_k: default top-k stored with the weights.
        top_p: default top-p stored with the weights.
        precision: "bfloat16" trains under autocast (matrix products in bfloat16, about twice
            the steps per minute on CPUs with AMX); for the prior stage only, since the
            codebook's nearest-entry search needs float32.
        seed: seeds initialisation, data order and flips.
        threads: torch CPU threads.
        command: the command line recorded in the card.
    """

    model_config = ConfigDict(extra="forbid")

    stage: Literal["vqvae", "prior"] = "vqvae"
    data: Path = Path("../shared/data/faces/lfw_64.npz")
    init: Path | None = None
    epochs: int = Field(default=8, ge=1, le=10_000)
    max_minutes: float = Field(default=60.0, gt=0)
    batch_size: int = Field(default=64, ge=1, le=4096)
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    commitment: float = Field(default=0.25, ge=0, le=10)
    grid: Literal[8, 16] = 8
    num_codes: int = Field(default=512, ge=2, le=65536)
    val_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    limit: int | None = Field(default=None, ge=16)
    max_steps: int | None = Field(default=None, ge=1)
    resume: bool = False
    temperature: float = Field(default=1.0, ge=0, le=3)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    precision: Precision = precision_field()
    seed: int = 0
    threads: int = Field(default=1, ge=1, le=256)
    command: str = ""

    @model_validator(mode="after")
    def _bfloat16_for_the_prior_only(self) -> TrainConfig:
        if self.precision == "bfloat16" and self.stage != "prior":
            raise ValueError(
                "precision bfloat16 is for --stage prior only (the codebook search needs float32)"
            )
        return self


def load_split(cfg: TrainConfig) -> tuple[Any, Any, int]:
    """Train and validation gray faces as (N, 1, 64, 64) float tensors in [0, 1], and the cut."""
    import torch

    from aepipe.data.faces import load_faces, split_by_person

    images, files = load_faces(cfg.data, "train", with_files=True)
    if cfg.limit:
        images, files = images[: cfg.limit], (files[: cfg.limit] if files is not None else None)
    cut = split_by_person(files, len(images), cfg.val_fraction)
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).float() / 255.0
    return x[:cut], x[cut:], cut


def codebook_stats(codes: Any, num_codes: int) -> dict[str, float]:
    """Usage (share of entries used) and perplexity of a set of code indices."""
    import torch

    counts = torch.bincount(codes.reshape(-1), minlength=num_codes).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}


class _Spec:
    """Shared data order, flips and writing of both stages (``aepipe.train.loop.TrainSpec``)."""

    def __init__(self, cfg: TrainConfig, out: Path, model: Any, train_data: Any) -> None:
        import torch

        self.cfg, self.out, self.model, self.data = cfg, out, model, train_data
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.batches = EpochOrder(len(train_data), cfg.batch_size, self.gen)
        self.steps_per_epoch = math.ceil(len(train_data) / cfg.batch_size)
        self.info: dict[str, Any] = {}
        self.resumed_in_place = False

    def next_rows(self) -> Any:
        return self.data[self.batches.next()]

    def rng_state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), **self.batches.state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.batches.set_state(state)

    def write(self, model: Any, run: Run, final: bool) -> Path:
        from aepipe.stages.face_vqvae import FaceVQVAE

        cfg = self.cfg
        stage_config = {"temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p}
        stage = FaceVQVAE(model, stage_config)
        record = {**cfg.model_dump(mode="json"), "history": run.history, **self.info}
        if cfg.stage == "prior":
            # grid and num_codes are the VQ-VAE's settings; the prior's own config holds only
            # their defaults (8, 512), so record the frozen VQ-VAE's instead.
            vqvae = self.info.get("previous_training", {}).get("vqvae", {})
            record.update({k: vqvae[k] for k in ("grid", "num_codes") if k in vqvae})
        before = self.info.get("previous_training", {}).get(cfg.stage)
        if before:
            # A fine-tune keeps the commands that made its starting point, so the card lists
            # every command that reproduces the weights; a run resumed in its own folder
            # finds its own partial record there instead, whose list it keeps.
            chain = list(before.get("earlier_commands", []))
            if not self.resumed_in_place:
                chain.append(before.get("command", ""))
            if chain:
                record["earlier_commands"] = chain
        training = {**self.info.get("previous_training", {}), cfg.stage: record}
        metrics = {**self.info.get("previous_metrics", {}), **run.best_metrics}
        if cfg.stage == "prior":
            # Sampling settings chosen for an earlier prior do not carry over to this one.
            metrics.pop("val_sampling_sweep", None)
        training.get(cfg.stage, {}).pop("previous_training", None)
        training.get(cfg.stage, {}).pop("previous_metrics", None)
        return stage.save_pretrained(
            self.out, training=training, metrics=metrics, card=model_card(training, metrics)
        )


class VqvaeSpec(_Spec):
    """Stage 1: the autoencoder and its codebook."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        from aepipe.models.vqvae import VQVAE

        train_x, self.val_x, cut = load_split(cfg)
        channels = MODEL["channels"] if cfg.grid == 8 else MODEL["channels"][:2]
        model = VQVAE(**{**MODEL, "channels": channels, "num_codes": cfg.num_codes})
        for p in model.prior.parameters():
            p.requires_grad_(False)
        super().__init__(cfg, out, model, train_x)
        self.info = {"split": "train[:cut] / train[cut:] (person-disjoint)", "cut": cut}

    def draw(self, step: int) -> Any:
        """The next batch of training faces, half of them mirrored."""
        import torch

        x = self.next_rows()
        flip = torch.rand(len(x), generator=self.gen) < 0.5
        return torch.where(flip[:, None, None, None], x.flip(-1), x)

    def loss(self, model: Any, x: Any, step: int) -> tuple[Any, dict[str, float]]:
        """Reconstruction MSE plus the weighted commitment loss."""
        from torch.nn import functional as F

        x_hat, _codes, commitment = model(x)
        mse = F.mse_loss(x_hat, x)
        loss = mse + self.cfg.commitment * commitment
        return loss, {"mse": mse.item() * len(x), "n": len(x)}

    def validate(self, model: Any, run: Run) -> Check:
        """Validation MSE (the score), PSNR, codebook usage and perplexity."""
        import torch

        with torch.no_grad():
            codes = torch.cat([model.codes(x) for x in self.val_x.split(256)])
            x_hat = torch.cat([model.decode_codes(c) for c in codes.split(256)])
        mse = float(((x_hat - self.val_x) ** 2).mean())
        psnr = float((-10 * torch.log10(((x_hat - self.val_x) ** 2).mean((1, 2, 3)))).mean())
        stats = codebook_stats(codes, model.num_codes)
        train_mse = run.sums.get("mse", 0.0) / max(run.sums.get("n", 1), 1)
        restarts = int(model.quantizer.restarts)
        row = {"step": run.step, "train_mse": train_mse, "val_mse": mse, "val_psnr": psnr}
        row.update({**stats, "restarts": restarts, "minutes": run.minutes()})
        line = (
            f"step {run.step} train mse {train_mse:.5f} val mse {mse:.5f} psnr {psnr:.2f} "
            f"usage {stats['usage']:.2f} perplexity {stats['perplexity']:.1f} "
            f"restarts {restarts} t {run.minutes():.1f} min"
        )
        metrics = {
            "val_mse": mse,
            "val_psnr_db": psnr,
            "val_codebook_usage": stats["usage"],
            "val_codebook_perplexity": stats["perplexity"],
        }
        return Check(row, mse, line, metrics)


class PriorSpec(_Spec):
    """Stage 2: the causal prior over the frozen VQ-VAE's code grids."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        import torch

        from aepipe.weights import load_model

        init = cfg.init or out
        resumed_in_place = cfg.resume and Path(init).resolve() == Path(out).resolve()
        # The prior starts from the seeded random one that the vqvae stage wrote, so the two
        # commands in the card reproduce the weights; a folder whose prior is already trained
        # is fine-tuned instead.
        model, done = load_model(init)
        for name, part in model.named_children():
            part.requires_grad_(name == "prior")
        train_x, val_x, cut = load_split(cfg)
        model.eval()
        with torch.no_grad():
            # Mirror images double the prior's data; faces are near symmetric.
            both = torch.cat([train_x, train_x.flip(-1)])
            codes = torch.cat([model.codes(x).flatten(1) for x in both.split(256)])
            self.val_codes = torch.cat([model.codes(x).flatten(1) for x in val_x.split(256)])
        super().__init__(cfg, out, model, codes)
        self.resumed_in_place = resumed_in_place
        self.info = {
            "init": str(init),
            "cut": cut,
            "previous_training": done.get("training", {}),
            "previous_metrics": done.get("metrics", {}),
        }

    def draw(self, step: int) -> Any:
        """The next batch of code grids (N, tokens)."""
        return self.next_rows()

    def loss(self, model: Any, codes: Any, step: int) -> tuple[Any, dict[str, float]]:
        """Cross-entropy of each code given the earlier ones."""
        from torch.nn import functional as F

        logits = model.prior(codes)
        nll = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
        return nll, {"nll": nll.item() * len(codes), "n": len(codes)}

    def validate(self, model: Any, run: Run) -> Check:
        """Validation bits per face of the prior (the score)."""
        import torch
        from torch.nn import functional as F

        with torch.no_grad():
            nll = sum(
                float(F.cross_entropy(model.prior(c).flatten(0, 1), c.flatten(), reduction="sum"))
                for c in self.val_codes.split(256)
            )
        bits = nll / len(self.val_codes) / math.log(2)
        train = run.sums.get("nll", 0.0) / max(run.sums.get("n", 1), 1)
        row = {"step": run.step, "train_nll": train, "val_bits_per_face": bits}
        row["minutes"] = run.minutes()
        line = (
            f"step {run.step} train nll {train:.3f} nats/code val {bits:.1f} bits/face "
            f"t {run.minutes():.1f} min"
        )
        return Check(row, bits, line, {"val_prior_bits_per_face": bits})


def model_card(training: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Markdown card: the commands, data and validation figures of both stages."""
    first = training.get("vqvae", {})
    g, k = first.get("grid", 8), first.get("num_codes", 512)
    commitment = first.get("commitment", 0.25)
    lines = [
        "# face-vqvae",
        "",
        f"VQ-VAE for 64x64 gray faces ({g}x{g} grid of codes from a {k} x 64 EMA codebook,",
        f"dead-code restarts, commitment {commitment}, straight-through) and a causal transformer",
        f"prior over the {g * g} codes (4 blocks, width 128), sampled with temperature / top-k /",
        "top-p.",
        "",
        "Data: LFW 64x64 train split (`lfw_64.npz`), BT.601 luma; the last 5% of the train",
        "split (person-disjoint) validates. The test split is not used in training.",
        "",
        "## Training commands",
        "",
    ]
    for stage, record in training.items():
        for earlier in record.get("earlier_commands", []):
            lines.append(f"- {stage}: `{earlier or 'library call'}`")
        then = "then fine-tuned" if record.get("earlier_commands") else stage
        lines.append(f"- {then}: `{record.get('command') or 'library call'}`")
    lines += ["", "## Validation", ""]
    lines += [
        f"- {key}: {value:.4g}"
        for key, value in sorted(metrics.items())
        if isinstance(value, int | float)
    ]
    return "\n".join(lines) + "\n"


def train(cfg: TrainConfig, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Run one training stage and write (or rewrite) the weights folder ``out``.

    Args:
        cfg: the stage and its settings.
        out: the weights folder.
        progress: called with one line per validation.

    Returns:
        ``out``.
    """
    import torch

    say = progress or (lambda _msg: None)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec: _Spec = VqvaeSpec(cfg, Path(out)) if cfg.stage == "vqvae" else PriorSpec(cfg, Path(out))
    total = cfg.epochs * spec.steps_per_epoch
    # One checkpoint per stage: resuming the prior must not pick up the VQ-VAE's optimiser.
    ckpt = Path(out) if cfg.stage == "vqvae" else Path(out).with_name(Path(out).name + "-prior")
    settings = LoopSettings(
        lr=cfg.lr,
        steps_per_epoch=spec.steps_per_epoch,
        max_epochs=cfg.epochs,
        lr_factor=cosine(total, 0.05),
        val_every=min(spec.steps_per_epoch, 100),
        maximize=False,
        max_minutes=cfg.max_minutes,
        minutes_checked="step",
        max_steps=cfg.max_steps,
        write_each_best=True,
        checkpoint=checkpoint_path(ckpt),
        resume=cfg.resume,
        precision=cfg.precision,
    )
    fit(spec, settings, say)
    return Path(out)
