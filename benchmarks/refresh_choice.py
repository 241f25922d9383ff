"""Choose the refresh's learning rate (``AdaptConfig.refresh_lr``) and early-stopping patience
on the refresh's own hold-out.

    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 1,0.5,0.25 --seeds 0,1,2
    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 1 --patience 6
    OMP_NUM_THREADS=1 python -m benchmarks.refresh_choice --lrs 1 --patience 6 --epochs 5

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
next-period NDCG@10 the benchmark reports is recorded in the JSON but never read here:
choosing on it would tune on the test. The lr study ran first (patience 3, the adapters'),
the patience study after it at the chosen multiple.

Writes ``benchmarks/results/refresh_choice.{json,md}``; a rerun replaces the records of the
(lr, patience, seed) it runs.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

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


def choose(records: list[dict]
           ) -> tuple[tuple[float, int, int] | None, dict[tuple[float, int, int], float]]:
    """(the chosen multiple, mean hold-out NDCG@10 per multiple) by the module's rule."""
    by = defaultdict(list)
    for r in records:
        if r["method"] == "refreshed" and r.get("valid_ndcg@10") is not None:
            by[candidate(r)].append(r["valid_ndcg@10"])
    means = {c: statistics.fmean(v) for c, v in by.items()}
    if not means:
        return None, means
    top = max(means.values())
    return max((c for c, m in means.items() if m >= top - TIE),
               key=lambda c: (c[0], -c[1], -c[2])), means


def candidate(record: dict) -> tuple[float, int, int]:
    """(refresh lr multiple, refresh patience, refresh epoch cap); records before the patience
    or the cap were recorded ran with the adapters' patience and epochs."""
    return (record["refresh_lr"], record.get("refresh_patience") or ADAPT.patience,
            record.get("refresh_epochs") or ADAPT.epochs)


def to_markdown(results: dict) -> str:
    records = [r for r in results["records"] if r["method"] == "refreshed"]
    chosen, means = choose(records)
    cells = defaultdict(list)
    for r in records:
        cells[(candidate(r), r["period"])].append(r)
    periods = sorted({r["period"] for r in records})
    rows = []
    for cand in sorted(means, key=lambda c: (-c[0], c[1], -c[2])):
        lr, patience, epochs = cand
        row = [f"{lr:g} (lr {lr * ADAPT.lr:.2g})", patience, epochs]
        for p in periods:
            mine = cells[(cand, p)]
            row.append(f"{statistics.fmean(r['valid_ndcg@10'] for r in mine):.4f} "
                       f"(best ep. {statistics.fmean(r['best_epoch'] for r in mine):.1f}, "
                       f"{statistics.fmean(r['train_seconds'] for r in mine):.1f} s)"
                       if mine else "–")
        seeds = sorted({r["seed"] for r in records if candidate(r) == cand})
        rows.append([*row, f"{means[cand]:.4f}", len(seeds),
                     "**chosen**" if cand == chosen else ""])
    return "\n".join([
        "# Refresh learning rate, patience and epoch cap, chosen on the refresh's hold-out", "",
        *[f"- command: `{c}`" for c in results.get("commands", [results.get("command", "")])],
        f"- commit: `{results.get('meta', {}).get('git_commit')}`", "",
        "Rule (fixed before the runs; `benchmarks/refresh_choice.py`): the (multiple of the "
        f"adapters' learning rate {ADAPT.lr:g}, patience, epoch cap) with the highest mean "
        f"early-stopping hold-out NDCG@10 of the refreshes over periods and seeds; within {TIE} "
        "of the best, the larger multiple, then the smaller patience, then the smaller cap. "
        "The next-period NDCG@10 (the benchmark's reported figure) is not read.", "",
        *table(["refresh lr multiple", "patience", "epoch cap",
                *[f"period {p}: hold-out NDCG@10" for p in periods],
                "mean", "seeds", ""], rows), ""])


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--periods", type=int, default=5)
    parser.add_argument("--seeds", type=integers, default="0,1,2")
    parser.add_argument("--lrs", type=floats, default="1,0.5,0.25")
    parser.add_argument("--patience", type=int, default=ADAPT.patience,
                        help="early-stopping patience of the refreshes")
    parser.add_argument("--epochs", type=int, default=ADAPT.epochs,
                        help="epoch cap of the refreshes")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/refresh-choice"))
    parser.add_argument("--out", type=Path, default=RESULTS / "refresh_choice.json")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    configure_logging()
    results = load_results(args.out, dataset="ml-100k")
    if not args.report_only:
        periods = load_periods(args.data_dir, args.periods)
        command = study_command("benchmarks.refresh_choice", argv)
        results["commands"] = [*results.get("commands", []), command]
        results["meta"] = run_meta({"lrs": args.lrs, "seeds": args.seeds,
                                    "patience": args.patience, "epochs": args.epochs})
        for seed in args.seeds:
            for lr in args.lrs:
                results["records"] = [r for r in results["records"] if (
                    *candidate(r), r["seed"]) != (lr, args.patience, args.epochs, seed)]
                results["records"] += run_seed(periods, args.method, seed, args.work,
                                               refresh_epochs=args.epochs,
                                               methods=("refreshed",), refresh_lr=lr,
                                               refresh_patience=args.patience)
                write_results(results, args.out)
    md = args.out.with_suffix(".md")
    md.write_text(to_markdown(results) + "\n")


if __name__ == "__main__":
    main()
