"""The app: which commands it registers, their help, and the shared ``command`` wrapper."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import typer
import typer.main

import regiontune.cli.common
from regiontune.cli.common import KNOWN_ERRORS, VerboseOpt, command
from regiontune.cli.main import app
from regiontune.cli.serve import serve
from regiontune.hub.client import HubError
from tests.cli.helpers import fails, invoke, ok

COMMANDS = {"pretrain", "adapt", "evaluate", "recommend", "compare", "merge", "grow", "serve",
            "push", "pull", "bench", "demo"}


def _commands() -> dict:
    return typer.main.get_command(app).commands


def test_registered_commands():
    assert set(_commands()) == COMMANDS
    assert len(app.registered_commands) == len(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_mentions_every_option(name):
    command_ = _commands()[name]
    text = ok(invoke(name, "--help"))
    assert "Usage" in text
    for param in command_.params:
        if param.param_type_name == "option":
            longest = max(param.opts, key=len)
            assert longest in text, f"{name} --help lacks {longest}"
    assert (command_.help or "").split("\n")[0].strip()[:30] in " ".join(text.split())


def test_every_command_takes_verbose():
    for name, command_ in _commands().items():
        assert "--verbose" in {opt for p in command_.params for opt in p.opts}, name


def test_wrapper_keeps_signature_and_doc():
    assert inspect.signature(serve).parameters["unknown_region"].default.default == "error"
    assert serve.__doc__.startswith("Serve every region")
    assert serve.__wrapped__.__module__ == "regiontune.cli.serve"


def test_import_leaves_the_heavy_modules_alone():
    code = ("import sys, regiontune.cli.main; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'fastapi', "
            "'regiontune.hub.client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------
# the wrapper on a throwaway app


def _app(raise_: BaseException | None) -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    @command
    def run(name: str = typer.Option("x", "--name"), verbose: bool = VerboseOpt) -> None:
        """A toy command."""
        if raise_ is not None:
            raise raise_
        typer.echo(f"hello {name}")

    @toy.command()
    def other() -> None:  # a second command, so the app keeps the group's layout
        pass

    return toy


@pytest.mark.parametrize("err", [ValueError("bad value"), FileNotFoundError("no file"),
                                 KeyError("no key"), RuntimeError("broke"),
                                 HubError("hub said no")], ids=lambda e: type(e).__name__)
def test_wrapper_turns_known_errors_into_exit_2(err):
    assert isinstance(err, KNOWN_ERRORS)
    text = fails(invoke("run", target=_app(err)), f"error: {err}")
    assert text.count("\n") == 1  # the one line, nothing else


def test_wrapper_passes_other_errors_and_exits_through():
    result = invoke("run", target=_app(TypeError("a bug")))
    assert result.exit_code == 1 and isinstance(result.exception, TypeError)
    result = invoke("run", target=_app(typer.Exit(3)))
    assert result.exit_code == 3 and "error" not in result.output
    result = invoke("run", target=_app(typer.BadParameter("--name: no")))
    assert result.exit_code == 2 and "Invalid value" in result.output


@pytest.mark.parametrize("flags, verbose", [([], False), (["--verbose"], True), (["-v"], True)])
def test_wrapper_sets_up_logging_once(monkeypatch, flags, verbose):
    calls = []
    monkeypatch.setattr(regiontune.cli.common, "setup_logging", calls.append)
    assert ok(invoke("run", "--name", "y", *flags, target=_app(None))) == "hello y\n"
    assert calls == [verbose]
