"""The ``regiontune`` command. Each command module registers its commands on the shared app
when imported; ``COMMAND_MODULES`` imports them in the order ``--help`` lists them. ``main`` is
the console script (``python -m regiontune.cli.main`` runs it too)."""

from __future__ import annotations

import importlib
import sys

import typer

from regiontune.cli.common import app

COMMAND_MODULES = ("train",     # pretrain, adapt
                   "evaluate",  # evaluate, recommend
                   "compare",   # compare
                   "merge",     # merge
                   "grow",      # grow
                   "serve",     # serve
                   "hub",       # push, pull
                   "bench",     # bench
                   "demo")      # demo
for _name in COMMAND_MODULES:
    importlib.import_module(f"regiontune.cli.{_name}")

__all__ = ["app", "main"]


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
