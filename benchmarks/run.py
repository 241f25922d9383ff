"""Benchmark runner: ``python -m benchmarks.run SUITE [--quick]``.

A suite (``benchmarks/suites/SUITE.yaml``) names a data set, its *settings* (for each, the
markets each target's backbone is pretrained on), the target regions, the methods, the data
fractions and the seeds. The runner pretrains each backbone once (cached), then runs every
(setting, region, method, fraction, seed) job, appending one record per job to
``benchmarks/results/SUITE.json`` as soon as it finishes. Records already in the file are
skipped, so a long suite can be completed over several runs. Methods that never read the
backbone (scratch, the classic baselines) run once and are recorded under every setting.

``python -m benchmarks.run refresh ...`` and ``... merge ...`` run the region life-cycle
studies (``benchmarks/refresh.py``, ``benchmarks/merge.py``) with their own options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import cost, jobs
from benchmarks.common import (
    RESULTS,
    configure_logging,
    done_keys,
    floats,
    integers,
    load_results,
    load_suite,
    names,
    record_key,
    setting_model,
    settings,
    study_parser,
    suite_configs,
    write_results,
)
from benchmarks.meta import run_meta
from benchmarks.report import write_report, write_results_and_report

log = logging.getLogger("benchmarks")
KEY = ("setting", "region", "method", "data_fraction", "seed")
DETERMINISTIC = {"popularity", "itemknn", "ease", "zero-shot"}  # at all data: one seed


def _priority(job: dict[str, Any], curve_methods: tuple = ()) -> tuple:
    """The points a suite's claims read first, so an interrupted run holds them: every
    method with all the data (first seed), the 10% point (first seed), the curve methods'
    other seeds at those two fractions, then 25%, the rest of the curve, and last the other
    methods' extra seeds. Within a tier the new-region setting before all-regions, cheapest
    (smallest data) first among extra seeds."""
    fraction, seed = job["data_fraction"], job["seed"]
    curve = job["method"] in curve_methods
    if seed == 0:
        tier = {1.0: 0, 0.1: 1, 0.25: 3}.get(fraction, 4)
    else:
        tier = 2 if curve and fraction in (0.1, 1.0) else (4 if curve else 5)
    return (tier, job.get("setting") != "new-region", fraction if seed else 0)


def plan(suite: dict[str, Any]) -> list[dict[str, Any]]:
    """Every job of the suite: three seeds at the multi-seed fractions, one elsewhere.

    Ordered so that an interrupted run has the most important points: every method with all
    the data first, then the learning curves, then the other seeds.
    """
    out = []
    for setting in settings(suite):
        for region in suite["targets"]:
            for method in suite["methods"]:
                fractions = suite["fractions"] if method in suite["curve_methods"] else [1.0]
                for fraction in fractions:
                    # a baseline on a sub-sample of the users depends on the seed too
                    many = fraction in suite["multi_seed_fractions"] and not (
                        method in DETERMINISTIC and fraction == 1.0)
                    for seed in range(suite["seeds"] if many else 1):
                        out.append({"setting": setting, "region": region, "method": method,
                                    "data_fraction": fraction, "seed": seed})
    curve = tuple(suite.get("curve_methods", ()))
    return sorted(out, key=lambda job: _priority(job, curve))


def _key(record: dict) -> tuple:
    return record_key(record, KEY)


def run_suite(name: str, quick: bool = False, out: Path | None = None,
              methods: list[str] | None = None, regions: list[str] | None = None,
              cpu: bool = False, data_dir: str | None = None,
              work_dir: str | None = None, budget_minutes: float | None = None,
              only_settings: list[str] | None = None,
              fractions: list[float] | None = None,
              seeds: list[int] | None = None) -> Path:
    """Run (or complete) a suite; returns the results file."""
    suite = load_suite(name, quick)
    if data_dir:
        suite["data"]["data_dir"] = data_dir
    if work_dir:
        suite["work_dir"] = work_dir
    out = Path(out) if out else RESULTS / f"{suite['suite']}.json"
    work = Path(suite.get("work_dir", "runs/bench")) / suite["suite"]
    data_cfg, model_cfg, trains = suite_configs(suite)
    for setting in settings(suite):  # a malformed settings block fails before any work
        setting_model(suite, setting)
    if cpu:
        for cfg in trains.values():
            cfg.cpu = True
    results = load_results(out, suite=suite["suite"])
    results["meta"] = run_meta(suite)
    if "settings" not in suite:  # records from before settings existed: the one setting
        for record in results["records"]:
            record.setdefault("setting", "new-region")
    done = done_keys(results["records"], KEY)
    shared = {_key({**r, "setting": None}): r for r in results["records"]
              if r["method"] in jobs.TARGET_ONLY}
    todo = [j for j in plan(suite) if _key(j) not in done
            and (not methods or j["method"] in methods)
            and (not regions or j["region"] in regions)
            and (not only_settings or j["setting"] in only_settings)
            and (not fractions or j["data_fraction"] in fractions)
            and (seeds is None or j["seed"] in seeds)]
    log.info("%s: %d jobs done, %d to run", suite["suite"], len(done), len(todo))
    context = jobs.Context(suite, data_cfg, model_cfg, trains, work)
    suite_started = time.perf_counter()
    for number, job in enumerate(todo, start=1):
        started = time.perf_counter()
        if budget_minutes and started - suite_started > budget_minutes * 60:
            log.info("time budget of %.0f min spent; %d jobs left for the next run",
                     budget_minutes, len(todo) - number + 1)
            break
        twin = shared.get(_key({**job, "setting": None}))
        if twin is not None:  # the backbone plays no part: the same run serves every setting
            record = {**twin, "setting": job["setting"], "shared_with": twin["setting"]}
        else:
            record = {"suite": suite["suite"], "dataset": suite["dataset"], **job,
                      **context.run(job)}
            if job["method"] in jobs.TARGET_ONLY:
                shared[_key({**job, "setting": None})] = record
        results["records"].append(record)
        write_results(results, out)
        log.info("[%d/%d] %s %s %s f=%.2f seed=%d: ndcg@10=%.4f (%.0f s)", number, len(todo),
                 job["setting"], job["region"], job["method"], job["data_fraction"], job["seed"],
                 record["ndcg@10"], time.perf_counter() - started)
    write_report(results, out.parent, out.stem)
    return out


def merge_results(name: str, others: list[Path], out: Path | None = None,
                  quick: bool = False) -> Path:
    """Add the records of other results files (runs of the same suite in parallel
    processes, each with its own ``--out``) to the suite's file; a job already there wins."""
    suite = load_suite(name, quick)
    out = Path(out) if out else RESULTS / f"{suite['suite']}.json"
    results = load_results(out, suite=suite["suite"])
    done = done_keys(results["records"], KEY)
    for other in others:
        for record in json.loads(Path(other).read_text())["records"]:
            if _key(record) not in done:
                results["records"].append(record)
                done.add(_key(record))
    results["meta"] = run_meta(suite)
    write_results_and_report(results, out)
    return out


