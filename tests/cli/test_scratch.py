"""``regiontune adapt --method scratch``: the backbone's architecture trained from random weights
on one region alone, written as a model directory that ``evaluate --model`` reads."""

from __future__ import annotations

import json

import pytest

from regiontune.model.backbone import load_backbone
from tests.cli.helpers import fails, invoke, ok

FAST = ["--epochs", "2", "--set", "train.progress=false"]


def _scratch(backbone_dir, out, *extra):
    return invoke("adapt", "--backbone", backbone_dir, "--region", "island", "--out", out,
                  "--method", "scratch", *FAST, *extra)


@pytest.fixture(scope="module")
def scratch(workdir, backbone):
    out = workdir / "scratch-island"
    return out, ok(_scratch(backbone[0], out))


def test_scratch_writes_a_model_directory(scratch, backbone):
    out, text = scratch
    for name in ("config.json", "model.safetensors", "items.json", "regiontune.json"):
        assert (out / name).is_file(), name
    assert not (out / "region.json").exists()  # a model, not an adapter
    assert "scratch model (" in text and f"written to {out}" in text
    assert f"regiontune evaluate --model {out} --region island" in " ".join(text.split())
    model, vocab, meta = load_backbone(out)
    bmeta = json.loads((backbone[0] / "regiontune.json").read_text())
    assert meta["kind"] == "backbone" and meta["regions"] == ["island"]
    assert meta["scratch"]["method"] == "scratch"
    assert meta["scratch"]["architecture_of"]["fingerprint"] == bmeta["fingerprint"]
    # the same architecture as the backbone, its vocabulary the region's items alone
    assert meta["config"]["model"] == bmeta["config"]["model"]
    assert model.config.hidden_size == 16
    assert meta["config"]["data"]["regions"] == ["island"]
    assert meta["config"]["train"]["epochs"] == 2
    assert meta["n_items"] == len(vocab) == meta["data"]["island"]["items"]
    assert meta["train"]["fraction"] == 1.0 and "island" in meta["metrics"]


def test_evaluate_reads_the_scratch_model(scratch, tmp_path):
    out, _ = scratch
    target = tmp_path / "m.json"
    text = ok(invoke("evaluate", "--model", out, "--region", "island", "--json", target))
    assert "island" in text
    metrics = json.loads(target.read_text())["island"]
    assert metrics["adapter"] is None and 0 <= metrics["ndcg@10"] <= 1


def test_scratch_fraction_trains_on_fewer_users(scratch, backbone, workdir):
    full = json.loads((scratch[0] / "regiontune.json").read_text())
    out = workdir / "scratch-half"
    text = ok(_scratch(backbone[0], out, "--fraction", "0.5"))
    half = json.loads((out / "regiontune.json").read_text())
    assert half["train"]["fraction"] == 0.5
    users, all_users = half["data"]["island"]["users"], full["data"]["island"]["users"]
    assert users == max(1, round(all_users * 0.5)) < all_users
    assert f"{users:,} training users of island" in text
    # evaluation keeps every user
    assert half["data"]["island"]["test"] == full["data"]["island"]["test"]
    assert half["metrics"]["island"]["users"] == full["metrics"]["island"]["users"]


def test_scratch_model_settings_can_be_overridden(backbone, tmp_path):
    out = tmp_path / "wide"
    ok(_scratch(backbone[0], out, "--epochs", "1", "--set", "model.hidden_size=8"))
    assert json.loads((out / "regiontune.json").read_text())["config"]["model"][
        "hidden_size"] == 8


def test_scratch_errors(backbone, tmp_path):
    fails(_scratch(backbone[0], tmp_path / "x", "--option", "r=4"), "error:", "--option")
    fails(_scratch(backbone[0], tmp_path / "y", "--fraction", "0"), "error:", "fraction")
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "atlantis", "--out",
                 tmp_path / "z", "--method", "scratch", *FAST), "error:", "atlantis")
    fails(_scratch(tmp_path, tmp_path / "w"), "error:")
    assert not (tmp_path / "z").exists()


def test_adapt_help_lists_scratch():
    assert "scratch" in ok(invoke("adapt", "--help"))
