"""The hyper-parameter search study: its space holds the defaults, one real trial on the tiny
backbone, its report."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.common import load_suite
from benchmarks.search import SPACE, defaults, report, served_holdout, suggest, train_point
from tests.conftest import TINY_TRAIN

optuna = pytest.importorskip("optuna")


def test_the_wsdm_defaults_are_a_point_of_the_space():
    """Trial 0 is the suite's defaults: each must be a value the space can propose."""
    point = defaults(load_suite("wsdm"))
    assert set(point) == set(SPACE)
    for name, (kind, spec) in SPACE.items():
        if kind == "choice":
            assert point[name] in spec, name
        else:
            assert spec[0] <= point[name] <= spec[1], name
    assert suggest(optuna.trial.FixedTrial(point)) == point


def test_served_holdout_is_the_blend_at_its_chosen_weight_or_the_adapter_alone():
    assert served_holdout({"item_item_holdout_ndcg@10": {"0.0": 0.61, "4.0": 0.66, "8.0": 0.65},
                           "best_valid_ndcg@10": 0.60}) == 0.66
    assert served_holdout({"best_valid_ndcg@10": 0.60}) == 0.60


class _Context:
    def __init__(self, regions, backbone_dir):
        self._regions, self.backbone_dir = regions, backbone_dir
        self.trains = {"adapt": replace(TINY_TRAIN, epochs=1)}

    def regions(self):
        return self._regions

    def ensure_backbone(self, job):
        return self.backbone_dir


def test_a_trial_trains_the_point_it_is_given(tiny_regions, tiny_backbone_dir):
    ctx = _Context(tiny_regions, tiny_backbone_dir)
    job = {"setting": "new-region", "region": "island"}
    base = {"lr": 5e-3, "weight_decay": 0.01, "batch_size": 128, "alpha_per_r": 2,
            "lora_dropout": 0.0, "neighbours_share": 0.5}
    small = train_point(ctx, job, {**base, "r": 4}, seed=0)
    large = train_point(ctx, job, {**base, "r": 16}, seed=0)
    assert large["trainable_params"] > small["trainable_params"]  # the rank took effect
    assert 0.0 <= small["holdout_ndcg@10"] <= 1.0
    assert small["holdout_ndcg@10"] >= small["adapter_alone_holdout_ndcg@10"]


def test_report_lists_trials_best_first_and_the_confirmation():
    point = {"lr": 3e-3, "weight_decay": 0.01, "batch_size": 256, "r": 8, "alpha_per_r": 2,
             "lora_dropout": 0.05, "neighbours_share": 0.5}
    results = {"setting": "all-regions", "region": "t1", "seed": 0, "command": "c",
               "best_trial": 1,
               "meta": {"git_commit": "abc"}, "budget": {"trials": 2, "timeout_minutes": 5},
               "trials": [{"number": 0, "params": point, "value": 0.61},
                          {"number": 1, "params": {**point, "r": 16}, "value": 0.63}],
               "confirm": [{"label": "default", "seed": 1, "holdout_ndcg@10": 0.60},
                           {"label": "best", "seed": 1, "holdout_ndcg@10": 0.62},
                           {"label": "best", "seed": 2, "holdout_ndcg@10": 0.64}]}
    text = report(results)
    rows = [line for line in text.splitlines() if line.startswith("| 0 ") or
            line.startswith("| 1 ")]
    assert rows[0].startswith("| 1 ") and "0.6300" in rows[0]  # best first
    # the search's own seed first (trial 0 for the defaults, the best trial), then the others
    assert "| default | 2 | 0.6100, 0.6000 | 0.6050 |" in text
    assert "| best | 3 | 0.6300, 0.6200, 0.6400 | 0.6300 |" in text
    assert "best - default = +0.0250" in text and "win" in text
    results["confirm"][1]["holdout_ndcg@10"] = 0.58  # best: 0.63, 0.58, 0.64 -> 0.6167
    assert "the defaults stay" in report({**results, "confirm": [
        {"label": "default", "seed": 1, "holdout_ndcg@10": 0.625}, *results["confirm"][1:]]})
