"""Choose the early-stopping patience of the refresh study's adapters trained from nothing
(the first adapter and the retrained ones) by the rule the refresh's own patience was chosen
by, on their own hold-out.

    python -m benchmarks.refresh_baseline_choice benchmarks/results/refresh.json \\
        runs/refresh_p6.json --out benchmarks/results/refresh_baseline_choice.json

Why: the refresh's learning rate, patience and context were chosen on the refreshes' hold-out
(``refresh_choice.py``); the retrained adapter it is compared with kept the benchmark's
patience 3, which nothing chose. A comparison of seconds is fair only when both sides stop by
the same rule.

Rule (fixed before any patience-6 retrain was run): candidates 3 (the benchmark's setting until
then) and 6 (the refresh's); the patience whose retrained adapters have the higher mean
early-stopping hold-out NDCG@10 (``valid_ndcg@10``: the last items of every user of the data
so far, as ``regiontune adapt`` splits them) over the (period, seed) runs both candidates hold
wins; within ``TIE`` (0.001, the refresh choice's margin) the smaller patience: a longer
patience can only find a better hold-out epoch of the same run, so it must win by more than
the tie. The next-period NDCG@10 the benchmark reports is never read here.

Input: result files of ``benchmarks/refresh.py`` (their retrained records; a record without
``patience`` ran with its file's ``config.adapt.patience``, else 3). Writes the JSON (the
per-run hold-out figures and the choice) and its Markdown report.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from benchmarks.common import RESULTS, study_command, study_parser, write_results
from benchmarks.markdown import table
from benchmarks.meta import run_meta

TIE = 0.001
DEFAULT_PATIENCE = 3


def retrained_runs(results: dict) -> list[dict]:
    """(patience, period, seed, hold-out, seconds, epochs) of a result file's retrained runs."""
    fallback = ((results.get("config") or {}).get("adapt") or {}).get("patience",
                                                                      DEFAULT_PATIENCE)
    return [{"patience": r.get("patience", fallback), "period": r["period"], "seed": r["seed"],
             "valid_ndcg@10": r["valid_ndcg@10"], "train_seconds": r["train_seconds"],
             "epochs_run": r["epochs_run"]}
            for r in results["records"] if r["method"] == "retrained"]


def choose(runs: list[dict]) -> tuple[int | None, dict[int, float]]:
    """(the chosen patience, mean hold-out per patience over the runs every candidate has)."""
    by = defaultdict(dict)
    for r in runs:
        by[r["patience"]][(r["period"], r["seed"])] = r["valid_ndcg@10"]
    if not by:
        return None, {}
    shared = set.intersection(*(set(v) for v in by.values()))
    if not shared:
        raise ValueError("the candidates share no (period, seed) run: nothing to compare")
    means = {p: statistics.fmean(v[k] for k in shared) for p, v in by.items()}
    top = max(means.values())
    return min(p for p, m in means.items() if m >= top - TIE), means


def to_markdown(result: dict) -> str:
    runs = result["runs"]
    chosen, means = result["chosen"], {int(k): v for k, v in result["means"].items()}
    rows = []
    for patience in sorted(means):
        mine = [r for r in runs if r["patience"] == patience]
        rows.append([patience, len(mine), f"{means[patience]:.4f}",
                     f"{statistics.fmean(r['epochs_run'] for r in mine):.1f}",
                     f"{statistics.fmean(r['train_seconds'] for r in mine):.1f}",
                     "**chosen**" if patience == chosen else ""])
    return "\n".join([
        "# Patience of the refresh study's adapters trained from nothing, chosen on their "
        "hold-out", "", f"- command: `{result['command']}`",
        f"- commit: `{result['meta'].get('git_commit')}`", "",
        f"Rule (fixed before the runs; `benchmarks/refresh_baseline_choice.py`): the patience "
        f"whose retrained adapters have the higher mean early-stopping hold-out NDCG@10 over "
        f"the (period, seed) runs both candidates hold; within {TIE}, the smaller. The "
        "next-period NDCG@10 is not read.", "",
        *table(["patience", "runs", "mean hold-out NDCG@10", "epochs run", "train s", ""],
               rows), ""])


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("inputs", nargs="+", type=Path,
                        help="result files of benchmarks/refresh.py")
    parser.add_argument("--out", type=Path, default=RESULTS / "refresh_baseline_choice.json")
    args = parser.parse_args(argv)
    runs = [r for path in args.inputs for r in retrained_runs(json.loads(path.read_text()))]
    chosen, means = choose(runs)
    result = {"command": study_command("benchmarks.refresh_baseline_choice", argv),
              "meta": run_meta({"inputs": [p.name for p in args.inputs]}), "tie": TIE,
              "chosen": chosen, "means": means, "runs": runs}
    write_results(result, args.out)
    args.out.with_suffix(".md").write_text(to_markdown(result) + "\n")


if __name__ == "__main__":
    main()
