"""Ranking metrics from the rank of the held-out item (0 = first)."""

from __future__ import annotations

import math

import torch


def target_ranks(scores: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Rank of each row's target among its allowed columns; ``inf`` where there is no target.

    Ties count against the target (conservative): rank = #higher + #equal others.
    ``target`` holds a column index per row, or -1 when the target cannot be scored.
    """
    scores = scores.float().masked_fill(~allowed, float("-inf"))
    has = target >= 0
    t_score = scores.gather(1, target.clamp(min=0)[:, None])
    higher = (scores > t_score).sum(1)
    equal = (scores == t_score).sum(1) - 1
    ranks = (higher + equal).float()
    # a target outside the allowed set (excluded or unscorable) is a miss
    t_allowed = allowed.gather(1, target.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(has & t_allowed & torch.isfinite(t_score.squeeze(1)), ranks,
                       torch.full_like(ranks, math.inf))


def metrics_from_ranks(ranks: torch.Tensor, k: int = 10) -> dict[str, float]:
    """NDCG@k, HR@k and MRR averaged over users."""
    n = max(len(ranks), 1)
    hit = ranks < k
    ndcg = torch.where(hit, 1.0 / torch.log2(ranks.clamp(max=1e9) + 2.0), torch.zeros_like(ranks))
    mrr = torch.where(torch.isfinite(ranks), 1.0 / (ranks + 1.0), torch.zeros_like(ranks))
    return {f"ndcg@{k}": float(ndcg.sum() / n), f"hr@{k}": float(hit.float().sum() / n),
            "mrr": float(mrr.sum() / n), "users": len(ranks)}
