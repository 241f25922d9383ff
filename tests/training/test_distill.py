"""Distillation from a target-only EASE teacher (core/distill.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from regiontune.config import AdaptConfig, TrainConfig
from regiontune.model.backbone import load_backbone
from regiontune.model.objective import item_loss
from regiontune.model.recmodel import MASK, N_SPECIAL, PAD
from regiontune.training.adapt import train_region
from regiontune.training.distill import Teacher, fit_temperature

N = 5


def _teacher(temperature: float = 0.5) -> Teacher:
    torch.manual_seed(0)
    return Teacher(torch.randn(N, N), temperature, share=0.5)


def _expected(weights: torch.Tensor, visible: list[int], temperature: float,
              blocked: set[int]) -> torch.Tensor:
    """Brute force: softmax over items of the summed rows of the visible items."""
    logits = weights[visible].sum(0) / temperature
    for j in set(visible) | blocked:
        logits[j] = -math.inf
    return torch.softmax(logits, 0)


def test_causal_teacher_sees_the_items_before_each_position():
    teacher = _teacher()
    items = [3, 0, 4]  # catalogue indices; tokens are index + N_SPECIAL
    tokens = torch.tensor([[PAD] + [i + N_SPECIAL for i in items]])
    targets = torch.tensor([[PAD, 0 + N_SPECIAL, 4 + N_SPECIAL, 1 + N_SPECIAL]])
    bias = torch.zeros(N)
    got = teacher.targets(tokens, targets, causal=True, bias=bias)
    assert got.shape == (3, N)
    for p in range(3):
        want = _expected(teacher.weights, items[:p + 1], teacher.temperature, set())
        torch.testing.assert_close(got[p], want)


def test_cloze_teacher_sees_the_unmasked_items_and_respects_excluded_items():
    teacher = _teacher(0.3)
    tokens = torch.tensor([[PAD, 2 + N_SPECIAL, MASK, 1 + N_SPECIAL, MASK]])
    targets = torch.tensor([[PAD, PAD, 0 + N_SPECIAL, PAD, 3 + N_SPECIAL]])
    bias = torch.tensor([0.0, 0.0, 0.0, 0.0, -math.inf])  # item 4 left out of the softmax
    got = teacher.targets(tokens, targets, causal=False, bias=bias)
    want = _expected(teacher.weights, [2, 1], 0.3, {4})
    assert got.shape == (2, N)
    torch.testing.assert_close(got[0], want)
    torch.testing.assert_close(got[1], want)
    assert got[:, [1, 2, 4]].abs().sum() == 0


def test_soft_target_equal_to_the_hard_one_gives_plain_cross_entropy():
    torch.manual_seed(1)
    hidden, table, bias = torch.randn(2, 4, 3), torch.randn(N, 3), torch.randn(N)
    targets = torch.tensor([[PAD, 2 + N_SPECIAL, 3 + N_SPECIAL, 0 + N_SPECIAL],
                            [PAD, PAD, 1 + N_SPECIAL, 4 + N_SPECIAL]])
    keep = targets != PAD
    t = targets[keep] - N_SPECIAL
    plain = F.cross_entropy(hidden[keep] @ table.T + bias, t)
    one_hot = F.one_hot(t, N).float()
    for share in (0.0, 0.3, 1.0):
        mixed = item_loss(hidden, targets, table, bias, soft=one_hot, soft_share=share)
        torch.testing.assert_close(mixed, plain)
    # a different soft target changes the loss
    uniform = torch.full((len(t), N), 1.0 / N)
    assert not torch.isclose(item_loss(hidden, targets, table, bias, soft=uniform,
                                       soft_share=0.5), plain)


def test_soft_targets_ignore_items_without_a_logit():
    hidden, table = torch.randn(1, 2, 3), torch.randn(N, 3)
    bias = torch.tensor([0.0, 0.0, -math.inf, 0.0, 0.0])
    targets = torch.tensor([[PAD, 1 + N_SPECIAL]])
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0]])
    assert torch.isfinite(item_loss(hidden, targets, table, bias, soft=soft, soft_share=0.5))


def test_fitted_temperature_sharpens_with_a_more_telling_teacher():
    torch.manual_seed(2)
    scores = torch.randn(400, 30)
    allowed = torch.ones_like(scores, dtype=torch.bool)
    telling = scores.argmax(1)  # the teacher's top item is always the target
    noisy = torch.randint(0, 30, (400,))
    t_telling, ll_telling = fit_temperature(scores, allowed, telling)
    t_noisy, ll_noisy = fit_temperature(scores, allowed, noisy)
    assert t_telling < t_noisy
    assert ll_telling > ll_noisy
    # a grid point: no other temperature of the grid gives a higher likelihood
    for temperature in (t_telling * 0.9, t_telling * 1.1):
        logp = torch.log_softmax(scores.double() / temperature, 1)
        assert float(logp.gather(1, telling[:, None]).mean()) <= ll_telling + 1e-3


@pytest.mark.parametrize("share", [0.5])
def test_distilled_adapter_trains_and_saves_the_same_tensors(tiny_backbone_dir, tiny_regions,
                                                              share):
    data = tiny_regions["island"]
    cfg = TrainConfig(epochs=2, batch_size=16, lr=5e-3, progress=False)
    tasks = {}
    for distill in (0.0, share):
        backbone, vocab, _ = load_backbone(tiny_backbone_dir)
        # the trained weights, not the hold-out's pick between them and the start
        task, stats = train_region(backbone, vocab, data,
                                   AdaptConfig(method="lora", region="island", distill=distill,
                                               start_as_candidate=False), cfg)
        tasks[distill] = task
        assert task.teacher is None  # training only
    assert stats["distill_share"] == share and stats["distill_lambda"] > 0
    assert 0 < stats["distill_temperature"] <= 1
    plain = {n: p for n, p in tasks[0.0].named_parameters() if p.requires_grad}
    taught = {n: p for n, p in tasks[share].named_parameters() if p.requires_grad}
    assert plain.keys() == taught.keys()
    assert any(not torch.equal(plain[n], taught[n]) for n in plain)  # the teacher mattered
