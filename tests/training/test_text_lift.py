"""The lift and text prior of never-trained items known by their text alone (issue 18,
``core/training/unseen.py: lift_text_items``): chosen on the hold-out within a budget, stored in
the item bias and the item side (saved == evaluated), and given to such items added later by
growth, in the library and in serving."""

from __future__ import annotations

import json

import pytest
import torch

from regiontune.adapters.grow import grow_catalogue
from regiontune.adapters.io import load_adapter, save_adapter
from regiontune.artifacts import ADAPTER_META
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import load_backbone
from regiontune.model.textenc import TextEncoder
from regiontune.serving.recommender import Recommender
from regiontune.training.adapt import train_region
from regiontune.training.unseen import (
    LIFT_GRID,
    catalogue_text,
    choose_lift,
    lift_text_items,
    popularity_prior,
    text_only_mask,
)
from tests.conftest import TEXT_TRAIN
from tests.serving.recommender_common import assert_matches

QUICK = TEXT_TRAIN


def test_choose_lift_ranks_the_lifted_targets_best_within_the_budget():
    """Case 0: a warm target (score 2) with a lifted item at 1 below it; case 1: a lifted
    target (0.5) below a warm item (1.5). A lift of 1 or more ties or passes the warm target
    (ties count against it); past 1 the lifted target comes first."""
    scores = torch.tensor([[2.0, -5.0, -5.0, 1.0], [-5.0, 1.5, -5.0, 0.5]])
    allowed = torch.ones(2, 4, dtype=torch.bool)
    target = torch.tensor([0, 3])
    lifted = torch.tensor([False, False, False, True])
    # no budget: the lifted target stays second; among the ties, the largest lift
    (scale, lift), found = choose_lift(scores, allowed, target, lifted, budget=0.0)
    assert (scale, lift) == (0.0, 0.9) and found[(0.0, 0.9)][0] == 1.0
    assert found[(0.0, 1.0)][0] < 1.0
    assert found[(0.0, 0.9)][1] == pytest.approx(1 / torch.log2(torch.tensor(3.0)).item())
    # at rank 2 the warm target keeps 1/log2(3) = 63% of its NDCG: a 50% budget lets the
    # lifted target come first (from a lift of 1.1 on); ties: the largest lift
    (scale, lift), found = choose_lift(scores, allowed, target, lifted, budget=0.5)
    assert (scale, lift) == (0.0, LIFT_GRID[-1])
    assert found[(scale, lift)] == (pytest.approx(0.6309, abs=1e-4), 1.0)
    # a prior that helps without a lift: the smallest scale reaching the best
    prior = torch.tensor([0.0, 0.0, 0.0, 2.0])
    (scale, lift), _ = choose_lift(scores, allowed, target, lifted, 0.5, (0.0,), prior,
                                   (0.0, 0.25, 0.5, 1.0))
    assert (scale, lift) == (1.0, 0.0)  # 0.5 + 2 passes 1.5; 0.5 + 1 only ties


def test_popularity_prior_is_a_standardised_ridge_prediction():
    torch.manual_seed(0)
    vectors = torch.randn(200, 16)
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    counts = torch.expm1(3 + 2 * unit[:, 0]).round()  # log-popularity planted on one axis
    weight, bias = popularity_prior(vectors, counts, ridge=0.1)
    z = unit @ weight + bias
    assert abs(float(z.mean())) < 1e-4 and float(z.std()) == pytest.approx(1.0, abs=1e-4)
    assert float(torch.corrcoef(torch.stack([z, torch.log1p(counts)]))[0, 1]) > 0.95


@pytest.fixture(scope="module")
def setup(text_island):
    return text_island


def adapted(root, island, budget):
    backbone, vocab, _ = load_backbone(root / "bb")
    cfg = AdaptConfig(method="lora", region="island", text_lift_budget=budget)
    return train_region(backbone, vocab, island, cfg, QUICK)


