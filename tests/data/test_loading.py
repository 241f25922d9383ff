"""Loading and validating interaction files: formats, column mapping, bad cells, duplicates."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from regiontune.config import DataConfig
from regiontune.data.loading import DataError, handle_duplicates, load_file, load_files
from regiontune.data.recipes import SYNTHETIC_REGIONS, load_regions

# the same interactions under the names a user's file might have
ROWS = [("u1", "i1", 10), ("u1", "i2", 20), ("u2", "i1", 5), ("u2", "i3", 7)]
MAPPING = {"user": "uid", "item": "iid", "timestamp": "ts"}


def _frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=["uid", "iid", "ts"])


def _write(path: Path, frame: pd.DataFrame) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        raise AssertionError(suffix)
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# formats and column mapping


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_load_file_formats_with_mapping(tmp_path, suffix):
    path = _write(tmp_path / f"de{suffix}", _frame())
    frame = load_file(path, MAPPING)
    assert sorted(frame.columns) == ["item", "region", "timestamp", "user"]
    assert frame["user"].tolist() == ["u1", "u1", "u2", "u2"]
    assert frame["item"].tolist() == ["i1", "i2", "i1", "i3"]
    assert frame["timestamp"].tolist() == [10.0, 20.0, 5.0, 7.0]
    assert frame["timestamp"].dtype == "float64"
    # without a region column, the file's stem names the region
    assert set(frame["region"]) == {"de"}


def test_ids_stay_strings(tmp_path):
    """Leading zeros and numeric-looking ids are ids, not numbers."""
    path = _csv(tmp_path / "x.csv", "user,item\n007,0100\n7,100\n")
    frame = load_file(path)
    assert frame["user"].tolist() == ["007", "7"]
    assert frame["item"].tolist() == ["0100", "100"]


def test_quoted_cells(tmp_path):
    path = _csv(tmp_path / "x.csv", 'user,item\nu1,"i,1"\n')
    assert load_file(path)["item"].tolist() == ["i,1"]


def test_quoted_header(tmp_path):
    path = _csv(tmp_path / "x.csv", '"user","item"\n"u1","i1"\n')
    assert load_file(path)["user"].tolist() == ["u1"]


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"\xef\xbb\xbfuser,item\nu1,i1\n")
    assert load_file(path)["user"].tolist() == ["u1"]


def test_na_like_ids_stay_ids(tmp_path):
    path = _csv(tmp_path / "x.csv", "user,item\nu1,NA\nu2,null\n")
    assert load_file(path)["item"].tolist() == ["NA", "null"]


def test_region_column_and_rating(tmp_path):
    path = _csv(tmp_path / "x.csv", "user,item,region,rating\nu1,i1,fr,4.5\nu2,i2,de,1\n")
    frame = load_file(path, region="ignored")
    assert frame["region"].tolist() == ["fr", "de"]
    assert frame["rating"].tolist() == [4.5, 1.0]


def test_load_files_one_file_per_region(tmp_path):
    a = _write(tmp_path / "a.csv", _frame())
    b = _write(tmp_path / "b.parquet", _frame())
    frame = load_files([f"north={a}", f"south={b}"], MAPPING)
    assert len(frame) == 2 * len(ROWS)
    assert frame["region"].tolist() == ["north"] * len(ROWS) + ["south"] * len(ROWS)
    # a plain path (no REGION=) takes the file's stem
    frame = load_files([str(a)], MAPPING)
    assert set(frame["region"]) == {"a"}


def test_load_files_region_with_equals_in_path(tmp_path):
    folder = tmp_path / "date=2024"
    folder.mkdir()
    path = _write(folder / "x.csv", _frame())
    frame = load_files([f"north={path}"], MAPPING)
    assert set(frame["region"]) == {"north"}


def test_files_recipe_through_load_regions(tmp_path):
    rows = "".join(f"u{u},i{(u + j) % 7},{j}\n" for u in range(4) for j in range(5))
    path = _csv(tmp_path / "inter.csv", "uid,iid,ts\n" + rows)
    cfg = DataConfig(recipe="files", files=[f"island={path}"], columns=dict(MAPPING))
    regions = load_regions(cfg)
    assert list(regions) == ["island"]
    assert regions["island"].ordered
    assert len(regions["island"].test) == 4


# ---------------------------------------------------------------------------------------------
# validation errors: file, row and column named


def test_missing_column_says_which_and_how_to_map(tmp_path):
    path = _csv(tmp_path / "x.csv", "uid,item\nu1,i1\n")
    with pytest.raises(DataError) as err:
        load_file(path)
    msg = str(err.value)
    assert str(path) in msg and "'user'" in msg and "uid" in msg
    assert "--columns user=" in msg


def test_missing_mapped_column_names_the_mapping(tmp_path):
    path = _csv(tmp_path / "x.csv", "uid,item\nu1,i1\n")
    with pytest.raises(DataError) as err:
        load_file(path, {"user": "user_id"})
    msg = str(err.value)
    assert str(path) in msg and "'user'" in msg and "'user_id'" in msg


def test_empty_file(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty") as err:
        load_file(path)
    assert str(path) in str(err.value)


def test_empty_jsonl_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_file(path)


def test_header_only_csv(tmp_path):
    path = _csv(tmp_path / "x.csv", "user,item\n")
    with pytest.raises(DataError, match="no rows") as err:
        load_file(path)
    assert str(path) in str(err.value)


def test_zero_row_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    pd.DataFrame({"user": pd.Series([], dtype=str),
                  "item": pd.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(DataError, match="no rows"):
        load_file(path)


@pytest.mark.parametrize("column,line", [("user", ",i3,3"), ("item", "u3,,3"),
                                         ("item", "u3,  ,3")])
def test_empty_id_cell_names_row_and_column(tmp_path, column, line):
    # the 3rd data row (header excluded) is the bad one
    path = _csv(tmp_path / "x.csv", f"user,item,ts\nu1,i1,1\nu2,i2,2\n{line}\nu4,i4,4\n")
    with pytest.raises(DataError) as err:
        load_file(path, {"timestamp": "ts"})
    msg = str(err.value)
    assert str(path) in msg
    assert "row 3," in msg and f"column {column!r}" in msg and "empty" in msg


def test_empty_id_in_jsonl_row_number(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"user": "u1", "item": "i1"}\n{"user": "u2", "item": "i2"}\n'
                    '{"user": "u3", "item": null}\n')
    with pytest.raises(DataError, match=r"row 3, column 'item'"):
        load_file(path)


def test_non_numeric_timestamp_names_row_and_value(tmp_path):
    path = _csv(tmp_path / "x.tsv", "user\titem\tts\nu1\ti1\t1\nu2\ti2\tyesterday\n")
    with pytest.raises(DataError) as err:
        load_file(path, {"timestamp": "ts"})
    msg = str(err.value)
    assert str(path) in msg
    assert "row 2" in msg and "'timestamp'" in msg and "'yesterday'" in msg


def test_non_numeric_rating(tmp_path):
    path = _csv(tmp_path / "x.csv", "user,item,rating\nu1,i1,5\nu2,i2,5\nu3,i3,good\n")
    with pytest.raises(DataError, match=r"row 3, column 'rating': 'good'"):
        load_file(path)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "x.xlsx"
    path.write_text("user,item\nu1,i1\n")
    with pytest.raises(DataError) as err:
        load_file(path)
    msg = str(err.value)
    assert str(path) in msg and "'.xlsx'" in msg and ".parquet" in msg


def test_no_such_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_file(tmp_path / "missing.csv")


def test_no_files_given():
    with pytest.raises(DataError, match="--file"):
        load_files([])


def test_unknown_region_lists_known(tmp_path):
    path = _write(tmp_path / "a.csv", _frame())
    cfg = DataConfig(recipe="files", files=[f"north={path}"], columns=dict(MAPPING),
                     regions=["north", "atlantis"])
    with pytest.raises(DataError) as err:
        load_regions(cfg)
    assert "atlantis" in str(err.value) and "north" in str(err.value)


def test_unknown_synthetic_region_lists_known():
    with pytest.raises(DataError) as err:
        load_regions(DataConfig(regions=["atlantis"], synthetic_scale=0.02))
    msg = str(err.value)
    assert "atlantis" in msg and all(r in msg for r in SYNTHETIC_REGIONS)


def test_unknown_recipe():
    with pytest.raises(DataError) as err:
        load_regions(DataConfig(recipe="movielens"))
    msg = str(err.value)
    assert "'movielens'" in msg and "synthetic" in msg and "wsdm22-xmrec" in msg


# ---------------------------------------------------------------------------------------------
# duplicates


def _dups() -> pd.DataFrame:
    return pd.DataFrame({"user": ["u1", "u1", "u1", "u2", "u1"],
                         "item": ["i1", "i1", "i2", "i1", "i1"],
                         "region": ["a", "a", "a", "a", "b"],
                         "timestamp": [1.0, 2.0, 3.0, 4.0, 5.0]})


def test_duplicates_keep():
    frame = _dups()
    assert len(handle_duplicates(frame, "keep")) == 5


def test_duplicates_drop_counts(caplog):
    caplog.set_level(logging.INFO, logger="regiontune.data.loading")
    frame = pd.concat([_dups(), _dups().iloc[[0]]], ignore_index=True)
    out = handle_duplicates(frame, "drop")
    # (a, u1, i1) appears 3 times: the first is kept; (b, u1, i1) is another region
    assert len(out) == 4
    assert out["timestamp"].tolist() == [1.0, 3.0, 4.0, 5.0]
    assert "2 duplicate" in caplog.text and "dropped" in caplog.text


def test_duplicates_error_counts():
    frame = pd.concat([_dups(), _dups().iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError) as err:
        handle_duplicates(frame, "error")
    msg = str(err.value)
    assert msg.startswith("2 duplicate") and "user 'u1'" in msg and "region 'a'" in msg
    assert "duplicates=drop" in msg


def test_duplicates_error_names_item():
    frame = pd.concat([_dups(), _dups().iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError) as err:
        handle_duplicates(frame, "error")
    assert "item 'i1'" in str(err.value) and "bound method" not in str(err.value)


def test_duplicates_unknown_policy():
    with pytest.raises(DataError, match="keep, drop or error"):
        handle_duplicates(_dups(), "merge")


def test_duplicates_policy_in_files_recipe(tmp_path):
    rows = "".join(f"u{u},i{j},{j}\n" for u in range(3) for j in range(4))
    path = _csv(tmp_path / "r.csv", "user,item,timestamp\n" + rows + "u0,i0,9\n")
    with pytest.raises(DataError, match="1 duplicate"):
        load_regions(DataConfig(recipe="files", files=[str(path)], duplicates="error"))
    regions = load_regions(DataConfig(recipe="files", files=[str(path)], duplicates="drop"))
    assert regions["r"].stats()["train_interactions"] + 2 * 3 == 12
