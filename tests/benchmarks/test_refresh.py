"""The refresh study's protocol pieces: periods, next-period cases, NDCG@10, verdicts."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace

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
    assert chosen == (0.5, patience, cap, False, 1, 1.0, False) and set(means) == {
        (1.0, patience, cap, False, 1, 1.0, False), (0.5, patience, cap, False, 1, 1.0, False),
        (0.25, patience, cap, False, 1, 1.0, False)}
    assert means[(1.0, patience, cap, False, 1, 1.0, False)] == pytest.approx(0.061)
    # within the tie margin of the best, the larger multiple (the status quo side) wins
    records[0]["valid_ndcg@10"] = records[1]["valid_ndcg@10"] = 0.0645
    assert refresh_choice.choose(records)[0] == (1.0, patience, cap, False, 1, 1.0, False)
    # a longer patience must win by more than the tie; then it does win
    longer = [rec(1.0, 0, 0.0650, 0.0, patience + 3), rec(1.0, 1, 0.0652, 0.0, patience + 3)]
    assert refresh_choice.choose(records + longer)[0] == (1.0, patience, cap, False, 1, 1.0, False)
    longer[0]["valid_ndcg@10"] = 0.070
    assert refresh_choice.choose(records + longer)[0] == (
        1.0, patience + 3, cap, False, 1, 1.0, False)
    # a smaller epoch cap wins a tie (the cheaper side), and loses when clearly worse
    capped = [rec(1.0, 0, 0.0695, 0.9, patience + 3, 5), rec(1.0, 1, 0.0652, 0.9, patience + 3, 5)]
    assert refresh_choice.choose(records + longer + capped)[0] == (
        1.0, patience + 3, 5, False, 1, 1.0, False)
    capped[0]["valid_ndcg@10"] = 0.060
    assert refresh_choice.choose(records + longer + capped)[0] == (
        1.0, patience + 3, cap, False, 1, 1.0, False)
    assert refresh_choice.choose([]) == (None, {})

    # context (a fourth dimension) wins a tie for no context (the status quo), and wins when
    # clearly better on the served hold-out; the next-period figure is never read
    def served(context, seed, value, test):
        return {**rec(1.0, seed, 0.01, test, patience + 3), "refresh_context": context,
                "holdout_served_ndcg@10": value}
    metric = refresh_choice.METRICS["served"]
    both = [served(False, 0, 0.0700, 0.9), served(False, 1, 0.0700, 0.9),
            served(True, 0, 0.0705, 0.1), served(True, 1, 0.0705, 0.1)]
    assert refresh_choice.choose(both, metric)[0] == (1.0, patience + 3, cap, False, 1, 1.0, False)
    both[2]["holdout_served_ndcg@10"] = both[3]["holdout_served_ndcg@10"] = 0.0750
    assert refresh_choice.choose(both, metric)[0] == (1.0, patience + 3, cap, True, 1, 1.0, False)
    assert refresh_choice.candidate(records[0]).context is False  # unrecorded: no context
    assert refresh_choice.candidate(records[0]).evals == 1  # unrecorded: one evaluation a pass

    # evaluations per pass (a fifth dimension): the patience compares in passes (patience /
    # evaluations per pass); within the tie, the shorter patience in passes, then more
    # evaluations per pass win; a clearly worse candidate loses
    def evals(per_pass, patience_, seed, value):
        return {**served(True, seed, value, 0.9), "refresh_patience": patience_,
                "refresh_evals_per_pass": per_pass}
    base = [evals(1, 6, 0, 0.0760), evals(1, 6, 1, 0.0760)]
    finer = [evals(2, 8, 0, 0.0755), evals(2, 8, 1, 0.0755)]  # 4 passes of patience, not 6
    assert refresh_choice.choose(base + finer, metric)[0] == (1.0, 8, cap, True, 2, 1.0, False)
    same = [evals(2, 12, 0, 0.0755), evals(2, 12, 1, 0.0755)]  # 6 passes too: more evals win
    assert refresh_choice.choose(base + same, metric)[0] == (1.0, 12, cap, True, 2, 1.0, False)
    finer[0]["holdout_served_ndcg@10"] = finer[1]["holdout_served_ndcg@10"] = 0.0740
    assert refresh_choice.choose(base + finer, metric)[0] == (1.0, 6, cap, True, 1, 1.0, False)

    # the shrink (a sixth dimension): within the tie the unshrunk refresh (1) is kept, a
    # clearly better shrink wins; unrecorded: 1
    def shrunk(value, seed, share):
        return {**evals(1, 6, seed, value), "refresh_shrink": share}
    half = [shrunk(0.0765, 0, 0.5), shrunk(0.0765, 1, 0.5)]
    assert refresh_choice.choose(base + half, metric)[0] == (1.0, 6, cap, True, 1, 1.0, False)
    half[0]["holdout_served_ndcg@10"] = half[1]["holdout_served_ndcg@10"] = 0.0790
    assert refresh_choice.choose(base + half, metric)[0] == (1.0, 6, cap, True, 1, 0.5, False)
    assert refresh_choice.candidate(base[0]).shrink == 1.0

    # the loss on the context (a seventh dimension): within the tie it stays off, a clearly
    # better candidate with it wins; unrecorded: off
    def loss(value, seed):
        return {**evals(1, 6, seed, value), "refresh_context_loss": True}
    with_loss = [loss(0.0765, 0), loss(0.0765, 1)]
    assert refresh_choice.choose(base + with_loss, metric)[0] == (1.0, 6, cap, True, 1, 1.0,
                                                                  False)
    with_loss[0]["holdout_served_ndcg@10"] = with_loss[1]["holdout_served_ndcg@10"] = 0.0790
    assert refresh_choice.choose(base + with_loss, metric)[0] == (1.0, 6, cap, True, 1, 1.0,
                                                                  True)
    assert refresh_choice.candidate(base[0]).context_loss is False


def _write(tmp_path, rows, header="uid,sku,ts"):
    path = tmp_path / "events.csv"
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def test_a_user_file_is_cut_by_time_into_equal_periods(tmp_path):
    # written out of time order: the periods follow the timestamps, not the rows
    rows = [(f"u{i % 3}", f"i{i}", 100 - i) for i in range(12)]
    frame = refresh.load_interactions(tmp_path, _write(tmp_path, rows),
                                      {"user": "uid", "item": "sku", "timestamp": "ts"})
    periods = refresh.load_periods(tmp_path, 3, frame=frame)
    assert [len(p) for p in periods] == [4, 4, 4]
    assert list(periods[0]["item"]) == ["i11", "i10", "i9", "i8"]  # the earliest four
    assert set(frame["region"]) == {refresh.REGION}


def test_first_share_puts_that_share_in_period_zero_and_cuts_the_rest_equally(tmp_path):
    rows = [(f"u{i % 4}", f"i{i}", i) for i in range(100)]
    frame = refresh.load_interactions(tmp_path, _write(tmp_path, rows),
                                      {"user": "uid", "item": "sku", "timestamp": "ts"})
    periods = refresh.load_periods(tmp_path, 5, 0.6, frame)
    assert [len(p) for p in periods] == [60, 10, 10, 10, 10]
    assert periods[1]["timestamp"].min() == 60 and periods[4]["timestamp"].max() == 99
    with pytest.raises(SystemExit, match="first-share"):
        refresh.load_periods(tmp_path, 5, 1.0, frame)


def test_a_file_without_timestamps_is_refused_with_the_fix(tmp_path):
    path = _write(tmp_path, [("u1", "a"), ("u1", "b")], header="uid,sku")
    with pytest.raises(SystemExit, match="no timestamp column.*--columns timestamp=NAME"):
        refresh.load_interactions(tmp_path, path, {"user": "uid", "item": "sku"})


def test_column_map_names_the_bad_part():
    assert refresh.column_map("user=uid,item=sku,timestamp=ts") == {
        "user": "uid", "item": "sku", "timestamp": "ts"}
    with pytest.raises(Exception, match="'when=ts' is not NAME=HEADER"):
        refresh.column_map("user=uid,when=ts")


def test_baseline_patience_choice_reads_the_retrained_hold_out_only():
    from benchmarks import refresh_baseline_choice as choice

    def rec(method, period, seed, valid, test=0.5, patience=None):
        return {"method": method, "period": period, "seed": seed, "valid_ndcg@10": valid,
                "ndcg@10": test, "train_seconds": 1.0, "epochs_run": 4,
                **({"patience": patience} if patience else {})}
    # records without a patience ran with their file's configured one (3 here)
    three = choice.retrained_runs({"config": {"adapt": {"patience": 3}}, "records": [
        rec("retrained", 1, 0, 0.080, test=0.9), rec("retrained", 1, 1, 0.082, test=0.9),
        rec("refreshed", 1, 0, 0.5)]})
    six = choice.retrained_runs({"records": [
        rec("retrained", 1, 0, 0.084, test=0.1, patience=6),
        rec("retrained", 1, 1, 0.085, test=0.1, patience=6),
        rec("retrained", 2, 0, 0.200, patience=6)]})  # a run 3 lacks: not compared
    chosen, means = choice.choose(three + six)
    assert chosen == 6 and means[3] == pytest.approx(0.081) and means[6] == pytest.approx(0.0845)
    # within the tie, the smaller patience, whatever the next period says
    six[0]["valid_ndcg@10"], six[1]["valid_ndcg@10"] = 0.0805, 0.0825
    assert choice.choose(three + six)[0] == 3
    with pytest.raises(ValueError, match="share no"):
        choice.choose(three + six[2:])


def test_the_study_runs_end_to_end_on_a_users_own_file(tmp_path, monkeypatch):
    """``--file`` with ISO timestamps and other headers: every method trains, the report
    and records name the file by its name and say how the periods were cut."""
    monkeypatch.setattr(refresh, "PRETRAIN", replace(refresh.PRETRAIN, epochs=2))
    monkeypatch.setattr(refresh, "ADAPT", replace(refresh.ADAPT, epochs=2))
    rows = [(f"u{u}", f"i{(u * 7 + k) % 40}", f"2026-01-{1 + (k * 30 + u) // 60:02d}T00:00:00")
            for u in range(30) for k in range(16)]
    path = _write(tmp_path, rows, header="uid,sku,when")
    out = tmp_path / "study.json"
    refresh.main(["--file", str(path), "--columns", "user=uid,item=sku,timestamp=when",
                  "--periods", "3", "--seeds", "0", "--methods", "stale,refreshed,retrained",
                  "--work", str(tmp_path / "work"), "--out", str(out)])
    results = json.loads(out.read_text())
    assert {r["method"] for r in results["records"]} == {"stale", "refreshed", "retrained"}
    assert {r["dataset"] for r in results["records"]} == {"events.csv"}
    assert all(r["period"] == 1 for r in results["records"])
    for r in results["records"]:  # the per-user figures the report's bootstrap reads
        assert len(r["user_ndcg@10"]) == r["eval_users"] > 0
        assert statistics.fmean(r["user_ndcg@10"]) == pytest.approx(r["ndcg@10"], abs=1e-4)
    report = out.with_suffix(".md").read_text()
    assert "(events.csv)" in report and "periods of equal interaction counts" in report
    assert "How much the verdict moves with the evaluated users" in report


def test_user_intervals_pair_users_across_methods_and_average_the_seeds():
    def rec(method, seed, users, period=1):
        return {"period": period, "method": method, "seed": seed, "user_ndcg@10": users}
    # refreshed is exactly 90% of retrained for every user: no resample can move the ratio
    flat = [rec("stale", s, [0.1, 0.2, 0.3, 0.4]) for s in (0, 1)] + [
        rec("refreshed", s, [0.18, 0.36, 0.54, 0.72]) for s in (0, 1)] + [
        rec("retrained", s, [0.2, 0.4, 0.6, 0.8]) for s in (0, 1)]
    (row,) = refresh.user_intervals(flat, draws=200)
    assert row["quality_ratio"] == pytest.approx(0.9)
    assert row["quality_ratio_interval"] == [pytest.approx(0.9), pytest.approx(0.9)]
    assert row["quality_ratio_share_at_bar"] == 0.0
    assert row["gain_over_stale_share_above"] == 1.0 and row["users"] == 4
    # the seeds are averaged per user before resampling: two seeds that disagree per user
    # give the same figures as their mean
    split = [rec("stale", 0, [0.0, 0.0, 0.0, 0.0]), rec("stale", 1, [0.2, 0.4, 0.6, 0.8]),
             *flat[2:]]
    (mixed,) = refresh.user_intervals(split, draws=200)
    assert mixed["gain_over_stale"] == pytest.approx(statistics.fmean([0.08, 0.16, 0.24, 0.32]))
    # one user decides the sign: the interval straddles zero and the share is not 0 or 1
    one = [rec("stale", 0, [0.5, 0.5, 0.5, 0.5, 0.5]),
           rec("refreshed", 0, [0.4, 0.4, 0.4, 0.4, 1.0]),
           rec("retrained", 0, [0.5, 0.5, 0.5, 0.5, 0.5])]
    (noisy,) = refresh.user_intervals(one, draws=500)
    low, high = noisy["gain_over_stale_interval"]
    assert low < 0 < high and 0 < noisy["gain_over_stale_share_above"] < 1
    # a seed without all three methods, or records without per-user figures, are left out
    assert refresh.user_intervals([rec("stale", 0, [0.1]), rec("refreshed", 0, [0.2])]) == []
    assert refresh.user_intervals([{"period": 1, "method": "stale", "seed": 0}]) == []
