"""Weights folders: ``config.json`` + ``model.safetensors`` + ``MODEL_CARD.md``.

A weights folder is the only way models enter the program. Loading rebuilds the model from the
class name and hyper-parameters in ``config.json``, checks the sha256 recorded there, and loads
the tensors strictly from safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aepipe._version import __version__
from aepipe.errors import WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn

SCHEMA_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "MODEL_CARD.md"


def shipped_weights_dir() -> Path:
    """The folder holding the shipped weights, in an installed wheel or in a checkout."""
    # A wheel installs weights/ as package data beside this module (aepipe/_weights); a checkout
    # (editable install, tests) keeps it at the repository root, next to pipeline/.
    installed = Path(__file__).resolve().parent / "_weights"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "weights"


def shipped_names() -> list[str]:
    """Names of the weights folders that ship with aepipe."""
    root = shipped_weights_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG_NAME).is_file())


def resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """Find a weights folder by shipped name (``"scan-denoiser"``) or by path.

    Raises:
        WeightsError: if neither a folder at that path nor a shipped name exists.
    """
    path = Path(name_or_path).expanduser()
    if (path / CONFIG_NAME).is_file():
        return path
    shipped = shipped_weights_dir() / str(name_or_path)
    if (shipped / CONFIG_NAME).is_file():
        return shipped
    known = ", ".join(shipped_names()) or "none"
    raise WeightsError(
        f"no weights folder {str(name_or_path)!r}: not a folder with {CONFIG_NAME} and not a "
        f"shipped name (shipped: {known})"
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_config(folder: Path) -> dict[str, Any]:
    """Read and sanity-check ``config.json`` of a weights folder.

    Raises:
        WeightsError: naming the file, if it is missing, not JSON, or lacks required keys.
    """
    cfg_path = folder / CONFIG_NAME
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{cfg_path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{cfg_path}: not valid JSON ({exc})") from None
    required = ("schema_version", "stage", "model_class", "model_kwargs", "sha256")
    missing = [k for k in required if k not in config]
    if missing:
        raise WeightsError(f"{cfg_path}: missing keys {missing}")
    if config["schema_version"] != SCHEMA_VERSION:
        raise WeightsError(
            f"{cfg_path}: schema_version {config['schema_version']} is not supported "
            f"(this aepipe reads {SCHEMA_VERSION})"
        )
    return config


def _verified_tensors(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a weights folder, after checking the sha256 its config records."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise WeightsError(f"{weights_path}: missing")
    actual = sha256_file(weights_path)
    if actual != config["sha256"]:
        raise WeightsError(
            f"{weights_path}: sha256 {actual[:16]}... does not match {config['sha256'][:16]}... "
            f"recorded in {folder / CONFIG_NAME}; the file is corrupt or was changed"
        )
    try:
        return load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{weights_path}: cannot be read: {exc}") from None


def _part_tensors(folder: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of the frozen parts a weights folder names, keyed by their place in the model.

    A part (``"parts": {"context": "inception-v3-mixed6e"}``) is a frozen sub-network shipped
    as a weights folder of its own, so that a large feature extractor is stored once and each
    weights file stays small.
    """
    tensors: dict[str, torch.Tensor] = {}
    for attr, name in config.get("parts", {}).items():
        try:
            part = resolve(name)
        except WeightsError as exc:
            raise WeightsError(f"{folder / CONFIG_NAME}: part {attr!r}: {exc}") from None
        part_config = read_config(part)
        tensors |= {f"{attr}.{k}": v for k, v in _verified_tensors(part, part_config).items()}
    return tensors


def load_model(
    name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its weights folder and load its tensors strictly.

    Frozen parts that the config names under ``"parts"`` are read from their own weights
    folders (each checked the same way) into the same model.

    Args:
        name_or_path: a shipped name or a folder path.
        device: where to put the model.

    Returns:
        ``(model, config)``: the model in eval mode on ``device`` and the parsed config.

    Raises:
        WeightsError: if the folder (or a part's) is missing, a sha256 does not match, the
            tensors do not fit the model, or the model class is unknown. The message names
            the file.
    """
    from aepipe.registry import model_class

    folder = resolve(name_or_path)
    config = read_config(folder)
    weights_path = folder / WEIGHTS_NAME
    state = _verified_tensors(folder, config) | _part_tensors(folder, config)
    try:
        cls = model_class(config["model_class"])
        model = cls(**config["model_kwargs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{folder / CONFIG_NAME}: cannot build the model: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # load_state_dict lists every mismatch on its own line; the CLI prints one line.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        raise WeightsError(
            f"{weights_path}: does not fit {config['model_class']}: {detail}{more}"
        ) from None
    return model.to(device).eval(), config


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    # The one atomic writer (temp file, fsync, rename, usual permissions) lives in aepipe.io;
    # imported here so that reading weights does not pull in the image libraries.
    from aepipe.io import atomic_write

    atomic_write(path, lambda fh: fh.write(data))


def save_model(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    stage: str,
    model_kwargs: dict[str, Any],
    stage_config: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    card: str | None = None,
    extra: dict[str, Any] | None = None,
    parts: dict[str, str] | None = None,
) -> Path:
    """Write a weights folder that :func:`load_model` can rebuild.

    Args:
        model: the trained module; its ``state_dict`` is saved as float tensors.
        folder: output folder, created if needed.
        stage: registry name of the stage that uses this model (e.g. ``"scan-denoiser"``).
        model_kwargs: keyword arguments that rebuild ``type(model)``.
        stage_config: default stage config stored with the weights.
        training: how the weights were made: ``command``, data, seed, epochs, wall time.
        metrics: measured scores (name -> number or nested dict).
        card: markdown text for ``MODEL_CARD.md``.
        extra: further JSON-serialisable entries (e.g. stats a stage needs at inference).
        parts: frozen sub-modules stored in weights folders of their own, ``{attribute:
            weights name}``; their tensors are left out of this folder's file.

    Returns:
        The folder path.
    """
    from safetensors.torch import save

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    skip = tuple(f"{attr}." for attr in parts or {})
    state = {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.startswith(skip)
    }
    weights_path = out / WEIGHTS_NAME
    _atomic_write_bytes(weights_path, save(state))
    config: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "aepipe_version": __version__,
        "stage": stage,
        "model_class": type(model).__name__,
        "model_kwargs": model_kwargs,
        "stage_config": stage_config or {},
        "training": training or {},
        "metrics": metrics or {},
        "sha256": sha256_file(weights_path),
    }
    if parts:
        config["parts"] = dict(parts)
    if extra:
        config.update(extra)
    _atomic_write_bytes(out / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    if card is not None:
        _atomic_write_bytes(out / CARD_NAME, card.encode())
    return out


def update_metrics(folder: str | os.PathLike[str], metrics: dict[str, Any]) -> None:
    """Merge measured ``metrics`` into a weights folder's ``config.json`` (weights untouched)."""
    path = Path(folder) / CONFIG_NAME
    config = json.loads(path.read_text(encoding="utf-8"))
    config.setdefault("metrics", {}).update(metrics)
    _atomic_write_bytes(path, (json.dumps(config, indent=2) + "\n").encode())
