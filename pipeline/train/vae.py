"""Train the ConvVAE family: the face generator and the MNIST / Fashion-MNIST VAEs.

One trainer, four presets (``face-vae``, ``mnist-vae-2d``, ``mnist-vae``, ``fashion-vae-2d``)
that differ only in data and model/optimiser settings.

Objective: the ELBO, ``log p(x|z) - beta * KL(q(z|x) || N(0, I))`` with one reparameterised
sample and the analytic KL, where ``beta`` rises linearly from 0 to 1 over the first
``warmup_epochs`` (KL warm-up, so the decoder learns to use z before the KL term can switch
latents off) and stays at 1: the model that is kept is trained on, and selected by, the
proper ELBO.

* Faces: 8-bit gray luma, uniformly dequantised (``x = (u8 + U(0,1)) / 256``) so the Gaussian
  likelihood is a density on [0, 1] and ``-ELBO + D log 256`` bounds the discrete NLL
  (bits/dim). The pixel scale is one learned global parameter (the sigma-VAE of Rybkin et al.
  2021): it balances reconstruction against KL by itself, which is what BCE gets wrong and
  what makes BCE-trained face VAEs blurry. Random horizontal flips.
* MNIST-like: Bernoulli likelihood on dynamically binarised images (a fresh binarisation per
  batch), the standard setting of the NLL literature.

Validation: a held-out tail of the train split (person-disjoint for LFW); the best epoch by
validation ELBO is kept. After training a full-covariance Gaussian is fitted to the posterior
means of the training images (see :class:`aepipe.models.vae.ConvVAE`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aepipe.train.loop import Check, EpochOrder, LoopSettings, Run, checkpoint_path, cosine, fit

Preset = Literal["face-vae", "mnist-vae-2d", "mnist-vae", "fashion-vae-2d"]

PRESETS: dict[str, dict[str, Any]] = {
    "face-vae": dict(
        kind="faces",
        data="../shared/data/faces/lfw_64.npz",
        model=dict(
            size=64,
            channels=[32, 64, 128, 256],
            latent_dim=128,
            hidden=0,
            likelihood="gaussian",
            scale="learned",
            fixed_scale=0.1,
            res_blocks=0,
            sample_components=10,
        ),
        epochs=14,
        batch_size=64,
        lr=1e-3,
        warmup_epochs=2,
        val_fraction=0.05,
        # Picked by FID against the validation faces (0.9 ... 1.3): the mixture is fitted to
        # posterior means, which spread less than the codes the decoder saw in training. The
        # unsharp mask on samples too (benchmarks/results/faces_sharper.md: 82.4 -> 64.9).
        stage_config=dict(temperature=1.2, sharpen=2.0, sharpen_sigma=1.0),
    ),
    "mnist-vae-2d": dict(
        kind="mnist",
        data="../shared/data/mnist",
        model=dict(
            size=28,
            channels=[16, 32],
            latent_dim=2,
            hidden=256,
            likelihood="bernoulli",
            scale="fixed",
            fixed_scale=1.0,
            res_blocks=0,
        ),
        epochs=3,
        batch_size=128,
        lr=1e-3,
        warmup_epochs=0,
        val_fraction=1 / 12,
        stage_config=dict(temperature=1.0),
    ),
    "mnist-vae": dict(
        kind="mnist",
        data="../shared/data/mnist",
        model=dict(
            size=28,
            channels=[32, 64],
            latent_dim=32,
            hidden=512,
            likelihood="bernoulli",
            scale="fixed",
            fixed_scale=1.0,
            res_blocks=0,
        ),
        epochs=3,
        batch_size=128,
        lr=1e-3,
        warmup_epochs=1,
        val_fraction=1 / 12,
        stage_config=dict(temperature=1.0),
    ),
    "fashion-vae-2d": dict(
        kind="mnist",
        data="../shared/data/fashion-mnist",
        model=dict(
            size=28,
            channels=[16, 32],
            latent_dim=2,
            hidden=256,
            likelihood="bernoulli",
            scale="fixed",
            fixed_scale=1.0,
            res_blocks=0,
        ),
        epochs=2,
        batch_size=128,
        lr=1e-3,
        warmup_epochs=0,
        val_fraction=1 / 12,
        stage_config=dict(temperature=1.0),
    ),
}


class TrainConfig(BaseModel):
    """Settings of one VAE training run; unset fields come from the preset.

    Attributes:
        preset: which model to train.
        data: the npz archive (faces) or IDX folder (MNIST-like); defaults to the preset's.
        epochs: maximum epochs.
        max_minutes: wall-clock budget; training stops after the epoch that passes it.
        batch_size: images per step.
        lr: Adam learning rate (cosine-decayed to 5% over ``epochs``).
        warmup_epochs: epochs of linear KL warm-up (beta 0 -> 1).
        val_fraction: part of the train split held out for validation.
        stop_after: end after this epoch although the learning-rate schedule spans ``epochs``
            (the run is identical to the first ``stop_after`` epochs of the full run).
        limit: use only the first ``limit`` training images (smoke tests).
        max_steps: stop after this many optimiser steps (a checkpoint is kept to resume).
        resume: continue from the checkpoint beside ``out``.
        latent_dim: override the preset's latent size.
        init: weights (a shipped name or a folder) to start from, e.g. to fine-tune
            ``face-vae``; the model settings come from them (``latent_dim`` must stay unset).
        kl_weight: the KL weight beta reaches after the warm-up. 1 (the default) trains on
            the proper ELBO; below 1 weights reconstruction more (sharper reconstructions, a
            less regular latent space), and epochs are then selected by the same weighted
            objective on the validation images. 0 trains a plain autoencoder on the same
            network (reconstruction only: nothing holds the codes near N(0, I)).
        seed: seeds initialisation, splits, noise and augmentation.
        threads: torch CPU threads.
        command: the command line recorded in the weights folder.
    """

    model_config = ConfigDict(extra="forbid")

    preset: Preset = "face-vae"
    data: Path | None = None
    epochs: int | None = Field(default=None, ge=1, le=10_000)
    # The budget `aepipe train <preset>` has always had; the CLI takes it from here.
    max_minutes: float = Field(default=120.0, gt=0)
    batch_size: int | None = Field(default=None, ge=1, le=4096)
    lr: float | None = Field(default=None, gt=0, le=1.0)
    warmup_epochs: float | None = Field(default=None, ge=0)
    val_fraction: float | None = Field(default=None, gt=0, lt=0.5)
    stop_after: int | None = Field(default=None, ge=1)
    limit: int | None = Field(default=None, ge=16)
    latent_dim: int | None = Field(default=None, ge=1, le=1024)
    max_steps: int | None = Field(default=None, ge=1)
    init: str | None = None
    kl_weight: float = Field(default=1.0, ge=0.0, le=1.0)
    resume: bool = False
    seed: int = 0
    threads: int = Field(default=1, ge=1, le=256)
    command: str = ""

    @model_validator(mode="after")
    def _init_brings_its_settings(self) -> TrainConfig:
        # Checked here, before the data loads (the spec would refuse it only after).
        if self.init is not None and self.latent_dim is not None:
            raise ValueError("--init takes the model settings from its weights; drop --latent-dim")
        return self

    def resolved(self) -> dict[str, Any]:
        """The preset merged with the fields set here."""
        p = copy.deepcopy(PRESETS[self.preset])
        for key in ("data", "epochs", "batch_size", "lr", "warmup_epochs", "val_fraction"):
            value = getattr(self, key)
            if value is not None:
                p[key] = value
        if self.latent_dim is not None:
            p["model"]["latent_dim"] = self.latent_dim
        p["data"] = Path(p["data"])
        return p


def load_data(
    kind: str, data: Path, val_fraction: float, limit: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Train and validation uint8 images (N, H, W) from the train split only."""
    if kind == "faces":
        from aepipe.data.faces import load_faces, split_by_person

        images, files = load_faces(data, "train", with_files=True)
        if limit:
            images, files = images[:limit], (files[:limit] if files is not None else None)
        cut = split_by_person(files, len(images), val_fraction)
        info = {"split": "train[:cut] / train[cut:] (person-disjoint)", "cut": cut}
        return images[:cut], images[cut:], info
    from aepipe.data.idx import load_mnist_like

    images, _labels = load_mnist_like(data, "train")
    if limit:
        images = images[:limit]
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = max(1, round(len(images) * val_fraction))
    info = {"split": f"random {n_val} of train held out (seed {seed})"}
    return images[order[n_val:]], images[order[:n_val]], info


