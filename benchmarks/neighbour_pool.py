"""The item-item part's pool weight, chosen on the hold-out.

    OMP_NUM_THREADS=1 python -m benchmarks.neighbour_pool [--regions t1,s3] [--weights 0,0.5]

An adapter's item-item part is EASE fitted on the region's training histories
(``adapters/item_item.py``); with ``AdaptConfig.neighbour_pool`` = w, the backbone's other
pretraining regions' histories join EASE's Gram matrix at weight w (``training/pool.py``).
For every (setting, target) of the WSDM suite -- the pool is that setting's pretraining
markets other than the target: s1-s3 (or s1, s2) in new-region, the other four markets in
all-regions -- and every w of ``--weights``, EASE alone is fitted with lambda tuned over
``--lambdas`` on the adapters' early-stopping hold-out (``VALID_CASES`` first validation
cases: the positive among 99 negatives drawn as the test lists draw theirs), and its best
hold-out NDCG@10 is recorded. The official lists are never read.

Rule (fixed before the run): the default is the w with the highest mean hold-out NDCG@10 over
every (setting, target); within 0.001 of the best, the smaller w. Records
(``benchmarks/results/neighbour_pool.json``): setting, region, weight, lambda, hold-out
NDCG@10 at each lambda, pool histories; resumable (a recorded point is skipped).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    add_grid_options,
    append_record,
    configure_logging,
    done_keys,
    floats,
    load_results,
    load_suite,
    names,
    settings,
    study_command,
    study_parser,
    suite_regions,
    write_results,
)
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from regiontune.evaluation.baselines import tune_ease
from regiontune.training.adapt import VALID_CASES

log = logging.getLogger("benchmarks")
KEY = ("setting", "region", "weight")
TIE = 0.001


def study(suite: dict, out: Path, pairs: list[tuple[str, str]], weights: list[float],
          lambdas: list[float], argv: list[str] | None = None) -> dict:
    results = load_results(out, study="neighbour_pool")
    results["meta"] = run_meta(suite)
    results.setdefault("commands", [])
    command = study_command("benchmarks.neighbour_pool", argv)
    if command not in results["commands"]:
        results["commands"].append(command)
    done = done_keys(results["records"], KEY)
    spec = settings(suite)
    markets = sorted({m for setting, target in pairs for m in spec[setting][target]} |
                     {target for _, target in pairs})
    regions = suite_regions(suite, markets)
    for setting, target in pairs:
        data = regions[target]
        catalogue = list(data.catalogue)
        index = set(catalogue)
        holdout = [c for c in data.valid[:VALID_CASES] if c.target in index]
        pool = [h for m in spec[setting][target] if m != target
                for h in regions[m].train.values()]
        for weight in weights:
            if (setting, target, weight) in done:
                continue
            started = time.perf_counter()
            _, lam, found = tune_ease(data.train, catalogue, holdout, lambdas=lambdas,
                                      pool=pool, pool_weight=weight)
            append_record(results, out, {
                "setting": setting, "region": target, "weight": weight, "lambda": lam,
                "holdout_ndcg@10": round(found[lam], 4),
                "holdout_by_lambda": {str(k): round(v, 4) for k, v in found.items()},
                "pool_markets": [m for m in spec[setting][target] if m != target],
                "pool_histories": len(pool) if weight else 0, "holdout_cases": len(holdout),
                "seconds": round(time.perf_counter() - started, 1)})
    write_results(results, out)
    return results


def choose(records: list[dict]) -> tuple[float | None, dict[float, float]]:
    """The rule of the module docstring, over the (setting, region) pairs every weight has."""
    by_pair = defaultdict(dict)
    for r in records:
        by_pair[(r["setting"], r["region"])][r["weight"]] = r["holdout_ndcg@10"]
    weights = set.intersection(*(set(v) for v in by_pair.values())) if by_pair else set()
    means = {w: statistics.mean(v[w] for v in by_pair.values()) for w in sorted(weights)}
    if not means:
        return None, {}
    best = max(means.values())
    return min(w for w, m in means.items() if m >= best - TIE), means


def report(results: dict, path: Path) -> None:
    records = results["records"]
    chosen, means = choose(records)
    weights = sorted({r["weight"] for r in records})
    pairs = sorted({(r["setting"], r["region"]) for r in records})
    found = {(r["setting"], r["region"], r["weight"]): r for r in records}
    rows = []
    for setting, region in pairs:
        cells = []
        for w in weights:
            r = found.get((setting, region, w))
            cells.append(f"{r['holdout_ndcg@10']:.4f} (λ {r['lambda']:g})" if r else "–")
        rows.append([setting, region, *cells])
    rows.append(["mean", "", *(f"**{means[w]:.4f}**" if w in means else "–" for w in weights)])
    lines = ["# The item-item part's pool weight, chosen on the hold-out", "",
             *(f"- command: `{c}`" for c in results.get("commands", [])),
             f"- commit: `{results['meta'].get('git_commit')}`", "",
             "EASE alone on each target's early-stopping hold-out (the adapters' first "
             f"{VALID_CASES} validation cases), its Gram matrix plus the pool's at weight w; "
             "lambda tuned per cell. Pool: the setting's other pretraining markets. The "
             "official lists are never read. Rows with fewer weights: a shorter run (slow "
             "EASE on t2's 8,934 items, one core).", "",
             f"Rule (fixed before the run): the w with the highest mean; within {TIE} of the "
             f"best, the smaller. **Chosen: w = {chosen}**.", "",
             *table(["setting", "target", *(f"w = {w:g}" for w in weights)], rows)]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    add_grid_options(parser, regions="t1,t2,s3")
    parser.add_argument("--settings", type=names, default="new-region,all-regions")
    parser.add_argument("--weights", type=floats, default="0,0.25,0.5,1")
    parser.add_argument("--lambdas", type=floats, default="50,100,200,500,1000")
    parser.add_argument("--out", type=Path, default=RESULTS / "neighbour_pool.json")
    args = parser.parse_args(argv)
    configure_logging()
    suite = load_suite("wsdm")
    pairs = [(s, t) for s in args.settings for t in args.regions]
    results = study(suite, args.out, pairs, args.weights, args.lambdas, argv)
    report(results, args.out.with_suffix(".md"))
    print(f"results: {args.out}  report: {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
