"""The merge study's pieces that need no WSDM data: weights, report rows, verdicts."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import merge


def test_source_share_weights_are_each_sources_share_in_the_target(tmp_path):
    paths = {}
    for name, catalogue in (("a", ["x", "y", "z", "w"]), ("b", ["x", "q"])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "region.json").write_text(json.dumps({"catalogue": catalogue}))
        paths[name] = tmp_path / name
    assert merge.source_share_weights(paths, ["x", "y", "new"]) == pytest.approx([0.5, 0.5])
    assert merge.source_share_weights(paths, ["q"]) == pytest.approx([0.0, 0.5])


def test_ablations_keep_their_names_and_stay_out_of_the_verdict():
    base = {"region": "t2", "hr@10": 0.3, "interactions": 0}
    records = [{**base, "method": "zero-shot", "ndcg@10": 0.25, "holdout_ndcg@10": 0.24},
               {**base, "method": "merged", "weights": "equal", "ndcg@10": 0.251,
                "new_item_embedding": "zero"},
               {**base, "method": merge.OMIT, "weights": "equal", "ndcg@10": 0.30,
                "new_item_embedding": "omit", "holdout_ndcg@10": 0.2488}]
    text = merge.to_markdown(records, ["s1"])
    assert f"| t2 | {merge.OMIT} | equal, new items: left out |" in text
    assert "0.2488" in text and "| 0.2400 |" in text  # the hold-out column
    # the verdict reads the merge as shipped, not the better-looking ablation
    assert "the best merge (equal weights, 0.2510) ties with the bare backbone" in text


@pytest.mark.parametrize("part", ["body only", "item side only", "item bias only"])
def test_merge_parts_keep_only_the_named_part(tiny_backbone_dir, tiny_regions, part):
    from benchmarks.merge_parts import keep_only
    from regiontune.config import AdaptConfig
    from regiontune.model.backbone import load_backbone
    from regiontune.training.adapt import build_region_task
    from tests.adapters.common import perturb

    backbone, vocab, _ = load_backbone(tiny_backbone_dir)
    data = tiny_regions["island"]
    task = build_region_task(backbone, vocab, data.catalogue,
                             AdaptConfig(method="lora", region="island", item_rank=3))
    perturb(task, seed=3)
    lora_b = [p for n, p in task.body.named_parameters() if "lora_B" in n]
    side = task.item_side
    bias, rows = side.bias.detach().clone(), side.lowrank_a.detach().clone()
    keep_only(task, part)
    assert any(p.any() for p in lora_b) == (part == "body only")
    assert side.bias.any() == (part != "body only")
    if part != "body only":
        assert torch.equal(side.bias, bias)
    assert side.lowrank_a.any() == (part == "item side only")
    if part == "item side only":
        assert torch.equal(side.lowrank_a, rows)
