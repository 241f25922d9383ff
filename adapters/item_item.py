"""The item-item part of a region adapter: each item's strongest EASE neighbours, blended in.

On set-like data a linear item-item model (EASE) beats the transformer adapters alone, and the
two are different enough that a blend beats both (WSDM, issue 13: t1 all-regions LoRA 0.665,
EASE 0.676, blended 0.698). So, after the adapter is trained, the region's EASE ``B`` (fitted on
the region's training histories, lambda tuned on the early-stopping hold-out) is kept sparse:
for each catalogue item ``i`` its ``k`` largest weights ``B[i, j]`` (``neighbours`` ``[n, k]``
and ``strengths`` ``[n, k]``). A user's extra score for item ``j`` is ``w`` times the sum of
``B[i, j]`` over the distinct catalogue items ``i`` of the history (EASE's binary user row), and
``w`` is chosen on the same hold-out from a grid (0 drops the part). Sparse beats low-rank per
byte: on t1 the blend with the top 8 neighbours reached 0.695, with a rank-128 SVD of ``B`` 0.685
(``benchmarks/results/item_item.md``).

Not trained: the part is fitted once the adapter is, so training and its early stopping are
unchanged. Saved with the item side (``regiontune.item_side.item_item.*``, ``neighbours`` in
``region.json``) and served (``core/serving/item_item.py``: the same scores).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

# the blend weight's grid, in units of (std of the adapter's scores / std of the part's) on
# the hold-out; 0 keeps the adapter alone
WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class ItemItem(nn.Module):
    """Top-``k`` item-item weights over a region catalogue (row ``i``: catalogue item ``i``)."""

    def __init__(self, n_items: int, k: int) -> None:
        super().__init__()
        if k <= 0:
            raise ValueError(f"an item-item part needs k >= 1 neighbours, got {k}")
        self.k = k
        # int16 indices while the catalogue allows: 4 bytes a neighbour in a float16 adapter
        index_dtype = torch.int16 if n_items <= torch.iinfo(torch.int16).max else torch.int32
        self.register_buffer("neighbours", torch.zeros(n_items, k, dtype=index_dtype))
        self.register_buffer("strengths", torch.zeros(n_items, k))
        self.register_buffer("weight", torch.zeros(()))

    @property
    def n_items(self) -> int:
        return self.neighbours.shape[0]

    def init_from(self, b: torch.Tensor) -> None:
        """Keep each row's ``k`` largest weights of ``b`` ``[n, n]`` (row ``i``: what item ``i``
        says about every item); the blend weight stays as it is."""
        if b.shape != (self.n_items, self.n_items):
            raise ValueError(f"item-item weights of shape {tuple(b.shape)} for a catalogue of "
                             f"{self.n_items} items")
        k = min(self.k, self.n_items)
        values, index = b.float().topk(k, dim=1)
        with torch.no_grad():
            self.neighbours.zero_()
            self.strengths.zero_()
            self.neighbours[:, :k] = index.to(self.neighbours.dtype)
            self.strengths[:, :k] = values

    def extended(self, n_items: int) -> ItemItem:
        """A copy over ``n_items >= n`` items: the old rows and weight as they are, the new
        items without neighbours (and no old item lists them): the same scores for old items."""
        out = ItemItem(n_items, self.k).to(self.strengths.device)
        with torch.no_grad():
            out.neighbours[:self.n_items] = self.neighbours.to(out.neighbours.dtype)
            out.strengths[:self.n_items] = self.strengths
            out.weight.copy_(self.weight)
        return out

    def rows(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Unweighted part ``[len(histories), n]`` of histories given as catalogue rows (each
        distinct row counts once, as in EASE's binary user-item matrix; negative: skipped)."""
        out = torch.zeros(len(histories), self.n_items, dtype=self.strengths.dtype,
                          device=self.strengths.device)
        for row, history in enumerate(histories):
            items = sorted({i for i in history if i >= 0})
            if items:
                add_neighbours(out[row], self.neighbours, self.strengths, items, 1.0)
        return out

    def scores(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """The part's scores ``[len(histories), n]``: ``w`` times :meth:`rows`."""
        return self.weight * self.rows(histories)


def add_neighbours(row: torch.Tensor, neighbours: torch.Tensor, strengths: torch.Tensor,
                   items: Sequence[int], weight: float) -> None:
    """Add ``weight * B[i, :]`` (sparse: ``neighbours``/``strengths``) for ``items`` to
    ``row`` ``[n]`` in place: the one scatter evaluation and serving share."""
    index = torch.as_tensor(list(items), dtype=torch.long, device=neighbours.device)
    row.index_add_(0, neighbours[index].long().flatten(),
                   strengths[index].flatten().to(row.dtype), alpha=weight)


def attach_item_item(item_side: nn.Module, k: int) -> ItemItem | None:
    """Give ``item_side`` an item-item part of ``k`` neighbours (saved and loaded with it;
    weight 0, so it scores nothing until :func:`~regiontune.training.item_item.fit_item_item`
    fills it)."""
    if k <= 0:
        return None
    item_side.item_item = ItemItem(len(item_side.catalogue), k).to(item_side.columns.device)
    return item_side.item_item


def detach_item_item(item_side: nn.Module) -> None:
    """Remove the part (the hold-out chose weight 0: it would cost bytes and score nothing)."""
    if getattr(item_side, "item_item", None) is not None:
        del item_side.item_item


def part_bytes(n_items: int, k: int, number_bits: int) -> int:
    """Bytes of the part in a file whose floats take ``number_bits``."""
    index_bits = 16 if n_items <= torch.iinfo(torch.int16).max else 32
    return n_items * k * (index_bits + number_bits) // 8
