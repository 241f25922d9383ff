"""The item-item part's pool: the co-occurrence of a region's items in the other regions the
backbone was pretrained on (``AdaptConfig.neighbour_pool``).

An adapter's item-item part (``adapters/item_item.py``) is EASE fitted on the region's own
training histories. The backbone's pretraining data holds the same items bought together in
other regions, and a region's own data is small: with those histories added to EASE's Gram
matrix at a weight (``X^T X + w * P^T P``, ``P``: the other regions' histories over the
region's catalogue; items the region lacks are ignored), EASE alone gains on every WSDM
target's early-stopping hold-out (``benchmarks/results/neighbour_pool.md``). It is the
transfer the classic model can take from the pooled regions, as the backbone takes it by
pretraining.

* Source: the training histories of the regions the backbone's ``regiontune.json`` records
  (``regions``), reloaded from the data configuration it records (``config.data``), the
  region being adapted left out by name (its own data is the adapter's).
* Not there (a backbone from a hub without its data, files moved): the part is fitted on the
  region's own histories, with a warning, and the adapter's metadata says why
  (``item_item_pool.unavailable``). The pool is an improvement, never a requirement.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any

from regiontune.data.loading import DataError
from regiontune.data.recipes import load_regions
from regiontune.training.replay import data_paths, histories_config

logger = logging.getLogger(__name__)


class PoolUnavailable(Exception):
    """The backbone's pretraining data cannot be reloaded (the message says why)."""


def backbone_pool(bmeta: dict[str, Any], region: str) -> list[list[str]]:
    """The training histories of the backbone's pretraining regions other than ``region``,
    reloaded from the data configuration its metadata records; :class:`PoolUnavailable` when
    it records none or the data is gone."""
    data = (bmeta.get("config") or {}).get("data")
    if not data:
        raise PoolUnavailable("the backbone records no pretraining data configuration")
    regions = [r for r in bmeta.get("regions") or data.get("regions") or [] if r != region]
    if not regions:
        return []
    return list(_load_pool(json.dumps(data, sort_keys=True), tuple(sorted(regions))))


@lru_cache(maxsize=2)  # a benchmark adapts many times over one backbone: reload once
def _load_pool(data_json: str, regions: tuple[str, ...]) -> tuple[list[str], ...]:
    cfg = histories_config(json.loads(data_json), list(regions))
    for path in data_paths(cfg):
        if not path.exists():
            raise PoolUnavailable(f"the backbone's pretraining data is not at {path.name} "
                                  "(recorded relative to where it was pretrained?)")
    try:
        loaded = load_regions(cfg)
    except (DataError, OSError, ValueError) as err:
        logger.info("the backbone's pretraining data: %s", err)  # may name host paths
        raise PoolUnavailable("the backbone's pretraining data cannot be reloaded "
                              f"({type(err).__name__}; the log says why)") from err
    return tuple(list(h) for name in regions if name in loaded
                 for h in loaded[name].train.values())


def region_pool(bmeta: dict[str, Any], region: str, weight: float
                ) -> tuple[list[list[str]], dict[str, Any]]:
    """``(histories, record)`` for an adapter of ``region`` at pool ``weight``: no histories
    at weight 0, and none (with the reason recorded and a warning) when the backbone's data
    cannot be reloaded."""
    if weight <= 0:
        return [], {"weight": 0.0}
    try:
        histories = backbone_pool(bmeta, region)
    except PoolUnavailable as err:
        logger.warning("item-item part: fitted on the region's own histories alone, %s "
                       "(set adapt.neighbour_pool 0 to silence this)", err)
        return [], {"weight": 0.0, "unavailable": str(err)}
    return histories, {"weight": weight, "histories": len(histories)}
