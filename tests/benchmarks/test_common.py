"""What the benchmark scripts share: suites, results files, options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import common
from benchmarks.common import (
    add_grid_options,
    append_record,
    done_keys,
    load_results,
    load_suite,
    settings,
    write_results,
)


def test_quick_suite_lays_its_quick_block_over_the_suite():
    full, quick = load_suite("wsdm"), load_suite("wsdm", quick=True)
    assert "quick" not in full and "quick" not in quick
    assert quick["suite"] == f"{full['suite']}-quick"
    assert quick["targets"] == ["island"] and full["targets"] == ["t1", "t2", "s3"]
    # nested blocks are merged key by key: what the quick block leaves out stays
    assert quick["model"]["hidden_size"] == 16
    assert quick["model"]["arch"] == full["model"]["arch"] == "llama"
    assert quick["adapt"] == {**full["adapt"], "epochs": 1}
    assert quick["methods"] == full["methods"]
    with pytest.raises(SystemExit, match="unknown suite 'nope'"):
        load_suite("nope")


def test_settings_name_each_targets_pretraining_markets():
    found = settings(load_suite("wsdm"))
    assert found["new-region"] == {"t1": ["s1", "s2", "s3"], "t2": ["s1", "s2", "s3"],
                                   "s3": ["s1", "s2"]}
    for target, markets in found["new-region"].items():
        assert target not in markets  # the new region's backbone never saw it
    for markets in found["all-regions"].values():
        assert markets == ["s1", "s2", "s3", "t1", "t2"]
    # a suite without settings: one, new-region, from pretrain_regions
    assert settings({"targets": ["a"], "pretrain_regions": ["b", "c"]}) == {
        "new-region": {"a": ["b", "c"]}}
    with pytest.raises(SystemExit, match="'x'.*\\['b'\\]"):
        settings({"targets": ["a", "b"], "settings": {"x": {"a": ["c"]}}})


def test_append_record_saves_every_record_in_order(tmp_path):
    path = tmp_path / "deep" / "study.json"  # a missing folder is made
    results = load_results(path, suite="s")
    assert results == {"suite": "s", "records": []}
    append_record(results, path, {"region": "t1", "seed": 0, "where": tmp_path})
    append_record(results, path, {"region": "t1", "seed": 1})
    saved = load_results(path, suite="other")  # the file wins over the fresh default
    assert saved["suite"] == "s"
    assert [r["seed"] for r in saved["records"]] == [0, 1]
    assert saved["records"][0]["where"] == str(tmp_path)  # written with str
    assert done_keys(saved["records"], ("region", "seed", "mode")) == {
        ("t1", 0, None), ("t1", 1, None)}
    # a resumed run appends to what the file holds
    append_record(saved, path, {"region": "t2", "seed": 0})
    assert len(json.loads(path.read_text())["records"]) == 3
    assert [p.name for p in path.parent.iterdir()] == ["study.json"]  # no temporary left
    assert path.stat().st_mode & 0o777 == 0o644  # readable as any written file, not 0600


def test_write_results_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "study.json"
    write_results({"records": [{"n": 1}]}, path)
    before = path.read_text()

    def killed(*args):  # the process dies between writing the copy and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(common.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_results({"records": [{"n": 1}, {"n": 2}]}, path)
    assert path.read_text() == before  # the saved results are whole
    assert list(tmp_path.iterdir()) == [path]  # and the half-done copy is gone


def test_grid_options_parse_comma_separated_lists():
    parser = argparse.ArgumentParser()
    add_grid_options(parser, regions="t1,t2", seeds="0", fractions="0.25,1.0")
    args = parser.parse_args([])
    assert (args.regions, args.seeds, args.fractions) == (["t1", "t2"], [0], [0.25, 1.0])
    args = parser.parse_args(["--regions", "t2,", "--seeds", "1,2", "--fractions", "0.1"])
    assert (args.regions, args.seeds, args.fractions) == (["t2"], [1, 2], [0.1])
    only = argparse.ArgumentParser()
    add_grid_options(only, regions="t1")
    assert vars(only.parse_args([])) == {"regions": ["t1"]}


def test_backbone_option_defaults_to_the_wsdm_new_region_backbone():
    parser = argparse.ArgumentParser()
    common.add_backbone_option(parser)
    assert parser.parse_args([]).backbone == Path("runs/bench/wsdm/backbone-s1-s2-s3")


def test_a_setting_can_widen_its_backbone_and_caches_it_apart():
    suite = {"targets": ["a"], "settings": {"x": {"a": ["b"]}, "y": {"a": ["b"]}},
             "setting_model": {"y": {"hidden_size": 256, "num_heads": 4}}}
    assert common.setting_model(suite, "x") == {}
    assert common.setting_model(suite, "y") == {"hidden_size": 256, "num_heads": 4}
    plain = common.backbone_name(["b"], common.setting_model(suite, "x"))
    wide = common.backbone_name(["b"], common.setting_model(suite, "y"))
    assert plain == "backbone-b" and wide == "backbone-b-h256-heads4"
    with pytest.raises(SystemExit, match="'y'.*unknown model field.*'width'"):
        common.setting_model({"setting_model": {"y": {"width": 3}}}, "y")
