"""The item-side part every region adapter carries.

What differs most between regions is on the item side: popularity and which items matter.
So each adapter holds, for the region's catalogue only (not the whole vocabulary):
* a bias per item (regional popularity),
* a low-rank delta on the item embedding table ``A @ B`` (tied: input and output),
* rows for region-new items, which the backbone's vocabulary lacks: their embedding is the
  low-rank part alone, so a new item costs ``rank + 1`` numbers, never a backbone change.
"""

from __future__ import annotations

import torch
from torch import nn

from regiontune.model.recmodel import N_SPECIAL
from regiontune.model.vocab import ItemVocab

PREFIX = "regiontune.item_side."


class ItemSide(nn.Module):
    """Region item table built from the frozen backbone table plus this region's deltas."""

    def __init__(self, catalogue: list[str], backbone_vocab: ItemVocab, hidden_size: int,
                 rank: int = 4, bias: bool = True, scale: float = 0.02) -> None:
        super().__init__()
        self.catalogue = list(catalogue)
        self.rank, self.has_bias = rank, bias
        columns = backbone_vocab.columns(self.catalogue)
        self.register_buffer("columns", columns.clamp(min=0), persistent=False)
        self.register_buffer("known", (columns >= 0).float(), persistent=False)
        n = len(self.catalogue)
        # LoRA-style init: A = 0 so the adapter starts as the backbone exactly. B is drawn at
        # the scale of the backbone's item embeddings: Adam moves A by about lr per step, so
        # a tiny B would make the item delta crawl (measured: LoRA still improving at 30
        # epochs with B ~ 0.02 on WSDM t1).
        self.lowrank_a = nn.Parameter(torch.zeros(n, rank)) if rank else None
        self.lowrank_b = nn.Parameter(torch.randn(rank, hidden_size) * scale) if rank else None
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None

    @property
    def new_items(self) -> list[str]:
        return [i for i, k in zip(self.catalogue, self.known.tolist(), strict=True) if not k]

    def table(self, base_table: torch.Tensor, base_bias: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Region item table ``[n_catalogue, hidden]`` and bias ``[n_catalogue]``."""
        weight = base_table[self.columns] * self.known[:, None]
        bias = base_bias[self.columns] * self.known
        if self.lowrank_a is not None:
            weight = weight + self.lowrank_a @ self.lowrank_b
        if self.bias is not None:
            bias = bias + self.bias
        return weight, bias

    def extended(self, items: list[str], backbone_vocab: ItemVocab,
                 hidden_size: int) -> ItemSide:
        """A trainable copy over this catalogue plus the ``items`` it lacks, appended in the
        given order (refreshing an adapter on new data).

        Old rows keep their place and their values exactly (``A`` rows, bias, the shared
        ``B``); appended rows start as a fresh side starts every row: ``A`` row and bias zero,
        so a backbone-known item starts at its backbone row and a region-new item at zero.
        """
        known = set(self.catalogue)
        added = [i for i in dict.fromkeys(items) if i not in known]
        out = ItemSide(self.catalogue + added, backbone_vocab, hidden_size, self.rank,
                       self.has_bias)
        n = len(self.catalogue)
        with torch.no_grad():
            if self.lowrank_a is not None:
                out.lowrank_a.zero_()
                out.lowrank_a[:n] = self.lowrank_a
                out.lowrank_b.copy_(self.lowrank_b)
            if self.bias is not None:
                out.bias.zero_()
                out.bias[:n] = self.bias
        return out

    def state(self) -> dict[str, torch.Tensor]:
        # parameters and saved buffers (the item-item part's neighbours are integers)
        return {PREFIX + k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        mine = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        missing, unexpected = self.load_state_dict(mine, strict=False)
        if missing or unexpected:
            raise ValueError(f"item-side weights do not match (missing {missing}, "
                             f"unexpected {unexpected})")


def region_vocab(catalogue: list[str]) -> ItemVocab:
    """The region's token space: token ``i + N_SPECIAL`` is ``catalogue[i]``."""
    assert N_SPECIAL == 2
    return ItemVocab(catalogue)