# studies with options of their own: `python -m benchmarks.run refresh --seeds 0,1` runs
# `python -m benchmarks.refresh --seeds 0,1`
STUDIES = {"refresh": "benchmarks.refresh", "merge": "benchmarks.merge"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in STUDIES:
        importlib.import_module(STUDIES[argv[0]]).main(argv[1:])
        return
    parser = study_parser(__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="wsdm, ml100k, cost (serving: python -m "
                        "benchmarks.serving), refresh or merge (their own options: "
                        "python -m benchmarks.refresh --help), or a path to a suite YAML")
    parser.add_argument("--quick", action="store_true", help="small smoke version")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/)")
    parser.add_argument("--methods", type=names,
                        help="comma-separated subset of the suite's methods")
    parser.add_argument("--regions", type=names,
                        help="comma-separated subset of the target regions")
    parser.add_argument("--settings", type=names, help="comma-separated subset of the suite's "
                        "settings (new-region, all-regions)")
    parser.add_argument("--fractions", type=floats, help="comma-separated subset of the "
                        "suite's data fractions")
    parser.add_argument("--seeds", type=integers, help="comma-separated subset of the seeds "
                        "(0 .. the suite's seeds - 1): with the other filters, one job per "
                        "process for parallel runs")
    parser.add_argument("--cpu", action="store_true", help="force CPU even with a GPU")
    parser.add_argument("--data-dir", help="override the suite's data directory")
    parser.add_argument("--work-dir", help="where backbones are cached (default runs/bench)")
    parser.add_argument("--budget-minutes", type=float, help="start no job after this long")
    parser.add_argument("--merge", type=Path, action="append", metavar="JSON",
                        help="add the records of another results file of this suite (a run "
                        "in a parallel process with its own --out) and rewrite the report; "
                        "runs no job")
    args = parser.parse_args(argv)
    configure_logging()
    if args.suite == "cost":
        cost.main(["--quick"] if args.quick else [])
        return
    if args.merge:
        path = merge_results(args.suite, args.merge, args.out, args.quick)
        print(f"results: {path}  report: {path.with_suffix('.md')}")
        return
    path = run_suite(args.suite, args.quick, args.out, args.methods, args.regions, args.cpu,
                     args.data_dir, args.work_dir, args.budget_minutes, args.settings,
                     args.fractions, args.seeds)
    print(f"results: {path}  report: {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
