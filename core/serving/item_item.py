"""Serving the optional item-item part of region adapters (``adapters/item_item.py``).

A region with the part holds ``P``, ``Q`` ``[n, r]`` and a weight ``w``; its user vector is
``[h, p]`` with ``p = w * sum of P`` over the distinct catalogue items a row's transformer
reads (the same window: :func:`regiontune.model.batching.read_users` feeds both), and an
item's score gains ``p . Q_i``, as the region task scores. :class:`ItemItemBatch` is the part
of one batch's regions, concatenated like the rest of the item side
(:class:`~regiontune.serving.entries.ItemBatch`): regions of smaller rank, or without the
part, are zero-padded to the largest rank and add exactly nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from regiontune.model.recmodel import N_SPECIAL


def item_item_factors(item_side: Any) -> dict[str, Any]:
    """The part as stored in ``item_side`` (``cf_p``, ``cf_q``, ``cf_weight``); none: {}."""
    part = getattr(item_side, "item_item", None)
    if part is None:
        return {}
    return {"cf_p": part.p.detach().contiguous(), "cf_q": part.q.detach().contiguous(),
            "cf_weight": part.weight.detach().clone()}


class ItemItemBatch:
    """The item-item parts of a batch's ``unique`` regions (catalogue sizes ``sizes``)
    concatenated, with a last zero row past several regions: the sentinel that pads each
    row's scores past its catalogue. One region: its own tensors, no copy."""

    def __init__(self, unique: list[Any], sizes: list[int], rank: int) -> None:
        self.rank = rank
        if len(unique) == 1:
            self.p, self.q = unique[0].cf_p, unique[0].cf_q
        else:
            self.p, self.q = (torch.cat([*(_padded(getattr(e, name), n, rank)
                                           for e, n in zip(unique, sizes, strict=True)),
                                         torch.zeros(1, rank)]) for name in ("cf_p", "cf_q"))
        self.weight = torch.stack([torch.zeros(()) if e.cf_weight is None
                                   else e.cf_weight.float().reshape(()) for e in unique])

    @classmethod
    def of(cls, unique: list[Any], sizes: list[int]) -> ItemItemBatch | None:
        """The batch's part, or None when no region has one."""
        rank = max((e.cf_rank for e in unique), default=0)
        return cls(unique, sizes, rank) if rank else None

    def users(self, run: torch.Tensor, offsets: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``p`` ``[rows, rank]`` of region tokens ``ids`` ``[rows, length]`` (rows of regions
        ``run``): ``w *`` the sum of ``P`` over the distinct items; PAD and MASK add nothing."""
        special = ids < N_SPECIAL
        flat = (offsets[run][:, None] + ids).sub_(N_SPECIAL).clamp_(min=0)
        length = ids.shape[1]
        earlier = torch.ones(length, length, dtype=torch.bool).tril(-1)
        repeat = ((ids[:, :, None] == ids[:, None, :]) & earlier).any(-1)  # counted once
        said = self.p[flat] * (~(repeat | special))[..., None].to(self.p.dtype)
        return self.weight[run][:, None] * said.sum(1)

    def add_scores(self, scores: torch.Tensor, users: torch.Tensor,
                   flat: torch.Tensor | None) -> None:
        """Add ``p . Q_i`` to ``scores`` ``[rows, width]`` in place; ``flat``: each score's row
        of the concatenation (None: one region, its catalogue in order)."""
        if flat is None:
            scores.addmm_(users, self.q.T)
        else:
            scores[:, :, None].baddbmm_(self.q[flat], users[:, :, None])


def _padded(t: torch.Tensor | None, n: int, rank: int) -> torch.Tensor:
    out = torch.zeros(n, rank)
    if t is not None:
        out[:, :t.shape[1]] = t
    return out
