"""Typer command-line interface. Nothing here imports torch at module level."""
