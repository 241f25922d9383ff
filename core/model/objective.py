"""The training loss: softmax cross-entropy over items, full or sampled."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from regiontune.model.recmodel import N_SPECIAL, PAD


def item_loss(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
              bias: torch.Tensor, num_negatives: int = 0, soft: torch.Tensor | None = None,
              soft_share: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the target item at every position that has one.

    Only positions with a target are projected onto the item table: the logits tensor is
    ``[positions, items]``, not ``[batch, length, items]``, which keeps memory bounded.
    ``num_negatives > 0`` switches to sampled softmax with uniform shared negatives (for large
    catalogues); accidental hits of the target are masked out.
    ``soft``: a teacher's probabilities ``[positions, items]`` (core/distill.py); the loss
    is then ``(1 - soft_share) * CE(target) + soft_share * CE(soft)`` (full softmax only).
    """
    keep = targets != PAD
    h = hidden[keep]
    t = targets[keep] - N_SPECIAL
    if soft is not None:
        if num_negatives > 0:
            raise ValueError("distillation needs the full softmax (num_negatives: 0)")
        logp = torch.log_softmax(h @ table.T + bias, dim=1)
        hard = -logp.gather(1, t[:, None]).mean()
        # 0 * log(0) is 0: items with no teacher mass (or no student logit) add nothing
        mixed = -torch.where(soft > 0, soft * logp, torch.zeros_like(logp)).sum(1).mean()
        return (1 - soft_share) * hard + soft_share * mixed
    if num_negatives <= 0 or num_negatives >= table.shape[0]:
        return F.cross_entropy(h @ table.T + bias, t)
    neg = torch.randint(0, table.shape[0], (num_negatives,), device=h.device)
    pos_logit = (h * table[t]).sum(-1, keepdim=True) + bias[t, None]
    neg_logit = h @ table[neg].T + bias[neg]
    neg_logit = neg_logit.masked_fill(neg[None, :] == t[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long, device=h.device))
