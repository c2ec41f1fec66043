"""Training commands whose options are generated from their pydantic ``TrainConfig``.

Every ``aepipe train <name>`` command takes one option per field of its trainer's config
(``--batch-size`` for ``batch_size``), with the field's type, bounds (``ge``/``le``), ``Literal``
choices, description (or the ``Attributes:`` entry of the config's docstring or a base class's)
and default, so a new config field is a new option with no CLI edit. An option left out defaults
to ``None`` and the config decides (its default is shown in ``--help``); a command passes only
the defaults it really changes (a data folder under ``../shared/data``).

The config module is imported only when a command's options are needed (its ``--help`` or a
run), never by ``aepipe --help``: trainers import numpy and OpenCV at module level.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import typer
from typer.core import TyperCommand

from aepipe.cli.apps import train_app
from aepipe.cli.common import (
    OverwriteShippedOpt,
    TrainOutOpt,
    cli_errors,
    err,
    invocation,
    train_out,
    training_data_errors,
)
from aepipe.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError
    from pydantic.fields import FieldInfo

# Fields no option sets: the command records its own command line.
NOT_OPTIONS = ("command",)
_VALUES = "aepipe.train_options"


def option_name(field_name: str) -> str:
    """The option of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field_name.replace("_", "-")


@dataclass(frozen=True)
class ConfigSpec:
    """Which config a command's options come from, and what the command changes about it.

    Attributes:
        config: the pydantic model, or ``"module:Class"`` (imported when first needed).
        defaults: option defaults that differ from the config's (field name -> value).
        skip: fields with no option (set by the command itself, e.g. a preset).
    """

    config: type[BaseModel] | str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] = ()

    def model(self) -> type[BaseModel]:
        """The config class (imported on first use)."""
        if isinstance(self.config, str):
            module, _, name = self.config.partition(":")
            return getattr(importlib.import_module(module), name)
        return self.config

    def fields(self) -> dict[str, FieldInfo]:
        """The config fields that are options, in declaration order."""
        skipped = {*NOT_OPTIONS, *self.skip}
        return {k: v for k, v in self.model().model_fields.items() if k not in skipped}


# What only training needs, from the [train] extra (a library user's install leaves it out).
TRAIN_EXTRA = ("cv2", "imgaug")


def _trainer(module: str) -> Callable[..., Any]:
    """A training module's ``train``; refused (exit 2) when the [train] extra is missing.

    Checked for every trainer, before any data loads: one rule to state, and a run does not
    stop an hour in when its noise or page generator first imports them.
    """
    import importlib.util

    missing = [name for name in TRAIN_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"training needs {', '.join(missing)}, from the training extra: "
            "pip install 'aepipe[train]'"
        )
    return importlib.import_module(module).train


def attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the Google-style ``Attributes:`` sections of ``cls`` and its bases.

    Fields a base class declares (``RunFields``' ``seed`` and ``threads``) are documented in
    that base's docstring, so the whole MRO is read; a subclass's entry wins over its base's.
    """
    docs: dict[str, str] = {}
    for klass in cls.__mro__:
        # Each class's own docstring only: inspect.getdoc would hand a base's to a subclass
        # without one, and its entries would then be read twice.
        own = klass.__dict__.get("__doc__")
        if isinstance(own, str):
            for name, text in _attributes_section(inspect.cleandoc(own)).items():
                docs.setdefault(name, text)
    return docs


def _attributes_section(doc: str) -> dict[str, str]:
    """``name -> description`` from the ``Attributes:`` section of one cleaned docstring."""
    docs: dict[str, str] = {}
    section = doc.partition("Attributes:")[2]
    current = None
    for line in section.splitlines():
        entry = re.match(r"    (\w+): (.*)", line)
        if entry:
            current = entry[1]
            docs[current] = entry[2].strip()
        elif current and line.startswith("        "):
            docs[current] += " " + line.strip()
        elif line.strip():
            break  # the next section
    return docs


def _sentence(text: str | None, fields: Mapping[str, Any]) -> str | None:
    """Help text from a description: ``field`` names become their options, one sentence."""
    if not text:
        return None
    text = re.sub(
        r"``(\w+)``",
        lambda m: option_name(m[1]) if m[1] in fields or m[1] == "out" else m[1],
        text.strip(),
    )
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _bare(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(info: FieldInfo, kind: Any) -> dict[str, Any]:
    """Click range bounds from the field's ``ge``/``le`` (``gt``/``lt`` too for integers)."""
    bounds: dict[str, Any] = {}
    for rule in info.metadata:
        if getattr(rule, "ge", None) is not None:
            bounds["min"] = rule.ge
        if getattr(rule, "le", None) is not None:
            bounds["max"] = rule.le
        if kind is int and getattr(rule, "gt", None) is not None:
            bounds["min"] = rule.gt + 1
        if kind is int and getattr(rule, "lt", None) is not None:
            bounds["max"] = rule.lt - 1
    # Floats with an open bound (gt=0) are left to pydantic, whose message names the option.
    return bounds


def _shown(info: FieldInfo) -> str | bool:
    """The config's default as ``--help`` shows it (``False``: nothing to show)."""
    from pydantic_core import PydanticUndefined

    default = info.get_default(call_default_factory=True)
    if default is None or default is PydanticUndefined:
        return False
    if isinstance(default, list):
        return ",".join(map(str, default))
    return str(default)


def _parameter(name: str, info: FieldInfo, help: str | None, spec: ConfigSpec) -> Any:
    """The typer parameter of one config field, as an ``inspect.Parameter``."""
    kind = _bare(info.annotation)
    decl = option_name(name)
    extra: dict[str, Any] = {}
    if kind is bool:
        default: Any = bool(spec.defaults.get(name, info.default))
        decl = f"{decl}/--no-{decl[2:]}" if default else decl
    else:
        if get_origin(kind) is list:
            kind = str  # comma-separated, split before validation
            help = f"{help or ''} Comma-separated.".strip()
        elif get_origin(kind) is Literal:
            extra["case_sensitive"] = False
        else:
            extra.update(_bounds(info, kind))
        if name in spec.defaults:
            default = spec.defaults[name]
        elif info.is_required():
            default = ...
        else:
            # Not given: the config decides (and --help shows its default).
            default, extra["show_default"] = None, _shown(info)
            kind = kind | None
    annotation = Annotated[kind, typer.Option(decl, help=help, **extra)]
    keyword = inspect.Parameter.KEYWORD_ONLY
    return inspect.Parameter(name, keyword, annotation=annotation, default=default)


def config_params(spec: ConfigSpec) -> list[Any]:
    """One click option per config field of ``spec``, built by typer as for a written option.

    Returns:
        the click parameters, in the config's field order.
    """
    model = spec.model()
    docs = attribute_docs(model)
    fields = spec.fields()
    params = [
        _parameter(name, info, _sentence(info.description or docs.get(name), fields), spec)
        for name, info in fields.items()
    ]

    def options(**values: Any) -> None:
        """Placeholder whose signature typer turns into click options."""

    options.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    scratch = typer.Typer(add_completion=False)
    scratch.command()(options)
    return list(typer.main.get_command(scratch).params)


class ConfigCommand(TyperCommand):
    """A typer command with its own options plus those generated from ``spec`` on first use.

    The generated options' values are taken out of the call and kept for :func:`train_config`,
    so the command function declares only its own options and a ``typer.Context``.
    """

    spec: ClassVar[ConfigSpec]

    @property  # type: ignore[override]
    def params(self) -> list[Any]:
        """The command's own parameters, then the generated ones (made on first access)."""
        if self._generated is None:
            generated = config_params(self.spec)
            self._generated = [p.name for p in generated]
            self._params.extend(generated)
        return self._params

    @params.setter
    def params(self, value: list[Any]) -> None:
        # Click's help option is appended to and popped from this very list: keep one list.
        self._params: list[Any] = list(value)
        self._generated: list[str] | None = None

    def invoke(self, ctx: Any) -> Any:
        """Keep the generated options' values for :func:`train_config`, then run the command."""
        self.params  # noqa: B018 -- generates the options (and their names) if not done yet
        names = self._generated or []
        ctx.meta[_VALUES] = {n: ctx.params.pop(n) for n in names if n in ctx.params}
        return super().invoke(ctx)


def train_command(
    name: str,
    config: type[BaseModel] | str,
    *,
    defaults: Mapping[str, Any] | None = None,
    skip: tuple[str, ...] = (),
    app: typer.Typer = train_app,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``aepipe train <name>`` with one option per field of ``config``.

    The decorated function takes a ``typer.Context`` (for :func:`train_config`) and its own
    options (``--out``, ``--overwrite-shipped`` ...); it must not restate config fields.

    Args:
        name: the command name.
        config: the training config model or ``"module:Class"`` (imported on first use).
        defaults: option defaults that differ from the config's.
        skip: config fields the command sets itself (no option).
        app: the typer app to register on.
    """
    spec = ConfigSpec(config, dict(defaults or {}), tuple(skip))
    cls = type("ConfigCommand", (ConfigCommand,), {"spec": spec})
    return app.command(name, cls=cls)


def add_train_command(
    name: str,
    module: str,
    *,
    help: str,
    defaults: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    app: typer.Typer = train_app,
) -> None:
    """Register the usual ``aepipe train <name>``: ``module.train(TrainConfig, out, progress)``.

    Its options are ``--out``, ``--overwrite-shipped`` and one per field of
    ``module.TrainConfig`` (:func:`train_command`); the trainer module is imported only when
    the command runs.

    Args:
        name: the command name; the default ``--out`` is ``runs/<name>``.
        module: the trainer module, with ``TrainConfig`` and ``train(cfg, out, progress=None)``
            (called with ``progress=`` a function printing one line to stderr).
        help: the command's help.
        defaults: option defaults that differ from the config's.
        fixed: config fields the command sets (no option), e.g. a preset.
        app: the typer app to register on.
    """
    fixed = dict(fixed or {})

    def command(
        ctx: typer.Context,
        out: TrainOutOpt = None,
        overwrite_shipped: OverwriteShippedOpt = False,
    ) -> None:
        with cli_errors():
            train = _trainer(module)
            target = train_out(out, name, overwrite_shipped)
            with training_data_errors(target):
                train(train_config(ctx, **fixed), target, progress=err)
            err(f"wrote {target}")

    command.__doc__ = help
    config = f"{module}:TrainConfig"
    train_command(name, config, defaults=defaults, skip=tuple(fixed), app=app)(command)


def _option_errors(exc: ValidationError) -> str:
    """One line per pydantic error, named by the option (``--val-groups: ...``)."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        loc = error["loc"]
        if len(loc) > 1 and isinstance(loc[1], int):
            # A comma-separated option: say which of its entries is wrong.
            message += f" (entry {loc[1] + 1} is {error['input']})"
        lines.append(f"{option_name(str(loc[0]))}: {message}" if loc else message)
    return "\n".join(lines)


def train_config(ctx: typer.Context, **fixed: Any) -> BaseModel:
    """The command's config: the options given, then ``fixed``, and the command line.

    Values that are ``None`` (options not given) are left to the config's defaults.

    Raises:
        ConfigError: the values do not validate; one line per error, named by its option.
    """
    from pydantic import ValidationError

    command = ctx.command
    assert isinstance(command, ConfigCommand), "train_config needs a train_command"
    fields = command.spec.fields()
    values = {k: v for k, v in {**ctx.meta.get(_VALUES, {}), **fixed}.items() if v is not None}
    for key, value in values.items():
        if key in fields and get_origin(_bare(fields[key].annotation)) is list:
            values[key] = [part.strip() for part in str(value).split(",") if part.strip()]
    model = command.spec.model()
    if "command" in model.model_fields:
        values["command"] = invocation()
    try:
        return model(**values)
    except ValidationError as exc:
        raise ConfigError(_option_errors(exc)) from None
