"""An optional item-item pathway of a region adapter (``AdaptConfig.cf_rank``).

On set-like data a linear item-item model (EASE) beats the transformer adapters (WSDM, issue
13). This part gives the adapter such a model, low-rank: ``P`` and ``Q`` ``[n_catalogue, r]``
and a scalar weight ``w``. A user's part is ``p = w * sum of P[history items]``, an item's
extra score ``p . Q_i``. It joins the dot-product scoring by concatenation: the region task's
user vector is ``[h, p]`` and its output table ``[E, Q]``, so training (the one softmax loss)
and evaluation read it unchanged. ``p`` is order-free (the set-order averaging of the
transformer leaves it as is); it sees the items the transformer reads (the last ``max_len``).

At adapt start ``P``, ``Q`` come from EASE fitted on the region's training histories (lambda
tuned on the hold-out) by a truncated SVD of its weights ``B ~ (U sqrt S)(V sqrt S)^T``, then
train with the adapter. Saved with the item side (``regiontune.item_side.item_item.*``;
``cf_rank`` in ``region.json``). Served by ``core/serving/item_item.py`` (the same ``[h, p]``
scores); catalogue growth, merges and refreshes refuse such adapters.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from regiontune.model.recmodel import N_SPECIAL

logger = logging.getLogger(__name__)


class ItemItem(nn.Module):
    """Low-rank bag-of-items scorer over a region catalogue (token ``i + N_SPECIAL`` = row i)."""

    def __init__(self, n_items: int, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.p = nn.Parameter(torch.zeros(n_items, rank))
        self.q = nn.Parameter(torch.zeros(n_items, rank))
        self.weight = nn.Parameter(torch.ones(()))

    def init_from(self, b: torch.Tensor) -> None:
        """``P``, ``Q`` from the rank-``r`` truncated SVD of item-item weights ``b`` [n, n]
        (row i: what item i says about every item)."""
        u, s, v = _truncated_svd(b.float(), self.rank)
        root = s.clamp(min=0).sqrt()
        with torch.no_grad():
            self.p.copy_(u * root)
            self.q.copy_(v * root)
            self.weight.fill_(1.0)

    def users(self, tokens: torch.Tensor, causal: bool) -> torch.Tensor:
        """``[B, L, r]``: the weighted sum of ``P`` over the items each position sees (causal:
        the items up to it; Cloze: every unmasked item of the row), each item once; PAD and
        MASK add nothing."""
        rows = torch.cat([torch.zeros(N_SPECIAL, self.rank, device=self.p.device,
                                      dtype=self.p.dtype), self.p])
        # an item counts once, as in EASE's binary user-item matrix: at its first occurrence
        length = tokens.shape[1]
        earlier = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril(-1)
        repeat = ((tokens[:, :, None] == tokens[:, None, :]) & earlier).any(-1)
        said = rows[tokens] * (~repeat)[..., None].to(rows.dtype)
        said = said.cumsum(1) if causal else said.sum(1, keepdim=True).expand_as(said)
        return self.weight * said


def _truncated_svd(b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    n = b.shape[0]
    if n <= 2048 or rank >= n // 4:
        u, s, vh = torch.linalg.svd(b, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank].T
    # randomized (Halko et al.), seeded apart from the run's generator
    gen = torch.Generator().manual_seed(0)
    k = min(n, rank + 32)
    y = b @ torch.randn(n, k, generator=gen)
    for _ in range(4):  # power iterations: EASE's spectrum decays slowly
        y, _ = torch.linalg.qr(y)
        y = b @ (b.T @ y)
    basis, _ = torch.linalg.qr(y)
    u, s, vh = torch.linalg.svd(basis.T @ b, full_matrices=False)
    return (basis @ u)[:, :rank], s[:rank], vh[:rank].T


def attach_item_item(item_side: nn.Module, rank: int) -> ItemItem | None:
    """Give ``item_side`` an item-item part of ``rank`` (saved and loaded with it)."""
    if rank <= 0:
        return None
    item_side.item_item = ItemItem(len(item_side.catalogue), rank).to(item_side.columns.device)
    return item_side.item_item
