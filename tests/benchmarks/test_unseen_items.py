"""The unseen-items study: one record per mode, warm and cold users adding up."""

from __future__ import annotations

from dataclasses import replace

from benchmarks.unseen_items import MODES, run_modes, to_markdown


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
