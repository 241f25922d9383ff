"""A score level for catalogue items the region's training data never shows.

Such items (new arrivals, items only a candidate list names, items all of whose users were
left out of a data fraction) get no positive signal in training. Pushed down as negatives
they score at the bottom, however well the backbone knows them from other regions; left out
of the softmax their score level is arbitrary: nothing ties it to the trained items' level.

``calibrate_unseen`` fits that level from data the run already holds out: one offset ``d``
added to every unseen item's logit, by maximum likelihood of the early-stopping hold-out's
targets under the model's softmax over the catalogue. The likelihood is concave in ``d`` and
its optimum makes the probability the model gives to unseen items, summed over the hold-out
cases, equal the number of hold-out targets that are unseen items (with half a case added on
each side, so a hold-out without any gives a finite offset). The offset goes into the item
bias, so the saved adapter serves it with no change of format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from regiontune.data.splits import EvalCase
from regiontune.evaluation.evaluate import allowed_mask, task_scores

logger = logging.getLogger(__name__)
PRIOR_CASES = 0.5  # pseudo-count: the unseen share of the targets is (k + 0.5) / (n + 1)


def trained_items(train: dict[str, list[str]]) -> set[str]:
    """Every item some training history holds."""
    return {i for history in train.values() for i in history}


def unseen_mask(catalogue: Sequence[str], train: dict[str, list[str]]) -> torch.Tensor:
    """True for catalogue items that no training history holds."""
    trained = trained_items(train)
    return torch.tensor([item not in trained for item in catalogue], dtype=torch.bool)


def log_mass_ratio(scores: torch.Tensor, allowed: torch.Tensor,
                   unseen: torch.Tensor) -> torch.Tensor:
    """Per case: log(softmax mass on allowed unseen items / mass on allowed trained items)."""
    scores = scores.double().masked_fill(~allowed, float("-inf"))
    return (torch.logsumexp(scores[:, unseen], 1) - torch.logsumexp(scores[:, ~unseen], 1))


def fit_offset(ratio: torch.Tensor, unseen_targets: int, prior: float = PRIOR_CASES) -> float:
    """The offset ``d`` with ``sum_c sigmoid(ratio_c + d) = unseen_targets + prior`` over
    ``len(ratio) + 2 * prior`` cases -- the likelihood optimum, smoothed.

    Cases without any allowed unseen item (ratio ``-inf``) cannot put mass there and are
    left out of both sides.
    """
    ratio = ratio[torch.isfinite(ratio)].double()
    if len(ratio) == 0:
        return 0.0
    share = (unseen_targets + prior) / (len(ratio) + 2 * prior)
    # the mean of sigmoid(ratio + d) rises monotonically in d: bisect
    low, high = float(-ratio.max()) - 60.0, float(-ratio.min()) + 60.0
    for _ in range(200):
        mid = (low + high) / 2
        if torch.sigmoid(ratio + mid).mean() < share:
            low = mid
        else:
            high = mid
    return (low + high) / 2


@torch.no_grad()
def calibrate_unseen(task, catalogue: Sequence[str], train: dict[str, list[str]],
                     cases: list[EvalCase], batch_size: int = 512) -> dict[str, float | int]:
    """Fit the unseen items' offset on ``cases`` (the hold-out) and add it to their bias."""
    bias = task.item_side.bias
    if bias is None:
        raise ValueError("calibrating unseen items needs the item bias (item_bias: true), "
                         "where the offset is stored")
    unseen = unseen_mask(catalogue, train)
    index = {item: i for i, item in enumerate(catalogue)}
    cases = [c for c in cases if c.target in index]
    info = {"unseen_items": int(unseen.sum()), "holdout_cases": len(cases),
            "holdout_unseen_targets": sum(bool(unseen[index[c.target]]) for c in cases),
            "unseen_offset": 0.0}
    if not unseen.any() or unseen.all() or not cases:
        return info
    ratios = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        scores = task_scores(task, [c.history for c in chunk], catalogue)
        ratios.append(log_mass_ratio(scores, allowed_mask(chunk, index, True), unseen))
    offset = fit_offset(torch.cat(ratios), info["holdout_unseen_targets"])
    row_of = {item: i for i, item in enumerate(task.item_side.catalogue)}
    rows = torch.tensor([row_of[catalogue[i]] for i in unseen.nonzero().flatten().tolist()])
    bias.data[rows.to(bias.device)] += offset
    info["unseen_offset"] = round(offset, 4)
    logger.info("unseen items: %d; hold-out targets among them: %d of %d; offset %.3f",
                info["unseen_items"], info["holdout_unseen_targets"], len(cases), offset)
    return info


