"""Replay for refreshes (``AdaptConfig.replay``, ``adapt --init-from ... --replay``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from regiontune.artifacts import ADAPTER_META
from regiontune.config import AdaptConfig, DataConfig
from regiontune.data.loading import DataError
from regiontune.data.recipes import load_regions
from regiontune.training.adapt import adapt, read_parent
from regiontune.training.replay import (
    REPLAY_PREFIX,
    check_replay,
    parent_training_histories,
    refresh_train_config,
    sample_replay,
)
from tests.conftest import TINY_DATA, TINY_TRAIN

REGION = "island"
ONE_EPOCH = replace(TINY_TRAIN, epochs=1)


def _data_cfg():
    return DataConfig(**{**TINY_DATA.__dict__})


@pytest.fixture(scope="module")
def island_train():
    return load_regions(TINY_DATA)[REGION].train


@pytest.fixture(scope="module")
def recorded_parent(tiny_backbone_dir, tmp_path_factory):
    """An adapter written by ``adapt``: its region.json records the data configuration."""
    out = tmp_path_factory.mktemp("replay") / "island-v1"
    adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION), ONE_EPOCH, out)
    return out


def test_sample_replay_is_seeded_and_sized():
    histories = {f"u{i}": [f"i{i}", f"i{i + 1}", "gone"] for i in range(40)}
    half = sample_replay(histories, 0.5, seed=3, catalogue=[f"i{i}" for i in range(41)])
    assert len(half) == 20 and all(k.startswith(REPLAY_PREFIX) for k in half)
    assert half == sample_replay(histories, 0.5, seed=3, catalogue=[f"i{i}" for i in range(41)])
    assert set(half) != set(sample_replay(histories, 0.5, seed=4))
    assert all("gone" not in h and len(h) == 2 for h in half.values())  # unknown items dropped
    assert len(sample_replay(histories, 0.33, seed=0)) == round(40 * 0.33)
    assert sample_replay(histories, 0.0, seed=0) == {}
    assert len(sample_replay(histories, 1.0, seed=0)) == 40


def test_parent_histories_are_its_training_data(recorded_parent, island_train):
    assert parent_training_histories(read_parent(recorded_parent)) == island_train


def test_refresh_with_replay_adds_seeded_users_and_records_them(tiny_backbone_dir,
                                                                recorded_parent, island_train,
                                                                tmp_path):
    expected = round(len(island_train) * 0.5)
    metas = [adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION, replay=0.5),
                   ONE_EPOCH, tmp_path / name, init_from=recorded_parent)
             for name in ("a", "b")]
    for meta in metas:
        assert meta["lineage"]["replay"] == {"fraction": 0.5, "users": expected}
        assert meta["train_users"] == len(island_train) + expected  # new users + replayed
    saved = json.loads((tmp_path / "a" / ADAPTER_META).read_text())
    assert saved["lineage"]["replay"] == {"fraction": 0.5, "users": expected}
    assert saved["config"]["adapt"]["replay"] == 0.5
    assert metas[0]["metrics"] == metas[1]["metrics"]  # reproducible
    plain = adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION), ONE_EPOCH,
                  tmp_path / "plain", init_from=recorded_parent)
    assert plain["lineage"]["replay"] is None and plain["train_users"] == len(island_train)


def _nothing_written(tmp_path, out):
    assert not out.exists()
    assert not (tmp_path / f"{out.name}.work").exists()


def test_gone_parent_data_is_a_clear_error(tiny_backbone_dir, recorded_parent, tmp_path):
    moved = tmp_path / "moved-parent"
    shutil.copytree(recorded_parent, moved)
    meta = json.loads((moved / ADAPTER_META).read_text())
    gone = tmp_path / "old-period.csv"
    meta["config"]["data"] = {**meta["config"]["data"], "recipe": "files",
                              "files": [str(gone)]}
    (moved / ADAPTER_META).write_text(json.dumps(meta))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=f"training data at {gone} is gone: pass --replay 0"):
        adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION, replay=0.5),
              ONE_EPOCH, out, init_from=moved)
    _nothing_written(tmp_path, out)
    del meta["config"]
    (moved / ADAPTER_META).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="records no data configuration"):
        adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION, replay=0.5),
              ONE_EPOCH, out, init_from=moved)
    _nothing_written(tmp_path, out)
    # without replay (and without context) the same parent refreshes: its data is not needed
    adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION, refresh_context=False),
          ONE_EPOCH, out, init_from=moved)


def test_replay_needs_a_refresh_and_a_share(tiny_backbone_dir, recorded_parent, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="needs --init-from"):
        adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION, replay=0.5),
              ONE_EPOCH, out)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"--replay must be in \[0, 1\]"):
            adapt(tiny_backbone_dir, _data_cfg(), AdaptConfig(region=REGION, replay=bad),
                  ONE_EPOCH, out, init_from=recorded_parent)
    _nothing_written(tmp_path, out)
    check_replay(0.0, None)  # off: fine anywhere


# ---------------------------------------------------------------- the refresh's learning rate

def test_refresh_train_config_sets_the_learning_rate_and_patience_alone():
    cfg = replace(TINY_TRAIN, lr=4e-3, patience=3)
    scaled = refresh_train_config(cfg, 0.25)
    assert scaled.lr == pytest.approx(1e-3) and scaled.patience == 3
    assert replace(scaled, lr=cfg.lr) == cfg  # nothing else changes
    longer = refresh_train_config(cfg, 1.0, 6)
    assert longer.patience == 6 and replace(longer, patience=3) == cfg
    assert (cfg.lr, cfg.patience) == (4e-3, 3)  # the caller's settings are not edited
    for bad in (0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="refresh_lr must be a positive number"):
            refresh_train_config(cfg, bad)
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="refresh_patience must be a whole number"):
            refresh_train_config(cfg, 1.0, bad)
    capped = refresh_train_config(cfg, 1.0, None, 5)
    assert capped.epochs == 5 and replace(capped, epochs=cfg.epochs) == cfg
    assert refresh_train_config(cfg, 1.0).epochs == cfg.epochs
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="refresh_epochs must be a whole number"):
            refresh_train_config(cfg, 1.0, None, bad)
    # evaluations per pass: epochs become parts of a pass, the cap and schedule still span
    # the same passes, the patience counts evaluations
    finer = refresh_train_config(cfg, 1.0, 6, None, 2)
    assert (finer.epoch_parts, finer.epochs, finer.patience) == (2, 2 * cfg.epochs, 6)
    assert replace(finer, epoch_parts=1, epochs=cfg.epochs, patience=3) == cfg
    assert refresh_train_config(cfg, 1.0, None, 5, 3).epochs == 15
    assert refresh_train_config(cfg, 1.0, None, None, 1) == cfg
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="refresh_evals_per_pass must be a whole number"):
            refresh_train_config(cfg, 1.0, None, None, bad)
