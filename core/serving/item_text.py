"""Item text in serving (issue 18): a text-aware backbone's rows hold their text part, and
a region's new items with a text vector (the backbone's cache, or the adapter's own
``text_vectors.safetensors``) get the backbone's projection of it as their base row, as
:class:`~regiontune.adapters.region_task.RegionTask` gives them: served scores equal the
task's. The projected rows are computed once per entry (``[m, hidden]`` for its ``m`` such
items); :class:`TextBatch` adds them to a batch's input embeddings and scores."""

from __future__ import annotations

import weakref

import torch

from regiontune.adapters import ItemSide
from regiontune.adapters.region_task import text_rows
from regiontune.model.recmodel import RecModel
from regiontune.model.textenc import TextVectors

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def text_table(base: RecModel) -> torch.Tensor:
    """The model's input/output table ``[N_SPECIAL + V, hidden]``: the id rows (shared, no
    copy), plus each item's projected text vector for a text-aware model (computed once per
    model, so the regions of one body share one table)."""
    if not getattr(base.config, "item_text", False):
        return base.item_emb.weight.detach()
    table = _TABLES.get(base)
    if table is None:
        with torch.no_grad():
            table = base.item_emb.weight + base.has_text[:, None] * base.text_embedding(
                base.text_vectors)
        _TABLES[base] = table = table.detach()
    return table


def text_factors(base: RecModel, item_side: ItemSide, own: TextVectors | None
                 ) -> dict[str, torch.Tensor]:
    """An entry's ``text_slot`` (int32 ``[n]``: row of ``text_rows``, -1 none) and
    ``text_rows`` (``[m, hidden]``); empty when no new item has text."""
    found = text_rows(base, item_side.catalogue, item_side.known, own)
    if found is None:
        return {}
    vectors, has = found
    with torch.no_grad():
        rows = base.text_embedding(vectors).detach().float()
    out = growth_text_factors(rows, has)
    return {"text_slot": out["new_slot"], "text_rows": out["new_rows"]}


def growth_text_factors(rows: torch.Tensor | None, has: torch.Tensor
                        ) -> dict[str, torch.Tensor | None]:
    """A growth's text rows (``rows``: the added items', zero where ``has`` is False) as
    ``new_slot`` / ``new_rows`` for :func:`appended`."""
    slot = torch.full((len(has),), -1, dtype=torch.int32)
    slot[has] = torch.arange(int(has.sum()), dtype=torch.int32)
    return {"new_slot": slot, "new_rows": None if rows is None else rows[has].float()}


def appended(slot: torch.Tensor | None, rows: torch.Tensor | None, n_old: int,
             new_slot: torch.Tensor, new_rows: torch.Tensor | None
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """An entry's text factors with a growth's (``new_slot`` over the added items) after."""
    if new_rows is None or not len(new_rows):
        if slot is None:
            return None, None
        return torch.cat([slot, torch.full((len(new_slot),), -1, dtype=torch.int32)]), rows
    old_slot = slot if slot is not None else torch.full((n_old,), -1, dtype=torch.int32)
    start = 0 if rows is None else len(rows)
    shifted = torch.where(new_slot >= 0, new_slot + start, -1).to(torch.int32)
    return (torch.cat([old_slot, shifted]),
            new_rows if rows is None else torch.cat([rows, new_rows]))


def grown_text(entry, growth) -> dict[str, torch.Tensor | None]:
    """``text_slot`` / ``text_rows`` of ``entry`` grown by ``growth``
    (:class:`~regiontune.adapters.grow.Growth`)."""
    has = growth.text_has if growth.text_has is not None else torch.zeros(
        len(growth.added), dtype=torch.bool)
    slot, rows = appended(entry.text_slot, entry.text_rows, len(entry.columns),
                          **growth_text_factors(growth.text_base, has))
    return {"text_slot": slot, "text_rows": rows}


class TextBatch:
    """The text rows of one batch's regions (see :class:`~regiontune.serving.entries.
    ItemBatch`: item ``j`` of region ``u`` is row ``offsets[u] + j`` of its concatenations,
    with a last sentinel row when several regions)."""

    def __init__(self, unique: list, sizes: list[int], single: bool) -> None:
        slots, rows, start = [], [], 0
        # per region with text: its index among ``unique``, catalogue positions, rows
        self.regions: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for u, (entry, n) in enumerate(zip(unique, sizes, strict=True)):
            if entry.text_rows is None:
                slots.append(torch.full((n,), -1, dtype=torch.int32))
                continue
            slot = entry.text_slot
            slots.append(torch.where(slot >= 0, slot + start, -1).to(torch.int32))
            rows.append(entry.text_rows)
            start += len(entry.text_rows)
            pos = (slot >= 0).nonzero()[:, 0]
            self.regions.append((u, pos, entry.text_rows[slot[pos].long()]))
        self.slot = slots[0] if single else torch.cat(
            [*slots, torch.tensor([-1], dtype=torch.int32)])
        self.rows = torch.cat(rows)

    @classmethod
    def of(cls, unique: list, sizes: list[int], single: bool) -> TextBatch | None:
        if all(e.text_rows is None for e in unique):
            return None
        return cls(unique, sizes, single)

    def embed(self, out: torch.Tensor, flat: torch.Tensor, special: torch.Tensor) -> None:
        """Add the text rows of the tokens at concatenated indices ``flat`` to ``out``."""
        slot = self.slot[flat].long()
        out += self.rows[slot.clamp(min=0)] * ((slot >= 0) & ~special)[..., None]

    def add_scores(self, scores: torch.Tensor, users: torch.Tensor, run: torch.Tensor) -> None:
        """``h . text_row`` at the catalogue positions of each row's items with text."""
        for u, pos, rows in self.regions:
            mine = (run == u).nonzero()[:, 0]
            if len(mine):
                scores[mine[:, None], pos[None, :]] += users[mine] @ rows.T
