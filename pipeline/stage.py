"""The Stage contract, strict stage configs, and the stage registry.

A stage is one trained model plus a strict pydantic config and a single call,
``stage(batch) -> batch``, run under ``torch.inference_mode()``. A :class:`Generator` also samples
new images. Stages are found by name through :mod:`aepipe.registry` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from aepipe.batch import ImageBatch
from aepipe.errors import ConfigError, ShapeError, WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from typing_extensions import Self


#: A stage's ``precision`` option: "auto" is bfloat16 where :func:`fast_bfloat16` says it is native.
StagePrecision = Literal["auto", "float32", "bfloat16"]


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def format_validation_error(
    exc: ValidationError, where: str, sep: str = ".", drop: tuple[str, ...] = ()
) -> str:
    """Turn a pydantic error into lines of ``where.field: message`` a person can act on.

    Args:
        exc: the validation error.
        where: what was validated (a stage name or a file path).
        sep: text between ``where`` and the field path.
        drop: location parts to leave out: the tags of a discriminated union, which pydantic
            puts second (``source.faces.n``); a field of the same name elsewhere stays.
    """
    lines = []
    for err in exc.errors():
        parts = [str(p) for p in err["loc"]]
        if len(parts) > 1 and parts[1] in drop:
            del parts[1]
        loc = ".".join(parts)
        msg = err["msg"]
        if err["type"] == "value_error" and "error" in err.get("ctx", {}):
            msg = str(err["ctx"]["error"])  # our own check's words, without "Value error, "
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the stage's documented options)"
        elif err["type"] == "union_tag_not_found":
            # pydantic says "Unable to extract tag using discriminator 'type'": name the key.
            key = str(err.get("ctx", {}).get("discriminator", "type")).strip("'")
            loc = ".".join([*parts, key])
            msg = "missing; it says which kind of table this is" + (
                f" ({', '.join(repr(t) for t in drop)})" if drop else ""
            )
        lines.append(f"{where}{sep}{loc}: {msg}" if loc else f"{where}: {msg}")
    return "\n".join(lines)


def build_config(cls: type[StageConfig], data: dict[str, Any], where: str) -> StageConfig:
    """Validate ``data`` into ``cls``, raising :class:`ConfigError` with field-named messages."""
    try:
        return cls(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def stage_class(name: str) -> type[Stage]:
    """Return the stage class registered under ``name`` (e.g. ``"scan-denoiser"``).

    Raises:
        ConfigError: no stage of that name is registered (see :mod:`aepipe.registry`).
    """
    from aepipe.registry import stage_class as registered

    return registered(name)


class Stage(ABC):
    """Base class of all stages.

    Subclasses set :attr:`name`, :attr:`Config`, and implement :meth:`forward` (the work on a
    validated batch already on the stage's device) and :meth:`tiny` (a small seeded random
    model for contract tests).

    Attributes:
        model: the ``nn.Module``, in eval mode.
        config: the validated stage config.
        extras: stage-specific state stored beside the weights (e.g. statistics, concepts).
    """

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    input_channels: ClassVar[tuple[int, ...]] = (1, 3)
    min_size: ClassVar[int] = 1

    def __init__(
        self,
        model: nn.Module,
        config: StageConfig | dict[str, Any] | None = None,
        extras: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(config, dict) or config is None:
            config = build_config(self.Config, config or {}, self.name)
        elif not isinstance(config, self.Config):
            raise ConfigError(
                f"{self.name}: config must be {self.Config.__name__}; got {type(config).__name__}"
            )
        self.model = model.eval()
        self.config = config
        self.extras: dict[str, Any] = dict(extras or {})

    # ---- running ------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """The device the model's parameters live on."""
        import torch

        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> Self:
        """Move the model to ``device`` and return the stage."""
        self.model.to(device)
        return self

    def check(self, batch: ImageBatch) -> None:
        """Raise :class:`ShapeError` if ``batch`` cannot go through this stage."""
        if not isinstance(batch, ImageBatch):
            raise ShapeError(
                f"{self.name}: expected an ImageBatch; got {type(batch).__name__}. "
                "Use aepipe.apply() for numpy arrays, PIL images or paths."
            )
        if batch.channels not in self.input_channels:
            raise ShapeError(
                f"{self.name}: takes images with {' or '.join(map(str, self.input_channels))} "
                f"channel(s); got {batch.channels}"
            )
        h, w = batch.size
        if min(h, w) < self.min_size:
            raise ShapeError(
                f"{self.name}: images must be at least {self.min_size} px; got {h}x{w}"
            )
        if batch.images.numel():
            # A batch built by hand skips apply()'s conversion: 0-255 floats or NaN would go
            # through silently. NaN fails both comparisons.
            lo, hi = (float(v) for v in batch.images.aminmax())
            if not (lo >= -1e-3 and hi <= 1 + 1e-3):
                raise ShapeError(
                    f"{self.name}: images must hold finite values in [0, 1]; got range "
                    f"[{lo:.3g}, {hi:.3g}] (ImageBatch.from_numpy scales 8- and 16-bit arrays)"
                )

    def __call__(self, batch: ImageBatch) -> ImageBatch:
        """Run the stage on a batch.

        Args:
            batch: float32 (N, C, H, W) in [0, 1].

        Returns:
            A new batch on the CPU with the same names and updated metadata.
        """
        import torch

        self.check(batch)
        with torch.inference_mode():
            out = self.forward(batch.to(self.device)).to("cpu")
        if out.images.is_inference():
            # A caller may edit the result in place or train on it, which inference tensors
            # refuse; one copy (milliseconds for a page) makes it an ordinary tensor.
            out = out.replace(out.images.clone())
        return out

    @abstractmethod
    def forward(self, batch: ImageBatch) -> ImageBatch:
        """The stage's work on a checked batch on the stage's device."""

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def tiny(cls, seed: int = 0, **config: Any) -> Self:
        """A small randomly initialised stage, seeded, for tests and examples."""
        raise NotImplementedError(f"{cls.__name__} has no tiny model")

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], device: str = "cpu", **overrides: Any
    ) -> Self:
        """Load a weights folder (shipped name or path) into this stage class.

        Args:
            name_or_path: e.g. ``"scan-denoiser"`` or ``"runs/my-model"``.
            device: ``"cpu"``, ``"cuda"``, ``"auto"`` (GPU when available).
            **overrides: stage config fields that replace the stored defaults.

        Raises:
            WeightsError: the folder is missing, tampered with, or belongs to another stage.
            ConfigError: an override is unknown or out of range.
        """
        from aepipe.weights import load_model

        model, wcfg = load_model(name_or_path, device=resolve_device(device))
        if wcfg["stage"] != cls.name:
            raise WeightsError(
                f"{name_or_path}: weights are for stage {wcfg['stage']!r}, not {cls.name!r}"
            )
        if wcfg.get("part_of"):
            raise WeightsError(
                f"{name_or_path}: a frozen part of {wcfg['part_of']!r}, not a model of its own; "
                f"load {wcfg['part_of']!r}"
            )
        from aepipe.weights import CONFIG_NAME, resolve

        stored = wcfg.get("stage_config", {})
        try:
            build_config(cls.Config, stored, f"{resolve(name_or_path) / CONFIG_NAME}: stage_config")
        except ConfigError as exc:
            # A bad stored config is a broken weights folder (exit 4), not a bad argument.
            raise WeightsError(str(exc).replace("\n", "; ")) from None
        config = build_config(cls.Config, {**stored, **overrides}, cls.name)
        return cls(model, config, extras=wcfg.get("extras", {}))

    def save_pretrained(self, folder: str | os.PathLike[str], **info: Any) -> Path:
        """Write this stage's model, config and extras as a weights folder.

        Args:
            folder: output folder.
            **info: ``training``, ``metrics`` and ``card`` entries passed to ``save_model``.
        """
        from aepipe.weights import save_model

        return save_model(
            self.model,
            folder,
            stage=self.name,
            model_kwargs=dict(self.model.hparams),
            stage_config=self.config.model_dump(mode="json"),
            extra={"extras": self.extras} if self.extras else None,
            **info,
        )


