"""``regiontune bench``: run a benchmark suite of a regiontune source checkout from anywhere.

The benchmarks are not part of the installed package (they need the repository's suites and
data layout), so the command finds the checkout -- ``--repo``, else the current folder or one
above it -- and runs ``python -m benchmarks.run`` there, in this interpreter, with the
arguments after the suite passed on unchanged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

from regiontune.cli.common import VerboseOpt, app, command

RUNNER = Path("benchmarks") / "run.py"


def find_checkout(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding ``benchmarks/run.py`` and a
    ``pyproject.toml`` of regiontune."""
    for folder in [start, *start.parents]:
        project = folder / "pyproject.toml"
        if (folder / RUNNER).is_file() and project.is_file() and \
                'name = "regiontune"' in project.read_text(encoding="utf-8", errors="replace"):
            return folder
    raise FileNotFoundError(
        f"no regiontune source checkout at or above {start}: the benchmarks live in the "
        "repository, not in the installed package; run from inside a checkout or pass "
        "--repo PATH")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@command
def bench(ctx: typer.Context,
          suite: str = typer.Argument(..., help="Suite name (wsdm, ml100k) or a suite YAML."),
          repo: Path = typer.Option(None, "--repo", help="The regiontune source checkout "
                                    "(default: the current folder or one above it)."),
          verbose: bool = VerboseOpt) -> None:
    """Run (or complete: runs resume) a benchmark suite; other options go to the runner,
    e.g. --quick, --methods lora,ease, --regions t1, --settings new-region."""
    root = find_checkout((repo or Path.cwd()).resolve())
    argv = [sys.executable, "-m", "benchmarks.run", suite, *ctx.args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
    code = subprocess.call(argv, cwd=root, env=env)
    if code:
        raise typer.Exit(code)
