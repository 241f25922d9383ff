"""Every command ends a known error with ``error: ...`` and exit code 2, never a traceback."""

from __future__ import annotations

import regiontune.cli.demo
from tests.cli.helpers import TINY, fails, invoke, ok


def test_error_unknown_region(workdir, backbone):
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "atlantis",
                 "--out", workdir / "x", "--epochs", "1"), "atlantis", "island")
    fails(invoke("evaluate", "--model", backbone[0], "--region", "atlantis",
                 "--json", workdir / "x.json"), "atlantis")
    fails(invoke("pretrain", "--out", workdir / "y", "--regions", "atlantis", *TINY),
          "atlantis")


def test_error_missing_backbone(workdir):
    missing = workdir / "no-such-backbone"
    fails(invoke("adapt", "--backbone", missing, "--region", "island", "--out", workdir / "x"),
          str(missing))
    fails(invoke("evaluate", "--model", missing), str(missing))
    fails(invoke("recommend", "--model", missing, "--region", "island", "--history", "i1"),
          str(missing))


def test_serve_adapter_needs_region(backbone):
    fails(invoke("serve", "--backbone", backbone[0], "--adapter", "no-equals-sign"),
          "error: --adapter takes REGION=SOURCE")


def test_push_pull_errors_before_the_network(workdir, adapter):
    missing = workdir / "no-such-adapter"
    fails(invoke("push", missing, "--repo", "acme/x"), "error:", str(missing))
    # a commit is no branch to push to: the hub client's own error (a HubError)
    fails(invoke("push", adapter[0], "--repo", "acme/x", "--revision", "0" * 40),
          "error:", "branch")
    fails(invoke("pull", "not/a/repo id", "--out", workdir / "pulled"), "error:")
    assert not (workdir / "pulled").exists()


def test_demo_reports_known_errors(monkeypatch, tmp_path):
    def broken(out, epochs):
        raise FileNotFoundError(f"{out}: cannot write here")

    monkeypatch.setattr(regiontune.cli.demo, "run_demo", broken)
    fails(invoke("demo", "--out", tmp_path / "d"), f"error: {tmp_path / 'd'}: cannot write")


def test_demo_prints_its_table(monkeypatch, tmp_path):
    rows = [{"region": "north", "users": 40, "pretrained_on": True, "backbone": 0.25,
             "popularity": 0.125},
            {"region": "island", "users": 5, "pretrained_on": False, "backbone": 0.1,
             "popularity": 0.05, "lora": 0.3, "lora_kib": 12.0}]
    calls = []
    monkeypatch.setattr(regiontune.cli.demo, "run_demo",
                        lambda out, epochs: calls.append((out, epochs)) or rows)
    text = ok(invoke("demo", "--out", tmp_path / "d", "--epochs", "3"))
    assert calls == [(tmp_path / "d", 3)]
    assert regiontune.cli.demo.format_table(rows) in text
    assert f"backbone: {tmp_path / 'd' / 'backbone'}" in text
