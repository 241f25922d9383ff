"""Loading and validating interaction files (CSV, TSV, Parquet, JSON Lines) through `datasets`.

The result is always one pandas frame with the canonical columns ``user``, ``item``, ``region``
and, where present, ``timestamp`` and ``rating``. Every problem is reported with the file, the
row (1-based, header excluded) and the column, so the user knows exactly what to fix.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
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


# --sep values: a name or the character itself; " " means runs of blanks (spaces or tabs)
SEPARATORS = {"tab": "\t", "\\t": "\t", "\t": "\t", "comma": ",", ",": ",",
              "semicolon": ";", ";": ";", "space": " ", "whitespace": " ", " ": " ",
              "pipe": "|", "|": "|"}
SNIFF_ORDER = ("\t", ",", ";", " ")  # tried in this order after the file type's own
SNIFF_LINES = 20


def normalize_sep(sep: str | None) -> str | None:
    """The delimiter a ``--sep`` value names (None, "" or "auto": sniff it from the file)."""
    if sep is None or sep in ("", "auto"):
        return None
    out = SEPARATORS.get(sep if sep.strip() == "" else sep.strip().lower())
    if out is None:
        raise DataError(f"--sep {sep!r} unknown; use tab (or \\t), comma (,), semicolon (;), "
                        "space (runs of blanks) or pipe (|)")
    return out


def _split(line: str, delimiter: str) -> list[str]:
    if delimiter == " ":
        return next(csv.reader([line.strip()], delimiter=" ", skipinitialspace=True), [])
    return next(csv.reader([line], delimiter=delimiter), [])


def sniff_delimiter(path: Path, default: str) -> str:
    """The delimiter that splits the header and the first rows into the same number (> 1) of
    fields: the file type's own (comma for .csv, tab else) first, then tab, comma, semicolon,
    blanks. None does: the file type's own, and a missing column then says so."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        lines = []
        for line in fh:
            if line.strip():
                lines.append(line.rstrip("\r\n"))
            if len(lines) >= SNIFF_LINES:
                break
    for candidate in (default, *(c for c in SNIFF_ORDER if c != default)):
        counts = {len(_split(line, candidate)) for line in lines}
        if len(counts) == 1 and counts.pop() > 1:
            return candidate
    return default


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {sorted(FORMATS)}")
    return fmt


def _read_header(path: Path, delimiter: str) -> tuple[list[str], bool]:
    """Column names (quotes and a UTF-8 byte-order mark removed) and whether rows follow."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        first = next((line for line in fh if line.strip()), None)
        has_rows = any(line.strip() for line in fh)
    header = _split(first.rstrip("\r\n"), delimiter) if first else None
    if not header:
        raise DataError(f"{path}: the file is empty (no header, no rows)")
    return header, has_rows


def read_table(path: str | Path, sep: str | None = None) -> pd.DataFrame:
    """Read one file through `datasets` with every cell as a string (ids stay ids).

    Text files are split by ``sep`` (see :func:`normalize_sep`), else by the delimiter
    sniffed from their first lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    fmt = _format_of(path)
    datasets.disable_progress_bars()
    if fmt == "csv":
        delimiter = normalize_sep(sep) or sniff_delimiter(
            path, "," if path.suffix.lower() == ".csv" else "\t")
        header, has_rows = _read_header(path, delimiter)
        if not has_rows:
            raise DataError(f"{path}: the file has a header but no rows")
        if len(set(header)) < len(header):
            raise DataError(f"{path}: the header names a column twice: {header}")
        features = datasets.Features({name: datasets.Value("string") for name in header})
        # ids such as "NA" or "null" are ids, not missing values: no NA parsing at all
        kwargs = dict(features=features, column_names=header, skiprows=1,
                      keep_default_na=False, na_filter=False, encoding="utf-8-sig")
        if delimiter == " ":  # runs of blanks; leading blanks too
            kwargs.update(sep=r"\s+", engine="python")
        else:
            kwargs.update(delimiter=delimiter)
        logger.debug("%s: columns split by %r", path, delimiter)
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


def column_mapping(items: list[str]) -> dict[str, str]:
    """``--columns`` pairs ``OURS=YOURS`` as the ``{ours: yours}`` mapping the loaders take."""
    return {ours: theirs for ours, _, theirs in (item.partition("=") for item in items)}


def _rename(frame: pd.DataFrame, path: Path, columns: dict[str, str]) -> pd.DataFrame:
    mapping = {src: ours for ours, src in columns.items()}
    frame = frame.rename(columns=mapping)
    found = [str(c) for c in frame.columns]
    for name in REQUIRED:
        if name not in frame.columns:
            hint = f" (mapped from {columns[name]!r})" if name in columns else ""
            if len(found) == 1 and any(c in found[0] for c in " \t,;|"):
                raise DataError(
                    f"{path}: missing column {name!r}{hint}; the header was read as one "
                    f"column {found[0]!r}: the delimiter is probably wrong. Pass --sep "
                    "(tab, comma, semicolon or space)")
            raise DataError(
                f"{path}: missing column {name!r}{hint}; found columns {found}. "
                f"Map yours with --columns {name}=YOUR_COLUMN"
            )
    return frame[[c for c in CANONICAL if c in frame.columns]]


