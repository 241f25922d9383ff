"""The refresh study's protocol pieces: periods, next-period cases, NDCG@10, verdicts."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from benchmarks import refresh


def _frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "timestamp"]).assign(region="all")


def test_next_period_cases_use_the_past_catalogue_and_returning_users():
    past = _frame([("u1", "a", 1), ("u1", "b", 2), ("u2", "c", 3)])
    upcoming = _frame([("u1", "c", 10), ("u1", "z", 11), ("u3", "a", 12), ("u2", "z", 13)])
    catalogue, histories, relevant = refresh.next_period_cases(past, upcoming)
    assert catalogue == ["a", "b", "c"]
    # u3 is new (no history), u2's only next item is unknown by the end of the period
    assert histories == [["a", "b"]] and relevant == [{"c"}]


def test_next_period_ndcg_excludes_the_history(monkeypatch):
    catalogue = ["a", "b", "c", "d"]
    # the history item "a" scores highest but is excluded; "c" then ranks first
    monkeypatch.setattr(refresh, "task_scores",
                        lambda task, h, c: torch.tensor([[9.0, 1.0, 5.0, 3.0]]))
    assert refresh.next_period_ndcg(None, catalogue, [["a"]], [{"c"}], k=2) == 1.0
    value = refresh.next_period_ndcg(None, catalogue, [["a"]], [{"b", "d"}], k=2)
    ideal = 1 + 1 / math.log2(3)
    assert value == pytest.approx((1 / math.log2(3)) / ideal)


def test_verdicts_apply_the_bar():
    def rec(period, method, ndcg, seconds):
        return {"period": period, "method": method, "ndcg@10": ndcg, "train_seconds": seconds,
                "seed": 0}
    rows = refresh.verdicts([rec(1, "stale", 0.10, 0), rec(1, "refreshed", 0.20, 5),
                             rec(1, "retrained", 0.20, 10), rec(2, "stale", 0.10, 0),
                             rec(2, "refreshed", 0.19, 6), rec(2, "retrained", 0.20, 10)])
    assert [v["met"] for v in rows] == [True, False]  # period 2: 95% and 60% of the seconds
    assert rows[1]["quality_ratio"] == pytest.approx(0.95)
    assert rows[0]["seconds_ratio_per_seed"] == [pytest.approx(0.5)]
    assert rows[1]["seconds_ratio_median"] == pytest.approx(0.6)
    assert "replay_quality_ratio" not in rows[0]
    with_replay = refresh.verdicts([rec(1, "stale", 0.10, 0), rec(1, "refreshed", 0.20, 5),
                                    rec(1, "refreshed-replay", 0.198, 8),
                                    rec(1, "retrained", 0.20, 10)])
    assert with_replay[0]["met"]  # the bar stays the plain refresh's
    assert with_replay[0]["replay_quality_ratio"] == pytest.approx(0.99)
    assert with_replay[0]["replay_seconds_ratio"] == pytest.approx(0.8)


def test_refresh_lr_choice_reads_the_hold_out_only():
    from benchmarks import refresh_choice

    def rec(lr, seed, valid, test, patience=None, epochs=None):
        return {"method": "refreshed", "refresh_lr": lr, "seed": seed, "period": 1,
                "valid_ndcg@10": valid, "ndcg@10": test, "refresh_patience": patience,
                "refresh_epochs": epochs}
    # 0.5 is best on the hold-out; 0.25 is best on the next period: the hold-out decides
    records = [rec(1.0, 0, 0.060, 0.20), rec(1.0, 1, 0.062, 0.20),
               rec(0.5, 0, 0.066, 0.10), rec(0.5, 1, 0.064, 0.10),
               rec(0.25, 0, 0.050, 0.30), rec(0.25, 1, 0.052, 0.30),
               {**rec(0.1, 0, None, 0.9), "method": "stale"}]
    chosen, means = refresh_choice.choose(records)
    # records without a patience or a cap ran with the adapters'
    patience, cap = refresh_choice.ADAPT.patience, refresh_choice.ADAPT.epochs
    assert chosen == (0.5, patience, cap, False, 1) and set(means) == {
        (1.0, patience, cap, False, 1), (0.5, patience, cap, False, 1),
        (0.25, patience, cap, False, 1)}
    assert means[(1.0, patience, cap, False, 1)] == pytest.approx(0.061)
    # within the tie margin of the best, the larger multiple (the status quo side) wins
    records[0]["valid_ndcg@10"] = records[1]["valid_ndcg@10"] = 0.0645
    assert refresh_choice.choose(records)[0] == (1.0, patience, cap, False, 1)
    # a longer patience must win by more than the tie; then it does win
    longer = [rec(1.0, 0, 0.0650, 0.0, patience + 3), rec(1.0, 1, 0.0652, 0.0, patience + 3)]
    assert refresh_choice.choose(records + longer)[0] == (1.0, patience, cap, False, 1)
    longer[0]["valid_ndcg@10"] = 0.070
    assert refresh_choice.choose(records + longer)[0] == (1.0, patience + 3, cap, False, 1)
    # a smaller epoch cap wins a tie (the cheaper side), and loses when clearly worse
    capped = [rec(1.0, 0, 0.0695, 0.9, patience + 3, 5), rec(1.0, 1, 0.0652, 0.9, patience + 3, 5)]
    assert refresh_choice.choose(records + longer + capped)[0] == (1.0, patience + 3, 5, False, 1)
    capped[0]["valid_ndcg@10"] = 0.060
    assert refresh_choice.choose(records + longer + capped)[0] == (1.0, patience + 3, cap, False, 1)
    assert refresh_choice.choose([]) == (None, {})

    # context (a fourth dimension) wins a tie for no context (the status quo), and wins when
    # clearly better on the served hold-out; the next-period figure is never read
    def served(context, seed, value, test):
        return {**rec(1.0, seed, 0.01, test, patience + 3), "refresh_context": context,
                "holdout_served_ndcg@10": value}
    metric = refresh_choice.METRICS["served"]
    both = [served(False, 0, 0.0700, 0.9), served(False, 1, 0.0700, 0.9),
            served(True, 0, 0.0705, 0.1), served(True, 1, 0.0705, 0.1)]
    assert refresh_choice.choose(both, metric)[0] == (1.0, patience + 3, cap, False, 1)
    both[2]["holdout_served_ndcg@10"] = both[3]["holdout_served_ndcg@10"] = 0.0750
    assert refresh_choice.choose(both, metric)[0] == (1.0, patience + 3, cap, True, 1)
    assert refresh_choice.candidate(records[0])[3] is False  # unrecorded: no context
    assert refresh_choice.candidate(records[0])[4] == 1  # unrecorded: one evaluation a pass

    # evaluations per pass (a fifth dimension): the patience compares in passes (patience /
    # evaluations per pass); within the tie, the shorter patience in passes, then more
    # evaluations per pass win; a clearly worse candidate loses
    def evals(per_pass, patience_, seed, value):
        return {**served(True, seed, value, 0.9), "refresh_patience": patience_,
                "refresh_evals_per_pass": per_pass}
    base = [evals(1, 6, 0, 0.0760), evals(1, 6, 1, 0.0760)]
    finer = [evals(2, 8, 0, 0.0755), evals(2, 8, 1, 0.0755)]  # 4 passes of patience, not 6
    assert refresh_choice.choose(base + finer, metric)[0] == (1.0, 8, cap, True, 2)
    same = [evals(2, 12, 0, 0.0755), evals(2, 12, 1, 0.0755)]  # 6 passes too: more evals win
    assert refresh_choice.choose(base + same, metric)[0] == (1.0, 12, cap, True, 2)
    finer[0]["holdout_served_ndcg@10"] = finer[1]["holdout_served_ndcg@10"] = 0.0740
    assert refresh_choice.choose(base + finer, metric)[0] == (1.0, 6, cap, True, 1)
