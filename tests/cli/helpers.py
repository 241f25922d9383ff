"""Running the ``regiontune`` command in process (CliRunner) and checking its outcome."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from regiontune.cli.main import app

runner = CliRunner()
TINY = ["--set", "model.hidden_size=16", "--set", "model.intermediate_size=32",
        "--set", "model.num_layers=1", "--set", "train.epochs=1",
        "--set", "train.progress=false", "--set", "data.synthetic_scale=0.05"]
RANKED = re.compile(r"^\s*(\d+)\. (\S+)\s+(-?[\d.]+)$", re.MULTILINE)


def invoke(*args: str, target=app):
    return runner.invoke(target, [str(a) for a in args], env={"COLUMNS": "200"})


def ok(result) -> str:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def fails(result, *fragments: str) -> str:
    """Exit code 2, an ``error:`` line holding the fragments, no traceback."""
    assert result.exit_code == 2, f"{result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output
