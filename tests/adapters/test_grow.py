"""Catalogue growth: items added to a trained adapter without retraining (adapters/grow.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from regiontune.adapters import AdapterFolder, load_adapter, save_adapter
from regiontune.adapters.grow import grow_catalogue
from regiontune.adapters.item_side import PREFIX
from regiontune.artifacts import ADAPTER_META, ArtifactError, BackboneMismatchError
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import train_region
from tests.adapters.common import REGION, file_snapshot
from tests.conftest import TINY_TRAIN

NEW = "fresh-1"  # new to the backbone and to the adapter


def make_adapter(backbone_dir, data, out, method: str = "lora", rank: int = 8):
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    adapt_cfg = AdaptConfig(method=method, region=REGION, item_rank=rank)
    task, stats = train_region(backbone, vocab, data, adapt_cfg, replace(TINY_TRAIN, epochs=1))
    meta = {"region": REGION, "backbone_fingerprint": bmeta["fingerprint"], **stats}
    save_adapter(task, method, REGION, meta, out, "float16")
    return out


@pytest.fixture(scope="module")
def parent(tiny_backbone_dir, island, tmp_path_factory):
    return make_adapter(tiny_backbone_dir, island, tmp_path_factory.mktemp("grow") / REGION)


@pytest.fixture(scope="module")
def neighbours(island):
    """Catalogue items the new item co-occurs with: the most frequent items' set."""
    return island.train[sorted(island.train, key=lambda u: -len(island.train[u]))[0]][:4]


def interactions(neighbours):
    return {f"u{i}": [*neighbours, NEW] for i in range(3)}


def grown(parent, tmp_path, backbone_dir, items, users=None, name="grown"):
    return grow_catalogue(parent, backbone_dir, items, users, tmp_path / name), tmp_path / name


def scores(folder, backbone_dir, histories, catalogue):
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    task = load_adapter(folder, backbone, vocab, bmeta["fingerprint"])
    with torch.no_grad():
        return task_scores(task, histories, catalogue)


def test_grow_appends_rows_and_keeps_everything_else(parent, tmp_path, tiny_backbone_dir,
                                                     neighbours):
    before = file_snapshot(parent)
    meta, out = grown(parent, tmp_path, tiny_backbone_dir, [NEW, NEW], interactions(neighbours))
    assert file_snapshot(parent) == before  # the source folder is untouched
    old, new = AdapterFolder.read(parent), AdapterFolder.read(out)
    n = len(old.meta["catalogue"])
    assert meta["catalogue"] == old.meta["catalogue"] + [NEW]
    assert meta["new_items"] == old.meta["new_items"] + [NEW]
    record = meta["grown"][-1]
    assert record["items"] == [NEW] and record["embedding"] == {"cooccurrence": [NEW]}
    assert record["bias"] == {"unseen_offset": [NEW]} and record["at"].endswith("Z")
    assert record["cooccurrences"] == 3 * len(set(neighbours))
    assert 0 < record["projection_kept"] <= 1.0 + 1e-6
    for key, tensor in old.tensors.items():
        if key in (PREFIX + "lowrank_a", PREFIX + "bias"):
            assert new.tensors[key].dtype == tensor.dtype
            assert torch.equal(new.tensors[key][:n], tensor)  # old rows: the same bits
            assert new.tensors[key].shape[0] == n + 1
        else:
            assert torch.equal(new.tensors[key], tensor), key
    assert set(new.tensors) == set(old.tensors)
    assert new.config == old.config
    drop = {"catalogue", "new_items", "grown", "adapter_bytes"}
    assert {k: v for k, v in new.meta.items() if k not in drop} == \
        {k: v for k, v in old.meta.items() if k not in drop}
    # the bias: the calibrated offset the adapter holds for never-trained items
    assert float(new.tensors[PREFIX + "bias"][n]) == pytest.approx(
        old.meta["unseen_offset"], abs=1e-2)


