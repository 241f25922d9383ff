"""Saved precision and the automatic item rank: the adapter stays within its size budget."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from regiontune.adapters import (
    load_adapter,
    save_adapter,
)
from regiontune.adapters.folder import WEIGHTS
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.training.adapt import build_region_task, train_region
from tests.adapters.common import (
    REGION,
    SMALL,
    fresh_backbone,
    probe_histories,
)
from tests.conftest import TINY_TRAIN


def load_backbone_copy(tiny_backbone):
    import copy

    return copy.deepcopy(tiny_backbone[0])


def test_auto_item_rank_keeps_the_adapter_within_budget(tiny_backbone, island):
    """Bigger catalogues get a smaller item rank; an explicit rank is used as given."""
    from regiontune.training.adapt import auto_item_rank

    backbone, vocab, _ = tiny_backbone
    cfg = AdaptConfig(method="lora", region=REGION, item_budget=0.25)
    total = sum(p.numel() for p in backbone.parameters())  # before PEFT adds its own
    small = build_region_task(backbone, vocab, island.catalogue, cfg, total_steps=10)
    adapter = sum(p.numel() for p in small.parameters() if p.requires_grad)
    if small.item_side.rank < cfg.max_item_rank:  # the budget, not the cap, set the rank
        # in bytes: the adapter is saved in float16 (weights_dtype auto), the backbone float32
        assert 2 * adapter <= 0.25 * 4 * total
    big = auto_item_rank(backbone, small.body, 10 * len(island.catalogue), cfg)
    assert big < small.item_side.rank or big == 1
    fixed = AdaptConfig(method="ia3", region=REGION, item_rank=3)
    task = build_region_task(load_backbone_copy(tiny_backbone), vocab, island.catalogue, fixed)
    assert task.item_side.rank == 3


# -- half-precision adapter files ---------------------------------------------------------------


@pytest.mark.parametrize("method", SMALL)
def test_float16_adapter_is_half_the_file_and_scores_as_trained(tiny_backbone_dir, island,
                                                               tmp_path, method):
    """Trained weights are rounded to float16 when training ends: saved == evaluated."""
    sizes, tasks = {}, {}
    for dtype in ("float32", "float16"):
        backbone, vocab, meta = fresh_backbone(tiny_backbone_dir)
        # no item-item part (its integer indices stay integers: tests/adapters/test_item_item)
        cfg = AdaptConfig(method=method, region=REGION, item_rank=4, weights_dtype=dtype,
                          neighbours=0)
        task, _ = train_region(backbone, vocab, island, cfg, TINY_TRAIN)
        saved = save_adapter(task, method, REGION, {"region": REGION, "backbone_fingerprint":
                                                    meta["fingerprint"]}, tmp_path / dtype,
                             dtype)
        assert saved["weights_dtype"] == dtype
        assert f"| Weights dtype | {dtype} |" in (tmp_path / dtype / "README.md").read_text()
        sizes[dtype], tasks[dtype] = saved["adapter_bytes"], task
    assert sizes["float16"] < sizes["float32"]  # tensors halve; the JSON header does not
    tensors = {d: load_file(tmp_path / d / WEIGHTS) for d in sizes}
    assert {t.dtype for t in tensors["float16"].values()} == {torch.float16}
    assert 2 * sum(t.nbytes for t in tensors["float16"].values()) == sum(
        t.nbytes for t in tensors["float32"].values())
    backbone, vocab, meta = fresh_backbone(tiny_backbone_dir)
    loaded = load_adapter(tmp_path / "float16", backbone, vocab, meta["fingerprint"])
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    histories = probe_histories(island)
    want = task_scores(tasks["float16"], histories, island.catalogue)
    torch.testing.assert_close(task_scores(loaded, histories, island.catalogue), want,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", SMALL)
def test_auto_item_rank_keeps_the_saved_file_within_budget(tiny_backbone, island, tmp_path,
                                                           method):
    """The file, JSON header included, fits the budget (a share of the backbone's tensor bytes)."""
    backbone, vocab, meta = tiny_backbone
    backbone_bytes = 4 * sum(p.numel() for p in backbone.parameters())  # float32, before PEFT
    cfg = AdaptConfig(method=method, region=REGION, item_budget=0.3, max_item_rank=10_000)
    task = build_region_task(backbone, vocab, island.catalogue, cfg, total_steps=10)
    assert task.item_side.rank > 1  # the budget, not the floor, set it
    # the item-item part took its share of the same budget (int16 indices + float16 weights)
    assert task.item_item is not None and task.item_item.k > 0
    saved = save_adapter(task, method, REGION, {"region": REGION, "backbone_fingerprint":
                                                meta["fingerprint"]}, tmp_path / "a", "float16")
    assert saved["adapter_bytes"] == (tmp_path / "a" / WEIGHTS).stat().st_size
    assert saved["adapter_bytes"] <= 0.3 * backbone_bytes


def test_float16_doubles_the_auto_item_rank_budget(tiny_backbone, island):
    from regiontune.training.adapt import auto_item_rank

    backbone, vocab, _ = tiny_backbone
    ranks = {}
    for dtype in ("float32", "bfloat16"):
        cfg = AdaptConfig(method="lora", region=REGION, item_budget=0.05, max_item_rank=10_000,
                          weights_dtype=dtype)
        ranks[dtype] = auto_item_rank(backbone, None, len(island.catalogue), cfg)
    # (2 * budget - n) // (n + h) against (budget - n) // (n + h): about twice, never less
    assert ranks["bfloat16"] >= 2 * ranks["float32"]


def test_weights_dtype_errors_come_before_training(tiny_backbone, island):
    backbone, vocab, _ = tiny_backbone
    with pytest.raises(ValueError, match="float8.*bfloat16"):
        train_region(backbone, vocab, island,
                     AdaptConfig(method="lora", region=REGION, weights_dtype="float8"), TINY_TRAIN)
