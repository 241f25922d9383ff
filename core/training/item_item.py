"""Fitting a trained adapter's item-item part (``adapters/item_item.py``) on the hold-out.

Once the adapter is trained (and its unseen items calibrated), EASE is fitted on the region's
training histories over the adapter's catalogue (lambda tuned on the early-stopping
hold-out), each item keeps its ``k`` largest weights, and the blend weight ``w`` is the one of
``WEIGHT_GRID`` (in units of the two parts' score spread on the hold-out) that gives the best
hold-out NDCG@10; on a tie the smaller weight wins, and 0 removes the part. Given a pool of
other regions' histories (``training/pool.py``), EASE is fitted a second time with them and
the part whose blend ranks the hold-out better is kept. The reported evaluation lists are
never read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from regiontune.adapters import RegionTask
from regiontune.adapters.item_item import WEIGHT_GRID, detach_item_item
from regiontune.data.splits import EvalCase, RegionData
from regiontune.evaluation.baselines import tuned_ease
from regiontune.evaluation.evaluate import allowed_mask, task_scores
from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks

logger = logging.getLogger(__name__)


def ease_weights(train: dict[str, list[str]], catalogue: list[str], holdout: list[EvalCase],
                 pool: Sequence[Sequence[str]] = (), pool_weight: float = 0.0,
                 ) -> tuple[torch.Tensor, float, float]:
    """EASE's ``B`` over ``catalogue`` fitted on ``train`` (with ``pool``'s co-occurrence at
    ``pool_weight``; lambda tuned on ``holdout``), the lambda and EASE's NDCG@10 on
    ``holdout`` (one fit shared with distillation:
    :func:`~regiontune.evaluation.baselines.tuned_ease`)."""
    model, lam, results = tuned_ease(train, catalogue, holdout, pool, pool_weight)
    return torch.from_numpy(model.b), lam, results[lam]


def score_spread(scores: torch.Tensor, allowed: torch.Tensor) -> float:
    """Standard deviation of the finite ``scores`` in ``allowed`` columns (0: fewer than 2)."""
    values = scores[allowed & torch.isfinite(scores)]
    return float(values.std()) if values.numel() > 1 else 0.0


def blend_weight(base: torch.Tensor, extra: torch.Tensor, allowed: torch.Tensor,
                 target: torch.Tensor, grid: Sequence[float] = WEIGHT_GRID
                 ) -> tuple[float, float, dict[float, float]]:
    """The ``grid`` weight ``w`` whose ``base + w * unit * extra`` ranks the hold-out best
    (ties: the smaller), ``unit`` (the ratio of the two parts' score spreads over the ranked
    columns) and NDCG@10 at every grid weight. ``base``, ``extra``: scores ``[cases, n]``,
    on any device (the adapter's may be CUDA): the choice is made on the CPU."""
    base, extra, allowed, target = (t.cpu() for t in (base, extra, allowed, target))
    unit = score_spread(base, allowed) / max(score_spread(extra, allowed), 1e-12)
    found = {}
    for w in grid:
        scores = base + (w * unit) * extra if w else base
        found[w] = metrics_from_ranks(target_ranks(scores, target, allowed))["ndcg@10"]
    return max(grid, key=lambda w: (found[w], -w)), unit, found


def fit_item_item(task: RegionTask, data: RegionData, holdout: list[EvalCase],
                  dtype: torch.dtype = torch.float32,
                  max_catalogue: int = 20000, pool: Sequence[Sequence[str]] = (),
                  pool_weight: float = 0.0) -> dict[str, Any]:
    """Fill ``task``'s item-item part from EASE and choose its weight on ``holdout`` (see the
    module's docstring); returns what was chosen, for the adapter's metadata. A catalogue of
    more than ``max_catalogue`` items (EASE inverts an ``[n, n]`` matrix) gets no part.
    ``pool``: other regions' histories (the backbone's pretraining data,
    ``training/pool.py``), whose co-occurrence joins the region's at ``pool_weight``: EASE
    is fitted with and without it, and the blend that ranks the hold-out better is kept."""
    part = task.item_item
    if part is None:
        return {}
    started = time.perf_counter()
    catalogue = task.item_side.catalogue
    if len(catalogue) > max_catalogue:
        detach_item_item(task.item_side)
        logger.warning("item-item part dropped: EASE over %d items is past "
                       "adapt.max_neighbour_catalogue (%d)", len(catalogue), max_catalogue)
        return {"neighbours": 0, "item_item": "catalogue too large"}
    cases = [c for c in holdout if c.target in task.vocab.index]
    if not cases or not data.train:
        detach_item_item(task.item_side)
        logger.info("item-item part dropped: no hold-out case to choose its weight on")
        return {"neighbours": 0, "item_item": "no hold-out"}
    histories = [c.history for c in cases]
    base = task_scores(task, histories, catalogue)  # the adapter alone (weight 0)
    rows = [task.vocab.columns(h).tolist() for h in histories]
    allowed = allowed_mask(cases, task.vocab.index, exclude_seen=True)
    target = torch.tensor([task.vocab.index[c.target] for c in cases])
    # with a pool: EASE with it and without, the one whose blend ranks the hold-out better
    # kept (ties: the region's own); each candidate's part is stored as saved
    weights = [0.0, pool_weight] if pool and pool_weight > 0 else [0.0]
    tried, kept = {}, None
    for weight in weights:
        b, lam, ease_ndcg = ease_weights(data.train, catalogue, cases,
                                         pool if weight else (), weight)
        part.init_from(b)
        del b
        with torch.no_grad():  # stored as saved: chosen == served
            part.strengths.copy_(part.strengths.to(dtype))
            part.weight.zero_()
        best, unit, found = blend_weight(base, part.rows(rows), allowed, target)
        tried[weight] = found[best]
        if kept is None or found[best] > kept[0]:
            kept = (found[best], weight, lam, ease_ndcg, best, unit, found,
                    part.neighbours.clone(), part.strengths.clone())
    _, weight, lam, ease_ndcg, best, unit, found, neighbours, strengths = kept
    with torch.no_grad():
        part.neighbours.copy_(neighbours)
        part.strengths.copy_(strengths)
    stats = {"neighbours": part.k, "item_item_lambda": lam,
             "item_item_ease_holdout_ndcg@10": round(ease_ndcg, 4),
             "item_item_holdout_ndcg@10": {str(w): round(v, 4) for w, v in found.items()},
             "item_item_pool": {"weight": weight, "histories": len(pool) if weight else 0,
                                "holdout_ndcg@10": {str(w): round(v, 4)
                                                    for w, v in tried.items()}},
             "item_item_seconds": round(time.perf_counter() - started, 2)}
    if best == 0.0:
        detach_item_item(task.item_side)
        logger.info("item-item part dropped: the adapter alone is best on the hold-out "
                    "(ndcg@10 %.4f)", found[0.0])
        return {**stats, "neighbours": 0, "item_item_weight": 0.0}
    with torch.no_grad():
        part.weight.fill_(float(torch.tensor(best * unit).to(dtype)))
    logger.info("item-item part: %d neighbours an item, weight %.3g (hold-out ndcg@10 %.4f, "
                "adapter alone %.4f, EASE %.4f)", part.k, float(part.weight), found[best],
                found[0.0], ease_ndcg)
    return {**stats, "item_item_weight": float(part.weight)}
