"""The benchmark runner: job plan, the --quick smoke run (every record field), resume, merge."""

from __future__ import annotations

import json

import pytest

from benchmarks.common import load_suite
from benchmarks.run import merge_results, plan, run_suite

RECORD_FIELDS = {"suite", "dataset", "protocol", "setting", "region", "method", "seed",
                 "data_fraction",
                 "ndcg@10", "hr@10", "mrr", "trainable_params", "total_params", "adapter_bytes",
                 "backbone_bytes", "train_seconds", "peak_rss_mb", "never_trained_users",
                 "ndcg@10_never_trained"}
META_FIELDS = {"git_commit", "versions", "machine", "config"}


def test_plan_has_three_seeds_at_full_and_tenth_data_one_elsewhere():
    suite = load_suite("wsdm")
    jobs = plan(suite)
    seeds = {}
    for job in jobs:
        key = (job["setting"], job["region"], job["method"], job["data_fraction"])
        seeds.setdefault(key, set()).add(job["seed"])
    for setting in ("new-region", "all-regions"):
        for region in ("t1", "t2", "s3"):
            assert seeds[(setting, region, "lora", 1.0)] == {0, 1, 2}
            assert seeds[(setting, region, "scratch", 0.1)] == {0, 1, 2}
            assert seeds[(setting, region, "full", 0.25)] == {0}
            assert seeds[(setting, region, "ease", 1.0)] == {0}  # deterministic: one run
            # on a sub-sample of the users the seed matters: baselines get every seed
            assert seeds[(setting, region, "ease", 0.1)] == {0, 1, 2}
            assert seeds[(setting, region, "itemknn", 0.05)] == {0}
            assert (setting, region, "ia3", 0.1) not in seeds  # no curve for ia3
    assert {m for _, _, m, _ in seeds} == set(suite["methods"])
    # headline points come first, new-region before all-regions, so an interrupted run has them
    head = 3 * len(suite["methods"])
    assert all(j["data_fraction"] == 1.0 and j["setting"] == "new-region" for j in jobs[:head])
    assert all(j["seed"] == 0 for j in jobs[:2 * head])
    # then the 10% point, then the other seeds of the curve methods at 100% and 10% -- before
    # any other fraction
    first_extra = next(i for i, j in enumerate(jobs) if j["seed"] > 0)
    before = jobs[:first_extra]
    assert {j["data_fraction"] for j in before} == {0.1, 1.0}
    extra_block = []
    for j in jobs[first_extra:]:
        if j["data_fraction"] not in (0.1, 1.0):
            break
        extra_block.append(j)
    assert extra_block and all(j["seed"] > 0 and j["method"] in suite["curve_methods"]
                               for j in extra_block)
    # the other methods' extra seeds come last
    others = [i for i, j in enumerate(jobs) if j["seed"] > 0
              and j["method"] not in suite["curve_methods"]]
    assert others == list(range(len(jobs) - len(others), len(jobs)))


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
    assert {"lora", "full", "scratch", "scratch-nb", "zero-shot", "ease", "bottleneck"} <= methods
    for record in records:  # the part's choice is recorded: what the hold-out saw, and k
        if record["method"] == "scratch-nb":
            grid = record["item_item_holdout_ndcg@10"]
            assert record["neighbours"] == 8 and set(grid) >= {"0.0", "1.0"}
            assert (record["item_item_weight"] == 0) == (max(grid.values()) == grid["0.0"])
    lora = next(r for r in records if r["method"] == "lora")
    assert 0 < lora["trainable_params"] < lora["total_params"]
    assert 0 < lora["adapter_bytes"] < lora["backbone_bytes"]
    assert (tmp_path / "wsdm-quick.md").is_file()
    assert list(tmp_path.glob("wsdm-quick_*.png"))
    # methods that never read the backbone ran once and serve both settings
    for method in ("scratch", "ease", "popularity"):
        pair = [r for r in records if r["method"] == method and r["data_fraction"] == 1.0
                and r["seed"] == 0]
        assert {r["setting"] for r in pair} == {"new-region", "all-regions"}
        assert pair[0]["ndcg@10"] == pair[1]["ndcg@10"]
        assert sum("shared_with" in r for r in pair) == 1
    # each setting's adapters read their own backbone
    zero = {r["setting"]: r for r in records if r["method"] == "zero-shot"}
    assert zero["new-region"]["pretrain_regions"] == ["north", "south"]
    assert zero["all-regions"]["pretrain_regions"] == ["island", "north", "south"]
    # a second run finds every job done and adds nothing
    run_suite("wsdm", quick=True, out=out, work_dir=str(tmp_path / "work"))
    assert len(json.loads(out.read_text())["records"]) == len(records)


def test_merge_adds_other_runs_records_once(tmp_path):
    base = {"setting": "new-region", "region": "island", "method": "ease",
            "data_fraction": 1.0, "seed": 0, "ndcg@10": 0.5}
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"suite": "wsdm-quick", "records": [base]}))
    other = tmp_path / "other.json"
    clash = {**base, "ndcg@10": 0.9}  # the same job: the file's own record wins
    new = {**base, "setting": "all-regions", "method": "lora", "ndcg@10": 0.6}
    other.write_text(json.dumps({"suite": "wsdm-quick", "records": [clash, new]}))
    merge_results("wsdm", [other, other], mine, quick=True)
    records = json.loads(mine.read_text())["records"]
    assert [(r["method"], r["ndcg@10"]) for r in records] == [("ease", 0.5), ("lora", 0.6)]
    assert (tmp_path / "mine.md").is_file()


def test_life_cycle_studies_run_through_the_runner_with_their_own_options(monkeypatch):
    from benchmarks import refresh, run

    seen = []
    monkeypatch.setattr(refresh, "main", lambda argv: seen.append(argv))
    run.main(["refresh", "--seeds", "0,1", "--first-share", "0.6"])
    assert seen == [["--seeds", "0,1", "--first-share", "0.6"]]
