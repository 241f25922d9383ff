"""Your own candidate lists (issue 15, ``--candidates FILE``): the rows replace the test cases,
the positive leaves the training data, the protocol is named by the list size, bad files fail
clearly."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from regiontune.cli.common import data_config
from regiontune.config import DataConfig
from regiontune.data.loading import DataError
from regiontune.data.recipes import load_data

ITEMS = [f"i{j}" for j in range(30)]


def _interactions(path: Path, region: bool = False) -> Path:
    """Eight users with six timed interactions each (user k: items k..k+5), one or two regions."""
    lines = ["user,item,timestamp" + (",region" if region else "")]
    for u in range(8):
        for step in range(6):
            row = f"u{u},i{u + step},{1000 * u + step}"
            lines.append(row + (f",{'a' if u < 4 else 'b'}" if region else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def _candidates(path: Path, rows: list[tuple], header: str = "user\titem\tcandidates") -> Path:
    path.write_text("\n".join([header, *("\t".join(r) for r in rows)]) + "\n")
    return path


# u0 had i0..i5 (i2 is its positive: taken from training); u1's positive i20 is new to it
ROWS = [("u0", "i2", "i20,i21,i22,i23"), ("u1", "i20", "i10|i11|i12|i13")]


def _load(tmp_path, rows=ROWS, **options):
    cfg = DataConfig(files=[f"shop={_interactions(tmp_path / 'shop.csv')}"], recipe="files",
                     candidates=str(_candidates(tmp_path / "lists.tsv", rows)), **options)
    return load_data(cfg)


def test_test_cases_are_the_files_rows(tmp_path):
    regions, summary = _load(tmp_path)
    data = regions["shop"]
    assert [(c.user, c.target, c.candidates) for c in data.test] == [
        ("u0", "i2", ["i2", "i20", "i21", "i22", "i23"]),
        ("u1", "i20", ["i20", "i10", "i11", "i12", "i13"])]
    assert data.protocol == "candidates-5"
    assert "candidates " in summary.line() and "2 test cases of 2 rows" in summary.line()


def test_the_positive_leaves_training_and_history(tmp_path):
    data = _load(tmp_path)[0]["shop"]
    u0 = data.test[0]
    assert u0.history == ["i0", "i1", "i3", "i4", "i5"]  # all of u0's items but the positive
    assert "i2" not in data.train["u0"]
    assert all(c.target != "i2" for c in data.valid if c.user == "u0")
    # validation: the internal hold-out (the last item), among the lists' size
    assert {c.user for c in data.valid} == {f"u{u}" for u in range(8)}
    assert all(len(c.candidates) == 5 and c.candidates[0] == c.target for c in data.valid)


def test_unknown_user_is_skipped_and_unknown_items_kept(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        regions, summary = _load(tmp_path, rows=[*ROWS, ("ghost", "i1", "i2,i3")])
    data = regions["shop"]
    assert [c.user for c in data.test] == ["u0", "u1"]
    assert "1 rows skipped (user unknown)" in summary.line()
    assert "ghost" in caplog.text
    # i13 and i20..i23 are no item of the interactions (i0..i12): kept, counted
    assert {"i13", "i20", "i21", "i22", "i23"} <= set(data.catalogue)
    assert "5 listed items unknown to the catalogue" in summary.line()


def test_region_column_and_every_region_of_the_user(tmp_path):
    frame = _interactions(tmp_path / "two.csv", region=True)
    lists = _candidates(tmp_path / "l.tsv", [("u0", "i2", "i9|i10", "a"), ("u5", "i6", "i1", "")],
                        header="user\titem\tcandidates\tregion")
    regions, _ = load_data(DataConfig(files=[str(frame)], recipe="files", candidates=str(lists)))
    assert [(c.user, c.target) for c in regions["a"].test] == [("u0", "i2")]
    assert [(c.user, c.target) for c in regions["b"].test] == [("u5", "i6")]
    assert regions["a"].protocol == "candidates-3" and regions["b"].protocol == "candidates-2"


@pytest.mark.parametrize(("rows", "header", "message"), [
    ([("u0", "i2")], "user\titem", "missing column(s) ['candidates']"),
    ([("u0", "i2", "i3,i2")], None, "is also in its candidate list"),
    ([("u0", "i2", " , |")], None, "empty candidate list"),
    ([("u0", "i2", "i3,i3")], None, "listed more than once"),
])
def test_bad_files_fail_clearly(tmp_path, rows, header, message):
    lists = _candidates(tmp_path / "l.tsv", rows, **({"header": header} if header else {}))
    cfg = DataConfig(files=[str(_interactions(tmp_path / "shop.csv"))], recipe="files",
                     candidates=str(lists))
    with pytest.raises(DataError, match="l.tsv") as err:
        load_data(cfg)
    assert message in str(err.value)


def test_missing_file_and_protocol_conflicts(tmp_path):
    shop = str(_interactions(tmp_path / "shop.csv"))
    with pytest.raises(DataError, match="no such file"):
        load_data(DataConfig(files=[shop], recipe="files", candidates=str(tmp_path / "no.tsv")))
    with pytest.raises(DataError, match="pass --candidates FILE"):
        load_data(DataConfig(files=[shop], recipe="files", protocol="candidates"))
    with pytest.raises(DataError, match="drop --protocol sampled"):
        load_data(DataConfig(files=[shop], recipe="files", protocol="sampled",
                             candidates=str(tmp_path / "no.tsv")))
    with pytest.raises(DataError, match="drop --candidates"):
        load_data(DataConfig(recipe="wsdm22-xmrec", candidates="x.tsv"))
    with pytest.raises(ValueError, match="drop --negatives"):
        data_config(DataConfig(), None, None, [shop], [], None, negatives=9, candidates="x")


def test_data_config_sets_the_protocol(tmp_path):
    cfg = data_config(DataConfig(), None, None, ["x.csv"], [], None, candidates=tmp_path / "l")
    assert cfg.candidates == str(tmp_path / "l") and cfg.protocol == "candidates"
