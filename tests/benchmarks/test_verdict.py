"""The report's win/tie/lose statements."""

from __future__ import annotations

import pytest

from benchmarks.verdict import TIE, compare, verdict_section


def row(method, mean, std=0.0, region="t1", fraction=1.0):
    return {"region": region, "method": method, "data_fraction": fraction,
            "ndcg@10_mean": mean, "ndcg@10_std": std}


@pytest.mark.parametrize(("mine", "other", "word"), [
    (0.60, 0.50, "wins"), (0.50, 0.60, "loses"), (0.500 + TIE / 2, 0.500, "ties"),
    (0.500 - TIE / 2, 0.500, "ties")])
def test_compare_words(mine, other, word):
    text = compare(row("lora", mine), row("full", other))
    assert text.startswith(word)
    assert f"{mine - other:+.4f}" in text


def test_seed_spread_widens_the_tie():
    # 0.02 apart: a loss with one seed each, a tie when the seeds spread by 0.015 each
    assert compare(row("lora", 0.56), row("full", 0.58)).startswith("loses")
    assert compare(row("lora", 0.56, 0.015), row("full", 0.58, 0.015)).startswith("ties")


def test_missing_comparison_is_shown_not_hidden():
    assert compare(row("lora", 0.5), None) == "–"
    assert compare(row("lora", None), row("full", 0.5)) == "–"


def test_section_names_every_adapter_and_the_best_classic_baseline():
    summary = [row("full", 0.58), row("scratch", 0.55), row("zero-shot", 0.44),
               row("lora", 0.57), row("ia3", 0.50), row("ease", 0.56), row("popularity", 0.30),
               row("scratch", 0.45, fraction=0.1), row("lora", 0.47, fraction=0.1),
               row("full", 0.53, fraction=0.1), row("scratch-nb", 0.49, fraction=0.1)]
    text = "\n".join(verdict_section(summary))
    assert "vs ease" in text and "vs popularity" not in text
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()
             if line.startswith("| lora") or line.startswith("| ia3")}
    assert "loses (-0.0100)" in lines["lora"] and "wins (+0.0200)" in lines["lora"]
    assert "loses (-0.0800)" in lines["ia3"]  # a bad result is listed like a good one
    # vs scratch, vs scratch with the item-item part, vs full
    assert "| 0.1 | lora | wins (+0.0200) | loses (-0.0200) | loses (-0.0600) |" in text


def test_section_without_adapters_says_so():
    assert "No adapter records." in verdict_section([row("full", 0.5)])
