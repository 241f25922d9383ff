"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from regiontune.data.splits import EvalCase
from regiontune.evaluation.evaluate import case_ranks, evaluate_scorer
from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks

CATALOGUE = ["a", "b", "c", "d", "e"]
# one fixed score row for every user: a > b > c > d > e
SCORES = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])


def _ranks(scores, target, allowed=None):
    scores = torch.tensor(scores, dtype=torch.float32)
    allowed = (torch.ones_like(scores, dtype=torch.bool) if allowed is None
               else torch.tensor(allowed))
    return target_ranks(scores, torch.tensor(target), allowed)


def _fixed(histories):
    return SCORES.expand(len(histories), -1).clone()


# ---------------------------------------------------------------------------------------------
# target_ranks


def test_target_ranks_basic():
    ranks = _ranks([[3.0, 2.0, 1.0]] * 3, [0, 1, 2])
    assert ranks.tolist() == [0.0, 1.0, 2.0]


def test_ties_count_against_target():
    assert _ranks([[1.0, 1.0, 1.0]], [0]).tolist() == [2.0]
    assert _ranks([[2.0, 1.0, 1.0, 0.0]], [2]).tolist() == [2.0]
    assert _ranks([[2.0, 1.0, 1.0, 0.0]], [1]).tolist() == [2.0]


def test_disallowed_columns_do_not_count():
    allowed = [[False, True, True, True]]
    assert _ranks([[9.0, 1.0, 2.0, 0.0]], [2], allowed).tolist() == [0.0]
    assert _ranks([[9.0, 1.0, 2.0, 0.0]], [1], allowed).tolist() == [1.0]


def test_unscorable_targets_are_misses():
    # -1: the target is not a column; disallowed target; -inf target score
    assert _ranks([[1.0, 2.0]], [-1]).tolist() == [math.inf]
    assert _ranks([[1.0, 2.0]], [0], [[False, True]]).tolist() == [math.inf]
    assert _ranks([[float("-inf"), 2.0]], [0]).tolist() == [math.inf]


# ---------------------------------------------------------------------------------------------
# metrics_from_ranks


def test_metrics_target_first():
    m = metrics_from_ranks(torch.tensor([0.0]), k=10)
    assert m == {"ndcg@10": 1.0, "hr@10": 1.0, "mrr": 1.0, "users": 1}


def test_metrics_rank_two():
    m = metrics_from_ranks(torch.tensor([2.0]), k=10)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(4)) == pytest.approx(0.5)
    assert m["hr@10"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 3)


def test_metrics_rank_at_or_beyond_k():
    m = metrics_from_ranks(torch.tensor([5.0, 9.0]), k=5)
    assert m["ndcg@5"] == 0.0 and m["hr@5"] == 0.0
    assert m["mrr"] == pytest.approx((1 / 6 + 1 / 10) / 2)
    # rank k - 1 is the last hit
    m = metrics_from_ranks(torch.tensor([4.0]), k=5)
    assert m["hr@5"] == 1.0 and m["ndcg@5"] == pytest.approx(1 / math.log2(6))


def test_metrics_average_and_miss():
    m = metrics_from_ranks(torch.tensor([0.0, 2.0, math.inf, 20.0]), k=10)
    assert m["users"] == 4
    assert m["ndcg@10"] == pytest.approx((1 + 0.5) / 4)
    assert m["hr@10"] == pytest.approx(2 / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 21) / 4)


def test_metrics_empty():
    m = metrics_from_ranks(torch.zeros(0), k=10)
    assert m == {"ndcg@10": 0.0, "hr@10": 0.0, "mrr": 0.0, "users": 0}


# ---------------------------------------------------------------------------------------------
# evaluate_scorer


def test_full_ranking():
    cases = [EvalCase("u1", [], "a"), EvalCase("u2", [], "c")]
    m = evaluate_scorer(_fixed, CATALOGUE, cases, k=10)
    assert m["ndcg@10"] == pytest.approx((1 + 0.5) / 2)
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["users"] == 2


def test_seen_items_excluded():
    # a and b are in the history: c moves from rank 2 to rank 0
    case = EvalCase("u", ["a", "b"], "c")
    assert evaluate_scorer(_fixed, CATALOGUE, [case])["ndcg@10"] == 1.0
    assert case_ranks(_fixed, CATALOGUE, [case], exclude_seen=False).tolist() == [2.0]


def test_target_never_excluded():
    # repeat consumption: the target is also in the history
    case = EvalCase("u", ["a", "c"], "c")
    assert case_ranks(_fixed, CATALOGUE, [case]).tolist() == [1.0]