def prepare(u8: Any, kind: str, generator: Any, binarize: bool = True) -> Any:
    """uint8 (N, H, W) tensor -> model input (N, 1, H, W) float.

    Faces are dequantised to (u8 + U) / 256; MNIST-like images are binarised with pixel
    intensities as probabilities (dynamic binarisation).
    """
    import torch

    x = u8.unsqueeze(1).float()
    if kind == "faces":
        return (x + torch.rand(x.shape, generator=generator)) / 256.0
    x = x / 255.0
    return torch.bernoulli(x, generator=generator) if binarize else x


def evaluate(
    model: Any, images: Any, kind: str, seed: int, batch_size: int = 500
) -> dict[str, float]:
    """Mean ELBO, reconstruction log-likelihood and KL (nats per image) on fixed noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tot = {"elbo": 0.0, "rec": 0.0, "kl": 0.0}
    model.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = prepare(images[i : i + batch_size], kind, gen)
            rec, kl = model.loss_terms(x, generator=gen)
            tot["rec"] += rec.sum().item()
            tot["kl"] += kl.sum().item()
    n = len(images)
    out = {k: v / n for k, v in tot.items()}
    out["elbo"] = out["rec"] - out["kl"]
    d = images[0].numel()
    # Continuous densities on dequantised [0,1] data: add D log 256 for the 8-bit NLL bound.
    nll = -out["elbo"] + (d * math.log(256.0) if kind == "faces" else 0.0)
    out["bits_per_dim"] = nll / (d * math.log(2.0))
    return out


def encode_means(model: Any, images: Any, kind: str, batch_size: int = 500) -> Any:
    """Posterior means (N, latent_dim) of uint8 images, without noise (faces: u8 / 255)."""
    import torch

    codes = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].unsqueeze(1).float() / 255.0
            codes.append(model.encode(x).mean)
    return torch.cat(codes)


SAMPLER_EM_ITERATIONS = 100


def sampler_info(model: Any, fitted_mixture: bool, seed: int) -> dict[str, Any]:
    """How the sampling distribution of ``model`` was fitted (recorded in config.json)."""
    k = model.sample_components
    if k == 1:
        return {"kind": "gaussian", "fitted_to": "posterior means of the train images"}
    return {
        "kind": "gaussian-mixture",
        "components": k,
        "em_iterations": SAMPLER_EM_ITERATIONS if fitted_mixture else 0,
        "seed": seed,
        "fitted_to": "posterior means of the train images",
    }


def _loss_line(training: dict[str, Any], preset: dict[str, Any]) -> str:
    """The card's loss bullet for the KL weight the run used."""
    beta = training.get("kl_weight", 1.0)
    if beta == 0:
        return (
            "- Loss: -log p(x|z) only (KL weight 0): a plain autoencoder on the VAE's network; "
            "nothing keeps the codes near N(0, I)."
        )
    head = "- Loss: negative ELBO = -log p(x|z) + beta KL(q(z|x) || N(0,I)), beta warmed up "
    if beta == 1.0:
        return head + (
            f"linearly from 0 to 1 over {preset['warmup_epochs']} epochs, then 1 (the proper ELBO)."
        )
    return head + (
        f"linearly to {beta} over {preset['warmup_epochs']} epochs, then {beta} "
        "(weights reconstruction above the ELBO)."
    )


