"""The named recipes: synthetic, ml-100k, wsdm22-xmrec (union of both training files,
official and built candidate lists, the mimicking hold-out)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from regiontune.config import DataConfig
from regiontune.data.loading import DataError
from regiontune.data.recipes import SYNTHETIC_REGIONS, load_regions, synthetic_frame

# the shared real data sits beside the project (../shared/data); REGIONTUNE_DATA overrides it

DATA = Path(os.environ.get("REGIONTUNE_DATA",
                           Path(__file__).resolve().parents[3] / "shared" / "data"))
ML100K = DATA / "ml-100k"
WSDM = DATA / "wsdm22-xmrec"
needs_ml100k = pytest.mark.skipif(not (ML100K / "ml-100k.inter").is_file(),
                                  reason="ml-100k not available")
needs_wsdm = pytest.mark.skipif(not (WSDM / "t1" / "valid_run.tsv").is_file(),
                                reason="wsdm22-xmrec not available")


# ---------------------------------------------------------------------------------------------
# synthetic recipe


def test_synthetic_is_deterministic():
    a = synthetic_frame(seed=3, scale=0.03)
    b = synthetic_frame(seed=3, scale=0.03)
    pd.testing.assert_frame_equal(a, b)
    c = synthetic_frame(seed=4, scale=0.03)
    assert not a.equals(c)


def test_synthetic_shape():
    frame = synthetic_frame(seed=0, scale=0.05)
    regions = sorted(frame["region"].unique())
    assert len(regions) >= 6
    users = frame.groupby("region")["user"].nunique()
    assert users.max() >= 5 * users.min()  # big and small regions
    assert users["north"] > users["island"]
    # region-only items: only ever seen in their own region
    items_regions = frame.groupby("item")["region"].agg(set)
    local = [i for i in items_regions.index if not i.startswith("i")]
    assert local
    for item in local:
        assert items_regions[item] == {item.rsplit("-", 1)[0]}
    # shared items span regions
    assert any(len(r) > 1 for r in items_regions.values)
    # timestamps: numeric, increasing along each user's history
    assert frame["timestamp"].dtype == "float64"
    assert (frame.groupby("user")["timestamp"].diff().dropna() > 0).all()


def test_synthetic_recipe_splits_by_time(tiny_regions):
    assert set(tiny_regions) == set(SYNTHETIC_REGIONS)
    for data in tiny_regions.values():
        assert data.ordered and data.protocol == "full-ranking"
        assert data.test and data.valid


# ---------------------------------------------------------------------------------------------
# ml-100k recipe


@pytest.fixture(scope="module")
def ml100k():
    return load_regions(DataConfig(recipe="ml-100k", data_dir=str(ML100K)))


@needs_ml100k
def test_ml100k_regions(ml100k):
    assert set(ml100k) == {f"zip{d}" for d in range(10)} | {"intl"}
    users = pd.read_csv(ML100K / "ml-100k.user", sep="\t", dtype=str)
    users.columns = [c.split(":")[0] for c in users.columns]
    zips = dict(zip(users["user_id"], users["zip_code"], strict=True))
    for region, data in ml100k.items():
        for user in list(data.train)[:20]:
            zip_code = zips[user]
            expected = f"zip{zip_code[0]}" if zip_code[0].isdigit() else "intl"
            assert region == expected
    assert sum(len(d.train) for d in ml100k.values()) == 943


@needs_ml100k
def test_ml100k_histories_ordered_by_time(ml100k):
    inter = pd.read_csv(ML100K / "ml-100k.inter", sep="\t", dtype=str)
    inter.columns = [c.split(":")[0] for c in inter.columns]
    inter["timestamp"] = inter["timestamp"].astype(float)
    data = ml100k["zip9"]
    assert data.ordered and data.protocol == "full-ranking"
    valid = {c.user: c for c in data.valid}
    for case in data.test[:10]:
        rows = inter[inter["user_id"] == case.user].sort_values("timestamp", kind="stable")
        items = rows["item_id"].tolist()
        assert case.target == items[-1] and case.history == items[:-1]
        assert valid[case.user].target == items[-2]
        assert data.train[case.user] == items[:-2]
        # timestamps along the history never decrease
        assert rows["timestamp"].is_monotonic_increasing


@needs_ml100k
def test_ml100k_region_selection():
    regions = load_regions(DataConfig(recipe="ml-100k", data_dir=str(ML100K),
                                      regions=["intl"]))
    assert list(regions) == ["intl"]


def test_recipes_need_data_dir():
    for recipe in ("ml-100k", "wsdm22-xmrec"):
        with pytest.raises(DataError) as err:
            load_regions(DataConfig(recipe=recipe))
        assert "--data-dir" in str(err.value) and recipe in str(err.value)


def test_recipe_data_dir_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_regions(DataConfig(recipe="ml-100k", data_dir=str(tmp_path / "nope")))


# ---------------------------------------------------------------------------------------------
# wsdm22-xmrec recipe


@pytest.fixture(scope="module")
def wsdm():
    return load_regions(DataConfig(recipe="wsdm22-xmrec", data_dir=str(WSDM),
                                   regions=["t1", "t2"]))


def _wsdm_train(region: str) -> dict[str, set[str]]:
    """Both training files of a market, read here independently of the recipe."""
    frame = pd.concat([pd.read_csv(WSDM / region / name, sep="\t", dtype=str)
                       for name in ("train.tsv", "train_5core.tsv")
                       if (WSDM / region / name).is_file()])
    return frame.groupby("userId")["itemId"].agg(set).to_dict()


@needs_wsdm
def test_wsdm_t1_official_candidates(wsdm):
    data = wsdm["t1"]
    assert data.protocol == "official-100" and not data.ordered
    runs = {}
    for line in (WSDM / "t1" / "valid_run.tsv").read_text().splitlines():
        user, _, items = line.partition("\t")
        runs[user] = items.split(",")
    qrel = pd.read_csv(WSDM / "t1" / "valid_qrel.tsv", sep="\t", dtype=str)
    assert len(data.test) == len(qrel)
    for case in data.test:
        assert case.candidates == runs[case.user]
        assert len(case.candidates) == 100 and case.target in case.candidates
    # every candidate is in the catalogue the task ranks over
    assert {i for c in data.test for i in c.candidates} <= set(data.catalogue)


@needs_wsdm
def test_wsdm_t2_built_candidates(wsdm):
    data = wsdm["t2"]
    assert data.protocol == "official-100"
    assert not (WSDM / "t2" / "valid_run.tsv").exists()
    for case in data.test:
        assert len(case.candidates) == 100 and len(set(case.candidates)) == 100
        assert case.target in case.candidates


@needs_wsdm
def test_wsdm_t2_candidates_exclude_training_items(wsdm):
    train = _wsdm_train("t2")
    bad = [c.user for c in wsdm["t2"].test
           if (set(c.candidates) - {c.target}) & train.get(c.user, set())]
    assert bad == []


@needs_wsdm
def test_wsdm_t2_negatives_exclude_split_training_items(wsdm):
    """What the recipe does guarantee: no item of the split's training history is a negative."""
    data = wsdm["t2"]
    for case in data.test:
        negatives = set(case.candidates) - {case.target}
        assert not negatives & set(data.train.get(case.user, ()))