def test_history_items_outside_catalogue_are_ignored():
    case = EvalCase("u", ["zzz", "a"], "b")
    assert case_ranks(_fixed, CATALOGUE, [case]).tolist() == [0.0]


def test_candidate_protocol_ranks_among_candidates_only():
    # among candidates {b, d, e}, d is second
    case = EvalCase("u", [], "d", candidates=["e", "d", "b"])
    assert case_ranks(_fixed, CATALOGUE, [case]).tolist() == [1.0]
    m = evaluate_scorer(_fixed, CATALOGUE, [case], k=10)
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert m["mrr"] == pytest.approx(0.5)


def test_candidate_protocol_does_not_exclude_seen():
    # a candidate in the history still competes (the candidate list is the protocol)
    case = EvalCase("u", ["b"], "d", candidates=["b", "d"])
    assert case_ranks(_fixed, CATALOGUE, [case]).tolist() == [1.0]


def test_target_outside_catalogue_is_miss():
    cases = [EvalCase("u1", [], "zzz"), EvalCase("u2", [], "a")]
    assert case_ranks(_fixed, CATALOGUE, cases).tolist() == [math.inf, 0.0]
    m = evaluate_scorer(_fixed, CATALOGUE, cases)
    assert m["ndcg@10"] == pytest.approx(0.5) and m["mrr"] == pytest.approx(0.5)
    assert m["users"] == 2


def test_unscorable_target_is_miss():
    def scorer(histories):
        out = _fixed(histories)
        out[:, 0] = float("-inf")  # the model cannot score "a"
        return out

    assert case_ranks(scorer, CATALOGUE, [EvalCase("u", [], "a")]).tolist() == [math.inf]


def test_ties_in_scorer_count_against_target():
    def flat(histories):
        return torch.zeros(len(histories), len(CATALOGUE))

    assert case_ranks(flat, CATALOGUE, [EvalCase("u", [], "c")]).tolist() == [4.0]
    assert case_ranks(flat, CATALOGUE, [EvalCase("u", ["a"], "c")]).tolist() == [3.0]


def test_batches_match_one_pass():
    cases = [EvalCase(f"u{i}", [CATALOGUE[(i + 1) % 5]], CATALOGUE[i % 5]) for i in range(7)]
    whole = case_ranks(_fixed, CATALOGUE, cases, batch_size=512)
    parts = case_ranks(_fixed, CATALOGUE, cases, batch_size=3)
    assert whole.tolist() == parts.tolist()
    assert len(whole) == 7


def test_scorer_receives_histories():
    seen = []

    def scorer(histories):
        seen.extend(histories)
        return _fixed(histories)

    evaluate_scorer(scorer, CATALOGUE, [EvalCase("u", ["a", "b"], "c")])
    assert seen == [["a", "b"]]


def test_no_cases():
    m = evaluate_scorer(_fixed, CATALOGUE, [])
    assert m["users"] == 0 and m["ndcg@10"] == 0.0


def test_a_flat_candidate_list_never_favours_the_positive():
    """100 candidates all scored alike (an unknown user, a model that cannot tell): the
    positive ranks last among them, NDCG@10 0 -- never 1.0 from its position in the list."""
    catalogue = [f"i{j}" for j in range(150)]
    cases = [EvalCase(f"u{k}", [], catalogue[k], catalogue[k:k + 100]) for k in range(20)]
    flat = evaluate_scorer(lambda h: torch.ones(len(h), len(catalogue)), catalogue, cases)
    assert flat["ndcg@10"] == 0.0 and flat["hr@10"] == 0.0
    assert case_ranks(lambda h: torch.ones(len(h), len(catalogue)), catalogue,
                      cases).tolist() == [99.0] * 20


def test_baselines_give_a_history_they_cannot_read_no_advantage():
    from regiontune.evaluation.baselines import EASE, ItemKNN, Popularity

    catalogue = [f"i{j}" for j in range(120)]
    train = {f"u{k}": [catalogue[k % 7], catalogue[(k + 1) % 7]] for k in range(30)}
    # the positive and its 99 negatives are items no training history holds
    case = EvalCase("new", ["unknown"], catalogue[10], catalogue[10:110])
    for model in (Popularity(), ItemKNN(5), EASE(10.0)):
        model.fit(train, catalogue)
        ranks = case_ranks(model.score, catalogue, [case])
        assert ranks.tolist() == [99.0], type(model).__name__
