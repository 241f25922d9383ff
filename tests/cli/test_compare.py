"""``regiontune compare``: one region's table of the backbone zero-shot, its adapters, other
models (a scratch model) and the tuned classic baselines, on the same test cases."""

from __future__ import annotations

import json

import pytest

from regiontune.cli.compare import weights_size
from tests.cli.helpers import fails, invoke, ok

ROWS = ("backbone (zero-shot)", "lora (island)", "scratch (scratch-cmp)", "popularity",
        "ItemKNN", "EASE")


@pytest.fixture(scope="module")
def scratch_model(workdir, backbone):
    out = workdir / "scratch-cmp"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
              "--method", "scratch", "--epochs", "1", "--set", "train.progress=false"))
    return out


@pytest.fixture(scope="module")
def compared(workdir, backbone, adapter, scratch_model):
    target = workdir / "compare.json"
    text = ok(invoke("compare", "--backbone", backbone[0], "--adapter", adapter[0], "--model",
                     scratch_model, "--region", "island", "--json", target))
    return text, json.loads(target.read_text())


def test_compare_prints_every_row(compared):
    text, _ = compared
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "NDCG@10" in line)
    assert all(col in lines[header] for col in ("HR@10", "MRR", "trainable", "size"))
    names = [line[:len(max(ROWS, key=len))].strip() for line in lines[header + 1:header + 7]]
    assert names == list(ROWS)
    assert "region island" in text and "rows written to" in text


def test_compare_json_rows(compared, backbone, adapter, scratch_model):
    _, report = compared
    assert report["region"] == "island" and report["split"] == "test" and report["k"] == 10
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == list(ROWS)
    users = {r["users"] for r in rows.values()}
    assert users == {report["test_users"]}  # every row on the same test cases
    for row in rows.values():
        assert 0 <= row["ndcg@10"] <= row["hr@10"] <= 1 and 0 <= row["mrr"] <= 1
    zero = rows["backbone (zero-shot)"]
    assert zero["kind"] == "backbone" and zero["trainable_params"] == 0
    assert zero["bytes"] == (backbone[0] / "model.safetensors").stat().st_size
    lora = rows["lora (island)"]
    region_meta = json.loads((adapter[0] / "region.json").read_text())
    assert lora["kind"] == "adapter" and lora["trainable_params"] == region_meta[
        "trainable_params"] and lora["bytes"] == region_meta["adapter_bytes"]
    scratch = rows["scratch (scratch-cmp)"]
    assert scratch["kind"] == "model" and scratch["method"] == "scratch"
    assert (scratch["trainable_params"], scratch["bytes"]) == weights_size(scratch_model)
    assert scratch["trainable_params"] > 0
    # the baselines record the hyper-parameter tuned on the validation hold-out
    assert rows["ItemKNN"]["hyperparameters"]["k_neighbors"] in (20, 50, 100, 200, 500, 1000)
    assert rows["EASE"]["hyperparameters"]["lambda"] > 0
    assert rows["popularity"]["hyperparameters"] == {}
    assert {rows[n]["tuned_on"] for n in ("popularity", "ItemKNN", "EASE")} == {"valid"}


def test_compare_matches_evaluate(compared, backbone, scratch_model, tmp_path):
    """The same protocol as ``evaluate``: the scratch model's row equals its evaluation."""
    _, report = compared
    target = tmp_path / "e.json"
    ok(invoke("evaluate", "--model", scratch_model, "--region", "island", "--json", target))
    evaluated = json.loads(target.read_text())["island"]
    row = next(r for r in report["rows"] if r["name"] == "scratch (scratch-cmp)")
    assert row["ndcg@10"] == pytest.approx(evaluated["ndcg@10"])
    assert row["mrr"] == pytest.approx(evaluated["mrr"])


def test_compare_backbone_and_baselines_alone(backbone):
    text = ok(invoke("compare", "--backbone", backbone[0], "--region", "north"))
    for name in ("backbone (zero-shot)", "popularity", "ItemKNN", "EASE"):
        assert name in text
    assert "rows written" not in text


def test_compare_errors(backbone, adapter, tmp_path):
    fails(invoke("compare", "--backbone", backbone[0], "--region", "atlantis"), "error:",
          "atlantis")
    fails(invoke("compare", "--backbone", backbone[0], "--adapter", adapter[0], "--region",
                 "north"), "error:", "island")
    fails(invoke("compare", "--backbone", tmp_path, "--region", "north"), "error:")
    fails(invoke("compare", "--backbone", backbone[0], "--region", "north", "-k", "0"),
          "error:")
