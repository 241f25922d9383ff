"""The item-item part's pool (``AdaptConfig.neighbour_pool``, training/pool.py): the
backbone's other pretraining regions' histories, reloaded from what its metadata records."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import replace

import pytest
import torch

from regiontune.artifacts import ADAPTER_META, BACKBONE_META
from regiontune.config import AdaptConfig, DataConfig
from regiontune.data.recipes import load_regions
from regiontune.training.adapt import adapt, train_region
from regiontune.training.pool import PoolUnavailable, backbone_pool, region_pool
from tests.conftest import PRETRAIN_REGIONS, TINY_DATA, TINY_TRAIN

ONE_EPOCH = replace(TINY_TRAIN, epochs=1)


@pytest.fixture(scope="module")
def bmeta(tiny_backbone_dir):
    return json.loads((tiny_backbone_dir / BACKBONE_META).read_text())


def test_the_pool_is_the_backbones_other_regions_training_histories(bmeta):
    pretrained = load_regions(replace(TINY_DATA, regions=PRETRAIN_REGIONS))
    every = sorted(map(tuple, (h for d in pretrained.values() for h in d.train.values())))
    assert sorted(map(tuple, backbone_pool(bmeta, "island"))) == every
    # the region being adapted is left out: its own data is the adapter's
    without_north = sorted(map(tuple, (h for name, d in pretrained.items() if name != "north"
                                       for h in d.train.values())))
    assert sorted(map(tuple, backbone_pool(bmeta, "north"))) == without_north


def test_no_pool_at_weight_zero_and_a_warning_when_the_data_is_gone(bmeta, caplog):
    assert region_pool(bmeta, "island", 0.0) == ([], {"weight": 0.0})
    gone = {**bmeta, "config": {**bmeta["config"], "data": {
        **bmeta["config"]["data"], "recipe": "files", "files": ["/nowhere/regions.csv"]}}}
    with pytest.raises(PoolUnavailable, match="regions.csv"):
        backbone_pool(gone, "island")
    caplog.set_level(logging.WARNING)
    histories, record = region_pool(gone, "island", 0.5)
    assert histories == [] and record["weight"] == 0.0
    assert "regions.csv" in record["unavailable"] and "/nowhere" not in record["unavailable"]
    assert "neighbour_pool 0" in caplog.text
    with pytest.raises(PoolUnavailable, match="no pretraining data configuration"):
        backbone_pool({"regions": ["north"]}, "island")


def test_adapt_tries_the_part_with_and_without_the_pool_and_keeps_the_better(
        tiny_backbone_dir, tmp_path):
    data = DataConfig(**{**TINY_DATA.__dict__})
    adapt(tiny_backbone_dir, data, AdaptConfig(region="island", neighbours=4),
          ONE_EPOCH, tmp_path / "pooled")
    alone = adapt(tiny_backbone_dir, data,
                  AdaptConfig(region="island", neighbours=4, neighbour_pool=0.0),
                  ONE_EPOCH, tmp_path / "alone")
    saved = json.loads((tmp_path / "pooled" / ADAPTER_META).read_text())
    record = saved["item_item_pool"]
    tried = record["holdout_ndcg@10"]
    assert set(tried) == {"0.0", "0.5"} and AdaptConfig().neighbour_pool == 0.5
    # the kept one ranks the hold-out best (ties: the region's own), and is what is served
    assert record["weight"] == (0.5 if tried["0.5"] > tried["0.0"] else 0.0)
    assert tried[str(record["weight"])] == max(saved["item_item_holdout_ndcg@10"].values())
    pool_size = len(backbone_pool(json.loads((tiny_backbone_dir / BACKBONE_META).read_text()),
                                  "island"))
    assert record["histories"] == (pool_size if record["weight"] else 0)
    # without a pool only the region's own is fitted: the same as the pooled run's "0.0"
    assert alone["item_item_pool"] == {"weight": 0.0, "histories": 0,
                                       "holdout_ndcg@10": {"0.0": tried["0.0"]}}


def test_a_negative_pool_weight_is_refused(tiny_backbone, tiny_regions):
    backbone, vocab, _ = tiny_backbone
    with pytest.raises(ValueError, match="neighbour_pool must be >= 0"):
        train_region(backbone, vocab, tiny_regions["island"],
                     AdaptConfig(region="island", neighbour_pool=-1), ONE_EPOCH)


def test_a_misleading_pool_loses_and_the_regions_own_part_is_served(tiny_backbone,
                                                                     tiny_regions):
    data = tiny_regions["island"]
    items = sorted(data.catalogue)
    # each item paired with a far-away one, many times over: co-occurrence island never shows
    noise = [[a, items[(i * 7 + 3) % len(items)]] for i, a in enumerate(items)] * 200
    cfg = AdaptConfig(region="island", neighbours=4)

    def fitted(pool, weight):
        backbone, vocab, _ = copy.deepcopy(tiny_backbone)
        task, stats = train_region(backbone, vocab, data,
                                   replace(cfg, neighbour_pool=weight), ONE_EPOCH,
                                   pool=(pool, {}) if pool else None)
        return task.item_item.neighbours.clone(), stats

    misled, stats = fitted(noise, 0.5)
    own, own_stats = fitted(None, 0.0)
    tried = stats["item_item_pool"]["holdout_ndcg@10"]
    assert tried["0.5"] < tried["0.0"] == own_stats["item_item_pool"]["holdout_ndcg@10"]["0.0"]
    assert stats["item_item_pool"]["weight"] == 0.0
    assert torch.equal(misled, own)  # the pool's fit (the last one made) was not kept


def test_adapt_records_why_the_pool_was_not_there(tiny_backbone_dir, tmp_path):
    moved = tmp_path / "bb"
    shutil.copytree(tiny_backbone_dir, moved)
    meta = json.loads((moved / BACKBONE_META).read_text())
    meta["config"]["data"] = {**meta["config"]["data"], "recipe": "files",
                              "files": ["/nowhere/regions.csv"]}
    (moved / BACKBONE_META).write_text(json.dumps(meta))
    saved = adapt(moved, DataConfig(**{**TINY_DATA.__dict__}),
                  AdaptConfig(region="island", neighbours=4), ONE_EPOCH, tmp_path / "a")
    record = saved["item_item_pool"]
    assert record["weight"] == 0.0 and record["histories"] == 0
    assert "regions.csv" in record["unavailable"] and "/nowhere" not in record["unavailable"]
