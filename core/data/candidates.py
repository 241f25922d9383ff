"""The ``candidates`` protocol: the user's own candidate lists (``--candidates FILE``).

A candidates file holds one row per test case, with the columns ``user``, ``item`` (the
held-out positive) and ``candidates`` (the other items the positive is ranked among, separated
by ``,`` or ``|``: in a comma-separated file quote the list or use ``|``), and optionally
``region``. The delimiter of the file is sniffed as for interaction files.

Semantics (the rows REPLACE the split's test cases):

* A row with a region applies to that region; without one, to every loaded region that has
  the user. A row whose user the data (or that region) lacks is skipped with a warning and
  counted in the summary line.
* The test case of a row ranks its positive among its candidates; the user's history is all
  of that user's interactions in the region, the row's positive removed (from training too, so
  it is not leaked). Users without a row have no test case: the reported figure is on the
  given lists only, and their interactions all serve training and validation.
* Validation (early stopping) stays the internal hold-out (the last interaction with
  timestamps, a seeded random one without), ranked among the median list's number of
  negatives drawn uniformly from the region catalogue, so that it mimics the lists.
* Items of the file the region's catalogue lacks are kept (added to the catalogue): they score
  as items never trained on, and the summary line counts them.
* The protocol reads ``candidates-N``, N the median list size (positive included).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from regiontune.data.loading import DataError, read_table
from regiontune.data.splits import EvalCase, RegionData, histories, sample_candidates, split_region

logger = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("user", "item", "candidates")
LIST_SEPARATOR = re.compile(r"[,|]")


@dataclass
class CandidateRow:
    """One row of a candidates file (``row``: 1-based, header excluded)."""

    row: int
    user: str
    item: str
    candidates: list[str]
    region: str | None = None


def _cell(value) -> str:
    return "" if value is None else str(value).strip()


def _items(value) -> list[str]:
    if isinstance(value, (list, tuple, np.ndarray)):  # JSON Lines / Parquet: a real list
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in LIST_SEPARATOR.split(_cell(value)) if v.strip()]


def read_candidates(path: str | Path) -> list[CandidateRow]:
    """The rows of a candidates file, each checked: every error names the file and row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--candidates {path}: no such file")
    frame = read_table(path)
    found = [str(c) for c in frame.columns]
    missing = [c for c in CANDIDATE_COLUMNS if c not in frame.columns]
    if missing:
        hint = (" (the header was read as one column: the delimiter is probably wrong; in a "
                "comma-separated file quote the candidate list or separate it by |)"
                if len(found) == 1 else "")
        raise DataError(f"{path}: missing column(s) {missing}; a candidates file has the "
                        f"columns user, item, candidates (and optionally region); found "
                        f"{found}{hint}")
    has_region = "region" in frame.columns
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        user, item = _cell(record["user"]), _cell(record["item"])
        for name, value in (("user", user), ("item", item)):
            if not value:
                raise DataError(f"{path}: row {number}, column {name!r}: empty value")
        candidates = _items(record["candidates"])
        if not candidates:
            raise DataError(f"{path}: row {number}, column 'candidates': empty candidate list "
                            f"(user {user!r}); list the items the positive is ranked among, "
                            "separated by , or |")
        if item in candidates:
            raise DataError(f"{path}: row {number}: the positive {item!r} is also in its "
                            "candidate list (it would be there twice); list only the other "
                            "items, the positive is added to them")
        repeated = sorted({c for c in candidates if candidates.count(c) > 1})
        if repeated:
            raise DataError(f"{path}: row {number}, column 'candidates': item(s) {repeated[:5]}"
                            " listed more than once")
        region = _cell(record["region"]) if has_region else ""
        rows.append(CandidateRow(number, user, item, candidates, region or None))
    return rows


def _assign(rows: list[CandidateRow], users: dict[str, set[str]]
            ) -> tuple[dict[str, list[CandidateRow]], list[CandidateRow]]:
    """Rows per region (a row without region: every region that has its user); the skipped."""
    out: dict[str, list[CandidateRow]] = {r: [] for r in users}
    skipped = []
    for row in rows:
        regions = [row.region] if row.region is not None else list(users)
        regions = [r for r in regions if row.user in users.get(r, ())]
        if not regions:
            skipped.append(row)
        for region in regions:
            out[region].append(row)
    return out, skipped


def candidate_split(frame: pd.DataFrame, path: str, min_history: int, seed: int,
                    max_valid_users: int) -> tuple[dict[str, RegionData], dict]:
    """Split every region of ``frame`` with the test cases of a candidates file; with what the
    summary line reports (cases, skipped rows, list size, items unknown to the catalogue)."""
    rows = read_candidates(path)
    users = {str(r): set(part["user"]) for r, part in frame.groupby("region", sort=True)}
    by_region, skipped = _assign(rows, users)
    out, cases, unknown_items = {}, 0, 0
    for region, part in frame.groupby("region", sort=True):
        region, mine = str(region), by_region[str(region)]
        positives = {(row.user, row.item) for row in mine}
        held = [(u, i) in positives for u, i in zip(part["user"], part["item"], strict=True)]
        kept = part[~np.asarray(held, dtype=bool)].reset_index(drop=True)
        data = split_region(region, kept, min_history, seed, max_valid_users, with_test=False)
        known = histories(kept)
        no_history = [row for row in mine if row.user not in known]
        skipped += [row for row in no_history if row not in skipped]
        data.test = [EvalCase(row.user, list(known[row.user]), row.item,
                              [row.item, *row.candidates]) for row in mine if row.user in known]
        sizes = [len(c.candidates) for c in data.test] or [len(r.candidates) + 1 for r in rows]
        size = int(np.median(sizes))
        # validation mimics the lists: its target among size - 1 uniform negatives
        sample_candidates(data.valid, list(data.catalogue), size - 1, histories(part),
                          random.Random(f"candidates-holdout-{seed}-{region}"), strict=False)
        listed = {i for c in data.test for i in c.candidates}
        new = listed - set(data.catalogue)
        data.catalogue = sorted(set(data.catalogue) | new)
        data.protocol = f"candidates-{size}"
        cases += len(data.test)
        unknown_items += len(new)
        out[region] = data
    if skipped:
        logger.warning("%s: %d row(s) skipped, their user unknown in the data (or in the row's "
                       "region), or with no interaction but the positive; first: row %d, user "
                       "%r", path, len(skipped), skipped[0].row, skipped[0].user)
    if unknown_items:
        logger.warning("%s: %d listed item(s) unknown to their region's catalogue: kept, they "
                       "score as items never trained on", path, unknown_items)
    return out, {"file": str(path), "rows": len(rows), "cases": cases,
                 "skipped": len(skipped), "unknown_items": unknown_items}

