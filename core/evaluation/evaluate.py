"""Evaluation: full ranking over a region's catalogue (seen items excluded) or given candidates."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from regiontune.data.splits import EvalCase
from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks
from regiontune.model.batching import read_users

ScoreFn = Callable[[list[list[str]]], torch.Tensor]


@torch.no_grad()
def task_scores(task, histories: list[list[str]], catalogue: Sequence[str]) -> torch.Tensor:
    """Scores ``[len(histories), len(catalogue)]`` of a task; items it cannot score get -inf."""
    was_training = task.training
    task.eval()
    device = next(task.parameters()).device
    encoded = [task.vocab.encode(h) for h in histories]
    users = read_users(task.user_vectors, encoded, task.max_len, task.causal, task.ordered,
                       task.set_orders, device)
    table, bias = task.output_table()
    scores = (users @ table.T + bias).float().cpu()
    part = getattr(task, "item_item", None)  # the adapter's item-item part (adapters/item_item.py)
    if part is not None and float(part.weight) != 0.0:
        scores += part.scores([task.vocab.columns(h).tolist() for h in histories]).float().cpu()
    columns = task.vocab.columns(list(catalogue))
    out = scores[:, columns.clamp(min=0)]
    out[:, columns < 0] = float("-inf")
    task.train(was_training)
    return out


def allowed_mask(cases: list[EvalCase], index: dict[str, int],
                 exclude_seen: bool) -> torch.Tensor:
    """Which catalogue columns each case ranks: its candidates, or all but its history."""
    allowed = torch.ones((len(cases), len(index)), dtype=torch.bool)
    for row, case in enumerate(cases):
        if case.candidates is not None:
            allowed[row] = False
            cols = [index[i] for i in case.candidates if i in index]
            allowed[row, cols] = True
        elif exclude_seen:
            allowed[row, [index[i] for i in case.history if i in index]] = False
        if case.target in index:  # the held-out item is always rankable
            allowed[row, index[case.target]] = True
    return allowed


def case_ranks(score_fn: ScoreFn, catalogue: Sequence[str], cases: list[EvalCase],
               batch_size: int = 512, exclude_seen: bool = True) -> torch.Tensor:
    """Rank of each case's target (``inf`` when it cannot be scored)."""
    index = {item: i for i, item in enumerate(catalogue)}
    ranks = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        scores = torch.as_tensor(score_fn([c.history for c in chunk]), dtype=torch.float32)
        target = torch.tensor([index.get(c.target, -1) for c in chunk])
        ranks.append(target_ranks(scores, target, allowed_mask(chunk, index, exclude_seen)))
    return torch.cat(ranks) if ranks else torch.zeros(0)


def evaluate_scorer(score_fn: ScoreFn, catalogue: Sequence[str], cases: list[EvalCase],
                    k: int = 10, batch_size: int = 512, exclude_seen: bool = True) -> dict:
    """NDCG@k, HR@k, MRR of any scorer (model, adapter or baseline) on evaluation cases."""
    return metrics_from_ranks(case_ranks(score_fn, catalogue, cases, batch_size, exclude_seen), k)


def evaluate_task(task, catalogue: Sequence[str], cases: list[EvalCase], k: int = 10,
                  batch_size: int = 512) -> dict:
    """Metrics of a model task over a region's catalogue."""
    return evaluate_scorer(lambda h: task_scores(task, h, catalogue), catalogue, cases, k,
                           batch_size)
