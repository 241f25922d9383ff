"""The benchmark jobs: what a record counts and on which users a job trains."""

from __future__ import annotations

import json

from benchmarks.common import load_suite, suite_configs
from benchmarks.jobs import Context, baseline_job, never_trained
from regiontune.data.splits import EvalCase, RegionData


def test_never_trained_marks_the_cases_whose_positive_no_training_history_holds():
    data = RegionData(region="r", train={"u1": ["a", "b"], "u2": ["b", "c"]}, valid=[],
                      test=[EvalCase("u1", ["a", "b"], "c"), EvalCase("u2", ["b", "c"], "d"),
                            EvalCase("u3", [], "e")], catalogue=list("abcde"), ordered=False)
    assert never_trained(data).tolist() == [False, True, True]


def test_baselines_fit_on_the_jobs_share_of_the_users(tiny_regions):
    data = tiny_regions["north"]
    full = baseline_job("popularity", data, 1.0, 0)
    half = baseline_job("popularity", data, 0.5, 0)
    other = baseline_job("popularity", data, 0.5, 1)
    assert full["train_users"] == len(data.train)
    assert half["train_users"] == round(len(data.train) / 2) == other["train_users"]
    # fewer users: other counts, other figure (the test cases are the same)
    assert half["eval_users"] == full["eval_users"]
    assert (half["ndcg@10"], other["ndcg@10"]) != (full["ndcg@10"], full["ndcg@10"])


def test_a_settings_model_override_pretrains_its_own_wider_backbone(tmp_path):
    suite = load_suite("wsdm", quick=True)
    suite["setting_model"] = {"all-regions": {"hidden_size": 24}}
    data_cfg, model_cfg, trains = suite_configs(suite)
    context = Context(suite, data_cfg, model_cfg, trains, tmp_path)
    job = {"setting": "all-regions", "region": "island"}
    directory = context.ensure_backbone(job)
    assert directory.name.endswith("-h24")
    saved = json.loads((directory / "config.json").read_text())
    assert saved["hidden_size"] == 24 != model_cfg.hidden_size
    # the other setting keeps the suite's model, in its own folder
    assert context.backbone_dir({"setting": "new-region", "region": "island"}).name == (
        "backbone-north-south")
