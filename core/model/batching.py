"""Turning item-token histories into left-padded training and inference batches.

Inputs are left-padded so the user's representation is always the last position.
Causal families learn next-item prediction at every position; the BERT family learns to fill
masked positions (Cloze) and, at inference, fills a MASK appended to the history.

A training sequence may open with context (:class:`ContextSequence`: a refresh's earlier items
of the user, ``AdaptConfig.refresh_context``): those tokens are read as input but are never a
target -- causal: no position whose target lies in the context; Cloze: context tokens are never
masked. Order-free data shuffle the context and the rest apart, the context staying first.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from regiontune.model.recmodel import MASK, PAD


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, L] token ids, left-padded with PAD
    mask: torch.Tensor  # [B, L] 1 for real tokens
    targets: torch.Tensor  # [B, L] token to predict at each position, PAD where none


def _left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(1, max(len(r) for r in rows))
    tokens = torch.full((len(rows), length), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            tokens[i, length - len(row):] = torch.tensor(row)
            mask[i, length - len(row):] = 1
    return tokens, mask


class ContextSequence(list):
    """A training sequence (token ids) whose first ``context`` tokens are context only: the
    model reads them, the loss never targets them. A plain list is a sequence with none."""

    __slots__ = ("context",)

    def __init__(self, tokens, context: int = 0) -> None:
        super().__init__(tokens)
        if not 0 <= context <= len(self):
            raise ValueError(f"context of {context} tokens in a sequence of {len(self)}")
        self.context = context


def context_of(sequence: list[int]) -> int:
    """How many leading tokens of ``sequence`` are context only (0 for a plain list)."""
    return getattr(sequence, "context", 0)


class TrainCollator:
    """Builds training batches; order-free data gets a fresh random order every time (with
    context: the context and the rest each shuffled, the context first)."""

    def __init__(self, max_len: int, causal: bool, ordered: bool, mask_prob: float = 0.2,
                 seed: int = 0) -> None:
        self.max_len, self.causal, self.ordered = max_len, causal, ordered
        self.mask_prob = mask_prob
        self.rng = random.Random(seed)

    def __call__(self, sequences: list[list[int]]) -> Batch:
        contexts = [context_of(s) for s in sequences]
        if not self.ordered:
            sequences = [self.rng.sample(s, len(s)) if not c else
                         self.rng.sample(s[:c], c) + self.rng.sample(s[c:], len(s) - c)
                         for s, c in zip(sequences, contexts, strict=True)]
        if self.causal:
            return self._causal(sequences, contexts)
        return self._cloze(sequences, contexts)

    def _causal(self, sequences: list[list[int]], contexts: list[int]) -> Batch:
        keep = self.max_len + 1
        seqs = [s[-keep:] for s in sequences]
        # context tokens left after the cut; input position j predicts token j + 1
        kept = [max(0, c - (len(s) - len(t)))
                for s, t, c in zip(sequences, seqs, contexts, strict=True)]
        tokens, mask = _left_pad([s[:-1] for s in seqs])
        targets, _ = _left_pad([[PAD if j + 1 < c else t for j, t in enumerate(s[1:])]
                                for s, c in zip(seqs, kept, strict=True)])
        return Batch(tokens, mask, targets)

    def _cloze(self, sequences: list[list[int]], contexts: list[int]) -> Batch:
        inputs, targets = [], []
        for full, c in zip(sequences, contexts, strict=True):
            seq = full[-self.max_len:]
            c = max(0, c - (len(full) - len(seq)))  # context tokens left after the cut
            if c >= len(seq):  # nothing but context in the window: nothing to learn
                raise ValueError("a training sequence holds context only (no target)")
            picked = [False] * c + [self.rng.random() < self.mask_prob for _ in seq[c:]]
            if not any(picked):  # every sequence teaches something
                picked[c + self.rng.randrange(len(seq) - c)] = True
            inputs.append([MASK if p else t for t, p in zip(seq, picked, strict=True)])
            targets.append([t if p else PAD for t, p in zip(seq, picked, strict=True)])
        tokens, mask = _left_pad(inputs)
        target_tokens, _ = _left_pad(targets)
        return Batch(tokens, mask, target_tokens)


def set_orders(histories: list[list[int]], orders: int) -> list[list[list[int]]]:
    """The orders a model reads unordered histories (sets) in: the canonical one (by token
    id) and ``orders - 1`` seeded shuffles of it. They depend on the set alone, never on the
    order it was listed in, so a causal model's scores do not either; averaging the user
    vector over a few orders also beats any single order (benchmarks/results/set_models.md).
    """
    canonical = [sorted(h) for h in histories]
    out = [canonical]
    for k in range(1, orders):
        # seeded by the set itself: a row reads the same whatever batch it is in
        out.append([random.Random(f"{k}:{h}").sample(h, len(h)) for h in canonical])
    return out


def read_users(encode: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               histories: list[list[int]], max_len: int, causal: bool, ordered: bool,
               orders: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
    """User vectors ``[rows, hidden]``: ``encode(tokens, mask)`` of each history, averaged over
    :func:`set_orders` when the histories are sets and the model reads in order (causal).

    A causal model has nothing to read in an empty history (no item, or none it knows): its
    vector is zero, so the items rank by their bias alone (popularity). Evaluation, the
    ``recommend`` command and the server all read users here, so they rank alike."""
    variants = [histories] if ordered or not causal else set_orders(histories, max(1, orders))
    users = None
    for rows in variants:
        tokens, mask = inference_batch(rows, max_len, causal)
        vectors = encode(tokens.to(device), mask.to(device)) if device else encode(tokens, mask)
        users = vectors if users is None else users + vectors
    users = users / len(variants)
    empty = [row for row, history in enumerate(histories) if not history] if causal else []
    if empty:  # an all-padding row reads padding (or NaN): not a user
        users[empty] = 0
    return users


def inference_batch(histories: list[list[int]], max_len: int, causal: bool,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and mask whose last position represents each user (as listed: see
    :func:`read_users` for sets)."""
    if causal:
        rows = [h[-max_len:] for h in histories]
    else:
        rows = [h[-(max_len - 1):] + [MASK] for h in histories]
    return _left_pad(rows)
