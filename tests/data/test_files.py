"""Your own files (issue 15): delimiters sniffed or given, dates as timestamps, the load
summary and duplicates warning, the sampled-candidate protocol."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from regiontune.config import DataConfig
from regiontune.data.loading import DataError, LoadSummary, load_file, normalize_sep
from regiontune.data.recipes import load_data, load_regions
from regiontune.data.splits import user_items

# the layout of a public cross-market data set: userId itemId rate date
COLUMNS = {"user": "userId", "item": "itemId", "rating": "rate", "timestamp": "date"}
HEADER = ["userId", "itemId", "rate", "date"]
ROWS = [("u1", "i1", 5, "2016-07-03"), ("u1", "i2", 4, "2016-07-04"),
        ("u1", "i3", 3, "2016-07-05"), ("u2", "i1", 1, "2016-08-01"),
        ("u2", "i4", 2, "2016-08-02"), ("u2", "i2", 5, "2016-08-09"),
        ("u3", "i3", 4, "2017-01-31")]
SEPARATORS = {"tab": ("x.tsv", "\t"), "comma": ("x.csv", ","), "semicolon": ("x.csv", ";"),
              "space": ("x.txt", " ")}


def _epoch(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp())


def _write(path: Path, delimiter: str, dates: bool = True, rows=ROWS) -> Path:
    lines = [delimiter.join(HEADER)]
    for user, item, rate, day in rows:
        stamp = day if dates else str(_epoch(day))
        lines.append(delimiter.join([user, item, str(rate), stamp]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def reference(tmp_path) -> pd.DataFrame:
    return load_file(_write(tmp_path / "ref.tsv", "\t", dates=False), COLUMNS, region="m")


@pytest.mark.parametrize("dates", [False, True], ids=["epoch", "iso-date"])
@pytest.mark.parametrize("kind", sorted(SEPARATORS))
def test_every_delimiter_and_time_layout_loads_the_same_frame(tmp_path, reference, kind, dates):
    name, delimiter = SEPARATORS[kind]
    frame = load_file(_write(tmp_path / name, delimiter, dates), COLUMNS, region="m")
    pd.testing.assert_frame_equal(frame, reference)
    assert frame["timestamp"].iloc[0] == _epoch("2016-07-03")


def test_runs_of_blanks_and_leading_blanks(tmp_path, reference):
    path = tmp_path / "x.txt"
    path.write_text("userId  itemId rate   date\n" + "".join(
        f"  {u}   {i} {r}  {_epoch(d)}\n" for u, i, r, d in ROWS))
    pd.testing.assert_frame_equal(load_file(path, COLUMNS, region="m"), reference)


def test_datetimes_iso_forms(tmp_path):
    rows = [("u1", "i1", 1, "2016-07-03T12:00:00"), ("u1", "i2", 1, "2016-07-03 12:00:01"),
            ("u1", "i3", 1, "2016-07-03T12:00:02+02:00")]
    path = tmp_path / "x.csv"
    path.write_text("userId,itemId,rate,date\n" + "".join(
        f"{u},{i},{r},{d}\n" for u, i, r, d in rows))
    noon = _epoch("2016-07-03") + 12 * 3600
    assert load_file(path, COLUMNS)["timestamp"].tolist() == [noon, noon + 1, noon + 2 - 7200]


def test_time_format_escape_hatch(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("userId,itemId,rate,date\nu1,i1,1,03/07/2016\nu1,i2,1,31/12/2016\n")
    with pytest.raises(DataError, match="--time-format"):
        load_file(path, COLUMNS)
    frame = load_file(path, COLUMNS, time_format="%d/%m/%Y")
    assert frame["timestamp"].tolist() == [_epoch("2016-07-03"), _epoch("2016-12-31")]


def test_bad_date_names_file_row_and_value(tmp_path):
    rows = [*ROWS[:3], ("u2", "i1", 1, "2016-13-45"), *ROWS[4:]]
    path = _write(tmp_path / "x.txt", " ", rows=rows)
    with pytest.raises(DataError) as err:
        load_file(path, COLUMNS)
    msg = str(err.value)
    assert str(path) in msg and "row 4" in msg and "'2016-13-45'" in msg
    assert "'timestamp'" in msg and "ISO-8601" in msg


def test_bad_value_under_time_format(tmp_path):
    path = _write(tmp_path / "x.tsv", "\t")
    with pytest.raises(DataError, match=r"row 1, column 'timestamp': '2016-07-03' is not a time "
                                        r"in --time-format '%d/%m/%Y'"):
        load_file(path, COLUMNS, time_format="%d/%m/%Y")


def test_wrong_delimiter_says_so_and_suggests_sep(tmp_path):
    path = _write(tmp_path / "x.txt", " ")
    with pytest.raises(DataError) as err:
        load_file(path, COLUMNS, sep="tab")
    msg = str(err.value)
    assert "missing column 'user' (mapped from 'userId')" in msg
    assert "'userId itemId rate date'" in msg
    assert "delimiter is probably wrong" in msg and "--sep" in msg


def test_unsniffable_file_falls_back_and_hints(tmp_path):
    # a space-separated file whose rows split differently from its header
    path = tmp_path / "x.txt"
    path.write_text("userId itemId rate date\nu1 i1 5 2016-07-03 12:00:00\n"
                    "u2 i2 4 2016-07-04 13:00:00\n")
    with pytest.raises(DataError, match="delimiter is probably wrong"):
        load_file(path, COLUMNS)


def test_sep_overrides_the_sniffed_delimiter(tmp_path, reference):
    # commas inside ids: sniffing prefers the .csv comma; --sep tab reads the tabs
    path = tmp_path / "x.csv"
    path.write_text("userId\titemId\trate\tdate\n" + "".join(
        f"{u}\t{i},x\t{r}\t{d}\n" for u, i, r, d in ROWS))
    frame = load_file(path, COLUMNS, region="m", sep="\\t")
    assert frame["item"].tolist() == [f"{i},x" for _, i, _, _ in ROWS]
    assert frame["user"].tolist() == reference["user"].tolist()


@pytest.mark.parametrize("given,expected", [("tab", "\t"), ("\\t", "\t"), ("\t", "\t"),
                                            ("space", " "), (" ", " "), (",", ","),
                                            ("comma", ","), (";", ";"), ("auto", None),
                                            (None, None)])
def test_normalize_sep(given, expected):
    assert normalize_sep(given) == expected


def test_unknown_sep():
    with pytest.raises(DataError, match="--sep 'x' unknown"):
        normalize_sep("x")


def test_files_recipe_takes_sep_and_time_format(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("userId;itemId;rate;date\n" + "".join(
        f"{u};{i};{r};{datetime.strptime(d, '%Y-%m-%d'):%d.%m.%Y}\n" for u, i, r, d in ROWS))
    cfg = DataConfig(recipe="files", files=[f"m={path}"], columns=dict(COLUMNS),
                     sep="semicolon", time_format="%d.%m.%Y", min_history=3)
    regions, summary = load_data(cfg)
    assert regions["m"].ordered and regions["m"].test[0].target == "i3"
    assert summary.time_range == ("2016-07-03 00:00:00", "2017-01-31 00:00:00")


def test_summary_logged_once_and_duplicates_warned(tmp_path, caplog):
    path = _write(tmp_path / "m.tsv", "\t", rows=[*ROWS, ROWS[0], ROWS[1]])
    cfg = DataConfig(recipe="files", files=[str(path)], columns=dict(COLUMNS))
    with caplog.at_level(logging.INFO, logger="regiontune"):
        _, summary = load_data(cfg)
    assert summary == LoadSummary(9, 3, 4, ["m"], 2, "keep",
                                  ("2016-07-03 00:00:00", "2017-01-31 00:00:00"))
    lines = [r for r in caplog.records if r.getMessage().startswith("data (files)")]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert ("9 rows, 3 users, 4 items, 1 region(s) (m), 2 duplicate rows kept"
            in lines[0].getMessage())
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "2 duplicate" in warned[0].getMessage()
    assert "duplicates=keep" in warned[0].getMessage()


def test_summary_after_drop(tmp_path, caplog):
    path = _write(tmp_path / "m.tsv", "\t", rows=[*ROWS, ROWS[0]])
    cfg = DataConfig(recipe="files", files=[str(path)], columns=dict(COLUMNS),
                     duplicates="drop")
    _, summary = load_data(cfg)
    assert summary.rows == len(ROWS) and summary.duplicates == 1
    assert "1 duplicate rows dropped (duplicates=drop)" in summary.line()
    assert "duplicates=drop" in caplog.text


# --- the sampled-candidate protocol -------------------------------------------------------

def _sampled(**kwargs) -> DataConfig:
    return DataConfig(regions=["north"], synthetic_scale=0.1, protocol="sampled", **kwargs)


@pytest.fixture(scope="module")
def sampled():
    return load_regions(_sampled(negatives=30))["north"]


def test_sampled_protocol_shape(sampled):
    assert sampled.protocol == "sampled-30-uniform"
    owned = user_items(sampled)
    for case in (*sampled.valid, *sampled.test):
        assert len(case.candidates) == 31 and len(set(case.candidates)) == 31
        assert case.candidates[0] == case.target
        assert not set(case.candidates[1:]) & owned[case.user]
        assert set(case.candidates) <= set(sampled.catalogue)


def test_sampled_protocol_reproducible(sampled):
    again = load_regions(_sampled(negatives=30))["north"]
    assert [c.candidates for c in again.test] == [c.candidates for c in sampled.test]
    assert [c.candidates for c in again.valid] == [c.candidates for c in sampled.valid]
    other = load_regions(_sampled(negatives=30, seed=1))["north"]
    assert [c.candidates for c in other.test] != [c.candidates for c in sampled.test]


def test_popularity_sampling_prefers_popular_items():
    uniform = load_regions(_sampled(negatives=20))["north"]
    popular = load_regions(_sampled(negatives=20, negatives_from="popularity"))["north"]
    assert popular.protocol == "sampled-20-popularity"
    counts = Counter(i for items in popular.train.values() for i in items)

    def mean_count(data):
        drawn = [i for c in data.test for i in c.candidates[1:]]
        return sum(counts[i] for i in drawn) / len(drawn)

    # training counts are skewed (Zipf): popularity draws have far higher mean counts
    assert mean_count(popular) > 2 * mean_count(uniform)
    owned = user_items(popular)
    for case in popular.test:
        assert all(counts[i] > 0 for i in case.candidates[1:])  # never-trained never drawn
        assert not set(case.candidates[1:]) & owned[case.user]


def test_full_ranking_by_default():
    data = load_regions(DataConfig(regions=["island"], synthetic_scale=0.1))["island"]
    assert data.protocol == "full-ranking"
    assert all(c.candidates is None for c in data.test)


def test_too_many_negatives_is_a_clear_error():
    with pytest.raises(DataError, match="lower --negatives"):
        load_regions(_sampled(negatives=5000))


def test_sampled_refused_for_wsdm():
    with pytest.raises(DataError, match="wsdm22-xmrec.*fixed protocol"):
        load_regions(DataConfig(recipe="wsdm22-xmrec", data_dir=".", protocol="sampled"))


@pytest.mark.parametrize("field,value,match", [("protocol", "bogus", "protocol 'bogus'"),
                                               ("negatives_from", "x", "negatives_from 'x'")])
def test_unknown_protocol_settings(field, value, match):
    with pytest.raises(DataError, match=match):
        load_regions(DataConfig(regions=["island"], **{field: value}))