# ---------------------------------------------------------------- items known by their text alone

# the extra lifts tried for never-trained items scored by their text alone, in score units
LIFT_GRID = tuple(round(0.1 * i, 1) for i in range(31))


def text_only_mask(task, catalogue: Sequence[str], train: dict[str, list[str]]) -> torch.Tensor:
    """True for ``catalogue`` items no training history holds whose embedding is their text's
    alone (region-new items with a text vector on a text-aware backbone)."""
    has = getattr(task, "new_has_text", None)
    if has is None:
        return torch.zeros(len(catalogue), dtype=torch.bool)
    row_of = {item: i for i, item in enumerate(task.item_side.catalogue)}
    text = has.bool().cpu()
    return unseen_mask(catalogue, train) & torch.tensor(
        [bool(text[row_of[item]]) for item in catalogue], dtype=torch.bool)


def choose_lift(scores: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor,
                lifted: torch.Tensor, budget: float, grid: Sequence[float] = LIFT_GRID
                ) -> tuple[float, dict[float, tuple[float, float]]]:
    """The largest ``grid`` lift ``d`` (added to the ``lifted`` columns' scores) whose NDCG@10
    on the cases with a target outside ``lifted`` stays within ``budget`` (a share) of its value
    at ``d = 0``; and, per lift, (NDCG@10 of those cases, of the cases whose target is lifted)."""
    from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks

    lifted_case = lifted[target]
    found: dict[float, tuple[float, float]] = {}
    for d in grid:
        ranks = target_ranks(scores + d * lifted.to(scores.dtype), target, allowed)
        found[d] = (metrics_from_ranks(ranks[~lifted_case])["ndcg@10"],
                    metrics_from_ranks(ranks[lifted_case])["ndcg@10"] if lifted_case.any()
                    else 0.0)
    floor = (1.0 - budget) * found[grid[0]][0]
    return max(d for d in grid if found[d][0] >= floor), found


@torch.no_grad()
def lift_text_items(task, catalogue: Sequence[str], train: dict[str, list[str]],
                    cases: list[EvalCase], budget: float,
                    dtype: torch.dtype | None = None) -> dict:
    """Raise the never-trained, text-only items' bias by the largest lift of :data:`LIFT_GRID`
    that costs the other hold-out targets at most ``budget`` of their NDCG@10 (their level
    was calibrated for likelihood, which ranks them almost never into a top 10: their
    text-derived scores are noisy). Chosen after everything else that scores (the calibrated
    offset, the item-item part), on ``cases`` (the early-stopping hold-out); 0: no lift.
    ``dtype``: the adapter's saved dtype: the lifted biases are rounded to it (chosen ==
    saved == served)."""
    lifted = text_only_mask(task, catalogue, train)
    index = {item: i for i, item in enumerate(catalogue)}
    cases = [c for c in cases if c.target in index]
    if not lifted.any():
        return {}
    info: dict = {"text_lift": 0.0, "text_lift_budget": budget,
                  "text_only_items": int(lifted.sum())}
    if budget <= 0 or not cases:
        return info
    scores = task_scores(task, [c.history for c in cases], catalogue)
    allowed = allowed_mask(cases, index, True)
    target = torch.tensor([index[c.target] for c in cases])
    lift, found = choose_lift(scores, allowed, target, lifted, budget)
    row_of = {item: i for i, item in enumerate(task.item_side.catalogue)}
    rows = torch.tensor([row_of[catalogue[i]] for i in lifted.nonzero().flatten().tolist()])
    bias = task.item_side.bias
    if bias is None:
        raise ValueError("lifting text-only items needs the item bias (item_bias: true)")
    rows = rows.to(bias.device)
    bias.data[rows] = (bias.data[rows] + lift).to(dtype or bias.dtype).to(bias.dtype)
    info.update(text_lift=lift, text_lift_holdout={
        str(d): [round(w, 4), round(c, 4)] for d, (w, c) in found.items()})
    logger.info("text-only items: %d; lift %.1f (hold-out NDCG@10 of the others %.4f -> %.4f, "
                "of theirs %.4f -> %.4f)", int(lifted.sum()), lift, found[0.0][0],
                found[lift][0], found[0.0][1], found[lift][1])
    return info
