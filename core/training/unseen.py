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

from regiontune.adapters.region_task import catalogue_text as text_vectors_of
from regiontune.adapters.text_growth import attach_text_prior, lifted_text_rows
from regiontune.data.splits import EvalCase
from regiontune.evaluation.evaluate import allowed_mask, task_scores
from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks

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
# the scales tried for their text prior (a standardised ridge prediction of an item's log
# popularity in the region from its text vector), in score units; 0: no prior
PRIOR_SCALES = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
RIDGE = 10.0  # on unit text vectors
MIN_PRIOR_ITEMS = 20  # trained items with text the prior needs


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


def catalogue_text(task, catalogue: Sequence[str]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Text vectors of ``catalogue`` (the backbone's cache, then the region's own) and which
    items have one."""
    return text_vectors_of(task.backbone, list(catalogue), getattr(task, "region_text", None))


def popularity_prior(vectors: torch.Tensor, counts: torch.Tensor, ridge: float = RIDGE
                     ) -> tuple[torch.Tensor, float]:
    """``(weight, bias)`` of ``z(v) = normalize(v) @ weight + bias``: the ridge regression of
    ``log(1 + counts)`` on the unit ``vectors``, standardised over them (mean 0, std 1)."""
    x = torch.nn.functional.normalize(vectors.double(), dim=-1)
    y = torch.log1p(counts.double())
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype),
                           x.T @ (y - y.mean()))
    pred = x @ w
    std = float(pred.std()) or 1.0
    return (w / std).float(), float(-pred.mean() / std)


def choose_lift(scores: torch.Tensor, allowed: torch.Tensor, target: torch.Tensor,
                lifted: torch.Tensor, budget: float, grid: Sequence[float] = LIFT_GRID,
                prior: torch.Tensor | None = None, scales: Sequence[float] = (0.0,)
                ) -> tuple[tuple[float, float], dict[tuple[float, float], tuple[float, float]]]:
    """The ``(scale, lift)`` whose ``lift + scale * prior`` (added to the ``lifted`` columns'
    scores; ``prior``: per column) keeps the NDCG@10 of the cases with a target outside
    ``lifted`` within ``budget`` (a share) of its value at ``(0, 0)`` and, within that, ranks
    the lifted targets best (ties: the smaller scale, then the larger lift: the budget is
    used); and, per pair, (NDCG@10 of the other cases, of the lifted-target cases)."""
    lifted_case = lifted[target]
    prior = torch.zeros(lifted.shape[0]) if prior is None else prior
    found: dict[tuple[float, float], tuple[float, float]] = {}
    for scale in scales:
        for d in grid:
            extra = (d + scale * prior) * lifted.to(prior.dtype)
            ranks = target_ranks(scores + extra.to(scores.dtype), target, allowed)
            found[(scale, d)] = (
                metrics_from_ranks(ranks[~lifted_case])["ndcg@10"],
                metrics_from_ranks(ranks[lifted_case])["ndcg@10"] if lifted_case.any() else 0.0)
    floor = (1.0 - budget) * found[(scales[0], grid[0])][0]
    ok = [key for key, (others, _) in found.items() if others >= floor]
    return max(ok, key=lambda k: (found[k][1], -k[0], k[1])), found


@torch.no_grad()
def lift_text_items(task, catalogue: Sequence[str], train: dict[str, list[str]],
                    cases: list[EvalCase], budget: float,
                    dtype: torch.dtype | None = None,
                    scales: Sequence[float] = PRIOR_SCALES) -> dict:
    """Raise the never-trained, text-only items' bias -- their level was calibrated for
    likelihood, which ranks them almost never into a top 10: their text-derived scores are
    noisy -- by a lift and a scaled text prior (predicted popularity: :func:`popularity_prior`,
    fitted on the region's trained items with text), the pair of :data:`LIFT_GRID` x
    ``scales`` that ranks the hold-out's text-only targets best while costing its other
    targets at most ``budget`` of their NDCG@10 (:func:`choose_lift`). Chosen after
    everything else that scores (the calibrated offset, the item-item part), on ``cases``
    (the early-stopping hold-out). A chosen prior is kept on the item side
    (``TextPrior``: growth gives items added with text alone the same bias). ``dtype``: the
    adapter's saved dtype: the prior and lifted biases are rounded to it (chosen == saved ==
    served)."""
    lifted = text_only_mask(task, catalogue, train)
    index = {item: i for i, item in enumerate(catalogue)}
    cases = [c for c in cases if c.target in index]
    if not lifted.any():
        return {}
    info: dict = {"text_lift": 0.0, "text_lift_budget": budget,
                  "text_only_items": int(lifted.sum()), "text_prior_scale": 0.0}
    if budget <= 0 or not cases:
        return info
    counts: dict[str, int] = {}
    for user, history in train.items():
        if not user.startswith("\0"):  # pseudo-histories (a refresh's parent catalogue)
            for item in history:
                counts[item] = counts.get(item, 0) + 1
    vectors, has = catalogue_text(task, catalogue)
    fit_rows = has & ~unseen_mask(catalogue, train)
    weight, shift, prior = None, 0.0, None
    if vectors is not None and int(fit_rows.sum()) >= MIN_PRIOR_ITEMS:
        weight, shift = popularity_prior(
            vectors[fit_rows], torch.tensor([float(counts.get(catalogue[i], 0))
                                             for i in fit_rows.nonzero().flatten().tolist()]))
        prior = torch.nn.functional.normalize(vectors.float(), dim=-1) @ weight + shift
    else:
        scales = (0.0,)
    scores = task_scores(task, [c.history for c in cases], catalogue)
    allowed = allowed_mask(cases, index, True)
    target = torch.tensor([index[c.target] for c in cases])
    (scale, lift), found = choose_lift(scores, allowed, target, lifted, budget, LIFT_GRID,
                                       prior, scales)
    row_of = {item: i for i, item in enumerate(task.item_side.catalogue)}
    positions = lifted.nonzero().flatten()
    rows = torch.tensor([row_of[catalogue[i]] for i in positions.tolist()])
    bias = task.item_side.bias
    if bias is None:
        raise ValueError("lifting text-only items needs the item bias (item_bias: true)")
    rows = rows.to(bias.device)
    extra = torch.full((len(rows),), lift)
    if scale:
        module = attach_text_prior(task.item_side, weight.shape[0])
        stored = dtype or torch.float32
        module.weight.copy_((scale * weight).to(stored).float())
        module.bias.copy_(torch.tensor(scale * shift + lift).to(stored).float())
        extra = module(vectors[positions]).cpu()
    bias.data[rows] = (bias.data[rows] + extra.to(bias.device)).to(dtype or bias.dtype).to(
        bias.dtype)
    info.update(text_lift=lift, text_prior_scale=scale, text_lift_holdout={
        f"{s:g}/{d:g}": [round(w, 4), round(c, 4)] for (s, d), (w, c) in found.items()
        if d in (0.0, lift) or s in (0.0, scale)})
    logger.info("text-only items: %d; lift %.1f, prior scale %.2f (hold-out NDCG@10 of the "
                "others %.4f -> %.4f, of theirs %.4f -> %.4f)", int(lifted.sum()), lift, scale,
                found[(scales[0], 0.0)][0], found[(scale, lift)][0],
                found[(scales[0], 0.0)][1], found[(scale, lift)][1])
    return info


@torch.no_grad()
def unlift_parent_items(task, parent) -> list[str]:
    """A refresh's start (``task``: the parent continued, ``parent``: its folder with its
    weights): the parent's never-trained items known by their text alone -- ``A`` row 0 and
    the bias its record gives them (``unseen_offset`` plus its lift or text prior:
    ``text_growth.lifted_text_rows``) -- go back to the bias a first adaptation starts them at
    (0: the parent's offset, lift and prior taken off), so that the refresh's calibration
    and lift give them its own offset and lift, once, and the refreshed adapter's record
    describes them (merges and later refreshes read it). Returns those items: the refresh
    counts them as unseen unless its data trains them. A parent whose lift step never ran
    (no ``text_lift`` recorded, or no such item): none."""
    meta, side = parent.meta, task.item_side
    has = getattr(task, "new_has_text", None)
    if "text_lift" not in meta or has is None or side.bias is None:
        return []
    catalogue = list(meta["catalogue"])
    vectors, _ = catalogue_text(task, catalogue)
    lifted, _ = lifted_text_rows(meta, parent.tensors, vectors, has[:len(catalogue)].bool())
    rows = lifted.nonzero().flatten()
    side.bias.data[rows.to(side.bias.device)] = 0.0
    if len(rows):
        logger.info("refresh: the parent's lift taken off %d never-trained text-only items",
                    len(rows))
    return [catalogue[i] for i in rows.tolist()]
