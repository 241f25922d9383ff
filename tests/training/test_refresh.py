"""Refresh: an adapter continued on new data (``train_region(parent=...)``, ``init_from``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from regiontune.adapters import METHODS, AdapterFolder, load_adapter, save_adapter
from regiontune.artifacts import ADAPTER_META, ArtifactError, BackboneMismatchError
from regiontune.config import AdaptConfig, DataConfig, to_dict
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import (
    adapt,
    continue_region_task,
    file_digest,
    read_parent,
    train_region,
)
from tests.conftest import TEXT_TRAIN, TINY_DATA, TINY_TRAIN

REGION = "island"
NEW = ["fresh-1", "fresh-2", "fresh-3"]  # items the parent never saw (region-new ones)


def _perturb(task, seed: int) -> None:
    """Move every trainable weight, so the parent is clearly not the backbone."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def make_parent(backbone_dir, data, method: str, out, seed: int = 0):
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    task, stats = train_region(backbone, vocab, data, AdaptConfig(method=method, region=REGION),
                               replace(TINY_TRAIN, epochs=1))
    _perturb(task, seed)
    meta = {"region": REGION, "backbone_fingerprint": bmeta["fingerprint"], **stats,
            # the data it was trained on, as adapt records it (a refresh with context reloads
            # the users' earlier items from it)
            "config": to_dict(DataConfig(**{**TINY_DATA.__dict__}),
                              AdaptConfig(method=method, region=REGION), TINY_TRAIN)}
    save_adapter(task, method, REGION, meta, out, "float32" if method == "full" else "float16")
    return out


@pytest.fixture(scope="module")
def new_data(tiny_regions):
    """The island's data with new items: some histories end with items the parent lacks."""
    island = tiny_regions[REGION]
    train = {u: h + [NEW[i % len(NEW)]] if i % 2 == 0 else h
             for i, (u, h) in enumerate(island.train.items())}
    return replace(island, train=train, catalogue=sorted(island.catalogue + NEW))


