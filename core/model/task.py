"""What the training loop and evaluation need of a model, and the backbone's implementation.

A *task* is an ``nn.Module`` whose ``forward(tokens, mask, targets)`` returns the loss (so
``accelerate``/DDP wrap it unchanged), plus ``user_vectors`` and ``output_table`` for scoring
and an ``ItemVocab`` naming its token space. Pretraining uses :class:`BackboneTask`; region
adapters provide their own task over the region's catalogue (see ``regiontune.adapters``).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from regiontune.model.objective import item_loss
from regiontune.model.recmodel import N_SPECIAL, PAD, RecModel
from regiontune.model.vocab import ItemVocab


class RecTask(Protocol):
    vocab: ItemVocab
    max_len: int
    causal: bool
    ordered: bool
    set_orders: int  # orders a set history is read in (causal families, unordered data)

    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor: ...

    def user_vectors(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor: ...

    def output_table(self) -> tuple[torch.Tensor, torch.Tensor]: ...


class ScoringTask(nn.Module):
    """Loss and user vectors from ``encode`` and ``output_table`` (which subclasses define)."""

    num_negatives: int = 0
    teacher = None  # a core.distill.Teacher while training with distillation

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        table, bias = self.output_table()
        # the table is built once per step and shared with encode (which embeds with it)
        hidden = self.encode(tokens, mask, table=table)
        if self.teacher is not None and self.training:
            soft = self.teacher.targets(tokens, targets, self.causal, bias.detach())
            return item_loss(hidden, targets, table, bias, self.num_negatives, soft,
                             self.teacher.share)
        return item_loss(hidden, targets, table, bias, self.num_negatives)

    def user_vectors(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encode(tokens, mask)[:, -1]


class BackboneTask(ScoringTask):
    """Next-item (or Cloze) training of the backbone over its whole vocabulary."""

    def __init__(self, model: RecModel, vocab: ItemVocab, num_negatives: int = 0) -> None:
        super().__init__()
        if model.config.n_items != len(vocab):
            raise ValueError(f"backbone has {model.config.n_items} items, vocabulary {len(vocab)}")
        self.model, self.vocab, self.num_negatives = model, vocab, num_negatives
        self.max_len = model.config.max_len
        self.causal, self.ordered = model.config.causal, model.config.ordered
        self.set_orders = model.config.set_orders

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        weight = self.model.config.text_loss if self.model.config.item_text else 0.0
        if not (self.training and weight > 0):
            return super().forward(tokens, mask, targets)
        # item text: the next item is predicted from the id+text table and, with ``weight``,
        # from the text-only table, so a never-trained item's text embedding is a trained one
        table, bias = self.output_table()
        hidden = self.encode(tokens, mask, table=table)
        loss = item_loss(hidden, targets, table, bias, self.num_negatives)
        text_only = self.model.text_table()
        if getattr(self.model.config, "text_loss_negatives", "text") == "warm":
            return loss + weight * text_against_warm(hidden, targets, table, bias, text_only)
        return loss + weight * item_loss(hidden, targets, text_only, bias, self.num_negatives)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor,
               table: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=tokens, attention_mask=mask).last_hidden_state

    def output_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.item_table()


def text_against_warm(hidden: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
                      bias: torch.Tensor, text_only: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the target scored by its text-only embedding (no bias: a
    never-trained item has none) among every other item's id+text row and bias -- what a
    never-trained item meets in a full ranking."""
    keep = targets != PAD
    h, t = hidden[keep], targets[keep] - N_SPECIAL
    logits = h @ table.T + bias
    own = (h * text_only[t]).sum(-1, keepdim=True)
    return F.cross_entropy(logits.scatter(1, t[:, None], own), t)
