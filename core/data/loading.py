"""Loading and validating interaction files (CSV, TSV, Parquet, JSON Lines) through `datasets`.

The result is always one pandas frame with the canonical columns ``user``, ``item``, ``region``
and, where present, ``timestamp`` and ``rating``. Every problem is reported with the file, the
row (1-based, header excluded) and the column, so the user knows exactly what to fix.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

REQUIRED = ("user", "item")
OPTIONAL = ("region", "timestamp", "rating")
CANONICAL = REQUIRED + OPTIONAL
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".parquet": "parquet",
           ".jsonl": "json", ".json": "json",
           ".inter": "csv", ".user": "csv", ".item": "csv"}  # RecBole atomic files are TSV


class DataError(ValueError):
    """Bad input data: the message names the file, row and column, and what to do."""


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FORMATS)}")
    return fmt


def _read_header(path: Path, delimiter: str) -> tuple[list[str], bool]:
    """Column names (quotes and a UTF-8 byte-order mark removed) and whether rows follow."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader, None)
        has_rows = any(any(cell.strip() for cell in row) for row in reader)
    if not header:
        raise DataError(f"{path}: the file is empty (no header, no rows)")
    return header, has_rows


def read_table(path: str | Path) -> pd.DataFrame:
    """Read one file through `datasets` with every cell as a string (ids stay ids)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    fmt = _format_of(path)
    datasets.disable_progress_bars()
    if fmt == "csv":
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
        header, has_rows = _read_header(path, delimiter)
        if not has_rows:
            raise DataError(f"{path}: the file has a header but no rows")
        features = datasets.Features({name: datasets.Value("string") for name in header})
        # ids such as "NA" or "null" are ids, not missing values: no NA parsing at all
        kwargs = dict(delimiter=delimiter, features=features, column_names=header, skiprows=1,
                      keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    else:
        kwargs = {}
    try:
        table = datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except (ValueError, datasets.exceptions.DatasetGenerationError) as err:
        if "corresponds to no data" in str(err):
            raise DataError(f"{path}: the file has a header but no rows") from err
        raise DataError(f"{path}: cannot be read as {fmt} ({err}): a file with no rows, or "
                        f"not {fmt}; check the file") from err
    frame = table.to_pandas() if table.num_rows else pd.DataFrame()
    if len(frame) == 0:
        raise DataError(f"{path}: the file has a header but no rows")
    # RecBole atomic files name columns "name:type"; keep the name only.
    frame.columns = [str(c).split(":")[0] for c in frame.columns]
    return frame


def _rename(frame: pd.DataFrame, path: Path, columns: dict[str, str]) -> pd.DataFrame:
    mapping = {src: ours for ours, src in columns.items()}
    frame = frame.rename(columns=mapping)
    for name in REQUIRED:
        if name not in frame.columns:
            hint = f" (mapped from {columns[name]!r})" if name in columns else ""
            raise DataError(
                f"{path}: missing column {name!r}{hint}; found columns {list(frame.columns)}. "
                f"Map yours with --columns {name}=YOUR_COLUMN"
            )
    return frame[[c for c in CANONICAL if c in frame.columns]]


def _check_cells(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Empty ids and non-numeric timestamps/ratings are errors naming row and column."""
    for name in ("user", "item", "region"):
        if name not in frame.columns:
            continue
        col = frame[name]
        bad = col.isna() | (col.astype(str).str.strip() == "")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            raise DataError(f"{path}: row {row}, column {name!r}: empty value "
                            f"({int(bad.sum())} such rows); every row needs a {name}")
        frame[name] = col.astype(str).str.strip()
    for name in ("timestamp", "rating"):
        if name not in frame.columns:
            continue
        numeric = pd.to_numeric(frame[name], errors="coerce")
        bad = numeric.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
            value = frame[name].iloc[row - 1]
            raise DataError(f"{path}: row {row}, column {name!r}: {value!r} is not a number "
                            f"({int(bad.sum())} such rows)")
        frame[name] = numeric.astype("float64")
    return frame


def load_file(path: str | Path, columns: dict[str, str] | None = None,
              region: str | None = None) -> pd.DataFrame:
    """Load one interaction file; ``region`` fills the region column when the file has none."""
    path = Path(path)
    frame = _rename(read_table(path), path, columns or {})
    if "region" not in frame.columns:
        frame = frame.assign(region=region or path.stem)
    return _check_cells(frame.copy(), path)


def handle_duplicates(frame: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Duplicate (region, user, item) rows: ``keep``, ``drop`` (first kept) or ``error``."""
    if policy not in ("keep", "drop", "error"):
        raise DataError(f"duplicates policy {policy!r} unknown; use keep, drop or error")
    dup = frame.duplicated(subset=["region", "user", "item"], keep="first")
    count = int(dup.sum())
    if count == 0:
        return frame
    if policy == "error":
        first = frame[dup].iloc[0]
        raise DataError(f"{count} duplicate (user, item) rows, first: user {first['user']!r}, "
                        f"item {first['item']!r}, region {first['region']!r}; "
                        "pass duplicates=drop or duplicates=keep")
    logger.info("%d duplicate (user, item) rows: %s", count,
                "dropped" if policy == "drop" else "kept")
    return frame[~dup].reset_index(drop=True) if policy == "drop" else frame


def select_regions(frame: pd.DataFrame, regions: list[str] | None) -> pd.DataFrame:
    """Keep the asked regions; an unknown one is an error listing the known ones."""
    if not regions:
        return frame
    known = sorted(frame["region"].unique())
    unknown = [r for r in regions if r not in known]
    if unknown:
        raise DataError(f"unknown region(s) {unknown}; the data has regions {known}")
    return frame[frame["region"].isin(regions)].reset_index(drop=True)


def load_files(paths: list[str], columns: dict[str, str] | None = None) -> pd.DataFrame:
    """Load several files (``REGION=PATH`` names the region of a file without that column)."""
    if not paths:
        raise DataError("no data files given; pass --file PATH (or REGION=PATH), "
                        "or a --data recipe")
    frames = []
    for spec in paths:
        region, sep, path = spec.partition("=")
        if not sep or "/" in region or "\\" in region or Path(spec).exists():
            region, path = "", spec  # a plain path (which may itself contain "=")
        frames.append(load_file(path, columns, region=region or None))
    return pd.concat(frames, ignore_index=True)
