"""Per-region splits: leave-last-out by time, seeded random hold-out, user subsampling."""

from __future__ import annotations

import pandas as pd
import pytest

from regiontune.data.loading import DataError
from regiontune.data.splits import (
    histories,
    leave_last_out,
    random_holdout,
    split_region,
    subsample_users,
)


def _timed() -> pd.DataFrame:
    """u1: five items out of file order, with a tie at t=30; u2: two items only."""
    rows = [("u1", "c", 30.0), ("u1", "a", 10.0), ("u2", "x", 1.0), ("u1", "e", 50.0),
            ("u1", "b", 20.0), ("u1", "d", 30.0), ("u2", "y", 2.0)]
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"])


def _sets(n_users: int = 30, n_items: int = 6) -> pd.DataFrame:
    """Users with unique items each, no timestamps."""
    rows = [(f"u{u}", f"i{(u * 7 + j) % 40}") for u in range(n_users) for j in range(n_items)]
    rows += [("short", "i1"), ("short", "i2")]
    return pd.DataFrame(rows, columns=["user", "item"])


# ---------------------------------------------------------------------------------------------
# leave-last-out


def test_histories_sorted_by_time_ties_stable():
    assert histories(_timed()) == {"u1": ["a", "b", "c", "d", "e"], "u2": ["x", "y"]}


def test_leave_last_out():
    data = leave_last_out("r", _timed(), min_history=3)
    assert data.ordered and data.region == "r"
    assert [(c.user, c.history, c.target) for c in data.test] == [("u1", ["a", "b", "c", "d"],
                                                                    "e")]
    assert [(c.user, c.history, c.target) for c in data.valid] == [("u1", ["a", "b", "c"], "d")]
    # train excludes both held-out items; a short user stays in train only
    assert data.train == {"u1": ["a", "b", "c"], "u2": ["x", "y"]}
    assert data.catalogue == ["a", "b", "c", "d", "e", "x", "y"]
    assert all(c.candidates is None for c in data.test)


def test_leave_last_out_tie_follows_file_order():
    frame = _timed()
    # swap the file order of the two items at t=30: the tie resolves the other way
    frame.loc[[0, 5], "item"] = ["d", "c"]
    data = leave_last_out("r", frame, min_history=3)
    assert data.valid[0].target == "c"
    assert data.train["u1"] == ["a", "b", "d"]


def test_split_region_picks_by_timestamps():
    assert split_region("r", _timed()).ordered
    assert not split_region("r", _sets()).ordered


# ---------------------------------------------------------------------------------------------
# random hold-out


def _holdout(seed: int, **kw):
    return random_holdout("r", _sets(), min_history=3, seed=seed,
                          max_valid_users=kw.pop("max_valid_users", 2000), **kw)


def test_random_holdout_disjoint():
    data = _holdout(0)
    assert not data.ordered
    test = {c.user: c for c in data.test}
    valid = {c.user: c for c in data.valid}
    full = histories(_sets())
    for user, items in full.items():
        if user == "short":
            continue
        t, v = test[user], valid[user]
        assert t.target not in t.history and v.target not in v.history
        assert t.target != v.target
        assert t.target not in data.train[user] and v.target not in data.train[user]
        assert sorted(data.train[user] + [t.target, v.target]) == sorted(items)
        assert sorted(t.history + [t.target]) == sorted(items)


def test_random_holdout_seeded():
    a, b, c = _holdout(0), _holdout(0), _holdout(1)
    assert [(x.user, x.target) for x in a.test] == [(x.user, x.target) for x in b.test]
    assert [(x.user, x.target) for x in a.valid] == [(x.user, x.target) for x in b.valid]
    assert a.train == b.train
    assert [x.target for x in a.test] != [x.target for x in c.test]


def test_random_holdout_caps_validation_users():
    data = _holdout(0, max_valid_users=5)
    assert len(data.valid) == 5
    assert len(data.test) == 30


def test_random_holdout_without_test():
    data = _holdout(0, with_test=False)
    assert data.test == []
    assert len(data.valid) == 30


@pytest.mark.parametrize("split", ["leave_last_out", "random"])
def test_short_users_stay_in_train(split):
    if split == "random":
        data, short = random_holdout("r", _sets(), 3, 0, 2000), "short"
        assert sorted(data.train[short]) == ["i1", "i2"]
    else:
        data, short = leave_last_out("r", _timed(), 3), "u2"
        assert data.train[short] == ["x", "y"]
    held_out = {c.user for c in data.test} | {c.user for c in data.valid}
    assert short not in held_out


def test_min_history_threshold_is_inclusive():
    assert [c.user for c in leave_last_out("r", _timed(), min_history=5).test] == ["u1"]
    assert [c.user for c in leave_last_out("r", _timed(), min_history=2).test] == ["u1", "u2"]
    with pytest.raises(DataError):
        leave_last_out("r", _timed(), min_history=6)


# ---------------------------------------------------------------------------------------------
# too little data


def test_region_too_small_to_split_names_region():
    frame = pd.DataFrame({"user": ["u1", "u1", "u2"], "item": ["a", "b", "a"],
                          "timestamp": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError) as err:
        split_region("atoll", frame, min_history=3)
    msg = str(err.value)
    assert "'atoll'" in msg and "2 users" in msg and "min_history" in msg
    with pytest.raises(DataError, match="'atoll'"):
        split_region("atoll", frame.drop(columns="timestamp"), min_history=3)


# ---------------------------------------------------------------------------------------------
# subsample_users


def test_subsample_users():
    data = _holdout(0)
    small = subsample_users(data, 0.25, seed=0)
    # round(31 * 0.25) = 8 of the 31 training users
    assert len(small.train) == round(len(data.train) * 0.25) == 8
    assert set(small.train) <= set(data.train)
    for user, items in small.train.items():
        assert items == data.train[user]
    # every test case, unchanged
    assert small.test == data.test
    assert small.catalogue == data.catalogue and small.region == data.region
    assert small.valid and all(c.user in small.train for c in small.valid)


def test_subsample_users_deterministic():
    data = _holdout(0)
    a, b = subsample_users(data, 0.3, seed=5), subsample_users(data, 0.3, seed=5)
    assert a.train == b.train
    assert [c.user for c in a.valid] == [c.user for c in b.valid]
    c = subsample_users(data, 0.3, seed=6)
    assert set(c.train) != set(a.train)


def test_subsample_users_bounds():
    data = _holdout(0)
    assert subsample_users(data, 1.0, seed=0) is data
    assert len(subsample_users(data, 0.001, seed=0).train) == 1
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            subsample_users(data, bad, seed=0)


def test_subsample_keeps_protocol_and_extra():
    data = _holdout(0)
    data.protocol, data.extra = "official-100", {"k": 1}
    small = subsample_users(data, 0.5, seed=0)
    assert small.protocol == "official-100" and small.extra == {"k": 1}
    small.extra["k"] = 2
    assert data.extra == {"k": 1}
