"""Training a region adapter, for every method of the registry: what trains, what stays frozen,
region-new items, the softmax over untrained items, errors before training."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from regiontune.adapters import (
    METHODS,
    get_method,
)
from regiontune.config import AdaptConfig
from regiontune.data.loading import DataError
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import backbone_fingerprint
from regiontune.training.adapt import adapt, build_region_task, train_region
from tests.adapters.common import (
    ADAPTER_PARAM,
    ALL,
    REGION,
    base_weights,
    fresh_backbone,
    probe_histories,
)
from tests.conftest import TINY_DATA, TINY_TRAIN


@pytest.fixture(scope="module", params=ALL)
def trained(request, tiny_backbone_dir, island):
    """One adapter per method trained with train_region; the backbone's Parameters recorded."""
    method = request.param
    backbone, vocab, meta = fresh_backbone(tiny_backbone_dir)
    before = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    task, stats = train_region(backbone, vocab, island, AdaptConfig(method=method, region=REGION),
                               TINY_TRAIN)
    return {"method": method, "task": task, "stats": stats, "backbone": backbone,
            "before": before, "vocab": vocab, "meta": meta}


@pytest.mark.parametrize("method", ALL)
def test_only_adapter_and_item_side_are_trainable(tiny_backbone, island, method):
    backbone, vocab, _ = tiny_backbone
    original_params = list(backbone.parameters())  # PEFT adds its own to the same tree
    originals = {id(p) for p in original_params}
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method=method, region=REGION), total_steps=10)
    trainable = {n: p for n, p in task.named_parameters() if p.requires_grad}
    item_side = {n for n in trainable if n.startswith("item_side.")}
    assert item_side == {"item_side.lowrank_a", "item_side.lowrank_b", "item_side.bias"}
    rank = task.item_side.rank  # auto: the largest rank within the 5% size budget, >= 1
    assert 1 <= rank <= AdaptConfig().max_item_rank
    assert task.item_side.lowrank_a.shape == (len(island.catalogue), rank)
    others = {n: p for n, p in trainable.items() if n not in item_side}
    assert others, "the adapter has no trainable parameters"
    assert not any(p.requires_grad for p in original_params)
    if method == "full":  # a trainable copy; the shared backbone object stays frozen
        unused = task.body.encoder.get_input_embeddings().weight  # never used: stays frozen
        assert all(p.requires_grad for p in task.body.parameters() if p is not unused)
        assert not unused.requires_grad
        assert not {id(p) for p in task.body.parameters()} & originals
        assert task.body is not backbone
    else:
        assert all(ADAPTER_PARAM[method] in n for n in others), sorted(others)
        assert not {id(p) for p in others.values()} & originals
        # PEFT and our bottleneck keep the very same frozen Parameter objects in base_layer
        assert {id(p) for p in task.body.parameters()} >= originals


def test_backbone_is_bit_identical_after_training(trained, tiny_backbone_dir):
    task, backbone = trained["task"], trained["backbone"]
    assert trained["stats"]["epochs_run"] >= 1 and trained["stats"]["trainable_params"] > 0
    for name, (param, before) in trained["before"].items():
        assert torch.equal(param, before), name
        assert not param.requires_grad, name
    fresh, _, _ = fresh_backbone(tiny_backbone_dir)
    expected = fresh.state_dict()
    if trained["method"] == "full":
        # the shared backbone is untouched (same fingerprint); its trained copy moved
        assert backbone_fingerprint(backbone) == trained["meta"]["fingerprint"]
        shared = {id(p) for p in backbone.parameters()}
        assert not shared & {id(p) for p in task.body.parameters()}  # a copy it trains
        copy = task.body.state_dict()
        moved = any(not torch.equal(copy[k], expected[k]) for k in expected)
        # training keeps the starting point when no epoch beats it on the hold-out
        assert moved == (trained["stats"]["best_epoch"] > 0)
    else:
        base = base_weights(get_method(trained["method"]).base_of(task.body))
        assert base.keys() == expected.keys()
        changed = [k for k in expected if not torch.equal(base[k], expected[k])]
        assert not changed, changed


