"""``regiontune merge``: sources by region from --adapter / --adapter-root, weights given or by
overlap, a given catalogue, and clear errors that write nothing."""

from __future__ import annotations

import shutil

import pytest

from regiontune.adapters import load_adapter
from regiontune.artifacts import read_json, write_json
from regiontune.model.backbone import load_backbone
from tests.cli.helpers import fails, invoke, ok


@pytest.fixture(scope="module")
def second(workdir, backbone):
    out = workdir / "merge-delta"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "delta", "--out", out,
              "--method", "lora", "--epochs", "1", "--set", "train.progress=false"))
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory, adapter, second):
    root = tmp_path_factory.mktemp("merge-root")
    shutil.copytree(adapter[0], root / "island")
    shutil.copytree(second, root / "delta")
    return root


def test_merge_with_given_weights(backbone, adapter, second, tmp_path):
    out = tmp_path / "newland"
    text = ok(invoke("merge", "--out", out, "--from", "island=1", "--from", "delta=3",
                     "--backbone", backbone[0], "--adapter", adapter[0], "--adapter", second))
    assert "island 0.250, delta 0.750" in text and "written to" in text
    assert "item-item part:" in text
    meta = read_json(out / "region.json")
    assert meta["region"] == "newland" and meta["method"] == "lora"
    assert [(m["region"], m["weight"]) for m in meta["merged_from"]] == [
        ("island", 0.25), ("delta", 0.75)]
    assert meta["merge"]["catalogue"] == "union"
    model, vocab, bmeta = load_backbone(backbone[0])
    task = load_adapter(out, model, vocab, bmeta["fingerprint"])
    assert task.item_side.catalogue == meta["catalogue"]


def test_merge_from_a_root_with_overlap_weights_and_a_catalogue(backbone, root, tmp_path):
    island = read_json(root / "island" / "region.json")["catalogue"]
    delta = read_json(root / "delta" / "region.json")["catalogue"]
    target = island[:6] + delta[:2] + ["brand-new-item"]
    (tmp_path / "items.txt").write_text("\n".join(target) + "\n")
    out = tmp_path / "m"
    ok(invoke("merge", "--out", out, "--from", "island", "--from", "delta", "--backbone",
              backbone[0], "--adapter-root", root, "--weights", "overlap", "--catalogue",
              tmp_path / "items.txt", "--region", "target-1", "--item-rank", "2",
              "--new-items", "mean"))
    meta = read_json(out / "region.json")
    assert meta["region"] == "target-1" and meta["catalogue"] == target
    raw = [len(set(target) & set(c)) / len(target) for c in (island, delta)]
    assert [m["weight"] for m in meta["merged_from"]] == pytest.approx(
        [w / sum(raw) for w in raw])
    assert meta["merge"]["weights"] == "overlap" and meta["item_rank"] == 2
    assert meta["merge"]["new_item_embedding"] == "mean"
    assert meta["merge"]["items_fallback"] >= 1 and "brand-new-item" in meta["new_items"]


def test_equal_weights_by_default(backbone, root, tmp_path):
    ok(invoke("merge", "--out", tmp_path / "m", "--from", "island", "--from", "delta",
              "--backbone", backbone[0], "--adapter-root", root))
    assert [m["weight"] for m in read_json(tmp_path / "m" / "region.json")["merged_from"]] == [
        0.5, 0.5]


def test_bad_merges_fail_clearly_and_write_nothing(backbone, root, tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(root / "delta", foreign)
    write_json(foreign / "region.json", {**read_json(foreign / "region.json"),
                                         "region": "far", "backbone_fingerprint": "sha256:x"})
    (tmp_path / "items.txt").write_text("a\n")
    out = tmp_path / "m"
    base = ["merge", "--out", out, "--backbone", backbone[0], "--adapter-root", root]
    for args, fragments in (
            (["--from", "island", "--from", "nowhere"], ["no adapter for region", "nowhere",
                                                         "found: delta, island"]),
            (["--from", "island=x"], ["not a number"]),
            (["--from", "island=0", "--from", "delta=0"], ["sum to a positive"]),
            (["--from", "island=-1", "--from", "delta=2"], ["non-negative"]),
            (["--from", "island", "--weights", "overlap"], ["needs --catalogue"]),
            (["--from", "island=1", "--weights", "overlap", "--catalogue",
              tmp_path / "items.txt"], ["not both"]),
            (["--from", "island", "--weights", "equalish"], ["only rule is overlap"]),
            (["--from", "island", "--item-item", "max"], ["item_item 'max'", "sum"]),
            (["--from", "island", "--from", "far", "--adapter", foreign],
             ["trained on backbone sha256:x"]),
            (["--from", "island", "--catalogue", tmp_path / "none.txt"], ["no such catalogue"])):
        fails(invoke(*base, *args), *fragments)
    fails(invoke("merge", "--out", out, "--backbone", backbone[0], "--from", "island"),
          "--adapter-root ROOT or --adapter DIR")
    twice = tmp_path / "twice"
    shutil.copytree(root / "island", twice)
    fails(invoke(*base, "--from", "island", "--from", "delta", "--adapter", twice),
          "several adapters claim one region", "island")
    assert not out.exists()