class Generator(Stage):
    """A stage that also makes new images from noise (the generator protocol).

    Every front end (``gen-faces``, TOML ``faces`` sources, Ray, ``GET /v1/faces``) samples
    through :meth:`sample` alone, via :func:`aepipe.core.generate`, so a new generator plugs in
    without a front-end change. ``temperature=None`` means the default stored with the weights.
    """

    def sampling_temperature(self, temperature: float | None) -> float:
        """``temperature`` checked against the config's own range (``None``: the weights').

        The one range check every front end gets (through :func:`aepipe.core.generate` and
        :meth:`sample`), so a temperature is valid everywhere or nowhere.

        Raises:
            ConfigError: out of the ``temperature`` field's range, naming ``<stage>.temperature``.
        """
        return float(self._sampling_option("temperature", temperature))

    def sampling_batch_size(self, batch_size: int | None) -> int:
        """``batch_size`` checked against the config's own range (``None``: the config's).

        Raises:
            ConfigError: out of the ``batch_size`` field's range (0 or -1 silently gave the
                default or nothing at all).
        """
        return int(self._sampling_option("batch_size", batch_size))

    def _sampling_option(self, field: str, value: Any) -> Any:
        return type(self).sampling_option(self.config, field, value)

    @classmethod
    def sampling_option(cls, config: StageConfig, field: str, value: Any) -> Any:
        """``value`` for ``config``'s ``field``, validated as the config does; ``None``: its own.

        A class method, so a front end can check a run's options against the config stored
        with the weights before loading them (``aepipe run`` checks the whole file first).

        Raises:
            ConfigError: out of the field's range, naming ``<field> <value>``.
        """
        if value is None:
            return getattr(config, field)
        data = {**config.model_dump(), field: value}
        try:
            return getattr(build_config(type(config), data, cls.name), field)
        except ConfigError as exc:
            # Named as every front end names it (--temperature, ?temperature=, the TOML key),
            # not by the config's dotted path.
            why = str(exc).split(": ", 1)[-1]
            raise ConfigError(f"{field} {value!r}: {why} (for {cls.name})") from None

    @abstractmethod
    def sample(
        self,
        n: int,
        *,
        seed: int = 0,
        temperature: float | None = None,
        batch_size: int | None = None,
        first: int = 0,
        **options: Any,
    ) -> Iterator[ImageBatch]:
        """Make ``n`` new images, reproducibly from ``seed``, one batch at a time.

        Args:
            n: number of images.
            seed: seeds a CPU ``torch.Generator``; image i is the same for any batch size
                (its latents exactly; float rounding may move a pixel by one gray level).
            temperature: spread of the sampled latents; ``None``: the weights' default.
            batch_size: images per yielded batch; ``None``: the stage config's.
            first: index of the first image in ``seed``'s sequence: ``sample(n, first=k)``
                makes images k ... k + n - 1 of ``sample(k + n)`` (a block of a larger run,
                as Ray's workers make them), named and indexed so.
            **options: generator-specific extras (e.g. concept vectors).

        Yields:
            Batches of (B, C, S, S) images in [0, 1] on the CPU.
        """


