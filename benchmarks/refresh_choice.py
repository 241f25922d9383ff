"""Choose the refresh's learning rate (``AdaptConfig.refresh_lr``) and early-stopping patience
on the refresh's own hold-out.

    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 1,0.5,0.25 --seeds 0,1,2
    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 1 --patience 6
    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 1 --patience 6 --epochs 5
    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 1 --patience 6 --context on \
        --metric served --out benchmarks/results/refresh_context_choice.json
    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 2 --patience 6 --context on \
        --evals-per-pass 2 --metric served --out benchmarks/results/refresh_evals_choice.json

The refreshed chain of ``benchmarks/refresh.py`` (backbone and first adapter on period 0,
then periods 1 .. P-2 each refreshed from the previous step) runs once per candidate
(multiple of the adapters' learning rate, refresh patience). The rule, fixed before any run:
each refresh records its early-stopping hold-out NDCG@10 (the last items of period p's own
users, leave-last-out, as ``regiontune adapt`` splits), and the chosen candidate is the one
with the highest mean of that figure over periods and seeds (ties within 0.001: the larger
multiple, then the smaller patience, then the smaller epoch cap -- the status quo and the
cheaper side; a longer patience can only find a better hold-out epoch, so it must win by
more than the tie). The epoch cap (``AdaptConfig.refresh_epochs``; the cosine schedule spans
it) was added as a third dimension at the chosen multiple and patience. The
context (``AdaptConfig.refresh_context``: each user's earlier items read ahead of the new
ones) is a fourth; a refresh with context early-stops on hold-out histories that start with
the earlier items, one without on histories of the new period alone, so their own figures are
not comparable: ``--metric served`` ranks candidates by the final refreshed adapter's NDCG@10
on the same hold-out targets with every history read after the user's earlier items, as
serving reads it (``holdout_served_ndcg@10``; still the refresh's own data, never the next
period). With context, the cap was studied again (``refresh_cap_choice.json``; candidates
fixed before the run: multiple 2 uncapped -- the defaults -- and capped at 5 and 6 passes,
multiple 3 at 5). The evaluations per pass (``AdaptConfig.refresh_evals_per_pass``: the
hold-out checked that many times per pass over the new data, the patience counted in those
checks) are a fifth dimension (``refresh_evals_choice.json``; candidates fixed before the
run, context on, multiple 2, no cap: one evaluation a pass at patience 6 -- the defaults --,
two a pass at patience 4, 6 and 8, i.e. 2, 3 and 4 passes of data). Within the tie, "the
smaller patience" reads patience in passes (patience / evaluations per pass: the cheaper
side), then more evaluations per pass win. The next-period NDCG@10 the benchmark reports is
recorded in the JSON but never read here:
choosing on it would tune on the test. The lr study ran first (patience 3, the adapters'),
the patience study after it at the chosen multiple.

Writes ``benchmarks/results/refresh_choice.{json,md}``; a rerun replaces the records of the
(lr, patience, seed) it runs.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

from benchmarks.common import (
    RESULTS,
    configure_logging,
    floats,
    integers,
    load_results,
    study_command,
    study_parser,
    write_results,
)
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from benchmarks.refresh import ADAPT, load_periods, run_seed

TIE = 0.001
METRICS = {"own": "valid_ndcg@10", "served": "holdout_served_ndcg@10"}


class Candidate(NamedTuple):
    """One refresh setting the study compares. Records before a dimension was recorded ran
    with the adapters' patience and epochs, without context, one evaluation a pass, unshrunk
    (1), without a loss on the context (``candidate``)."""

    lr: float  # multiple of the adapters' learning rate
    patience: int  # hold-out evaluations without a better one before stopping
    epochs: int  # epoch cap (passes over the new data)
    context: bool  # each user's earlier items read ahead of the new ones
    evals: int  # hold-out evaluations per pass
    shrink: float  # share of the parent's weights kept (1: unshrunk)
    context_loss: bool  # the earlier items are targets too

    def preference(self) -> tuple:
        """Within the tie, the larger is preferred: the larger multiple, the smaller patience
        in passes, the smaller cap, no context, more evaluations per pass, the larger shrink,
        no context loss (the status quo and the cheaper side)."""
        return (self.lr, -self.patience / self.evals, -self.epochs, -self.context, self.evals,
                self.shrink, -self.context_loss)

    def label(self) -> list:
        """The report's cells."""
        return [f"{self.lr:g} (lr {self.lr * ADAPT.lr:.2g})", self.patience, self.epochs,
                "on" if self.context else "off", self.evals, f"{self.shrink:g}",
                "on" if self.context_loss else "off"]


