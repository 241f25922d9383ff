"""``regiontune evaluate`` and ``regiontune recommend`` on the CLI-made backbone and adapter."""

from __future__ import annotations

import json
import re

from tests.cli.helpers import RANKED, fails, invoke, ok


def test_evaluate_prints_table_and_writes_json(workdir, backbone, adapter):
    target = workdir / "eval.json"
    text = ok(invoke("evaluate", "--model", backbone[0], "--adapter", adapter[0],
                     "--json", target))
    assert "NDCG@10" in text and re.search(r"^island\s+full-ranking\s+[\d.]+", text, re.M)
    results = json.loads(target.read_text())
    assert set(results) == {"island"}
    row = results["island"]
    assert 0 <= row["ndcg@10"] <= 1 and row["users"] > 0
    assert row["split"] == "test" and row["adapter"] == str(adapter[0])


def test_evaluate_backbone_only_valid_split(workdir, backbone):
    target = workdir / "eval-bb.json"
    text = ok(invoke("evaluate", "--model", backbone[0], "--region", "north",
                     "--split", "valid", "-k", "5", "--json", target))
    assert "north" in text
    row = json.loads(target.read_text())["north"]
    assert row["split"] == "valid" and row["adapter"] is None and "ndcg@5" in row


def test_evaluate_table_follows_k(workdir, backbone):
    target = workdir / "eval-k5.json"
    text = ok(invoke("evaluate", "--model", backbone[0], "--region", "south", "-k", "5",
                     "--json", target))
    row = json.loads(target.read_text())["south"]
    assert "NDCG@5" in text and "HR@5" in text
    line = next(x for x in text.splitlines() if x.startswith("south"))
    assert f"{row['ndcg@5']:.4f}" in line and f"{row['hr@5']:.4f}" in line


def test_error_bad_split(workdir, backbone):
    fails(invoke("evaluate", "--model", backbone[0], "--region", "south", "--split", "bogus",
                 "--json", workdir / "x.json"), "error: --split 'bogus'")
    assert not (workdir / "x.json").exists()


def _items(backbone_dir) -> list[str]:
    return json.loads((backbone_dir / "items.json").read_text())["items"]


def test_recommend_top_k(backbone):
    history = _items(backbone[0])[:2]
    text = ok(invoke("recommend", "--model", backbone[0], "--region", "island",
                     "--history", ",".join(history), "-k", "5"))
    ranked = RANKED.findall(text)
    assert [int(r[0]) for r in ranked] == [1, 2, 3, 4, 5]
    assert not {r[1] for r in ranked} & set(history)  # seen items are not recommended
    scores = [float(r[2]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert "backbone" in text and "unknown" not in text


def test_recommend_lists_unknown_items(backbone):
    real = _items(backbone[0])[0]
    text = ok(invoke("recommend", "--model", backbone[0], "--region", "island",
                     "--history", f"{real},no-such-item", "-k", "5"))
    assert "ignored unknown items: no-such-item" in text
    assert len(RANKED.findall(text)) == 5


def test_recommend_with_adapter(backbone, adapter):
    catalogue = json.loads((adapter[0] / "region.json").read_text())["catalogue"]
    text = ok(invoke("recommend", "--model", backbone[0], "--adapter", adapter[0],
                     "--region", "island", "--history", ",".join(catalogue[:2]), "-k", "5"))
    assert "served by the adapter" in text
    ranked = RANKED.findall(text)
    assert len(ranked) == 5
    assert {r[1] for r in ranked} <= set(catalogue) - set(catalogue[:2])


def test_error_k_zero(backbone):
    fails(invoke("recommend", "--model", backbone[0], "--region", "island",
                 "--history", "i1", "-k", "0"), "error: -k must be positive")