@pytest.fixture(scope="module")
def parent_dir(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    return make_parent(tiny_backbone_dir, tiny_regions[REGION], "lora",
                       tmp_path_factory.mktemp("parent") / "island-v1")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_refresh_starts_as_the_parent(tiny_backbone_dir, tiny_regions, new_data, tmp_path,
                                      method):
    """Before any step, the continued adapter scores the parent's items as the parent does."""
    parent_dir = make_parent(tiny_backbone_dir, tiny_regions[REGION], method, tmp_path / "p")
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    parent = load_adapter(parent_dir, load_backbone(tiny_backbone_dir)[0], vocab,
                          bmeta["fingerprint"])
    folder = AdapterFolder.read(parent_dir, bmeta["fingerprint"])
    task = continue_region_task(backbone, vocab, folder, new_data.catalogue,
                                AdaptConfig(method=method, region=REGION))
    old = folder.meta["catalogue"]
    assert task.item_side.catalogue == old + NEW  # old order kept, new items appended
    histories = [c.history for c in new_data.valid] + [[old[0], old[3]], []]
    torch.testing.assert_close(task_scores(task, histories, old),
                               task_scores(parent, histories, old), rtol=1e-5, atol=1e-5)
    assert any(p.requires_grad for p in task.body.parameters())  # it trains again
    assert all(p.requires_grad for p in task.item_side.parameters())


def test_new_items_start_like_region_new_items(tiny_backbone_dir, parent_dir, new_data):
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    folder = AdapterFolder.read(parent_dir, bmeta["fingerprint"])
    task = continue_region_task(backbone, vocab, folder, new_data.catalogue,
                                AdaptConfig(region=REGION))
    side, n = task.item_side, len(folder.meta["catalogue"])
    saved = {k.rsplit(".", 1)[-1]: v for k, v in folder.tensors.items() if "item_side" in k}
    assert torch.equal(side.lowrank_a[:n], saved["lowrank_a"].float())
    assert torch.equal(side.lowrank_b, saved["lowrank_b"].float())
    assert torch.equal(side.bias[:n], saved["bias"].float())
    assert not side.lowrank_a[n:].any() and not side.bias[n:].any()
    assert side.new_items[-len(NEW):] == NEW  # no backbone row: the low-rank part alone


def test_refresh_trains_and_keeps_the_catalogue(tiny_backbone_dir, parent_dir, new_data):
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    folder = AdapterFolder.read(parent_dir, bmeta["fingerprint"])
    task, stats = train_region(backbone, vocab, new_data, AdaptConfig(region=REGION),
                               replace(TINY_TRAIN, epochs=2, patience=5), parent=folder)
    n = len(folder.meta["catalogue"])
    assert task.item_side.catalogue == folder.meta["catalogue"] + NEW
    assert stats["epochs_run"] == 2
    # they train (no freezing): with a moved adapter the rows differ from the parent's
    if stats["best_epoch"] > 0:
        saved = folder.tensors["regiontune.item_side.lowrank_a"].float()
        assert not torch.equal(task.item_side.lowrank_a[:n].detach(), saved)


def test_refresh_refuses_another_method(tiny_backbone_dir, parent_dir, new_data):
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    folder = AdapterFolder.read(parent_dir, bmeta["fingerprint"])
    with pytest.raises(ValueError, match="differs from the parent adapter's 'lora'"):
        train_region(backbone, vocab, new_data, AdaptConfig(method="ia3", region=REGION),
                     TINY_TRAIN, parent=folder)
    with pytest.raises(ValueError, match="options .* differ from the parent's"):
        continue_region_task(backbone, vocab, folder, new_data.catalogue,
                             AdaptConfig(region=REGION, options={"r": 2}))



class _Stop(Exception):
    pass


def test_a_refresh_trains_at_its_own_learning_rate(tiny_backbone_dir, parent_dir, new_data,
                                                   monkeypatch):
    """``refresh_lr`` scales the learning rate of refreshes only, ``refresh_patience`` sets
    their patience; a new adapter keeps the training settings."""
    import regiontune.training.adapt as adapt_module

    seen = []

    def fake_fit(task, sequences, evaluate, cfg, *args, **kwargs):
        seen.append((cfg.lr, cfg.patience, cfg.epochs))
        raise _Stop

    monkeypatch.setattr(adapt_module, "fit", fake_fit)
    train = replace(TINY_TRAIN, lr=4e-3, patience=3)
    epochs = train.epochs
    for parent, refresh_lr, patience in ((parent_dir, 0.25, 7), (None, 0.25, 7),
                                         (parent_dir, 1.0, None)):
        backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
        folder = AdapterFolder.read(parent, bmeta["fingerprint"]) if parent else None
        with pytest.raises(_Stop):
            train_region(backbone, vocab, new_data,
                         AdaptConfig(region=REGION, refresh_lr=refresh_lr,
                                     refresh_patience=patience,
                                     refresh_epochs=epochs + 2 if patience else None), train,
                         parent=folder)
    assert seen == [(pytest.approx(1e-3), 7, epochs + 2), (pytest.approx(4e-3), 3, epochs),
                    (pytest.approx(4e-3), 3, epochs)]
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    with pytest.raises(ValueError, match="refresh_lr must be a positive number"):
        train_region(backbone, vocab, new_data, AdaptConfig(region=REGION, refresh_lr=0.0),
                     train, parent=AdapterFolder.read(parent_dir, bmeta["fingerprint"]))
    assert len(seen) == 3  # refused before training


def test_a_refresh_evaluates_its_hold_out_several_times_a_pass(tiny_backbone_dir, parent_dir,
                                                               new_data):
    """``refresh_evals_per_pass``: the refresh checks its hold-out that many times per pass
    over the new data (the cap still counts passes); its stats count passes, not parts."""
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    folder = AdapterFolder.read(parent_dir, bmeta["fingerprint"])
    _, stats = train_region(backbone, vocab, new_data,
                            AdaptConfig(region=REGION, refresh_evals_per_pass=2,
                                        refresh_epochs=1, refresh_patience=10),
                            TINY_TRAIN, parent=folder)
    # one pass in two parts: the start, then two evaluations
    assert stats["epochs_run"] == 1 and stats["evaluations"] == 3
    assert stats["best_epoch"] in (0, 0.5, 1)
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    _, plain = train_region(backbone, vocab, new_data,
                            AdaptConfig(region=REGION, refresh_epochs=1, refresh_patience=10),
                            TINY_TRAIN, parent=folder)
    assert plain["epochs_run"] == 1 and plain["evaluations"] == 2


@pytest.mark.parametrize("method", sorted(METHODS))
def test_shrink_moves_the_start_between_the_parent_and_a_fresh_adapter(
        tiny_backbone_dir, tiny_regions, new_data, tmp_path, method):
    """``refresh_shrink``: each trainable tensor goes to keep * parent + (1 - keep) * fresh;
    the item side's per-item rows and biases are scaled, its shared basis kept."""
    from regiontune.training.adapt import shrink_toward

    parent_dir = make_parent(tiny_backbone_dir, tiny_regions[REGION], method, tmp_path / "p")
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    folder = AdapterFolder.read(parent_dir, bmeta["fingerprint"], weights=True)
    fresh = {}
    task = continue_region_task(backbone, vocab, folder, new_data.catalogue,
                                AdaptConfig(method=method, region=REGION), fresh_out=fresh)
    body = {n: p.detach().clone() for n, p in task.body.named_parameters() if p.requires_grad}
    assert fresh.keys() == body.keys() and fresh  # every trainable tensor has a fresh value
    assert any(not torch.equal(fresh[n], body[n]) for n in body)  # the parent is not fresh
    side = task.item_side
    a, b, bias = (t.detach().clone() for t in (side.lowrank_a, side.lowrank_b, side.bias))
    shrink_toward(task, fresh, 0.25)
    for name, param in task.body.named_parameters():
        if name in body:
            torch.testing.assert_close(param.detach(), 0.25 * body[name] + 0.75 * fresh[name])
    torch.testing.assert_close(side.lowrank_a.detach(), 0.25 * a)
    torch.testing.assert_close(side.bias.detach(), 0.25 * bias)
    assert torch.equal(side.lowrank_b.detach(), b)


def test_a_shrunk_refresh_scores_the_parent_first_and_refuses_a_bad_share(
        tiny_backbone_dir, parent_dir, new_data, monkeypatch):
    """The refresh passes fit a shrink to run after the parent's start is scored (the
    parent stays the candidate to beat: ``fit``'s ``on_start``, tests/training/test_loop.py);
    unshrunk refreshes and new adapters pass none; a share outside (0, 1] is refused."""
    import regiontune.training.adapt as adapt_module

    seen = []

    def fake_fit(task, sequences, evaluate, cfg, *args, **kwargs):
        seen.append(kwargs.get("on_start"))
        raise _Stop

    monkeypatch.setattr(adapt_module, "fit", fake_fit)
    for parent, shrink in ((parent_dir, 0.5), (parent_dir, 1.0), (None, 0.5)):
        backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
        folder = AdapterFolder.read(parent, bmeta["fingerprint"]) if parent else None
        with pytest.raises(_Stop):
            train_region(backbone, vocab, new_data,
                         AdaptConfig(region=REGION, refresh_shrink=shrink), TINY_TRAIN,
                         parent=folder)
    assert callable(seen[0]) and seen[1:] == [None, None]
    for bad in (0.0, 1.5, float("nan")):
        backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
        with pytest.raises(ValueError, match=r"refresh_shrink must be in \(0, 1\]"):
            train_region(backbone, vocab, new_data,
                         AdaptConfig(region=REGION, refresh_shrink=bad), TINY_TRAIN,
                         parent=AdapterFolder.read(parent_dir, bmeta["fingerprint"]))
    assert len(seen) == 3  # refused before training


# ---------------------------------------------------------------- adapt(init_from=...)

def _data_cfg():
    return DataConfig(**{**TINY_DATA.__dict__})


def test_adapt_init_from_records_the_lineage(tiny_backbone_dir, parent_dir, tmp_path):
    out = tmp_path / "island-v2"
    meta = adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION),
                 replace(TINY_TRAIN, epochs=1), out, init_from=parent_dir)
    saved = json.loads((out / ADAPTER_META).read_text())
    lineage = saved["lineage"]
    assert lineage == json.loads(json.dumps(meta["lineage"]))
    parent = lineage["parent"]
    assert not parent["path"].startswith("/")  # relative to the new adapter's folder
    assert (out / parent["path"]).resolve() == parent_dir.resolve()
    assert parent["weights_sha256"] == file_digest(parent_dir / "adapter_model.safetensors")
    assert parent["trained_at"] and parent["method"] == "lora"
    assert lineage["generation"] == 1 and lineage["ancestors"][0] == parent
    assert lineage["data_period"]["start"] < lineage["data_period"]["end"]  # timestamps exist
    assert set(lineage["metrics_before"]) >= {"ndcg@10", "hr@10"}
    assert lineage["metrics_after"] == saved["metrics"]
    assert saved["catalogue"][:lineage["kept_items"]] == \
        json.loads((parent_dir / ADAPTER_META).read_text())["catalogue"]
    assert saved["trained_at"] and saved["method"] == "lora"
    # a refresh of the refresh: generation 2, the chain kept
    again = adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION),
                  replace(TINY_TRAIN, epochs=1), tmp_path / "island-v3", init_from=out)
    assert again["lineage"]["generation"] == 2
    assert [a["name"] for a in again["lineage"]["ancestors"]] == ["island-v2", "island-v1"]


