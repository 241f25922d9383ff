"""The item-item part's pool (``AdaptConfig.neighbour_pool``, training/pool.py): the
backbone's other pretraining regions' histories, reloaded from what its metadata records."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

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


def test_adapt_fits_the_part_with_the_pool_and_records_it(tiny_backbone_dir, tmp_path):
    data = DataConfig(**{**TINY_DATA.__dict__})
    pooled = adapt(tiny_backbone_dir, data, AdaptConfig(region="island", neighbours=4),
                   ONE_EPOCH, tmp_path / "pooled")
    alone = adapt(tiny_backbone_dir, data,
                  AdaptConfig(region="island", neighbours=4, neighbour_pool=0.0),
                  ONE_EPOCH, tmp_path / "alone")
    saved = json.loads((tmp_path / "pooled" / ADAPTER_META).read_text())
    assert saved["item_item_pool"]["weight"] == 0.5 == AdaptConfig().neighbour_pool
    assert saved["item_item_pool"]["histories"] == len(
        backbone_pool(json.loads((tiny_backbone_dir / BACKBONE_META).read_text()), "island"))
    assert alone["item_item_pool"] == {"weight": 0.0, "histories": 0}
    # the pool changed EASE's fit: the hold-out saw different blends
    assert (pooled["item_item_holdout_ndcg@10"] != alone["item_item_holdout_ndcg@10"]
            or pooled["item_item_lambda"] != alone["item_item_lambda"])


def test_a_negative_pool_weight_is_refused(tiny_backbone, tiny_regions):
    backbone, vocab, _ = tiny_backbone
    with pytest.raises(ValueError, match="neighbour_pool must be >= 0"):
        train_region(backbone, vocab, tiny_regions["island"],
                     AdaptConfig(region="island", neighbour_pool=-1), ONE_EPOCH)
