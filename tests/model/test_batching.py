"""Training batches with context (``ContextSequence``): context tokens are read, never targets."""

from __future__ import annotations

import pytest
import torch

from regiontune.model.batching import ContextSequence, TrainCollator, context_of
from regiontune.model.recmodel import MASK, PAD


def _row(t: torch.Tensor) -> list[int]:
    return [v for v in t.tolist() if v != PAD]


def test_causal_context_positions_get_no_target():
    seq = ContextSequence([10, 11, 12, 13, 14], context=3)  # 10-12 context, 13-14 new
    batch = TrainCollator(max_len=20, causal=True, ordered=True)([seq, [20, 21, 22]])
    assert batch.tokens[0].tolist()[-4:] == [10, 11, 12, 13]  # the context is read
    assert batch.targets[0].tolist()[-4:] == [PAD, PAD, 13, 14]  # targets: new items only
    assert _row(batch.targets[1]) == [21, 22]  # a plain list: every position, as before


def test_causal_cut_keeps_the_new_items_as_targets():
    # max_len 3: the window is the last 4 tokens; one context token is left in it
    seq = ContextSequence([1 + 10 * i for i in range(8)], context=5)  # 1..41 context
    batch = TrainCollator(max_len=3, causal=True, ordered=True)([seq])
    assert batch.tokens[0].tolist() == [41, 51, 61]
    assert batch.targets[0].tolist() == [51, 61, 71]
    # all context but the last input: still only new items are targets
    long_context = ContextSequence(list(range(10, 30)) + [99], context=20)
    batch = TrainCollator(max_len=3, causal=True, ordered=True)([long_context])
    assert batch.targets[0].tolist() == [PAD, PAD, 99]


def test_no_context_is_the_plain_batch():
    seqs = [[5, 6, 7, 8], [9, 10, 11]]
    for causal, ordered in ((True, True), (True, False), (False, True)):
        plain = TrainCollator(10, causal, ordered, seed=3)(seqs)
        wrapped = TrainCollator(10, causal, ordered, seed=3)(
            [ContextSequence(s, 0) for s in seqs])
        for a, b in zip((plain.tokens, plain.targets), (wrapped.tokens, wrapped.targets),
                        strict=True):
            assert torch.equal(a, b)


def test_cloze_never_masks_context():
    collate = TrainCollator(max_len=20, causal=False, ordered=True, mask_prob=0.9, seed=0)
    for _ in range(50):
        batch = collate([ContextSequence([10, 11, 12, 13, 14, 15], context=4)])
        tokens, targets = batch.tokens[0].tolist()[-6:], batch.targets[0].tolist()[-6:]
        assert tokens[:4] == [10, 11, 12, 13] and targets[:4] == [PAD] * 4
        assert MASK in tokens[4:] and set(_row(torch.tensor(targets))) <= {14, 15}


def test_unordered_context_stays_first_and_untargeted():
    collate = TrainCollator(max_len=20, causal=True, ordered=False, seed=1)
    orders = set()
    for _ in range(30):
        batch = collate([ContextSequence([10, 11, 12, 20, 21, 22], context=3)])
        tokens, targets = batch.tokens[0].tolist()[-5:], batch.targets[0].tolist()[-5:]
        assert set(tokens[:3]) == {10, 11, 12}  # context shuffled among itself, first
        assert targets[:2] == [PAD, PAD] and set(targets[2:]) == {20, 21, 22}
        orders.add(tuple(tokens))
    assert len(orders) > 1  # still a fresh order each time


def test_context_length_is_checked():
    assert context_of([1, 2]) == 0 and context_of(ContextSequence([1, 2], 1)) == 1
    with pytest.raises(ValueError, match="context of 3 tokens"):
        ContextSequence([1, 2], 3)
