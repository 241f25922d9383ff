"""Model cards: what they say, the YAML front matter the Hub renders, no host paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from regiontune.artifacts.cards import adapter_card, backbone_card, write_card
from tests.hub.artefacts import make_adapter, make_backbone


def test_cards(tmp_path):
    meta = json.loads((make_adapter(tmp_path) / "region.json").read_text())
    card = adapter_card({**meta, "backbone_repo": "acme/backbone"})
    assert card.data.library_name == "regiontune"
    assert card.data.base_model == "acme/backbone"
    assert card.data.tags == ["recommendation", "region-adapter", "lora", "regiontune"]
    for text in ("region `de`", "0.6100", "leave-one-out", "regiontune recommend",
                 "from regiontune.adapters import load_adapter", "PeftModel.from_pretrained",
                 "3 items (1 unknown to the backbone)", "sha256:aaa"):
        assert text in card.text, text
    assert "i1" not in card.text  # the catalogue's size only
    bare = adapter_card({})  # every key may be missing
    assert bare.data.library_name == "regiontune" and bare.data.base_model is None
    assert "PeftModel" not in adapter_card({"method": "prefix"}).text
    bb = backbone_card(json.loads((make_backbone(tmp_path) / "regiontune.json").read_text()))
    assert bb.data.tags == ["recommendation", "regiontune", "backbone"]
    assert "sha256:aaa" in bb.text and "| us | 0.4000 |" in bb.text
    path = write_card(tmp_path / "adapter", meta, "adapter")
    assert path.read_text().startswith("---\nlibrary_name: regiontune\n")
    with pytest.raises(ValueError):
        write_card(tmp_path, meta, "dataset")


def front_matter(path: Path) -> dict:
    """The YAML front matter of a card file, parsed as the Hub parses it."""
    import yaml
    from huggingface_hub import ModelCard

    text = path.read_text()
    assert text.startswith("---\n")
    raw = yaml.safe_load(text.split("---\n", 2)[1])
    assert ModelCard.load(path).data.to_dict() == raw  # huggingface_hub reads it back whole
    return raw


def test_card_front_matter_renders_on_the_hub(tmp_path):
    meta = json.loads((make_adapter(tmp_path) / "region.json").read_text())
    meta["backbone_repo"] = "acme/backbone"
    raw = front_matter(write_card(tmp_path / "a1", meta, "adapter"))
    assert raw["base_model"] == "acme/backbone" and raw["license"] == "apache-2.0"
    assert raw["library_name"] == "regiontune" and "region-adapter" in raw["tags"]
    assert "pipeline_tag" not in raw  # the Hub has no recommendation pipeline
    assert "datasets" not in raw  # "synthetic" is a built-in recipe, not a Hub dataset id
    [entry] = raw["model-index"]
    [result] = entry["results"]
    assert result["task"]["type"] == "recommendation"
    assert result["dataset"] == {"name": "synthetic (de)", "type": "synthetic", "config": "de",
                                 "split": "test"}
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        "ndcg@10": 0.61, "hr@10": 0.8, "mrr": 0.5}
    assert {m["name"] for m in result["metrics"]} == {"NDCG@10", "HR@10", "MRR"}
    # no backbone repo: base_model omitted, the fingerprint is in the text; a public data set
    # id and the metadata's own licence are used
    local = {**meta, "backbone_repo": None, "dataset": "acme/clicks", "license": "MIT"}
    path = write_card(tmp_path / "a2", local, "adapter")
    raw = front_matter(path)
    assert "base_model" not in raw and "sha256:aaa" in path.read_text()
    assert raw["datasets"] == ["acme/clicks"] and raw["license"] == "mit"
    bare = front_matter(write_card(tmp_path / "a3", {}, "adapter"))
    assert "model-index" not in bare and bare["license"] == "apache-2.0"
    bmeta = json.loads((make_backbone(tmp_path) / "regiontune.json").read_text())
    raw = front_matter(write_card(tmp_path / "b", bmeta, "backbone"))
    assert "base_model" not in raw and raw["license"] == "apache-2.0"
    [entry] = raw["model-index"]
    got = {(r["dataset"]["config"], m["type"]): m["value"]
           for r in entry["results"] for m in r["metrics"]}
    assert got == {("us", "ndcg@10"): 0.4, ("uk", "ndcg@10"): 0.3}


def test_cards_hold_no_absolute_paths(tmp_path):
    meta = json.loads((make_adapter(tmp_path) / "region.json").read_text())
    meta.update(backbone_path="/home/alice/models/backbone", dataset="/home/alice/data/clicks",
                config={"data": {"data_dir": "/home/alice/data", "recipe": "files"},
                        "note": "read from '/home/alice/data/x.csv' on C:\\Users\\al\\d"},
                metrics={"ndcg@10": 0.5, "source": "/home/alice/eval.json"})
    bmeta = json.loads((make_backbone(tmp_path) / "regiontune.json").read_text())
    bmeta.update(data={"recipe": "files", "data_dir": "/home/alice/data"},
                 config={"data_dir": "/home/alice/data", "hidden_size": 8})
    for card in (adapter_card(meta), backbone_card(bmeta)):
        text = str(card)
        assert "/home/" not in text and "alice" not in text and "Users" not in text, text
    assert "clicks" in adapter_card(meta).text  # shown by its last component


def test_adapter_card_shows_lineage_and_merge_provenance():
    refreshed = adapter_card({
        "region": "de", "method": "lora", "lineage": {
            "parent": {"name": "de-v1", "region": "de", "trained_at": "2026-11-01T00:00:00Z",
                       "weights_sha256": "ab" * 32, "path": "../de-v1"},
            "generation": 2, "data_period": {"start": "2026-11-01", "end": "2026-11-30"},
            "interactions": 1234, "kept_items": 50, "new_items": 7,
            "metrics_before": {"ndcg@10": 0.21}, "metrics_after": {"ndcg@10": 0.25},
            "context": {"users": 40, "items": 900}, "new_share": 0.125}})
    for text in ("## Lineage", "`de-v1`", "| Generation | 2 |", "1234 interactions, 2026-11-01",
                 "50 kept, 7 new", "0.2100 before, 0.2500 after",
                 "| Context | 900 earlier items of 40 users read ahead of the new data |",
                 "| New data's share | 12% of all data so far |"):
        assert text in refreshed.text, text
    merged = adapter_card({"region": "fr", "method": "lora", "merged_from": [
        {"region": "de", "weight": 0.75, "path": "de", "method": "lora"},
        {"region": "it", "weight": 0.25, "path": "it", "method": "lora"}]})
    assert "## Merged from" in merged.text and "| `de` | 0.7500 (`de`, lora) |" in merged.text
    grown = adapter_card({"region": "de", "method": "lora", "grown": [
        {"items": ["n1", "n2"], "cooccurrences": 5, "at": "2026-11-30T08:00:00Z"}]})
    assert "## Catalogue growth" in grown.text
    assert "| 2026-11-30T08:00:00Z | 2 item(s), 5 co-occurrence(s) |" in grown.text
    plain = adapter_card({"region": "de", "method": "lora"})
    assert "## Lineage" not in plain.text and "## Merged from" not in plain.text
    assert "## Catalogue growth" not in plain.text


def test_adapter_card_says_what_the_item_item_part_was_fitted_on():
    pooled = adapter_card({"neighbours": 15, "item_item_weight": 178.4,
                           "item_item_pool": {"weight": 0.5, "histories": 53924}}).text
    assert "15 EASE neighbours an item, blend weight 178" in pooled
    assert "53,924 histories of the backbone's other regions at weight 0.5" in pooled
    own = adapter_card({"neighbours": 4, "item_item_weight": 2.0, "item_item_pool": {
        "weight": 0.0, "unavailable": "gone"}}).text
    assert "region's own histories" in own and "other regions" not in own
    # no part (dropped on the hold-out: 0 neighbours): no row
    assert "Item-item part" not in adapter_card({"neighbours": 0}).text
