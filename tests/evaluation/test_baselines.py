"""Hand-computed checks of the classic baselines and of the ranking protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest

from regiontune.data.splits import EvalCase, RegionData
from regiontune.evaluation.baselines import (
    BASELINES,
    EASE,
    ItemKNN,
    Popularity,
    evaluate_scorer,
    fit_baseline,
    tune_ease,
)

# a/b co-occur twice, a/c once, d is alone.
TRAIN = {"u1": ["a", "b"], "u2": ["a", "b"], "u3": ["a", "c"], "u4": ["d"]}
CAT = ["a", "b", "c", "d"]


def test_popularity_ranks_most_frequent_first():
    model = Popularity().fit({"u1": ["x", "y"], "u2": ["y", "z"], "u3": ["y", "y"]},
                             ["x", "y", "z"])
    scores = model.score([[], ["x", "unknown"]])
    assert scores.shape == (2, 3) and scores.dtype == np.float32
    assert scores[0].tolist() == [1.0, 4.0, 1.0]  # repeated interactions count
    assert int(np.argmax(scores[1])) == 1


def test_itemknn_expected_neighbours():
    model = ItemKNN().fit(TRAIN, CAT)
    s = model.score([["a"], ["c"], ["nope"]])
    # cos(a,b) = 2/sqrt(3*2), cos(a,c) = 1/sqrt(3*1), cos(b,c) = 0
    assert s[0, 1] == pytest.approx(2 / math.sqrt(6), abs=1e-5)
    assert s[0, 2] == pytest.approx(1 / math.sqrt(3), abs=1e-5)
    assert int(np.argmax(s[0, 1:])) + 1 == 1  # b is the top unseen item for history [a]
    assert int(np.argmax(s[1])) == 0  # a for history [c]
    # Unknown history: only the popularity tie-breaker remains, a (3 interactions) first.
    assert int(np.argmax(s[2])) == 0 and s[2].max() < 1e-5


def test_itemknn_top_k_pruning():
    s = ItemKNN(k_neighbors=1).fit(TRAIN, CAT).score([["a"]])
    assert s[0, 1] == pytest.approx(2 / math.sqrt(6), abs=1e-5)
    assert s[0, 2] < 1e-5  # c was pruned from a's neighbours


def test_ease_matches_direct_formula():
    lam = 2.0
    model = EASE(lam).fit(TRAIN, CAT)
    # Independent computation: X is users x items, rows in TRAIN order.
    x = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    p = np.linalg.inv(x.T @ x + lam * np.eye(4))
    b = np.eye(4) - p @ np.diag(1.0 / np.diag(p))
    np.testing.assert_allclose(model.b, b, atol=1e-5)
    np.testing.assert_allclose(np.diag(model.b), 0.0, atol=0)
    hist = np.array([1.0, 0, 1.0, 0])  # history [a, c]
    np.testing.assert_allclose(model.score([["a", "c", "zzz"]])[0], hist @ b, atol=1e-5)


class Fixed:
    """Scores item j as ``values[j]`` for every history."""

    def __init__(self, values):
        self.values = np.asarray(values, dtype=np.float32)

    def __call__(self, histories):
        return np.tile(self.values, (len(histories), 1))


ITEMS = [f"i{j}" for j in range(12)]
DESC = Fixed([12 - j for j in range(12)])  # i0 best, i11 worst


def one(target, history=(), candidates=None, scorer=DESC, **kw):
    return evaluate_scorer(scorer, ITEMS, [EvalCase("u", list(history), target, candidates)],
                           **kw)


def test_evaluate_ranks():
    assert one("i0")["ndcg@10"] == pytest.approx(1.0)
    r2 = one("i2")
    assert r2["ndcg@10"] == pytest.approx(0.5) and r2["mrr"] == pytest.approx(1 / 3)
    r10 = one("i10")
    assert (r10["ndcg@10"], r10["hr@10"]) == (0.0, 0.0) and r10["mrr"] == pytest.approx(1 / 11)
    assert one("i9")["hr@10"] == 1.0


def test_evaluate_excludes_seen_but_never_the_target():
    assert one("i2", history=["i0", "i1"])["ndcg@10"] == pytest.approx(1.0)
    assert one("i2", history=["i0", "i1"], exclude_seen=False)["ndcg@10"] == pytest.approx(0.5)
    assert one("i2", history=["i2", "i0"])["ndcg@10"] == pytest.approx(1 / math.log2(3))


def test_evaluate_candidate_protocol():
    # Only the candidates compete; unknown candidates score -inf.
    assert one("i5", candidates=["i5", "i9", "i10", "zzz"])["ndcg@10"] == pytest.approx(1.0)
    res = one("i5", candidates=["i5", "i1", "i9"], history=["i1"])
    assert res["ndcg@10"] == pytest.approx(1 / math.log2(3))  # seen i1 still competes


def test_evaluate_ties_count_against_target():
    flat = Fixed([1.0] * 12)
    assert one("i3", scorer=flat)["mrr"] == pytest.approx(1 / 12)
    two = Fixed([5.0, 5.0] + [0.0] * 10)
    assert one("i0", scorer=two)["mrr"] == pytest.approx(0.5)
    assert one("i1", scorer=two)["mrr"] == pytest.approx(0.5)


def test_evaluate_target_outside_catalogue_is_a_miss():
    cases = [EvalCase("u", [], "i0"), EvalCase("v", [], "ghost")]
    res = evaluate_scorer(DESC, ITEMS, cases, batch_size=1)
    assert res == {"ndcg@10": 0.5, "hr@10": 0.5, "mrr": 0.5, "users": 2}


def _region() -> RegionData:
    train = {f"u{i}": ["a", "b", "c"][: 1 + i % 3] + ["d"] * (i % 2) for i in range(20)}
    valid = [EvalCase(u, h, "b" if "b" not in h else "d") for u, h in train.items()]
    return RegionData("r", train, valid, valid, CAT, ordered=False)


def test_tune_ease_returns_a_candidate_lambda():
    region = _region()
    model, lam, scores = tune_ease(region.train, region.catalogue, region.valid,
                                   lambdas=(1, 10, 100))
    assert lam in (1, 10, 100) and set(scores) == {1, 10, 100}
    assert scores[lam] == max(scores.values()) and model.lam == lam


def test_fit_baseline_registry():
    region = _region()
    for name in BASELINES:
        scorer, info = fit_baseline(name, region)
        assert scorer.score([["a"]]).shape == (1, len(CAT))
        assert ("lambda" in info) == (name == "ease")
    with pytest.raises(KeyError):
        fit_baseline("nope", region)


def test_tune_ease_pool_adds_other_regions_co_occurrence_at_its_weight():
    # the region never shows a with c; the pool (another region) does, and also holds an item
    # the catalogue lacks, which is ignored
    train = {"u1": ["a", "b"], "u2": ["b", "c"], "u3": ["a", "b"]}
    catalogue = ["a", "b", "c"]
    holdout = [EvalCase("u1", ["a"], "b")]
    pool = [["a", "c", "zz"]] * 5
    alone, _, _ = tune_ease(train, catalogue, holdout, lambdas=(1,))
    pooled, _, _ = tune_ease(train, catalogue, holdout, lambdas=(1,), pool=pool, pool_weight=1)
    assert alone.b[0, 2] <= 0 < pooled.b[0, 2]  # a -> c learnt from the pool alone
    # at weight 0 the pool changes nothing
    zero, _, _ = tune_ease(train, catalogue, holdout, lambdas=(1,), pool=pool, pool_weight=0)
    assert np.allclose(zero.b, alone.b)
    # weight 2 == the pool given twice at weight 1
    twice, _, _ = tune_ease(train, catalogue, holdout, lambdas=(1,), pool=pool * 2,
                            pool_weight=1)
    double, _, _ = tune_ease(train, catalogue, holdout, lambdas=(1,), pool=pool, pool_weight=2)
    assert np.allclose(twice.b, double.b, atol=1e-5)
    with pytest.raises(ValueError, match="pool_weight must be >= 0"):
        tune_ease(train, catalogue, holdout, lambdas=(1,), pool=pool, pool_weight=-1)
