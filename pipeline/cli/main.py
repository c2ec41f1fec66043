"""Console entry points: ``aepipe`` and its short forms (``clean-scans``, ``gen-faces``, ...).

Area modules register their commands on the shared apps when imported; this module imports
them and runs the app. None of them imports torch at module level, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from functools import partial

import typer

from aepipe.cli.apps import CONTEXT, app
from aepipe.cli.common import err, run_app
from aepipe.errors import ConfigError, ExitCode


def load_areas() -> None:
    """Import every CLI module the registry names, so its commands are registered.

    Raises:
        ConfigError: a module the registry names does not exist (a misspelled ``cli=``): its
            commands would otherwise just be missing. A module that exists but fails to
            import (a missing dependency of it) raises its own error.
    """
    from aepipe.registry import cli_modules

    for name in cli_modules():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                raise ConfigError(_missing_area(name)) from None
            raise


def _missing_area(module: str) -> str:
    """The message for a registry CLI module that does not exist, naming who lists it."""
    from aepipe.registry import ENTRIES

    owners = ", ".join(repr(e.name) for e in ENTRIES.values() if module in e.cli)
    who = f"the registry entry of stage {owners}" if owners else "the registry's FRONT_END_CLI"
    return f"{who} names CLI module {module!r}, which does not exist (misspelled cli=?)"


def _load_areas_or_exit() -> None:
    """:func:`load_areas` for a console script: a broken registry is one line and exit 2."""
    try:
        load_areas()
    except ConfigError as exc:
        err(f"error: {exc}")
        sys.exit(int(ExitCode.BAD_ARGS))


@app.command("models")
def models_cmd() -> None:
    """List the shipped weights with their stage and model class.

    Their scores are in each folder's model card (``weights/<name>/MODEL_CARD.md``): the metrics
    in ``config.json`` are training-time validation figures, not what a user should compare.
    """
    from aepipe.weights import read_config, shipped_names, shipped_weights_dir

    root = shipped_weights_dir()
    rows = []
    for name in shipped_names():
        cfg = read_config(root / name)
        part = f" (part of {cfg['part_of']})" if cfg.get("part_of") else ""
        rows.append((name, cfg["stage"], cfg["model_class"] + part))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@app.command("version")
def version_cmd() -> None:
    """Print the aepipe version."""
    from aepipe._version import __version__

    typer.echo(f"aepipe {__version__}")


def _single(name: str) -> typer.Typer:
    """A one-command app running the ``aepipe NAME`` command, for the short console scripts."""
    _load_areas_or_exit()
    for command in app.registered_commands:
        if command.name == name:
            single = typer.Typer(
                name=name,
                add_completion=False,
                context_settings=CONTEXT,
                pretty_exceptions_enable=False,
            )
            single.command(name=name, help=command.help)(command.callback)
            return single
    raise RuntimeError(f"command {name!r} is not registered")


def _all() -> typer.Typer:
    """``aepipe`` with every area's commands."""
    _load_areas_or_exit()
    return app


def main() -> None:
    """``aepipe``."""
    run_app(_all)


def clean_scans_main() -> None:
    """``clean-scans``."""
    run_app(partial(_single, "clean-scans"))


def gen_faces_main() -> None:
    """``gen-faces``."""
    run_app(partial(_single, "gen-faces"))


def colorize_main() -> None:
    """``colorize``."""
    run_app(partial(_single, "colorize"))
