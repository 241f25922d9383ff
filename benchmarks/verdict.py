"""Where each adapter wins, ties or loses: the report's plain-words section.

Every adapter method is compared at all data with full fine-tuning, the same architecture
trained from scratch, the un-adapted backbone and the best classic baseline; along the
learning curve, every curve method below full fine-tuning with scratch and full. Nothing is
left out because it looks bad: a missing comparison says so.
"""

from __future__ import annotations

import math

from benchmarks.markdown import MISSING, table

ADAPTERS = ("lora", "adalora", "bottleneck", "ia3")
CLASSIC = ("popularity", "itemknn", "ease")
# A difference smaller than this NDCG@10, or than the two points' seed spreads together, is a
# tie: at one seed the same job varies by about this much (measured: full fine-tuning on
# WSDM t1 gave 0.5816-0.5851 across runs).
TIE = 0.005


def _mean(row: dict | None) -> float | None:
    return None if row is None else row.get("ndcg@10_mean")


def compare(mine: dict | None, other: dict | None) -> str:
    """``wins (+0.0123)``, ``ties (-0.0011)`` or ``loses (-0.0456)``; ``–`` without data."""
    a, b = _mean(mine), _mean(other)
    if a is None or b is None:
        return MISSING
    delta = a - b
    margin = max(TIE, (mine.get("ndcg@10_std") or 0.0) + (other.get("ndcg@10_std") or 0.0))
    word = "ties" if abs(delta) <= margin else ("wins" if delta > 0 else "loses")
    return f"{word} ({delta:+.4f})"


def _by(summary: list[dict], region, fraction: float) -> dict[str, dict]:
    return {r["method"]: r for r in summary
            if r["region"] == region and math.isclose(r["data_fraction"], fraction)}


def _best_classic(rows: dict[str, dict]) -> tuple[str, dict | None]:
    present = [(m, rows[m]) for m in CLASSIC if _mean(rows.get(m)) is not None]
    if not present:
        return MISSING, None
    return max(present, key=lambda kv: kv[1]["ndcg@10_mean"])


def _all_data(summary: list[dict], region) -> list[str]:
    rows = _by(summary, region, 1.0)
    classic_name, classic = _best_classic(rows)
    body = [[m, compare(rows[m], rows.get("full")), compare(rows[m], rows.get("scratch")),
             compare(rows[m], rows.get("zero-shot")), compare(rows[m], classic)]
            for m in ADAPTERS if m in rows]
    if not body:
        return []
    header = ["adapter", "vs full", "vs scratch", "vs zero-shot", f"vs {classic_name}"]
    return [f"### {region}: all of the target's data", ""] + table(header, body) + [""]


def _scarce(summary: list[dict], region) -> list[str]:
    fractions = sorted({r["data_fraction"] for r in summary
                        if r["region"] == region and r["data_fraction"] < 1})
    body = []
    for fraction in fractions:
        rows = _by(summary, region, fraction)
        classic_name, classic = _best_classic(rows)
        for method in ("full", *ADAPTERS):
            if method in rows:
                body.append([f"{fraction:g}", method, compare(rows[method], rows.get("scratch")),
                             compare(rows[method], rows.get("scratch-nb")),
                             compare(rows[method], rows.get("full"))
                             if method != "full" else MISSING,
                             f"{compare(rows[method], classic)} ({classic_name})"
                             if classic else MISSING])
    if not body:
        return []
    # scratch-nb: scratch with the adapters' item-item part (benchmarks/jobs.py)
    header = ["fraction", "method", "vs scratch (same data)", "vs scratch-nb (same data)",
              "vs full (same data)", "vs best classic (same data)"]
    return [f"### {region}: scarce data", ""] + table(header, body) + [""]


def verdict_section(summary: list[dict]) -> list[str]:
    """Markdown lines: per region, one table at all data and one along the learning curve."""
    lines = ["## Where adapters win, tie or lose", "",
             f"NDCG@10 differences (mean over seeds); a tie is within {TIE} or within the two "
             "points' seed standard deviations added together.", ""]
    regions = sorted({r["region"] for r in summary}, key=str)
    body = [line for region in regions
            for line in _all_data(summary, region) + _scarce(summary, region)]
    return lines + (body or ["No adapter records.", ""])
