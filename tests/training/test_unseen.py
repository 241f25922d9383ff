"""The score level of items the region's training data never shows (core/unseen.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from regiontune.config import AdaptConfig
from regiontune.data.splits import EvalCase
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import train_region
from regiontune.training.unseen import calibrate_unseen, fit_offset, log_mass_ratio, unseen_mask
from tests.conftest import TINY_TRAIN

REGION = "island"
GHOSTS = ["ghost-1", "ghost-2"]  # catalogue items no training history holds


@pytest.fixture(scope="module")
def haunted(tiny_regions):
    """The island region with two items that only the catalogue names."""
    island = tiny_regions[REGION]
    return replace(island, catalogue=sorted(island.catalogue + GHOSTS))


def _likelihood(ratio: torch.Tensor, unseen_target: torch.Tensor, offset: float) -> float:
    """Hold-out log-likelihood as a function of the offset (terms constant in it dropped)."""
    z = ratio + offset
    return float((unseen_target * z - F.softplus(z)).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_offset_is_the_likelihood_optimum(seed):
    gen = torch.Generator().manual_seed(seed)
    ratio = torch.randn(200, generator=gen, dtype=torch.float64) * 2 - 3
    unseen_target = (torch.rand(200, generator=gen) < 0.1).double()
    offset = fit_offset(ratio, int(unseen_target.sum()), prior=0.0)
    grid = torch.linspace(-10, 10, 4001).tolist()
    best = max(grid, key=lambda d: _likelihood(ratio, unseen_target, d))
    assert abs(offset - best) < 0.01
    assert _likelihood(ratio, unseen_target, offset) >= _likelihood(ratio, unseen_target, best)


def test_fit_offset_grows_with_the_unseen_targets_and_stays_finite():
    ratio = torch.full((50,), -2.0)
    offsets = [fit_offset(ratio, k) for k in (0, 5, 25, 50)]
    assert all(abs(d) < 100 for d in offsets)  # no unseen target at all still gives a level
    assert offsets == sorted(offsets) and len(set(offsets)) == 4
    # half the cases unseen: the unseen items must hold half the mass, ratio + d = 0
    assert fit_offset(ratio, 25) == pytest.approx(2.0, abs=1e-6)
    # cases with no allowed unseen item cannot move mass and are left out
    with_empty = torch.cat([ratio, torch.full((50,), float("-inf"))])
    assert fit_offset(with_empty, 25) == pytest.approx(2.0, abs=1e-6)


def test_log_mass_ratio_respects_the_allowed_items():
    scores = torch.tensor([[0.0, 0.0, 0.0, 5.0]])
    unseen = torch.tensor([False, False, True, True])
    everything = torch.ones(1, 4, dtype=torch.bool)
    assert float(log_mass_ratio(scores, everything, unseen)) == pytest.approx(
        float(torch.log(torch.exp(torch.tensor(5.0)) + 1) - torch.log(torch.tensor(2.0))))
    no_last = torch.tensor([[True, True, True, False]])
    assert float(log_mass_ratio(scores, no_last, unseen)) == pytest.approx(-float(torch.log(
        torch.tensor(2.0))))


def test_unseen_mask_marks_items_no_history_holds():
    mask = unseen_mask(["a", "b", "c"], {"u1": ["a"], "u2": ["a", "c"]})
    assert mask.tolist() == [False, True, False]


def _train(backbone_dir, data, **adapt):
    backbone, vocab, _ = load_backbone(backbone_dir)
    cfg = AdaptConfig(method="lora", region=REGION, **adapt)
    return train_region(backbone, vocab, data, cfg, TINY_TRAIN)


def test_calibration_moves_only_the_unseen_items_bias(tiny_backbone_dir, haunted):
    plain, _ = _train(tiny_backbone_dir, haunted, calibrate_unseen=False)
    calibrated, stats = _train(tiny_backbone_dir, haunted)  # the default calibrates
    # the ghosts, and items whose only interactions were held out
    unseen = unseen_mask(haunted.catalogue, haunted.train)
    assert all(unseen[haunted.catalogue.index(g)] for g in GHOSTS)
    assert stats["unseen_items"] == int(unseen.sum()) and stats["unseen_offset"] != 0
    assert stats["holdout_cases"] == len(haunted.valid)
    moved = calibrated.item_side.bias[unseen] - plain.item_side.bias[unseen]
    # float16 adapter weights: the saved bias is rounded after the offset is added
    assert torch.allclose(moved, torch.full_like(moved, stats["unseen_offset"]), atol=2e-2)
    assert torch.equal(calibrated.item_side.bias[~unseen], plain.item_side.bias[~unseen])
    for name, p in plain.named_parameters():
        if "item_side.bias" not in name:
            assert torch.equal(p, dict(calibrated.named_parameters())[name]), name


def test_offset_follows_how_often_the_holdout_targets_are_unseen(tiny_backbone_dir, haunted):
    task, _ = _train(tiny_backbone_dir, haunted, calibrate_unseen=False)
    histories = [c.history for c in haunted.valid]
    ghost_cases = [EvalCase(c.user, c.history, GHOSTS[i % 2]) for i, c in enumerate(haunted.valid)]
    unseen = unseen_mask(haunted.catalogue, haunted.train)
    warm_cases = [c for c in haunted.valid if not unseen[haunted.catalogue.index(c.target)]]
    bias = task.item_side.bias.detach().clone()
    low = calibrate_unseen(task, haunted.catalogue, haunted.train, warm_cases)
    task.item_side.bias.data.copy_(bias)
    high = calibrate_unseen(task, haunted.catalogue, haunted.train, ghost_cases)
    assert low["holdout_unseen_targets"] == 0
    assert high["holdout_unseen_targets"] == len(ghost_cases)
    assert high["unseen_offset"] > low["unseen_offset"]
    # fitted to a hold-out whose targets are all unseen, unseen items hold most of the mass
    scores = task_scores(task, histories, haunted.catalogue)
    assert float(scores.softmax(1)[:, unseen].sum(1).mean()) > 0.5


def test_calibration_needs_the_item_bias(tiny_backbone_dir, haunted):
    with pytest.raises(ValueError, match="item_bias"):
        _train(tiny_backbone_dir, haunted, calibrate_unseen=True, item_bias=False)
