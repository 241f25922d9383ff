"""Shared fixtures: a tiny multi-region data set and a tiny pretrained backbone."""

from __future__ import annotations

import logging

import pytest

from regiontune.config import DataConfig, ModelConfig, TrainConfig
from regiontune.data.recipes import load_regions
from regiontune.model.backbone import load_backbone
from regiontune.training.pretrain import pretrain

TINY_DATA = DataConfig(synthetic_scale=0.06, seed=1)
TINY_MODEL = ModelConfig(arch="llama", hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_len=20, dropout=0.1)
TINY_TRAIN = TrainConfig(epochs=2, batch_size=32, lr=5e-3, patience=5, progress=False)
PRETRAIN_REGIONS = ["north", "south", "east"]


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):
    caplog.set_level(logging.WARNING)


@pytest.fixture(scope="session")
def tiny_regions():
    """Seven synthetic regions (big and small) at a tiny scale, split."""
    return load_regions(TINY_DATA)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    """A tiny llama-style backbone pretrained briefly on three regions, saved to disk."""
    out = tmp_path_factory.mktemp("backbone") / "bb"
    data = DataConfig(**{**TINY_DATA.__dict__, "regions": PRETRAIN_REGIONS})
    pretrain(data, TINY_MODEL, TINY_TRAIN, out)
    return out


@pytest.fixture
def tiny_backbone(tiny_backbone_dir):
    """A fresh in-memory copy (model, vocab, meta): PEFT wraps modules in place."""
    return load_backbone(tiny_backbone_dir)
