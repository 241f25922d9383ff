"""Markdown pieces every benchmark report uses."""

from __future__ import annotations

MISSING = "–"  # a figure that was not measured


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table as lines; cells are written with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