def model_card(
    name: str, p: dict[str, Any], training: dict[str, Any], metrics: dict[str, Any]
) -> str:
    """Markdown model card for a trained VAE."""
    m = p["model"]
    lines = [
        f"# {name}",
        "",
        f"Convolutional VAE (`aepipe.models.vae.ConvVAE`), {m['size']}x{m['size']} gray, latent "
        f"{m['latent_dim']}-d, encoder widths {m['channels']}, {m['likelihood']} likelihood"
        + (f" with a {m['scale']} global pixel scale" if m["likelihood"] != "bernoulli" else "")
        + ".",
        "",
        "## Data",
        f"- `{training['data']}`: train split only; {training['split']}; "
        f"{training['n_train']} train / {training['n_val']} validation images.",
        "- The test split is used only by the benchmarks.",
        "",
        "## Training",
        f"- Command: `{training['command']}`",
        f"- Seed {training['seed']}, {training['epochs_run']} epochs "
        f"(best {training['best_epoch']}), "
        f"{training['wall_minutes']:.1f} min wall on CPU with {training['threads']} thread(s).",
        _loss_line(training, p),
        *([f"- Started from the weights `{training['init']}`."] if training.get("init") else []),
        (
            "- After training, a full-covariance Gaussian was fitted to the posterior means of "
            "the training images; sampling draws from it by default (`--prior` draws from "
            "N(0, I))."
            if m.get("sample_components", 1) == 1
            else f"- After training, a {m['sample_components']}-component full-covariance "
            "Gaussian mixture was fitted by EM to the posterior means of the training images; "
            "sampling draws from it by default (`--prior` draws from N(0, I))."
        ),
        *(
            [f"- Sampling distribution refitted with: `{training['sampler']['command']}`"]
            if training.get("sampler", {}).get("command")
            else []
        ),
        "",
        "## Scores (validation split, nats per image)",
    ]
    for k, v in metrics.items():
        if isinstance(v, float):
            lines.append(f"- {k}: {v:.4g}")
    if training["preset"] in ("face-vae", "mnist-vae"):
        scored = (
            "Benchmark scores on the test split (FID, test ELBO, PSNR, importance-sampled NLL) "
            'are added to `config.json` "metrics" by `benchmarks/faces.py` / '
            "`benchmarks/mnist_nll.py`; see `benchmarks/results/`."
        )
    else:
        scored = "No benchmark writes test scores for these weights; `config.json` holds the "
        scored += "validation scores above."
    lines += ["", scored, ""]
    if training["preset"] == "face-vae":
        lines += [
            "## Limits",
            "LFW is mostly adult, male, white press photos of public figures; generated faces "
            "inherit that skew. Research / non-commercial use only (LFW terms).",
            "",
        ]
    return "\n".join(lines)