@needs_wsdm
def test_wsdm_t2_never_trained_positive_is_no_giveaway(wsdm):
    """Items absent from t2's training file occur among the negatives as well (as in t1's
    official lists): a never-trained candidate is not necessarily the positive."""
    trained = set().union(*_wsdm_train("t2").values())
    cold = [c for c in wsdm["t2"].test if c.target not in trained]
    assert cold  # t2 has validation positives that never occur in its training file
    negatives = [i for c in wsdm["t2"].test for i in c.candidates if i != c.target]
    share = sum(i not in trained for i in negatives) / len(negatives)
    pool = trained | {c.target for c in wsdm["t2"].test}
    # uniform over the pool: the never-trained share of the negatives is about theirs of the pool
    assert share == pytest.approx(len(pool - trained) / len(pool), rel=0.2)


@needs_wsdm
def test_wsdm_t2_candidates_deterministic(wsdm):
    again = load_regions(DataConfig(recipe="wsdm22-xmrec", data_dir=str(WSDM), regions=["t2"]))
    assert [c.candidates for c in again["t2"].test] == [c.candidates for c in wsdm["t2"].test]


@needs_wsdm
def test_wsdm_unknown_market_lists_known():
    with pytest.raises(DataError) as err:
        load_regions(DataConfig(recipe="wsdm22-xmrec", data_dir=str(WSDM), regions=["t9"]))
    msg = str(err.value)
    assert "t9" in msg and "t1" in msg and "s1" in msg


