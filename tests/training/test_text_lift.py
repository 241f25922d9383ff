"""The lift of never-trained items known by their text alone (issue 18,
``core/training/unseen.py: lift_text_items``): chosen on the hold-out within a budget, stored in
the item bias (saved == evaluated), and given to such items added later by growth."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from regiontune.adapters.grow import grow_catalogue
from regiontune.adapters.io import load_adapter, save_adapter
from regiontune.artifacts import ADAPTER_META
from regiontune.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig
from regiontune.data.recipes import load_regions
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import train_region
from regiontune.training.pretrain import pretrain
from regiontune.training.unseen import LIFT_GRID, choose_lift, text_only_mask

TEXT_DATA = DataConfig(recipe="synthetic", regions=["north", "south"], synthetic_scale=0.5)
TEXT_MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         max_len=20, item_text=True)
QUICK = TrainConfig(epochs=2, batch_size=64, lr=5e-3, patience=5, progress=False)


def test_choose_lift_takes_the_largest_lift_within_the_budget():
    """Case 0: a warm target (score 2) with a lifted item at 1 below it; case 1: a lifted
    target (0.5) below a warm item (1.5). A lift of 1 or more ties or passes the warm target
    (ties count against it); past 1 the lifted target comes first."""
    scores = torch.tensor([[2.0, -5.0, -5.0, 1.0], [-5.0, 1.5, -5.0, 0.5]])
    allowed = torch.ones(2, 4, dtype=torch.bool)
    target = torch.tensor([0, 3])
    lifted = torch.tensor([False, False, False, True])
    lift, found = choose_lift(scores, allowed, target, lifted, budget=0.0)
    assert lift == 0.9 and found[0.9][0] == 1.0 and found[1.0][0] < 1.0
    assert found[0.9][1] == pytest.approx(1 / torch.log2(torch.tensor(3.0)).item())
    # at rank 2 the warm target keeps 1/log2(3) = 63% of its NDCG: a 50% budget allows all
    lift, found = choose_lift(scores, allowed, target, lifted, budget=0.5)
    assert lift == LIFT_GRID[-1] and found[lift] == (pytest.approx(0.6309, abs=1e-4), 1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny text-aware backbone (north, south) and island, whose items the backbone never
    had; a third of them are held out of island's training (text-only, never trained) and
    are targets of its hold-out."""
    root = tmp_path_factory.mktemp("lift")
    pretrain(TEXT_DATA, TEXT_MODEL, QUICK, root / "bb")
    island = load_regions(replace(TEXT_DATA, regions=["island"]))["island"]
    cold = set([i for i in island.catalogue if i.startswith("island-")][::3])
    island = replace(island, train={u: [i for i in h if i not in cold]
                                    for u, h in island.train.items()})
    island = replace(island, train={u: h for u, h in island.train.items() if h})
    trained = {i for h in island.train.values() for i in h}
    never = {i for i in island.catalogue if i.startswith("island-") and i not in trained}
    assert cold <= never
    return root, island, never


def adapted(root, island, budget):
    backbone, vocab, _ = load_backbone(root / "bb")
    cfg = AdaptConfig(method="lora", region="island", text_lift_budget=budget)
    return train_region(backbone, vocab, island, cfg, QUICK)


def test_text_only_items_are_lifted_saved_and_grown(setup, tmp_path):
    root, island, cold = setup
    plain, plain_stats = adapted(root, island, 0.0)
    task, stats = adapted(root, island, 1.0)  # a 100% budget: the largest lift of the grid
    mask = text_only_mask(task, island.catalogue, island.train)
    assert {i for i, m in zip(island.catalogue, mask.tolist(), strict=True) if m} == cold
    assert plain_stats["text_lift"] == 0.0 and stats["text_lift"] == LIFT_GRID[-1]
    assert stats["text_only_items"] == len(cold)
    moved = task.item_side.bias.detach() - plain.item_side.bias.detach()
    rows = torch.tensor([task.item_side.catalogue.index(i) for i in sorted(cold)])
    others = torch.ones(len(moved), dtype=torch.bool)
    others[rows] = False
    torch.testing.assert_close(moved[rows], torch.full((len(rows),), LIFT_GRID[-1]),
                               atol=1e-2, rtol=0)  # float16 rounding of the saved bias
    assert float(moved[others].abs().max()) == 0.0
    # evaluated == saved: the lifted bias is stored as the adapter's dtype holds it
    backbone, vocab, bmeta = load_backbone(root / "bb")
    out = tmp_path / "island"
    save_adapter(task, "lora", "island", {"region": "island", "backbone_fingerprint":
                                          bmeta["fingerprint"], **stats}, out)
    loaded = load_adapter(out, backbone, vocab, bmeta["fingerprint"])
    histories = [c.history for c in island.valid[:8]]
    torch.testing.assert_close(task_scores(loaded, histories, island.catalogue),
                               task_scores(task, histories, island.catalogue))
    # growth: a new item known by its text alone starts at the offset plus the lift
    grown = grow_catalogue(out, root / "bb", ["brand-new", "no-text"],
                           texts={"brand-new": "jazz saxophone and trumpet, number 5"})
    record = grown["grown"][-1]
    assert record["bias"] == {"unseen_offset+text_lift": ["brand-new"],
                              "unseen_offset": ["no-text"]}
    regrown = load_adapter(out, *load_backbone(root / "bb")[:2], bmeta["fingerprint"])
    bias = regrown.item_side.bias.detach()
    n = len(regrown.item_side.catalogue)
    offset = json.loads((out / ADAPTER_META).read_text())["unseen_offset"]
    assert float(bias[n - 2]) == pytest.approx(offset + LIFT_GRID[-1], abs=1e-2)
    assert float(bias[n - 1]) == pytest.approx(offset, abs=1e-2)
