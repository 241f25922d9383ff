"""Distillation from a target-only teacher into a region's model.

A frozen backbone with a small adapter has little room to learn a region's item-item
structure from scratch; a classic recommender fitted on the region's own data has exactly
that structure. EASE (Steck, 2019) is fitted on the region's training histories (its lambda
tuned on the hold-out), its scores are turned into a distribution over the catalogue by a
temperature fitted on the hold-out (maximum likelihood of the held-out items), and the adapter
then trains on a mixture of the usual target and that distribution:

    loss = (1 - w) * CE(student, target) + w * CE(student, softmax(teacher / T))

at every position the one training loop already scores. The teacher sees what the student
sees: the items before the position (causal families) or the unmasked items (Cloze). It is
used in training only and never saved: the adapter file is unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from regiontune.data.splits import EvalCase
from regiontune.evaluation.baselines import holdout_key, tuned_ease
from regiontune.evaluation.evaluate import allowed_mask
from regiontune.model.recmodel import N_SPECIAL, PAD

logger = logging.getLogger(__name__)
TEMPERATURES = tuple(math.exp(x / 4) for x in range(-24, 1))  # exp(-6) .. 1, fitted


@dataclass
class Teacher:
    """EASE weights over a region's catalogue, in the catalogue's (token) order."""

    weights: torch.Tensor  # [n, n]; row i: what item i says about every item
    temperature: float
    share: float  # w: the teacher's share of the training target

    def __post_init__(self) -> None:
        n = self.weights.shape[0]
        # rows for the special tokens (PAD, MASK): they say nothing
        self._rows = torch.cat([torch.zeros(N_SPECIAL, n), self.weights.float()])

    def targets(self, tokens: torch.Tensor, targets: torch.Tensor, causal: bool,
                bias: torch.Tensor) -> torch.Tensor:
        """Teacher probabilities ``[positions, n]`` at the positions that have a target (in
        the order ``targets != PAD`` selects them), zero where the student's ``bias`` is
        ``-inf`` (items left out of the softmax) and on the items the position already sees.
        """
        rows = self._rows.to(tokens.device)
        n = rows.shape[1]
        keep = targets != PAD
        if causal:  # the items up to each position
            said = rows[tokens].cumsum(1)[keep]
            seen = _one_hot(tokens, n).cumsum(1)[keep] > 0
        else:  # the unmasked items of the row, at each of its masked positions
            visible = torch.where(tokens >= N_SPECIAL, tokens, torch.zeros_like(tokens))
            row_of = keep.nonzero()[:, 0]  # the row of each masked position
            said = rows[visible].sum(1)[row_of]
            seen = (_one_hot(visible, n).sum(1) > 0)[row_of]
        logits = said / self.temperature
        logits = logits.masked_fill(seen | torch.isinf(bias)[None, :], float("-inf"))
        return torch.softmax(logits, dim=1)


def _one_hot(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """``[batch, length, n]`` indicators of item tokens (PAD and MASK give zeros)."""
    out = torch.zeros(*tokens.shape, n + N_SPECIAL, device=tokens.device)
    out.scatter_(2, tokens[..., None], 1.0)
    return out[..., N_SPECIAL:]


def fit_temperature(scores: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor,
                    grid=TEMPERATURES) -> tuple[float, float]:
    """The temperature maximising the mean log-likelihood of ``target`` under
    ``softmax(scores / T)`` over each row's allowed columns; returns (T, log-likelihood)."""
    best = (grid[0], -math.inf)
    scores = scores.double().masked_fill(~allowed, float("-inf"))
    for temperature in grid:
        logp = torch.log_softmax(scores / temperature, dim=1)
        value = float(logp.gather(1, target[:, None]).mean())
        if value > best[1]:
            best = (temperature, value)
    return best


_CACHE: dict[str, tuple[torch.Tensor, float, float, float]] = {}  # the last teacher fitted


def fit_teacher(train: dict[str, list[str]], catalogue: list[str], holdout: list[EvalCase],
                share: float) -> tuple[Teacher, dict]:
    """EASE on ``train`` over ``catalogue`` (lambda and temperature fitted on ``holdout``).

    The last fit is kept: every method trained on the same data (a benchmark's adapters)
    reuses it instead of tuning EASE again.
    """
    if not 0 < share <= 1:
        raise ValueError(f"distill share must be in (0, 1], got {share}")
    key = holdout_key(train, catalogue, holdout)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = _fit(train, catalogue, holdout)
    weights, lam, temperature, loglik = _CACHE[key]
    info = {"distill_lambda": lam, "distill_temperature": round(temperature, 5),
            "distill_holdout_loglik": round(loglik, 4), "distill_share": share}
    logger.info("teacher: EASE lambda %s, temperature %.4f", lam, temperature)
    return Teacher(weights, temperature, share), info


def _fit(train: dict[str, list[str]], catalogue: list[str], holdout: list[EvalCase]
         ) -> tuple[torch.Tensor, float, float, float]:
    model, lam, _ = tuned_ease(train, catalogue, holdout)
    index = {item: i for i, item in enumerate(catalogue)}
    cases = [c for c in holdout if c.target in index]
    if cases:
        scores = torch.from_numpy(model.score([c.history for c in cases]))
        # the full catalogue (history excluded), as the training softmax sees it
        full = [EvalCase(c.user, c.history, c.target) for c in cases]
        allowed = allowed_mask(full, index, exclude_seen=True)
        target = torch.tensor([index[c.target] for c in cases])
        temperature, loglik = fit_temperature(scores, allowed, target)
    else:
        temperature, loglik = 0.05, float("nan")
    return torch.from_numpy(model.b), lam, temperature, loglik