def _nothing_written(tmp_path, out):
    assert not out.exists()
    assert not (tmp_path / f"{out.name}.work").exists()


def test_foreign_backbone_is_refused_and_nothing_written(tiny_backbone_dir, parent_dir,
                                                         tmp_path):
    foreign = tmp_path / "foreign"
    shutil.copytree(parent_dir, foreign)
    meta = json.loads((foreign / ADAPTER_META).read_text())
    meta["backbone_fingerprint"] = "sha256:" + "0" * 32
    (foreign / ADAPTER_META).write_text(json.dumps(meta))
    out = tmp_path / "out"
    with pytest.raises(BackboneMismatchError, match="was trained on backbone sha256:000"):
        adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION), TINY_TRAIN, out,
              init_from=foreign)
    _nothing_written(tmp_path, out)


def test_method_mismatch_and_non_adapters_are_refused(tiny_backbone_dir, parent_dir,
                                                      tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--method ia3 differs from the parent"):
        adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(method="ia3", region=REGION),
              TINY_TRAIN, out, init_from=parent_dir)
    with pytest.raises(ArtifactError, match="a backbone directory, not an adapter"):
        read_parent(tiny_backbone_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not an adapter directory"):
        adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION), TINY_TRAIN, out,
              init_from=tmp_path / "empty")
    with pytest.raises(ValueError, match="--out must differ"):
        adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION), TINY_TRAIN,
              parent_dir, init_from=parent_dir)
    _nothing_written(tmp_path, out)