def test_region_new_items_score_and_learn(trained, tiny_backbone_dir, island):
    task, vocab = trained["task"], trained["vocab"]
    new = task.item_side.new_items
    assert new and all(i.startswith(f"{REGION}-") for i in new)
    assert not any(i in vocab for i in new)
    columns = [island.catalogue.index(i) for i in new]
    histories = probe_histories(island)
    after = task_scores(task, histories, island.catalogue)
    assert torch.isfinite(after).all()
    backbone, fresh_vocab, _ = fresh_backbone(tiny_backbone_dir)
    untrained = build_region_task(backbone, fresh_vocab, island.catalogue,
                                  AdaptConfig(method=trained["method"], region=REGION))
    before = task_scores(untrained, histories, island.catalogue)
    assert torch.isfinite(before).all()
    assert torch.equal(before[:, columns], torch.zeros_like(before[:, columns]))  # no rows yet
    assert not torch.allclose(after[:, columns], before[:, columns])
    # a history made of new items only encodes too (their rows feed the input as well)
    assert not torch.allclose(after[-1], before[-1])


@pytest.mark.parametrize("unseen_as_negatives", [True, False])
def test_items_without_training_interactions_and_the_softmax(tiny_backbone_dir, island,
                                                              unseen_as_negatives):
    # items only a candidate list names (as on WSDM t1): no history holds them
    ghosts = ["ghost-1", "ghost-2"]
    data = replace(island, catalogue=sorted(island.catalogue + ghosts))
    backbone, vocab, _ = fresh_backbone(tiny_backbone_dir)
    # the mechanics of training, not early stopping: the trained weights, whatever the hold-out
    cfg = AdaptConfig(method="lora", region=REGION, unseen_as_negatives=unseen_as_negatives,
                      calibrate_unseen=False, start_as_candidate=False)
    task, _ = train_region(backbone, vocab, data, cfg, TINY_TRAIN)
    side = task.item_side
    rows = [side.catalogue.index(g) for g in ghosts]
    trained_rows = [side.catalogue.index(i) for i in island.train[next(iter(island.train))]]
    assert side.bias[trained_rows].abs().sum() > 0  # the region's own items learn either way
    if unseen_as_negatives:  # every step pushes them down as negatives
        assert (side.bias[rows] < 0).all()
    else:  # the default: left out of the softmax, no gradient ever reached their rows
        assert torch.equal(side.bias[rows], torch.zeros(2))
        assert torch.equal(side.lowrank_a[rows], torch.zeros(2, side.rank))
    scores = task_scores(task, probe_histories(island), data.catalogue)
    assert torch.isfinite(scores).all()  # scoring covers the whole catalogue in both cases


def test_unknown_method_is_a_value_error_listing_methods(tiny_backbone, island, tmp_path):
    backbone, vocab, _ = tiny_backbone
    for call in (lambda: get_method("nope"),
                 lambda: build_region_task(backbone, vocab, island.catalogue,
                                           AdaptConfig(method="nope", region=REGION))):
        with pytest.raises(ValueError, match="nope") as err:
            call()
        assert all(m in str(err.value) for m in METHODS)
    with pytest.raises(ValueError, match="unknown adapter method") as err:
        adapt(tmp_path / "no-backbone", TINY_DATA, AdaptConfig(method="nope", region=REGION),
              TINY_TRAIN, tmp_path / "out")
    assert all(m in str(err.value) for m in METHODS)


def test_unknown_region_is_a_data_error_listing_regions(tiny_backbone_dir, tiny_regions,
                                                        tmp_path):
    with pytest.raises(DataError, match="atlantis") as err:
        adapt(tiny_backbone_dir, TINY_DATA, AdaptConfig(method="lora", region="atlantis"),
              TINY_TRAIN, tmp_path / "out")
    assert all(r in str(err.value) for r in tiny_regions)
    assert not (tmp_path / "out").exists()


# -- saving and loading -----------------------------------------------------------------------