def fit_channels(process: Callable[[ImageBatch], ImageBatch]) -> Callable[[ImageBatch], ImageBatch]:
    """``process`` behind a conversion of each batch to channels it takes, for front ends.

    A stage that takes only gray gets colour images as BT.601 gray, one that takes only colour
    gets gray replicated: what the file commands, pipeline files and the service all do with a
    folder of mixed images. The stage itself refuses other channels (its contract); a callable
    without ``input_channels``, or a stage taking both, is returned as it is.
    """
    stages = getattr(process, "stages", None)
    if isinstance(stages, list):  # a Pipeline: each stage gets what it takes
        fitted = [fit_channels(s) for s in stages]
        changed = any(f is not s for f, s in zip(fitted, stages, strict=True))
        return type(process)(fitted) if changed else process  # type: ignore[call-arg]
    channels = getattr(process, "input_channels", (1, 3))
    if 1 in channels and 3 in channels:
        return process
    return _FitChannels(process)


class _FitChannels:
    """See :func:`fit_channels`; other attributes (``config``, ``name``) are the stage's."""

    def __init__(self, stage: Any) -> None:
        self.stage = stage

    def __call__(self, batch: ImageBatch) -> ImageBatch:
        if batch.channels not in self.stage.input_channels:
            batch = batch.gray() if 1 in self.stage.input_channels else batch.rgb()
        return self.stage(batch)

    def __getattr__(self, name: str) -> Any:
        if name == "stage":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.stage, name)