# ---------------------------------------------------------------- items known by their text alone

def test_a_refresh_takes_the_parents_lift_off_and_lifts_once(text_island, lifted_island,
                                                            tmp_path, monkeypatch):
    """The parent's never-trained text-only items carry its offset plus its lift and text
    prior. A refresh starts them where a first adaptation does (bias 0, outside the training
    softmax), so its own calibration and lift act on them once: the refreshed adapter's
    record (its offset, lift and prior) gives their bias, as merges and later refreshes read
    it."""
    import regiontune.training.adapt as adapt_module
    from regiontune.adapters.merge import source_text
    from regiontune.adapters.text_growth import lifted_text_rows

    root, island, _ = text_island
    parent_path, cold, _ = lifted_island
    backbone, vocab, bmeta = load_backbone(root / "bb")
    parent = AdapterFolder.read(parent_path, bmeta["fingerprint"])
    rows = [parent.meta["catalogue"].index(i) for i in cold]
    saved = parent.tensors["regiontune.item_side.bias"].float()[rows]
    assert (saved - parent.meta["unseen_offset"]).abs().min() > 0.01  # lifted in the parent
    seen, real_fit = {}, adapt_module.fit

    def spy(task, *args, **kwargs):  # the refresh as it starts training
        seen["bias"] = task.item_side.bias.detach()[rows].clone()
        seen["negatives"] = task.negative_mask[rows].clone()
        return real_fit(task, *args, **kwargs)

    monkeypatch.setattr(adapt_module, "fit", spy)
    task, stats = train_region(backbone, vocab, island,
                               AdaptConfig(method="lora", region="island", text_lift_budget=1.0),
                               TEXT_TRAIN, parent=parent)
    assert torch.equal(seen["bias"], torch.zeros(len(cold)))
    assert not seen["negatives"].any()  # unseen again: not pushed down as negatives
    assert stats["unseen_items"] == len(cold) and stats["text_only_items"] == len(cold)
    out = tmp_path / "island-v2"
    save_adapter(task, "lora", "island", {"region": "island",
                                         "backbone_fingerprint": bmeta["fingerprint"],
                                         **stats}, out, "float16")
    refreshed = AdapterFolder.read(out, bmeta["fingerprint"])
    catalogue = refreshed.meta["catalogue"]
    text = source_text(refreshed, backbone, vocab.columns(catalogue) >= 0)
    lifted, _ = lifted_text_rows(refreshed.meta, refreshed.tensors, *text)
    assert lifted[[catalogue.index(i) for i in cold]].all()


def test_new_share_counts_the_new_interactions_against_all_so_far():
    from regiontune.training.adapt import new_share

    assert new_share(30, 70) == pytest.approx(0.3)
    assert new_share(30, None) is None  # without context the earlier data is not read
    assert new_share(0, 0) is None
