"""A region's model: frozen backbone + method-specific adapter + item-side part.

It implements the same task interface as the backbone (see ``regiontune.model.task``), over
the region's catalogue, so the one training loop and the one evaluation serve both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regiontune.model.recmodel import N_SPECIAL, RecModel
from regiontune.model.task import ScoringTask
from regiontune.model.textenc import TextVectors

from .item_side import ItemSide, region_vocab


class RegionTask(ScoringTask):
    """``body`` runs the transformer (a PEFT model, or the backbone with our own layers)."""

    def __init__(self, body: nn.Module, backbone: RecModel, item_side: ItemSide,
                 num_negatives: int = 0, text: TextVectors | None = None) -> None:
        super().__init__()
        self.body, self.item_side = body, item_side
        self._backbone = [backbone]  # a list: not registered twice as a submodule
        self.vocab = region_vocab(item_side.catalogue)
        self.max_len = backbone.config.max_len
        self.causal, self.ordered = backbone.config.causal, backbone.config.ordered
        self.set_orders = backbone.config.set_orders
        self.num_negatives = num_negatives
        self.register_buffer("negative_mask", None, persistent=False)
        # item text: catalogue items the backbone's vocabulary lacks but whose text vector its
        # cache (or the region's own, ``text``) holds get the backbone's projection of that
        # text as their base row
        self.register_buffer("new_text", None, persistent=False)
        self.register_buffer("new_has_text", None, persistent=False)
        self.set_region_text(text)

    def set_region_text(self, text: TextVectors | None) -> None:
        """The region's own text vectors (items the backbone's cache lacks, encoded for this
        region: saved with the adapter); the backbone's cache serves the rest."""
        self.region_text = text if text is not None and len(text) else None
        rows = text_rows(self.backbone, self.item_side.catalogue, self.item_side.known,
                         self.region_text)
        self.new_text = self.new_has_text = None
        if rows is not None:
            device = self.item_side.known.device
            self.new_text, self.new_has_text = rows[0].to(device), rows[1].float().to(device)

    def restrict_negatives(self, trained_items: set[str]) -> None:
        """Train the softmax over ``trained_items`` only; scoring still covers the catalogue."""
        mask = torch.tensor([item in trained_items for item in self.item_side.catalogue])
        self.negative_mask = mask.to(self.item_side.columns.device)

    @property
    def backbone(self) -> RecModel:
        return self._backbone[0]

    def output_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        base_table, base_bias = self.backbone.item_table()
        table, bias = self.item_side.table(base_table, base_bias)
        if self.new_text is not None:
            text_rows = self.backbone.text_embedding(self.new_text)
            table = table + self.new_has_text[:, None].to(text_rows.dtype) * text_rows
        if self.training and self.negative_mask is not None:
            # -inf logit: no probability, no gradient, for items the region never trained on
            bias = bias.masked_fill(~self.negative_mask, float("-inf"))
        return table, bias

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor,
               table: torch.Tensor | None = None, **route) -> torch.Tensor:
        """Hidden states; ``table`` is the region table when the caller already built it."""
        if table is None:
            table, _ = self.output_table()
        specials = self.backbone.item_emb.weight[:N_SPECIAL]  # PAD and MASK rows stay shared
        embeddings = F.embedding(tokens, torch.cat([specials, table]))
        return self.body(inputs_embeds=embeddings, attention_mask=mask, **route).last_hidden_state

    @property
    def item_item(self):
        """The item-item part (``adapters/item_item.py``): added to the scores, never to the
        user vectors or the training loss; None when the adapter has none."""
        return getattr(self.item_side, "item_item", None)


def catalogue_text(backbone: RecModel, catalogue: list[str], text: TextVectors | None = None
                   ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Text vectors of ``catalogue`` (the backbone's cache, then the region's own ``text``,
    which wins) and which items have one; vectors None: neither source has any."""
    vectors, found = None, torch.zeros(len(catalogue), dtype=torch.bool)
    for source in (getattr(backbone, "text_bank", None), text):
        if source is None or not len(source):
            continue
        rows, have = source.rows(list(catalogue))
        vectors = rows if vectors is None else torch.where(have[:, None], rows, vectors)
        found |= have
    return vectors, found


def text_rows(backbone: RecModel, catalogue: list[str], known: torch.Tensor,
              text: TextVectors | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Text vectors ``[n, dim]`` of the catalogue's items the backbone's vocabulary lacks
    (``known`` 0) and the mask of those that have one: the region's own ``text`` first, else
    the backbone's cache. None: an id-only backbone, or no such item has text."""
    if not getattr(backbone.config, "item_text", False):
        return None
    vectors, found = catalogue_text(backbone, catalogue, text)
    found &= ~known.bool().cpu()
    if vectors is None or not found.any():
        return None
    return vectors * found[:, None], found