def resolve_device(device: str | torch.device) -> str:
    """Map ``"auto"`` to ``"cuda"`` when a GPU is present, else ``"cpu"``."""
    import torch

    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda' (or 'cuda:N'); got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA GPU is available")
    return str(device)


def fast_bfloat16(device: str | torch.device) -> bool:
    """Whether bfloat16 convolutions run natively (and faster than float32) on ``device``.

    True on CPUs with AMX tiles or AVX512-BF16 instructions, where oneDNN runs bfloat16
    convolutions natively (measured on an Intel CPU with AMX: the scan stage 1.57x faster than
    in float32, ``benchmarks/results/scan_denoiser_speed.md``); False on other CPUs, where
    bfloat16 is emulated and slower, and on other devices.
    """
    import torch

    return torch.device(device).type == "cpu" and _cpu_has_bfloat16()


@functools.cache
def _cpu_has_bfloat16() -> bool:
    """The CPU probe behind :func:`fast_bfloat16`, asked once per process (stages ask per page)."""
    import torch

    # Private probes, so a torch without them means "do not know": stay with float32.
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(bool(getattr(torch.cpu, probe)()) for probe in probes)
    except (AttributeError, RuntimeError):
        return False


def uses_bfloat16(precision: str, device: str | torch.device) -> bool:
    """Whether a stage option ``precision`` ("auto", "float32", "bfloat16") means bfloat16 here.

    "auto" is bfloat16 where :func:`fast_bfloat16` says it is native, float32 elsewhere.
    """
    return precision == "bfloat16" or (precision == "auto" and fast_bfloat16(device))


def resolved_precision(precision: str, device: str | torch.device) -> str:
    """What a stage's ``precision`` option runs as on ``device``: "bfloat16" or "float32"."""
    return "bfloat16" if uses_bfloat16(precision, device) else "float32"


def precision_autocast(precision: str, device: str | torch.device) -> torch.autocast:
    """The autocast context that a stage's ``precision`` option means on ``device``.

    Inside it convolutions and linear layers run in bfloat16 when :func:`uses_bfloat16` says
    so; stages keep what must stay exact (inputs, skips, outputs) in float32 around it.
    """
    import torch

    device = torch.device(device)
    bf16 = uses_bfloat16(precision, device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def load_stage(
    name_or_path: str | os.PathLike[str], device: str = "cpu", **overrides: Any
) -> Stage:
    """Load any stage from a weights folder; the folder's config says which stage class.

    Example:
        >>> from aepipe import load_stage
        >>> stage = load_stage("salt-pepper")  # doctest: +SKIP
    """
    from aepipe.registry import AUTO, auto_names
    from aepipe.weights import read_config, resolve

    if str(name_or_path) == AUTO and not Path(name_or_path).is_dir():
        # The CLI's, service's and pipeline files' "auto" is a choice per image, not a folder.
        raise ConfigError(
            f"'auto' picks weights per image for a stage ({', '.join(auto_names())}); load "
            "that choice with aepipe.registry.auto_stage(STAGE), or name weights or a folder"
        )
    folder = resolve(name_or_path)
    kind = read_config(folder)["stage"]
    try:
        cls = stage_class(kind)
    except ConfigError as exc:
        # Helper weights (the face aligner) ship beside the stages but run inside them.
        raise WeightsError(
            f"{name_or_path}: weights of a {kind!r} model, used inside aepipe's commands, not a "
            f"stage to load ({exc})"
        ) from None
    return cls.from_pretrained(folder, device=device, **overrides)
