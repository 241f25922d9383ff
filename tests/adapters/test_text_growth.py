"""Catalogue growth with item text (issue 18): the rules of ``plan_growth`` for new items
with a text row, on hand-made factors."""

from __future__ import annotations

import pytest
import torch

from regiontune.adapters.grow import plan_growth
from regiontune.adapters.text_growth import check_texts
from regiontune.model.vocab import ItemVocab

HIDDEN = 4


def plan(histories=(), text_has=(True, False)):
    torch.manual_seed(0)
    catalogue = ["a", "b"]
    table = torch.randn(2, HIDDEN)
    b = torch.randn(HIDDEN, HIDDEN)  # full rank: the least-squares row is exact
    text = torch.randn(2, HIDDEN)
    has = torch.tensor(text_has)

    def text_rows_of(added, known):
        assert added == ["n", "m"] and not known.any()
        return text * has[:, None], has

    growth = plan_growth(catalogue, ["n", "m"], vocab=ItemVocab(["x"]),
                         rows=lambda idx: table[idx], effective_bias=torch.tensor([1.0, 2.0]),
                         base_table=torch.randn(1, HIDDEN), base_bias=torch.zeros(1),
                         lowrank_b=b, has_bias=True, histories=histories,
                         text_rows_of=text_rows_of)
    return growth, table, b, text


def test_a_new_item_with_text_and_no_cooccurrence_is_its_text():
    growth, _, _, text = plan()
    assert growth.embedding == {"text": ["n"], "mean": ["m"]}
    assert float(growth.a_rows[0].abs().sum()) == 0  # the text row alone
    torch.testing.assert_close(growth.text_base[0], text[0])
    assert growth.text_has.tolist() == [True, False]


def test_cooccurrence_wins_and_the_text_row_stays_under_it():
    """With co-occurrence the target is the co-occurring items' mean row; the text row stays,
    so A's row aims at the difference: text row + A row @ B = the target."""
    growth, table, b, text = plan(histories=[["n", "a"], ["m", "b"]])
    assert growth.embedding == {"cooccurrence": ["n", "m"]}
    torch.testing.assert_close(text[0] + growth.a_rows[0] @ b, table[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(growth.a_rows[1] @ b, table[1], atol=1e-4, rtol=1e-4)


def test_texts_are_checked():
    with pytest.raises(ValueError, match="not among the items"):
        check_texts({"z": "text"}, ["n"])
    with pytest.raises(ValueError, match="non-empty string"):
        check_texts({"n": "  "}, ["n"])
    assert check_texts({"n": " jazz "}, ["n"]) == {"n": "jazz"}
