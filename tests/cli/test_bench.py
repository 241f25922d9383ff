"""``regiontune bench`` finds the source checkout and runs the suite runner there."""

from __future__ import annotations

import json

import pytest

from tests.cli.helpers import fails, invoke, ok

FAKE_RUNNER = """import json, os, sys
with open(os.environ["BENCH_ARGS_OUT"], "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, f)
"""


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "__init__.py").write_text("")
    (root / "benchmarks" / "run.py").write_text(FAKE_RUNNER)
    (root / "pyproject.toml").write_text('[project]\nname = "regiontune"\n')
    monkeypatch.setenv("BENCH_ARGS_OUT", str(tmp_path / "args.json"))
    return root


def test_bench_runs_the_runner_of_the_checkout_with_the_options_passed_on(checkout, tmp_path):
    ok(invoke("bench", "wsdm", "--repo", checkout, "--quick", "--regions", "t1"))
    seen = json.loads((tmp_path / "args.json").read_text())
    assert seen["argv"] == ["wsdm", "--quick", "--regions", "t1"]
    assert seen["cwd"] == str(checkout.resolve())


def test_bench_finds_the_checkout_above_the_current_folder(checkout, tmp_path, monkeypatch):
    inner = checkout / "runs" / "deep"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    ok(invoke("bench", "ml100k"))
    assert json.loads((tmp_path / "args.json").read_text())["argv"] == ["ml100k"]


def test_bench_outside_a_checkout_says_where_the_benchmarks_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fails(invoke("bench", "wsdm"), "no regiontune source checkout", "--repo")