def choose(records: list[dict], metric: str = METRICS["own"]
           ) -> tuple[Candidate | None, dict[Candidate, float]]:
    """(the chosen candidate, mean hold-out NDCG@10 (``metric``) per candidate) by the
    module's rule (ties: ``Candidate.preference``)."""
    by = defaultdict(list)
    for r in records:
        if r["method"] == "refreshed" and r.get(metric) is not None:
            by[candidate(r)].append(r[metric])
    means = {c: statistics.fmean(v) for c, v in by.items()}
    if not means:
        return None, means
    top = max(means.values())
    return max((c for c, m in means.items() if m >= top - TIE),
               key=Candidate.preference), means


def candidate(record: dict) -> Candidate:
    """The record's refresh setting (unrecorded dimensions: see ``Candidate``)."""
    return Candidate(lr=record["refresh_lr"],
                     patience=record.get("refresh_patience") or ADAPT.patience,
                     epochs=record.get("refresh_epochs") or ADAPT.epochs,
                     context=bool(record.get("refresh_context", False)),
                     evals=record.get("refresh_evals_per_pass") or 1,
                     shrink=float(record.get("refresh_shrink") or 1.0),
                     context_loss=bool(record.get("refresh_context_loss", False)))


def to_markdown(results: dict) -> str:
    records = [r for r in results["records"] if r["method"] == "refreshed"]
    metric = results.get("metric", METRICS["own"])
    chosen, means = choose(records, metric)
    cells = defaultdict(list)
    for r in records:
        cells[(candidate(r), r["period"])].append(r)
    periods = sorted({r["period"] for r in records})
    rows = []
    for cand in sorted(means, key=lambda c: (-c.lr, c.patience, -c.epochs, c.context, c.evals,
                                             -c.shrink, c.context_loss)):
        row = cand.label()
        for p in periods:
            mine = [r for r in cells[(cand, p)] if r.get(metric) is not None]
            row.append(f"{statistics.fmean(r[metric] for r in mine):.4f} "
                       f"(best ep. {statistics.fmean(r['best_epoch'] for r in mine):.1f}, "
                       f"{statistics.fmean(r['train_seconds'] for r in mine):.1f} s)"
                       if mine else "–")
        seeds = sorted({r["seed"] for r in records
                        if candidate(r) == cand and r.get(metric) is not None})
        rows.append([*row, f"{means[cand]:.4f}", len(seeds),
                     "**chosen**" if cand == chosen else ""])
    return "\n".join([
        "# Refresh settings (learning rate, patience, epoch cap, context, evaluations per "
        "pass, shrink, context loss) chosen on the refresh's hold-out", "",
        *[f"- command: `{c}`" for c in results.get("commands", [results.get("command", "")])],
        f"- commit: `{results.get('meta', {}).get('git_commit')}`", "",
        "Rule (fixed before the runs; `benchmarks/refresh_choice.py`): the (multiple of the "
        f"adapters' learning rate {ADAPT.lr:g}, patience, epoch cap, context, evaluations per "
        "pass, shrink, context loss) with the highest "
        f"mean hold-out NDCG@10 of the refreshes over periods and seeds (`{metric}`: "
        + ("each refresh's own early-stopping figure" if metric == METRICS["own"] else
           "the refreshed adapter on its own hold-out targets, every history read after the "
           "user's earlier items as serving reads it")
        + f"); within {TIE} of the best, the larger multiple, then the smaller patience, then "
        "the smaller cap, then no context, then more evaluations per pass (the patience "
        "compared in passes: patience / evaluations per pass), then the larger shrink "
        "(1: the parent's weights unshrunk), then no loss on the context. The next-period "
        "NDCG@10 (the benchmark's reported figure) is not read. Patience counts hold-out "
        "evaluations (epochs at one a pass), the cap passes over the data.", "",
        *table(["refresh lr multiple", "patience", "epoch cap", "context", "evals / pass",
                "shrink", "context loss",
                *[f"period {p}: hold-out NDCG@10" for p in periods],
                "mean", "seeds", ""], rows), "",
        *(["## Notes", "", *results["notes"], ""] if results.get("notes") else [])])


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--periods", type=int, default=5)
    parser.add_argument("--first-share", type=float, default=None,
                        help="the chain of benchmarks/refresh.py --first-share (period 0 "
                        "holds this share, the rest cut equally); default: equal periods")
    parser.add_argument("--seeds", type=integers, default="0,1,2")
    parser.add_argument("--lrs", type=floats, default="1,0.5,0.25")
    parser.add_argument("--patience", type=int, default=ADAPT.patience,
                        help="early-stopping patience of the refreshes")
    parser.add_argument("--epochs", type=int, default=ADAPT.epochs,
                        help="epoch cap of the refreshes")
    parser.add_argument("--context", choices=("on", "off"), default="off",
                        help="refreshes read each user's earlier items as context")
    parser.add_argument("--evals-per-pass", type=int, default=1,
                        help="hold-out evaluations per pass over the data of the refreshes")
    parser.add_argument("--shrink", type=float, default=1.0,
                        help="refresh_shrink of the refreshes (default 1: the parent's "
                        "weights, as every study before the shrink ran; the library's default "
                        "is AdaptConfig.refresh_shrink)")
    parser.add_argument("--context-loss", choices=("on", "off"), default="off",
                        help="refresh_context_loss of the refreshes (the earlier items are "
                        "targets too)")
    parser.add_argument("--metric", choices=tuple(METRICS), default=None,
                        help="own (the default of a new results file): each refresh's "
                        "early-stopping hold-out figure; served: the same targets, histories "
                        "read after the earlier items (compares refreshes with and without "
                        "context); kept in the results file once given")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/refresh-choice"))
    parser.add_argument("--out", type=Path, default=RESULTS / "refresh_choice.json")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    configure_logging()
    results = load_results(args.out, dataset="ml-100k")
    if args.metric is not None:
        results["metric"] = METRICS[args.metric]
    if not args.report_only:
        periods = load_periods(args.data_dir, args.periods, args.first_share)
        command = study_command("benchmarks.refresh_choice", argv)
        results["commands"] = [*results.get("commands", []), command]
        context = args.context == "on"
        results["meta"] = run_meta({"lrs": args.lrs, "seeds": args.seeds,
                                    "patience": args.patience, "epochs": args.epochs,
                                    "context": context, "evals_per_pass": args.evals_per_pass,
                                    "shrink": args.shrink, "first_share": args.first_share,
                                    "context_loss": args.context_loss == "on"})
        for seed in args.seeds:
            for lr in args.lrs:
                this = Candidate(lr, args.patience, args.epochs, context, args.evals_per_pass,
                                 args.shrink, args.context_loss == "on")
                results["records"] = [r for r in results["records"]
                                      if (candidate(r), r["seed"]) != (this, seed)]
                results["records"] += run_seed(periods, args.method, seed, args.work,
                                               refresh_epochs=args.epochs,
                                               methods=("refreshed",), refresh_lr=lr,
                                               refresh_patience=args.patience,
                                               refresh_context=context,
                                               refresh_evals_per_pass=args.evals_per_pass,
                                               refresh_shrink=args.shrink,
                                               refresh_context_loss=args.context_loss == "on")
                write_results(results, args.out)
    md = args.out.with_suffix(".md")
    md.write_text(to_markdown(results) + "\n")


if __name__ == "__main__":
    main()