class _VaeSpec:
    """The VAE as the training loop sees it (see :mod:`aepipe.train.loop`)."""

    def __init__(self, cfg: TrainConfig, out: Path) -> None:
        import torch

        from aepipe.models.vae import ConvVAE

        self.cfg, self.out, self.p = cfg, out, cfg.resolved()
        self.kind = self.p["kind"]
        train_u8, val_u8, self.split_info = load_data(
            self.kind, self.p["data"], self.p["val_fraction"], cfg.limit, cfg.seed
        )
        self.train_t = torch.from_numpy(np.ascontiguousarray(train_u8))
        self.val_t = torch.from_numpy(np.ascontiguousarray(val_u8))
        self.model = self._initial_model(ConvVAE)
        self.kl_weight = cfg.kl_weight
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epochs = int(self.p["epochs"])
        self.steps_per_epoch = math.ceil(len(self.train_t) / self.p["batch_size"])
        self.warm_steps = self.p["warmup_epochs"] * self.steps_per_epoch
        self.batches = EpochOrder(len(self.train_t), self.p["batch_size"], self.gen)
        self.beta = 1.0

    def draw(self, step: int) -> Any:
        """Uint8 images of the step in a fresh permutation per epoch, flipped and prepared."""
        import torch

        u8 = self.train_t[self.batches.next()]
        if self.kind == "faces":
            flip = torch.rand(len(u8), generator=self.gen) < 0.5
            u8 = torch.where(flip[:, None, None], u8.flip(-1), u8)
        return prepare(u8, self.kind, self.gen)

    def loss(self, model: Any, x: Any, step: int) -> tuple[Any, dict[str, float]]:
        """Negative ELBO with the warmed-up beta."""
        ramp = min(1.0, (step + 1) / self.warm_steps) if self.warm_steps > 0 else 1.0
        self.beta = self.kl_weight * ramp
        rec, kl = model.loss_terms(x, generator=self.gen)
        loss = -(rec - self.beta * kl).mean()
        return loss, {"loss": loss.item() * len(x), "n": len(x)}

    def _initial_model(self, model_cls: Any) -> Any:
        """A new model of the preset's settings, or the ``init`` weights (their settings)."""
        from aepipe.errors import ConfigError
        from aepipe.weights import load_model

        if self.cfg.init is None:
            return model_cls(**self.p["model"])
        model, config = load_model(self.cfg.init)
        if not isinstance(model, model_cls):
            raise ConfigError(f"--init {self.cfg.init}: not a {model_cls.__name__}")
        self.p["model"] = dict(config["model_kwargs"])
        return model.train()

    def validate(self, model: Any, run: Run) -> Check:
        """Validation ELBO; only full-beta epochs are eligible (lower beta is not comparable).

        The score is the objective trained on, ``rec - kl_weight * kl`` (the ELBO when
        ``kl_weight`` is 1).
        """
        val = evaluate(model, self.val_t, self.kind, seed=self.cfg.seed + 1)
        score = val["rec"] - self.kl_weight * val["kl"]
        row = {
            "epoch": run.epoch,
            "train_loss": run.sums["loss"] / run.sums["n"],
            "val_elbo": val["elbo"],
            "val_kl": val["kl"],
            "val_bits_per_dim": val["bits_per_dim"],
            "beta": self.beta,
            "pixel_scale": float(model.pixel_scale().detach())
            if model.likelihood != "bernoulli"
            else None,
            "minutes": run.minutes(),
        }
        line = (
            f"epoch {run.epoch}/{self.epochs} loss {row['train_loss']:.2f} val elbo "
            f"{val['elbo']:.2f} kl {val['kl']:.2f} bpd {val['bits_per_dim']:.4f} beta "
            f"{self.beta:.2f} t {row['minutes']:.1f} min"
        )
        metrics = {
            "val_elbo_nats": val["elbo"],
            "val_rec_nats": val["rec"],
            "val_kl_nats": val["kl"],
            "val_bits_per_dim": val["bits_per_dim"],
        }
        full = self.beta >= self.kl_weight * (1.0 - 1e-9)
        return Check(row, score if full else None, line, metrics)

    def rng_state(self) -> dict[str, Any]:
        """The batch generator and the place in this epoch's permutation."""
        return {"gen": self.gen.get_state(), **self.batches.state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`rng_state`."""
        self.gen.set_state(state["gen"])
        self.batches.set_state(state)

    def write(self, model: Any, run: Run, final: bool) -> Path:
        """Fit the sampling distribution and write the weights folder.

        Snapshots during training get the single Gaussian only (EM on every improvement would
        cost minutes); the final write refits the mixture on the best weights.
        """
        from aepipe.weights import save_model

        cfg, p = self.cfg, self.p
        em = final and run.best_score is not None and model.sample_components > 1
        snapshot = model if final else copy.deepcopy(model).eval()
        snapshot.fit_sampling_gaussian(
            encode_means(snapshot, self.train_t, self.kind),
            iterations=SAMPLER_EM_ITERATIONS if em else 0,
            seed=cfg.seed,
        )
        if run.best_score is None:
            metrics = {"note": "no full-beta epoch; weights of the last epoch"}
        else:
            metrics = run.best_metrics
        training = {
            "preset": cfg.preset,
            "command": cfg.command or f"aepipe train {cfg.preset}",
            "data": str(p["data"]),
            "seed": cfg.seed,
            "threads": cfg.threads,
            "n_train": len(self.train_t),
            "n_val": len(self.val_t),
            "epochs_planned": self.epochs,
            "epochs_run": len(run.history),
            "best_epoch": run.best_epoch if run.best_score is not None else len(run.history),
            "batch_size": p["batch_size"],
            "lr": p["lr"],
            "warmup_epochs": p["warmup_epochs"],
            "kl_weight": cfg.kl_weight,
            **({"init": cfg.init} if cfg.init is not None else {}),
            "wall_minutes": run.minutes(),
            "history": run.history,
            "sampler": sampler_info(snapshot, em, cfg.seed),
            **self.split_info,
        }
        save_model(
            snapshot,
            self.out,
            stage="face-generator",
            model_kwargs=dict(snapshot.hparams),
            stage_config=p["stage_config"],
            training=training,
            metrics=metrics,
            card=model_card(cfg.preset, p, training, metrics),
            extra={"extras": {"kind": self.kind, "preset": cfg.preset}},
        )
        return self.out


def train(cfg: TrainConfig, out: Path, progress: Callable[[str], None] | None = None) -> Path:
    """Train a preset and write its weights folder to ``out``.

    The folder is rewritten whenever validation improves, so an interrupted run still leaves
    the best model so far; ``cfg.resume`` continues a run cut by ``max_steps`` or
    ``max_minutes`` from its checkpoint (``<out>.checkpoint.pt``).

    Args:
        cfg: the run settings.
        out: the weights folder to write.
        progress: called with one line of text per epoch.

    Returns:
        ``out``.
    """
    import torch

    say = progress or (lambda _msg: None)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = _VaeSpec(cfg, Path(out))
    settings = LoopSettings(
        lr=spec.p["lr"],
        steps_per_epoch=spec.steps_per_epoch,
        max_epochs=min(spec.epochs, cfg.stop_after or spec.epochs),
        lr_factor=cosine(spec.epochs * spec.steps_per_epoch, 0.05),
        clip_grad=1e4,
        max_minutes=cfg.max_minutes,
        max_steps=cfg.max_steps,
        write_each_best=True,
        checkpoint=checkpoint_path(Path(out)),
        resume=cfg.resume,
    )
    fit(spec, settings, say)
    return out


def refit_sampler(
    source: str | Path,
    out: Path,
    components: int,
    data: Path | None = None,
    temperature: float | None = None,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Refit the sampling distribution of a trained VAE and write it as a new weights folder.

    The network weights are copied unchanged; only the fitted Gaussian / mixture buffers are
    refitted, to the posterior means of the same train split the model was trained on (so the
    result equals what training with ``sample_components=components`` writes). Scores that
    depend on sampling (FID) are dropped from the metrics, since they no longer apply.

    Args:
        source: weights name or folder of a trained VAE.
        out: the weights folder to write (may not be ``source``'s own folder).
        components: Gaussians in the mixture (1: a single Gaussian).
        data: the training data (default: the path recorded in the weights' config).
        temperature: the default sampling temperature stored with the new weights (default:
            the source's).
        command: the command line recorded in ``config.json``.
        progress: called with a line of text per step.

    Returns:
        ``out``.

    Raises:
        WeightsError: if the source is not a VAE trained by this module.
        ConfigError: if ``out`` is the source folder or the data does not give the recorded
            train split.
    """
    import torch

    from aepipe.errors import ConfigError
    from aepipe.weights import load_model, resolve

    say = progress or (lambda _msg: None)
    src = resolve(source)
    if Path(out).resolve() == src.resolve():
        raise ConfigError(f"{out}: write the refitted model to a new folder, not over its source")
    model, config = load_model(src)
    training = dict(config.get("training") or {})
    new, kwargs, p = _rebuilt_vae(src, model, config, training, components)
    data = Path(data or training.get("data") or p["data"])
    seed = int(training.get("seed", 0))
    train_u8 = _recorded_train_split(p, data, seed, training)
    say(f"encoding {len(train_u8)} train images")
    new.eval()
    codes = encode_means(new, torch.from_numpy(np.ascontiguousarray(train_u8)), p["kind"])
    say(f"fitting the sampling distribution ({components} component(s))")
    new.fit_sampling_gaussian(codes, iterations=SAMPLER_EM_ITERATIONS, seed=seed)
    training["sampler"] = sampler_info(new, True, seed)
    if command:
        training["sampler"]["command"] = command
    _save_refitted(new, out, config, kwargs, p, training, temperature)
    return out


def _save_refitted(
    model: Any,
    out: Path,
    config: dict[str, Any],
    kwargs: dict[str, Any],
    p: dict[str, Any],
    training: dict[str, Any],
    temperature: float | None,
) -> None:
    """Write the refitted VAE: the source's config less its sampling scores (FID)."""
    from aepipe.weights import save_model

    metrics = {k: v for k, v in config.get("metrics", {}).items() if not k.startswith("fid")}
    extra = {k: v for k, v in config.items() if k == "extras"}
    stage_config = dict(config.get("stage_config") or {})
    if temperature is not None:
        stage_config["temperature"] = temperature
    save_model(
        model,
        out,
        stage=config["stage"],
        model_kwargs=kwargs,
        stage_config=stage_config,
        training=training,
        metrics=metrics,
        card=model_card(Path(out).name, p, training, metrics),
        extra=extra,
    )


def _rebuilt_vae(
    src: Path,
    model: Any,
    config: dict[str, Any],
    training: dict[str, Any],
    components: int,
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The trained VAE rebuilt with a ``components``-Gaussian sampler (not fitted yet).

    Returns:
        (the new model with the trained weights, its constructor arguments, the preset with
        the model's arguments and the recorded warm-up).

    Raises:
        WeightsError: the source is not a VAE trained by this module, or its weights do not
            fit the rebuilt model.
    """
    from aepipe.errors import WeightsError
    from aepipe.models.vae import ConvVAE

    preset = training.get("preset")
    if not isinstance(model, ConvVAE) or preset not in PRESETS:
        raise WeightsError(f"{src}: not a VAE trained by `aepipe train` (no known preset)")
    kwargs = dict(config["model_kwargs"])
    kwargs.pop("sample_components", None)
    if components > 1:
        kwargs["sample_components"] = components
    new = ConvVAE(**kwargs)
    # The old mixture (any size) is dropped: everything else must load strictly.
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mix_")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("mix_") for k in missing):
        raise WeightsError(f"{src}: weights do not fit the rebuilt model: {missing + unexpected}")
    p = copy.deepcopy(PRESETS[preset])
    p["model"] = kwargs
    p["warmup_epochs"] = training.get("warmup_epochs", p["warmup_epochs"])
    return new, kwargs, p


def _recorded_train_split(
    p: dict[str, Any], data: Path, seed: int, training: dict[str, Any]
) -> Any:
    """The train split the model was trained on: (N, H, W) uint8.

    Raises:
        ConfigError: ``data`` gives another number of train images than was recorded.
    """
    from aepipe.errors import ConfigError

    train_u8, _val, _info = load_data(p["kind"], data, p["val_fraction"], None, seed)
    if "n_train" in training and len(train_u8) != training["n_train"]:
        raise ConfigError(
            f"{data}: gives {len(train_u8)} train images, the model was trained on "
            f"{training['n_train']}; pass the data it was trained on"
        )
    return train_u8