def test_adapt_records_the_text_only_items(setup):
    root, island, cold = setup
    task, stats = adapted(root, island, 0.0)  # no budget: no lift, no prior
    assert stats["text_lift"] == 0.0 and stats["text_prior_scale"] == 0.0
    assert stats["text_only_items"] == len(cold)
    mask = text_only_mask(task, island.catalogue, island.train)
    assert {i for i, m in zip(island.catalogue, mask.tolist(), strict=True) if m} == cold
    assert getattr(task.item_side, "text_prior", None) is None


def test_text_prior_is_saved_served_and_grown(setup, tmp_path, monkeypatch):
    """A chosen prior (forced here: scale 1) moves exactly the text-only items' bias, by the
    stored prior of their text (saved == evaluated); growth, in serving and in the library,
    gives an item added with its text alone the offset plus the prior of its text."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root, island, cold = setup
    task, stats = adapted(root, island, 0.0)
    before = task.item_side.bias.detach().clone()
    info = lift_text_items(task, island.catalogue, island.train, island.valid, budget=1.0,
                           dtype=torch.float16, scales=(1.0,))
    assert info["text_prior_scale"] == 1.0
    prior = task.item_side.text_prior
    rows = torch.tensor([task.item_side.catalogue.index(i) for i in sorted(cold)])
    vectors, has = catalogue_text(task, sorted(cold))
    assert bool(has.all())
    moved = task.item_side.bias.detach() - before
    torch.testing.assert_close(moved[rows], prior(vectors), atol=2e-2, rtol=0)
    others = torch.ones(len(moved), dtype=torch.bool)
    others[rows] = False
    assert float(moved[others].abs().max()) == 0.0 and float(moved[rows].std()) > 0
    backbone, vocab, bmeta = load_backbone(root / "bb")
    meta = {"region": "island", "backbone_fingerprint": bmeta["fingerprint"], **stats, **info}
    out = tmp_path / "adapters" / "island"
    assert save_adapter(task, "lora", "island", meta, out, "float16")["text_prior"] == \
        vectors.shape[1]
    loaded = load_adapter(out, backbone, vocab, bmeta["fingerprint"])
    histories = [c.history for c in island.valid[:8]]
    torch.testing.assert_close(task_scores(loaded, histories, island.catalogue),
                               task_scores(task, histories, island.catalogue))
    # serving: grown in memory and persisted; the reloaded adapter scores as served
    text = {"brand-new": "jazz saxophone and trumpet, number 5"}
    rec = Recommender.from_dirs(root / "bb", [out], unknown_region="error")
    grown = rec.grow("island", ["brand-new", "no-text"], texts=text, persist_to=out)
    assert grown["bias"] == {"unseen_offset+text_prior": ["brand-new"],
                             "unseen_offset": ["no-text"]}
    regrown = load_adapter(out, *load_backbone(root / "bb")[:2], bmeta["fingerprint"])
    assert_matches(rec.recommend([histories[0]], ["island"], k=10_000, exclude_seen=False)[0],
                   regrown, histories[0])
    offset = json.loads((out / ADAPTER_META).read_text())["unseen_offset"]
    new_vector = TextEncoder().encode(list(text.values()), progress=False)
    bias = regrown.item_side.bias.detach()
    n = len(regrown.item_side.catalogue)
    assert float(bias[n - 2]) == pytest.approx(offset + float(prior(new_vector)[0]), abs=2e-2)
    assert float(bias[n - 1]) == pytest.approx(offset, abs=1e-2)
    # the library's growth gives the same rows
    copy = tmp_path / "copy"
    save_adapter(task, "lora", "island", meta, copy, "float16")
    record = grow_catalogue(copy, root / "bb", ["brand-new", "no-text"], texts=text)
    assert record["grown"][-1]["bias"] == grown["bias"]
    again = load_adapter(copy, *load_backbone(root / "bb")[:2], bmeta["fingerprint"])
    torch.testing.assert_close(again.item_side.bias.detach(), bias)