def _epoch(text: str, time_format: str | None) -> float | None:
    """Epoch seconds of a date or datetime (ISO-8601, or ``time_format`` for strptime);
    None when it is neither. A time without zone is UTC."""
    try:
        moment = (datetime.strptime(text, time_format) if time_format
                  else datetime.fromisoformat(text.strip()))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def parse_timestamps(values: pd.Series, path: Path,
                     time_format: str | None = None) -> pd.Series:
    """Timestamps as epoch seconds (float): a number is taken as it is, any other cell must be
    a date or datetime (ISO-8601 such as 2016-07-03 or 2016-07-03T12:00:00); with
    ``time_format`` every cell is read by strptime with it. A cell that is neither is an error
    naming file, row and value."""
    text = values.astype(str)
    numeric = pd.to_numeric(text, errors="coerce")
    if time_format is None and not numeric.isna().any():
        return numeric.astype("float64")
    dates = text if time_format else text[numeric.isna()]
    parsed = {v: _epoch(v, time_format) for v in dates.unique()}
    out = text.map(parsed) if time_format else numeric.fillna(text.map(parsed))
    bad = out.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        value = text.iloc[row - 1]
        wanted = (f"is not a time in --time-format {time_format!r}" if time_format else
                  "is neither a number (epoch seconds) nor an ISO-8601 date or datetime "
                  "(2016-07-03, 2016-07-03T12:00:00); for another layout pass --time-format "
                  "(a strptime format, e.g. %d/%m/%Y)")
        raise DataError(f"{path}: row {row}, column 'timestamp': {value!r} {wanted} "
                        f"({int(bad.sum())} such rows)")
    return out.astype("float64")


def _check_cells(frame: pd.DataFrame, path: Path,
                 time_format: str | None = None) -> pd.DataFrame:
    """Empty ids, bad timestamps and non-numeric ratings are errors naming row and column."""
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
    if "timestamp" in frame.columns:
        frame["timestamp"] = parse_timestamps(frame["timestamp"], path, time_format)
    for name in ("rating",):
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
              region: str | None = None, sep: str | None = None,
              time_format: str | None = None) -> pd.DataFrame:
    """Load one interaction file; ``region`` fills the region column when the file has none;
    ``sep`` and ``time_format`` as in :func:`read_table` and :func:`parse_timestamps`."""
    path = Path(path)
    frame = _rename(read_table(path, sep), path, columns or {})
    if "region" not in frame.columns:
        frame = frame.assign(region=region or path.stem)
    return _check_cells(frame.copy(), path, time_format)


def count_duplicates(frame: pd.DataFrame) -> int:
    """Rows repeating an earlier (region, user, item)."""
    return int(frame.duplicated(subset=["region", "user", "item"], keep="first").sum())


def handle_duplicates(frame: pd.DataFrame, policy: str) -> pd.DataFrame:
    """Duplicate (region, user, item) rows: ``keep``, ``drop`` (first kept) or ``error``;
    kept or dropped ones are logged as a warning with their count and the policy."""
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
    logger.warning("%d duplicate (user, item) rows: %s (duplicates=%s; set "
                   "data.duplicates=keep, drop or error)", count,
                   "dropped, the first of each kept" if policy == "drop" else "kept", policy)
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


def load_files(paths: list[str], columns: dict[str, str] | None = None,
               sep: str | None = None, time_format: str | None = None) -> pd.DataFrame:
    """Load several files (``REGION=PATH`` names the region of a file without that column)."""
    if not paths:
        raise DataError("no data files given; pass --file PATH (or REGION=PATH), "
                        "or a --data recipe")
    frames = []
    for spec in paths:
        region, equals, path = spec.partition("=")
        if not equals or "/" in region or "\\" in region or Path(spec).exists():
            region, path = "", spec  # a plain path (which may itself contain "=")
        frames.append(load_file(path, columns, region=region or None, sep=sep,
                                time_format=time_format))
    return pd.concat(frames, ignore_index=True)


@dataclass
class LoadSummary:
    """What one load read: logged once at INFO, and returned to the command line."""

    rows: int
    users: int
    items: int
    regions: list[str]
    duplicates: int = 0
    duplicates_policy: str = "keep"
    time_range: tuple[str, str] | None = None  # first and last timestamp, ISO-8601 (UTC)
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, frame: pd.DataFrame, duplicates: int = 0, policy: str = "keep") -> LoadSummary:
        time_range = None
        if "timestamp" in frame.columns and len(frame):
            low, high = (datetime.fromtimestamp(float(v), tz=timezone.utc)
                         .strftime("%Y-%m-%d %H:%M:%S")
                         for v in (frame["timestamp"].min(), frame["timestamp"].max()))
            time_range = (low, high)
        return cls(len(frame), int(frame["user"].nunique()), int(frame["item"].nunique()),
                   sorted(str(r) for r in frame["region"].unique()), duplicates, policy,
                   time_range)

    def line(self) -> str:
        done = {"keep": "kept", "drop": "dropped", "error": "refused"}.get(
            self.duplicates_policy, self.duplicates_policy)
        parts = [f"{self.rows:,} rows", f"{self.users:,} users", f"{self.items:,} items",
                 f"{len(self.regions)} region(s) ({', '.join(self.regions)})",
                 f"{self.duplicates:,} duplicate rows"
                 + (f" {done} (duplicates={self.duplicates_policy})" if self.duplicates else "")]
        if self.time_range:
            parts.append(f"time {self.time_range[0]} to {self.time_range[1]} UTC")
        lists = self.extra.get("candidates")  # the candidates protocol (data/candidates.py)
        if lists:
            text = (f"candidates {lists['file']}: {lists['cases']:,} test cases of "
                    f"{lists['rows']:,} rows")
            if lists["skipped"]:
                text += f", {lists['skipped']:,} rows skipped (user unknown)"
            if lists["unknown_items"]:
                text += (f", {lists['unknown_items']:,} listed items unknown to the catalogue "
                         "(kept: scored as never-trained items)")
            parts.append(text)
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)
