"""The one registry: stage name -> stage class, model classes, default weights, CLI, HTTP route.

Every front end asks this module instead of keeping its own list: :func:`aepipe.stage.load_stage`
finds stage classes here, :func:`aepipe.weights.load_model` model classes, the CLI the modules
that register commands, and the HTTP service its endpoints. Adding a stage is one stage file, its
model file, its training module, a CLI module for its commands (``aepipe train <name>``) and one
:class:`Entry` in :data:`ENTRIES` (see CONTRIBUTING.md); plug-ins and tests add theirs with
:func:`register`.

Classes are named as ``"module:Class"`` strings and imported on first use, so that ``--help``
and ``import aepipe`` never import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from aepipe.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from aepipe.stage import Stage

RouteKind = Literal[
    "pages", "image", "generate", "face-edit", "face-reconstruct", "face-interpolate"
]


@dataclass(frozen=True)
class Entry:
    """Everything the front ends need to know about one stage.

    Attributes:
        name: the stage's registry name, also written as ``"stage"`` in its weights' config.
        stage: its class, as ``"module:Class"``.
        models: the model classes its weights may name, ``{"Class": "module:Class"}``.
        weights: the shipped weights the front ends load by default (``None``: none ship).
        cli: CLI modules that register this stage's commands when imported.
        route: HTTP endpoint key (``/v1/<route>``), or ``None`` for no endpoint.
        route_kind: ``pages`` (documents in, cleaned pages out as PNG/PDF/zip), ``image``
            (one image in, one PNG out), ``generate`` (``GET``: sampled images out),
            ``face-edit`` (a photo and concept edits in, the whole edited photo out),
            ``face-reconstruct`` (a photo in, its faces as the VAE decodes them) or
            ``face-interpolate`` (two photos in, the latent walk between their faces out).
        more_routes: further endpoints served by the same loaded stage, as
            ``(key, kind)`` pairs (``/v1/<key>``), e.g. ``("faces/edit", "face-edit")``.
        auto: a class, as ``"module:Class"``, that picks among several shipped weights per
            batch (the weights name ``auto``: :func:`auto_stage`); ``None``: no such choice.
            Its ``weights`` attribute names the weights it may load.
    """

    name: str
    stage: str
    models: Mapping[str, str] = field(default_factory=dict)
    weights: str | None = None
    cli: tuple[str, ...] = ()
    route: str | None = None
    route_kind: RouteKind | None = None
    more_routes: tuple[tuple[str, RouteKind], ...] = ()
    auto: str | None = None


ENTRIES: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    """Add (or replace) a stage's entry.

    Raises:
        ConfigError: the entry has a route without a kind, another stage owns one of its routes
            (``route`` or a ``more_routes`` key), or another stage names one of its model
            classes with another target.
    """
    if (entry.route is None) != (entry.route_kind is None):
        raise ConfigError(f"{entry.name}: route and route_kind go together")
    if entry.more_routes and entry.route is None:
        raise ConfigError(f"{entry.name}: more_routes need a route (the stage they share)")
    others = [e for e in ENTRIES.values() if e.name != entry.name]
    _check_routes(entry, others)
    _check_models(entry, others)
    ENTRIES[entry.name] = entry
    return entry


def _route_keys(entry: Entry) -> list[str]:
    """Every endpoint key ``entry`` serves: its route, then its ``more_routes`` keys."""
    main = [entry.route] if entry.route is not None else []
    return main + [key for key, _kind in entry.more_routes]


def _check_routes(entry: Entry, others: list[Entry]) -> None:
    """Refuse an endpoint key that ``entry`` lists twice or that another stage serves."""
    keys = _route_keys(entry)
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"{entry.name}: HTTP route {twice[0]!r} is listed twice")
    for other in others:
        # The service maps each key to one stage: a second owner would shadow the first.
        taken = sorted(set(keys) & set(_route_keys(other)))
        if taken:
            raise ConfigError(f"{entry.name}: HTTP route {taken[0]!r} belongs to {other.name!r}")


def _check_models(entry: Entry, others: list[Entry]) -> None:
    """Refuse a model class name that another stage maps to another class.

    A weights folder records only the bare class name (``config.json``'s ``model_class``, and
    some weights name a stage with no entry, e.g. ``face-aligner``), so :func:`model_class`
    looks names up across all stages; a name must therefore mean one class everywhere.
    """
    for other in others:
        for name in entry.models.keys() & other.models.keys():
            if entry.models[name] != other.models[name]:
                raise ConfigError(
                    f"{entry.name}: model class {name!r} is already {other.models[name]!r} "
                    f"(stage {other.name!r}); weights name model classes by bare name, so "
                    "give the class another name"
                )


for _entry in (
    Entry(
        name="scan-denoiser",
        stage="aepipe.stages.scan_denoiser:ScanDenoiser",
        models={
            "ScanUNet": "aepipe.models.scan_unet:ScanUNet",
            "ClassicDenoisingAE": "aepipe.models.classic:ClassicDenoisingAE",
        },
        weights="scan-denoiser",
        cli=("aepipe.cli.clean", "aepipe.cli.scans"),
        route="clean-scan",
        route_kind="pages",
    ),
    Entry(
        name="impulse-denoiser",
        stage="aepipe.stages.impulse_denoiser:ImpulseDenoiser",
        models={
            "ImpulseDenoiser": "aepipe.models.impulse:ImpulseDenoiser",
            "TutorialAE": "aepipe.models.classic:TutorialAE",
        },
        weights="salt-pepper",
        cli=("aepipe.cli.impulse",),
        route="denoise",
        route_kind="image",
    ),
    Entry(
        name="face-generator",
        stage="aepipe.stages.face_generator:FaceGenerator",
        # FaceAligner: the photo path's alignment model (weights/face-aligner, faces_align.py).
        models={
            "ConvVAE": "aepipe.models.vae:ConvVAE",
            "FaceAligner": "aepipe.models.face_aligner:FaceAligner",
        },
        weights="face-vae",
        cli=("aepipe.cli.faces",),
        route="faces",
        route_kind="generate",
        more_routes=(
            ("faces/edit", "face-edit"),
            ("faces/reconstruct", "face-reconstruct"),
            ("faces/interpolate", "face-interpolate"),
        ),
    ),
    Entry(
        name="face-vqvae",
        stage="aepipe.stages.face_vqvae:FaceVQVAE",
        models={"VQVAE": "aepipe.models.vqvae:VQVAE"},
        weights="face-vqvae",
        cli=("aepipe.cli.vqvae",),
        route="faces-vqvae",
        route_kind="generate",
    ),
    Entry(
        name="colorizer",
        stage="aepipe.stages.colorizer:Colorizer",
        models={
            "StackNNColorizer": "aepipe.models.colorizer:StackNNColorizer",
            # The photo colorizer's frozen context trunk, a weights folder of its own.
            "InceptionTrunk": "aepipe.models.inception:InceptionTrunk",
        },
        weights="colorizer",
        cli=("aepipe.cli.colorize",),
        route="colorize",
        route_kind="image",
        # Face crops to the face model, everything else to colorizer-photo.
        auto="aepipe.stages.colorizer:AutoColorizer",
    ),
):
    register(_entry)

# CLI modules that belong to no stage: the TOML runner and the HTTP service.
FRONT_END_CLI = ("aepipe.cli.run", "aepipe.cli.serve")


def entry(name: str) -> Entry:
    """The entry of stage ``name``.

    Raises:
        ConfigError: no stage has that name (the message lists the known ones).
    """
    try:
        return ENTRIES[name]
    except KeyError:
        known = ", ".join(sorted(ENTRIES))
        raise ConfigError(f"unknown stage {name!r}; known stages: {known}") from None


def _import(target: str) -> Any:
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


AUTO = "auto"


def auto_class(name: str) -> Any:
    """Stage ``name``'s weights-choosing class (its entry's ``auto``), or ``None``."""
    target = entry(name).auto
    return None if target is None else _import(target)


def auto_names() -> list[str]:
    """The stages whose weights name ``auto`` picks among several weights (sorted)."""
    return sorted(name for name, e in ENTRIES.items() if e.auto)


def auto_stage(name: str, device: str = "auto", **overrides: Any) -> Any:
    """What the weights name ``auto`` loads for stage ``name``, every model it may use loaded.

    That is its entry's ``auto`` class: a callable ``batch -> batch`` with the stage's ``name``
    and ``input_channels``. ``overrides`` are stage options for every model it may use.

    Raises:
        ConfigError: the stage has no ``auto`` choice.
        WeightsError: one of its weights is missing or damaged.
    """
    cls = auto_class(name)
    if cls is None:
        raise ConfigError(f"{name}: no 'auto' weights choice; name weights or a folder")
    return cls(device=device, **overrides).preload()


def stage_class(name: str) -> type[Stage]:
    """The stage class registered under ``name`` (e.g. ``"scan-denoiser"``)."""
    return _import(entry(name).stage)


def model_class(name: str) -> type[nn.Module]:
    """The ``nn.Module`` class called ``name`` in some stage's entry.

    :func:`register` keeps each name to one class, so the stage that lists it does not matter.

    Raises:
        KeyError: with the known names, if no entry lists ``name``.
    """
    for e in ENTRIES.values():
        if name in e.models:
            return _import(e.models[name])
    known = ", ".join(sorted(m for e in ENTRIES.values() for m in e.models))
    raise KeyError(f"unknown model class {name!r}; known: {known}")


def cli_modules() -> list[str]:
    """Modules that register CLI commands, in help order: the stages', then the front ends'."""
    seen = [m for e in ENTRIES.values() for m in e.cli]
    return list(dict.fromkeys([*seen, *FRONT_END_CLI]))


def routes() -> dict[str, Entry]:
    """HTTP endpoint key -> entry, for every stage with a route."""
    return {e.route: e for e in ENTRIES.values() if e.route is not None}


def more_routes() -> list[tuple[str, RouteKind, Entry]]:
    """``(endpoint key, kind, entry)`` for the further endpoints that share a stage's route.

    Their stage is the one loaded for ``entry.route`` (e.g. ``POST /v1/faces/edit`` uses the
    weights of ``GET /v1/faces``).
    """
    return [(key, kind, e) for e in ENTRIES.values() for key, kind in e.more_routes]
