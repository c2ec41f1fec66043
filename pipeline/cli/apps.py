"""The typer apps that every CLI module decorates.

Area modules (``scans``, ``impulse``, ``faces``, ``colorize`` ...) register their commands on
these objects; :mod:`aepipe.cli.main` imports the areas and runs :data:`app`. Kept import-light
so ``aepipe --help`` does not load torch.
"""

from __future__ import annotations

import typer

CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="aepipe",
    help="Autoencoder image pipeline: clean scanned pages, remove impulse noise, "
    "generate and colorize faces.",
    no_args_is_help=True,
    context_settings=CONTEXT,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _group(help: str) -> typer.Typer:
    """A command group of ``aepipe`` (``aepipe train ...``, ``aepipe faces ...``)."""
    return typer.Typer(help=help, no_args_is_help=True, context_settings=CONTEXT)


train_app = _group("Train a model from scratch and write a weights folder.")
faces_app = _group("Explore and edit the face VAE's latent space.")
vae_app = _group("Pictures of the 2-D MNIST / Fashion-MNIST VAEs.")


def _print_version(value: bool) -> None:
    if value:
        from aepipe._version import __version__

        typer.echo(f"aepipe {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False,
        "--version",
        is_eager=True,
        callback=_print_version,
        help="Print the version and exit.",
    ),
) -> None:
    """Options of ``aepipe`` itself, before the command."""


app.add_typer(train_app, name="train")
app.add_typer(faces_app, name="faces")
app.add_typer(vae_app, name="vae")
