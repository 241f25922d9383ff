"""Refresh with context (``AdaptConfig.refresh_context``, ``adapt --init-from ...
--refresh-context``): the users' earlier items, reloaded through the lineage, read ahead of the
new ones."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from regiontune.adapters.merge import merge_adapters
from regiontune.artifacts import ADAPTER_META
from regiontune.config import AdaptConfig, DataConfig
from regiontune.data.loading import DataError
from regiontune.data.recipes import load_regions
from regiontune.data.splits import EvalCase
from regiontune.model.batching import ContextSequence
from regiontune.model.vocab import ItemVocab
from regiontune.training import adapt as adapt_module
from regiontune.training.adapt import adapt, read_parent
from regiontune.training.context import (
    context_cases,
    context_histories,
    context_sequences,
    full_histories,
    lineage_folders,
    parent_context,
)
from tests.conftest import TINY_DATA, TINY_TRAIN

REGION = "island"
ONE_EPOCH = replace(TINY_TRAIN, epochs=1)
CONTEXT = AdaptConfig(region=REGION, refresh_context=True)


def _data_cfg():
    return DataConfig(**{**TINY_DATA.__dict__})


@pytest.fixture(scope="module")
def island():
    return load_regions(replace(TINY_DATA, regions=[REGION]))[REGION]


@pytest.fixture(scope="module")
def chain(tiny_backbone_dir, tmp_path_factory):
    """v1 trained by ``adapt`` (its region.json records its data), v2 refreshed from it with
    context, v3 from v2."""
    root = tmp_path_factory.mktemp("context")
    adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION), ONE_EPOCH, root / "v1")
    metas = [adapt(tiny_backbone_dir, _data_cfg(), CONTEXT, ONE_EPOCH, root / name,
                   init_from=root / parent)
             for parent, name in (("v1", "v2"), ("v2", "v3"))]
    return root, metas


def test_full_histories_are_the_whole_time_ordered_histories(island):
    full = full_histories(island)
    for case in island.test:  # leave-last-out: the test case's history + its target
        assert full[case.user] == [*case.history, case.target]


def test_context_sequences_mark_and_cut_the_context():
    vocab = ItemVocab([f"i{k}" for k in range(30)])
    train = {"a": ["i1", "i2"], "b": ["i3"], "c": ["i4"], "d": [f"i{k}" for k in range(10)]}
    context = {"a": ["i10", "i11", "i12"], "b": ["i13"], "d": ["i20", "i21"]}
    seqs = dict(zip("abd", context_sequences(vocab, train, context, max_len=4, ordered=True),
                    strict=True))  # c: one item, no context: nothing to learn
    assert isinstance(seqs["a"], ContextSequence)
    assert seqs["a"].context == 3 and seqs["a"] == vocab.encode(["i10", "i11", "i12", "i1",
                                                                 "i2"])
    assert seqs["b"].context == 1  # one new item: trainable with its context
    assert not isinstance(seqs["d"], ContextSequence)  # the window holds no context
    # max_len 4: a window of 5 tokens; "a" keeps the context the window reaches
    a_cut = context_sequences(vocab, {"a": ["i1", "i2", "i3"]}, context, 3, ordered=True)[0]
    assert a_cut.context == 1 and a_cut == vocab.encode(["i12", "i1", "i2", "i3"])
    # order-free data keep the whole context (the collator draws from it)
    assert context_sequences(vocab, {"a": ["i1", "i2", "i3"]}, context, 3,
                             ordered=False)[0].context == 3
    # refresh_context_loss: the same tokens, the context items targets too (plain lists)
    plain = context_sequences(vocab, train, context, max_len=4, ordered=True, targets=True)
    assert plain == list(seqs.values())
    assert not any(isinstance(q, ContextSequence) for q in plain)


def test_context_cases_read_the_earlier_items_first():
    cases = [EvalCase("a", ["x"], "y"), EvalCase("z", ["x"], "y")]
    out = context_cases(cases, {"a": ["p", "q"]})
    assert out[0].history == ["p", "q", "x"] and out[1].history == ["x"]
    assert cases[0].history == ["x"]  # not changed in place
    # data overlapping the parent's: the case's own target never shows in its context
    assert context_cases(cases, {"a": ["p", "y", "q"]})[0].history == ["p", "q", "x"]


def test_context_histories_are_all_periods_without_the_held_out_targets(island):
    user = island.test[0].user
    other = next(u for u in island.train if u != user)
    held = {c.target for c in [*island.valid, *island.test] if c.user == user}
    context = {user: ["old1", *held, "old2"], "gone": ["old3"]}
    out = context_histories(island, context)
    assert out[user] == ["old1", "old2", *island.train[user]]  # earlier first, no answer
    assert out["gone"] == ["old3"]  # earlier users absent from the new data still count
    assert out[other] == island.train[other]  # no earlier items: the new ones


def test_a_refresh_with_context_fits_its_item_item_part_on_all_periods(
        chain, island, tiny_backbone_dir, tmp_path, monkeypatch):
    root, _ = chain
    seen = {}
    real = adapt_module.fit_item_item

    def spy(task, data, *args, **kwargs):
        seen["train"] = data.train
        return real(task, data, *args, **kwargs)

    monkeypatch.setattr(adapt_module, "fit_item_item", spy)
    adapt(tiny_backbone_dir, _data_cfg(), replace(CONTEXT, neighbours=4), ONE_EPOCH,
          tmp_path / "part", init_from=root / "v1")
    expected = context_histories(island, parent_context(read_parent(root / "v1")))
    assert expected != island.train  # the parent's data adds earlier items
    assert seen["train"] == expected


def test_refresh_with_context_records_it_and_walks_the_lineage(chain, island):
    root, (v2, v3) = chain
    full = full_histories(island)
    for meta in (v2, v3):
        assert meta["lineage"]["context"] == {
            "users": sum(1 for u in island.train if full.get(u)),
            "items": sum(len(full[u]) for u in island.train if u in full)
            * meta["lineage"]["generation"]}
        assert meta["config"]["adapt"]["refresh_context"] is True
    saved = json.loads((root / "v3" / ADAPTER_META).read_text())
    assert saved["lineage"]["context"] == v3["lineage"]["context"]
    # refreshing v3: v1's data, then v2's, then v3's (the same file here), oldest first
    assert [f.path.name for f in lineage_folders(read_parent(root / "v3"))] == ["v1", "v2",
                                                                              "v3"]
    context = parent_context(read_parent(root / "v3"))
    user = island.test[0].user
    assert context[user] == full[user] * 3


def test_a_merged_parent_adds_no_earlier_items(chain, tiny_backbone_dir, tmp_path):
    """merge -> first data -> refresh: the merged adapter has no data of its own region, so
    the refresh trains with no context instead of failing on a missing data configuration."""
    root, _ = chain
    merged = tmp_path / "merged"
    merge_adapters([root / "v1"], [1.0], tiny_backbone_dir, merged, region=REGION)
    assert parent_context(read_parent(merged)) == {}
    meta = adapt(tiny_backbone_dir, _data_cfg(), CONTEXT, ONE_EPOCH, tmp_path / "first",
                 init_from=merged)
    assert meta["lineage"]["context"] == {"users": 0, "items": 0}
    # a refresh of that refresh reads the first refresh's data (the merge still adds none)
    assert parent_context(read_parent(tmp_path / "first"))


def test_without_context_nothing_is_recorded(chain, tiny_backbone_dir, tmp_path):
    root, _ = chain
    assert AdaptConfig().refresh_context  # the default: with context
    meta = adapt(tiny_backbone_dir, _data_cfg(), replace(CONTEXT, refresh_context=False),
                 ONE_EPOCH, tmp_path / "plain", init_from=root / "v1")
    assert meta["lineage"]["context"] is None


def _nothing_written(tmp_path, out):
    assert not out.exists() and not (tmp_path / f"{out.name}.work").exists()


def test_gone_data_or_ancestor_is_a_clear_error(chain, tiny_backbone_dir, tmp_path):
    root, _ = chain
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    out = tmp_path / "out"
    # an ancestor folder gone: v3's earlier items include v1's data
    shutil.rmtree(moved / "v1")
    with pytest.raises(DataError, match="ancestor adapter v1 .* is gone.*--no-refresh-context"):
        adapt(tiny_backbone_dir, _data_cfg(), CONTEXT, ONE_EPOCH, out,
              init_from=moved / "v3")
    _nothing_written(tmp_path, out)
    # the parent's own data gone
    meta = json.loads((moved / "v2" / ADAPTER_META).read_text())
    gone = tmp_path / "old-period.csv"
    meta["config"]["data"] = {**meta["config"]["data"], "recipe": "files", "files": [str(gone)]}
    del meta["lineage"]
    (moved / "v2" / ADAPTER_META).write_text(json.dumps(meta))
    with pytest.raises(DataError, match=f"training data at {gone} is gone: pass "
                       "--no-refresh-context"):
        adapt(tiny_backbone_dir, _data_cfg(), CONTEXT, ONE_EPOCH, out, init_from=moved / "v2")
    _nothing_written(tmp_path, out)
    # without context the same parent refreshes (its data is not needed)
    adapt(tiny_backbone_dir, _data_cfg(), replace(CONTEXT, refresh_context=False), ONE_EPOCH,
          out, init_from=moved / "v2")