# a tiny market whose 5-core file holds a user and interactions train.tsv lacks
TINY_TRAIN = [("a", f"p{i}", 5) for i in range(6)] + [("b", f"p{i}", 4) for i in range(3, 9)]
TINY_5CORE = [("a", "p0", 5), ("a", "p1", 5), ("b", "p9", 3), ("c", "p2", 1), ("c", "p10", 2),
              ("c", "p11", 2), ("c", "p12", 2)]


def _tiny_market(root: Path, name: str, with_run: bool) -> None:
    market = root / name
    market.mkdir(parents=True)
    cols = ["userId", "itemId", "rating"]
    pd.DataFrame(TINY_TRAIN, columns=cols).to_csv(market / "train.tsv", sep="\t", index=False)
    pd.DataFrame(TINY_5CORE, columns=cols).to_csv(market / "train_5core.tsv", sep="\t",
                                                  index=False)
    pd.DataFrame([("a", "p20", 5), ("c", "p21", 5)], columns=cols).to_csv(
        market / "valid_qrel.tsv", sep="\t", index=False)
    if with_run:
        (market / "valid_run.tsv").write_text("a\tp20,p3\nc\tp21,p4\n")


def test_wsdm_trains_on_the_union_of_both_files(tmp_path):
    _tiny_market(tmp_path, "x1", with_run=True)
    data = load_regions(DataConfig(recipe="wsdm22-xmrec", data_dir=str(tmp_path),
                                   max_valid_users=1))["x1"]
    union = {(u, i) for u, i, _ in TINY_TRAIN + TINY_5CORE}
    (held,) = [(c.user, c.target) for c in data.valid]
    split = {(u, i) for u, items in data.train.items() for i in items}
    assert split | {held} == union  # every row of either file, each (user, item) once
    assert sum(len(h) for h in data.train.values()) + 1 == len(union)
    assert "c" in data.train  # a user only the 5-core file has
    cases = {c.user: c for c in data.test}
    # the validation user's history is the union as well
    assert set(cases["c"].history) == {"p2", "p10", "p11", "p12"}
    assert set(cases["a"].history) == {f"p{i}" for i in range(6)}


def test_wsdm_holdout_ranks_its_positive_among_sampled_negatives(tmp_path):
    """The hold-out mimics the protocol: 99 negatives, none from the user's history."""
    for name, run in (("x1", True), ("x2", False)):
        root = tmp_path / name
        _tiny_market(root, name, with_run=run)
        market = root / name
        # enough items and users for 100-item lists
        rows = [(f"u{j}", f"q{(j * 7 + k) % 600}", 1) for j in range(400) for k in range(5)]
        pd.DataFrame(rows, columns=["userId", "itemId", "rating"]).to_csv(
            market / "train.tsv", sep="\t", index=False)
        data = load_regions(DataConfig(recipe="wsdm22-xmrec", data_dir=str(root)))[name]
        assert data.valid
        targets = {c.target for c in data.valid}
        for case in data.valid:
            assert len(case.candidates) == 100 == len(set(case.candidates))
            assert case.candidates[0] == case.target
            full = set(case.history) | {case.target}
            assert not (set(case.candidates[1:]) & full)
            if run:  # official lists: negatives are other hold-out users' positives
                assert set(case.candidates) <= targets
        assert len(targets) >= 198
