"""Serving the item-item part of region adapters (``adapters/item_item.py``).

A region with the part holds, for each catalogue item, its ``k`` strongest EASE neighbours
(``nb_index``, ``nb_value`` ``[n, k]``) and a blend weight ``w``. A row's extra score for item
``j`` is ``w`` times the sum of ``B[i, j]`` over the distinct catalogue items ``i`` of its
history, added to the row's scores in its own catalogue's columns: exactly what the region
task adds in evaluation (the same scatter, ``adapters.item_item.add_neighbours``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from regiontune.adapters.item_item import add_neighbours


def item_item_factors(item_side: Any) -> dict[str, Any]:
    """The part as stored in ``item_side`` (``nb_index``, ``nb_value``, ``nb_weight``); none
    (or weight 0): {}."""
    part = getattr(item_side, "item_item", None)
    if part is None or float(part.weight) == 0.0:
        return {}
    return {"nb_index": part.neighbours.detach().contiguous(),
            "nb_value": part.strengths.detach().float().contiguous(),
            "nb_weight": float(part.weight)}


def add_item_item_scores(scores: torch.Tensor, entries: Sequence[Any],
                         histories: Sequence[Sequence[str]]) -> None:
    """Add each row's item-item part to ``scores`` ``[rows, width]`` (row ``r``'s columns:
    its region's catalogue) in place; rows of regions without the part are left as they are."""
    for row, (entry, history) in enumerate(zip(entries, histories, strict=True)):
        if entry.nb_index is None:
            continue
        index = entry.vocab.index
        items = sorted({index[i] for i in history if i in index})
        if items:
            add_neighbours(scores[row], entry.nb_index, entry.nb_value, items, entry.nb_weight)
