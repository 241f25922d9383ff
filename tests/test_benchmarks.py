"""The benchmark runner: job plan, the --quick smoke run (every record field), resume."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from benchmarks.jobs import never_trained
from benchmarks.run import load_suite, plan, run_suite
from benchmarks.unseen_items import MODES, run_modes, to_markdown
from regiontune.core.splits import EvalCase, RegionData

RECORD_FIELDS = {"suite", "dataset", "protocol", "region", "method", "seed", "data_fraction",
                 "ndcg@10", "hr@10", "mrr", "trainable_params", "total_params", "adapter_bytes",
                 "backbone_bytes", "train_seconds", "peak_rss_mb", "never_trained_users",
                 "ndcg@10_never_trained"}
META_FIELDS = {"git_commit", "versions", "machine", "config"}


def test_plan_has_three_seeds_at_full_and_tenth_data_one_elsewhere():
    suite = load_suite("wsdm")
    jobs = plan(suite)
    seeds = {}
    for job in jobs:
        key = (job["region"], job["method"], job["data_fraction"])
        seeds.setdefault(key, set()).add(job["seed"])
    assert seeds[("t1", "lora", 1.0)] == {0, 1, 2}
    assert seeds[("t2", "scratch", 0.1)] == {0, 1, 2}
    assert seeds[("t1", "full", 0.25)] == {0}
    assert seeds[("t1", "ease", 1.0)] == {0}  # deterministic: one run
    assert ("t1", "ia3", 0.1) not in seeds  # curves only for scratch, full, lora
    assert {m for _, m, _ in seeds} == set(suite["methods"])
    # headline points come first, so an interrupted run has them
    assert all(j["data_fraction"] == 1.0 for j in jobs[:2 * len(suite["methods"])])
    # every first-seed job before any extra seed; extra seeds cheapest (smallest data) first
    first_extra = next(i for i, j in enumerate(jobs) if j["seed"] > 0)
    assert all(j["seed"] > 0 for j in jobs[first_extra:])
    extra_fractions = [j["data_fraction"] for j in jobs[first_extra:]]
    assert extra_fractions == sorted(extra_fractions)


def test_never_trained_marks_the_cases_whose_positive_no_training_history_holds():
    data = RegionData(region="r", train={"u1": ["a", "b"], "u2": ["b", "c"]}, valid=[],
                      test=[EvalCase("u1", ["a", "b"], "c"), EvalCase("u2", ["b", "c"], "d"),
                            EvalCase("u3", [], "e")], catalogue=list("abcde"), ordered=False)
    assert never_trained(data).tolist() == [False, True, True]


@pytest.mark.slow
def test_quick_suite_writes_every_field_and_resumes(tmp_path):
    out = tmp_path / "wsdm-quick.json"
    run_suite("wsdm", quick=True, out=out, work_dir=str(tmp_path / "work"))
    results = json.loads(out.read_text())
    assert META_FIELDS <= set(results["meta"])
    assert results["meta"]["machine"]["cores"] >= 1
    records = results["records"]
    assert len(records) == len(plan(load_suite("wsdm", quick=True)))
    for record in records:
        missing = RECORD_FIELDS - set(record)
        assert not missing, (record["method"], missing)
        assert 0.0 <= record["ndcg@10"] <= 1.0
    methods = {r["method"] for r in records}
    assert {"lora", "full", "scratch", "zero-shot", "ease", "bottleneck"} <= methods
    lora = next(r for r in records if r["method"] == "lora")
    assert 0 < lora["trainable_params"] < lora["total_params"]
    assert 0 < lora["adapter_bytes"] < lora["backbone_bytes"]
    assert (tmp_path / "wsdm-quick.md").is_file()
    assert list(tmp_path.glob("wsdm-quick_*.png"))
    # a second run finds every job done and adds nothing
    run_suite("wsdm", quick=True, out=out, work_dir=str(tmp_path / "work"))
    assert len(json.loads(out.read_text())["records"]) == len(records)


def test_unseen_items_study_records_every_mode(tiny_backbone_dir, tiny_regions):
    island = tiny_regions["island"]
    data = replace(island, catalogue=sorted(island.catalogue + ["ghost-1"]))
    suite = {"adapt": {"epochs": 2, "batch_size": 32, "lr": 5e-3}}
    records = run_modes(data, 1.0, "lora", 0, suite, tiny_backbone_dir, list(MODES))
    by_mode = {r["mode"]: r for r in records}
    assert sorted(by_mode) == sorted(MODES)
    for r in records:
        assert r["warm_users"] + r["cold_users"] == r["all_users"] == len(data.test)
    # calibrate is the ignore run plus one offset: same training, different unseen level
    assert by_mode["calibrate"]["best_epoch"] == by_mode["ignore"]["best_epoch"]
    assert by_mode["calibrate"]["unseen_offset"] != 0
    assert "unseen_offset" not in by_mode["ignore"]
    assert to_markdown(records).count("| island |") == 3
    only = run_modes(data, 1.0, "lora", 0, suite, tiny_backbone_dir, ["negatives"])
    assert [r["mode"] for r in only] == ["negatives"]
    assert only[0]["all_ndcg@10"] == by_mode["negatives"]["all_ndcg@10"]  # seeded: same run