def test_old_scores_unchanged_and_the_new_item_ranks_by_its_neighbours(
        parent, tmp_path, tiny_backbone_dir, neighbours, island):
    _, cooc = grown(parent, tmp_path, tiny_backbone_dir, [NEW], interactions(neighbours), "c")
    _, mean = grown(parent, tmp_path, tiny_backbone_dir, [NEW], None, "m")
    old_catalogue = AdapterFolder.read(parent, weights=False).meta["catalogue"]
    histories = [c.history for c in island.valid[:8]]
    before = scores(parent, tiny_backbone_dir, histories, old_catalogue)
    after = scores(cooc, tiny_backbone_dir, histories, old_catalogue)
    assert torch.allclose(before, after, atol=1e-6, rtol=0)
    # a history of its co-occurring items: the new item ranks high, and higher than from
    # the backbone's mean embedding
    catalogue = old_catalogue + [NEW]
    history = [list(neighbours)]
    rank = {}
    for name, folder in (("cooccurrence", cooc), ("mean", mean)):
        s = scores(folder, tiny_backbone_dir, history, catalogue)[0]
        s[[catalogue.index(i) for i in neighbours]] = float("-inf")  # as served: seen excluded
        rank[name] = int((s > s[-1]).sum())
    assert rank["cooccurrence"] < rank["mean"], rank
    assert rank["cooccurrence"] < len(catalogue) // 4, rank


def test_backbone_known_items_keep_their_backbone_row(parent, tmp_path, tiny_backbone_dir,
                                                      tiny_regions):
    catalogue = AdapterFolder.read(parent, weights=False).meta["catalogue"]
    known = next(i for i in tiny_regions["north"].catalogue if i not in catalogue)
    meta, out = grown(parent, tmp_path, tiny_backbone_dir, [known, NEW])
    record = meta["grown"][-1]
    assert record["embedding"] == {"backbone": [known], "mean": [NEW]}
    assert meta["new_items"][-1] == NEW and known not in meta["new_items"]
    a = AdapterFolder.read(out).tensors[PREFIX + "lowrank_a"]
    assert torch.equal(a[len(catalogue)], torch.zeros_like(a[0]))


def test_in_place_and_repeated_growth(parent, tmp_path, tiny_backbone_dir):
    folder = shutil.copytree(parent, tmp_path / REGION)
    grow_catalogue(folder, tiny_backbone_dir, [NEW])
    meta = grow_catalogue(folder, tiny_backbone_dir, [NEW, "fresh-2"])  # NEW: skipped
    assert [g["items"] for g in meta["grown"]] == [[NEW], ["fresh-2"]]
    assert meta["catalogue"][-2:] == [NEW, "fresh-2"]
    assert json.loads((folder / ADAPTER_META).read_text())["catalogue"] == meta["catalogue"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers
    AdapterFolder.read(folder)


@pytest.mark.parametrize("items, message", [
    ([], "the list is empty"),
    ([""], "non-empty strings"),
    ("fresh-9", "list of item ids"),
    ("catalogue", "already in the catalogue"),
])
def test_bad_items_write_nothing(parent, tmp_path, tiny_backbone_dir, items, message):
    if items == "catalogue":
        items = AdapterFolder.read(parent, weights=False).meta["catalogue"][:3]
    before = file_snapshot(parent)
    with pytest.raises(ValueError, match=message):
        grow_catalogue(parent, tiny_backbone_dir, items, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match=message):
        grow_catalogue(parent, tiny_backbone_dir, items)  # in place
    assert file_snapshot(parent) == before


def test_unknown_folder_and_foreign_backbone(parent, tmp_path, tiny_backbone_dir):
    with pytest.raises(ArtifactError, match="no such adapter directory"):
        grow_catalogue(tmp_path / "nowhere", tiny_backbone_dir, [NEW], out=tmp_path / "out")
    foreign = shutil.copytree(parent, tmp_path / "foreign")
    meta = json.loads((foreign / ADAPTER_META).read_text())
    (foreign / ADAPTER_META).write_text(json.dumps({**meta, "backbone_fingerprint": "sha256:0"}))
    before = file_snapshot(foreign)
    with pytest.raises(BackboneMismatchError):
        grow_catalogue(foreign, tiny_backbone_dir, [NEW])
    assert file_snapshot(foreign) == before
    assert not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an adapter folder"):
        grow_catalogue(parent, tiny_backbone_dir, [NEW], out=tmp_path / "busy")


def test_adalora_export_grows_too(tiny_backbone_dir, island, tmp_path):
    folder = make_adapter(tiny_backbone_dir, island, tmp_path / "ada", "adalora")
    meta = grow_catalogue(folder, tiny_backbone_dir, [NEW])
    served = AdapterFolder.read(folder, serving=True)
    assert served.source != folder  # the LoRA export
    assert served.tensors[PREFIX + "bias"].shape[0] == len(meta["catalogue"])
    trained = AdapterFolder.read(folder)
    assert torch.equal(trained.tensors[PREFIX + "lowrank_a"],
                       served.tensors[PREFIX + "lowrank_a"])
