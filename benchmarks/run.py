"""Benchmark runner: ``python -m benchmarks.run SUITE [--quick]``.

A suite (``benchmarks/suites/SUITE.yaml``) names a data set, its *settings* (for each, the
markets each target's backbone is pretrained on), the target regions, the methods, the data
fractions and the seeds. The runner pretrains each backbone once (cached), then runs every
(setting, region, method, fraction, seed) job, appending one record per job to
``benchmarks/results/SUITE.json`` as soon as it finishes. Records already in the file are
skipped, so a long suite can be completed over several runs. Methods that never read the
backbone (scratch, the classic baselines) run once and are recorded under every setting.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import jobs
from benchmarks.meta import run_meta
from benchmarks.report import write_report
from regiontune.config import DataConfig, ModelConfig, TrainConfig, from_dict

log = logging.getLogger("benchmarks")
SUITES = Path(__file__).parent / "suites"
RESULTS = Path(__file__).parent / "results"
KEY = ("setting", "region", "method", "data_fraction", "seed")
DETERMINISTIC = {"popularity", "itemknn", "ease", "zero-shot"}  # at all data: one seed


def load_suite(name: str, quick: bool = False) -> dict[str, Any]:
    path = Path(name) if name.endswith(".yaml") else SUITES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES.glob("*.yaml"))
        raise SystemExit(f"unknown suite {name!r}; suites: {known}")
    suite = yaml.safe_load(path.read_text())
    if quick:  # the smoke version: same code paths, tiny data and models
        suite = _deep_update(suite, suite.pop("quick", {}))
        suite["suite"] = f"{suite['suite']}-quick"
    suite.pop("quick", None)
    return suite


def _deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


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


def settings(suite: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """setting -> target -> the markets its backbone is pretrained on.

    ``settings:`` in the suite; a suite with only ``pretrain_regions:`` has one setting,
    ``new-region``, whose backbone is those regions for every target.
    """
    if "settings" in suite:
        out = {}
        for name, spec in suite["settings"].items():
            missing = [t for t in suite["targets"] if t not in spec]
            if missing:
                raise SystemExit(f"suite setting {name!r} names no pretraining markets for "
                                 f"target(s) {missing}")
            out[name] = {t: sorted(spec[t]) for t in suite["targets"]}
        return out
    return {"new-region": {t: sorted(suite["pretrain_regions"]) for t in suite["targets"]}}


def add_backbone_option(parser) -> None:
    """``--backbone`` for the side benchmarks that reuse the wsdm suite's pretrained backbone."""
    parser.add_argument("--backbone", type=Path,
                        default=Path("runs/bench/wsdm") / jobs.backbone_name(["s1", "s2", "s3"]),
                        help="A wsdm suite backbone (python -m benchmarks.run wsdm makes them; "
                        "default: the new-region one of t1 and t2, pretrained on s1-s3).")


def _key(record: dict) -> tuple:
    return tuple(record.get(k) for k in KEY)


def _write(results: dict, path: Path) -> None:
    """Atomic: a kill mid-write never corrupts the results collected so far."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)[1])
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def append_record(results: dict, path: Path, record: dict) -> None:
    """Add one finished job's record and save at once (a study resumes from the file)."""
    results["records"].append(record)
    _write(results, path)
    log.info("%s", record)


def _configs(suite: dict) -> tuple[DataConfig, ModelConfig, dict[str, TrainConfig]]:
    data = from_dict(DataConfig, suite["data"])
    model = from_dict(ModelConfig, suite["model"])
    trains = {name: from_dict(TrainConfig, {"progress": False, **suite[name]})
              for name in ("pretrain", "adapt", "scratch")}
    return data, model, trains


def run_suite(name: str, quick: bool = False, out: Path | None = None,
              methods: list[str] | None = None, regions: list[str] | None = None,
              cpu: bool = False, data_dir: str | None = None,
              work_dir: str | None = None, budget_minutes: float | None = None,
              only_settings: list[str] | None = None) -> Path:
    """Run (or complete) a suite; returns the results file."""
    suite = load_suite(name, quick)
    if data_dir:
        suite["data"]["data_dir"] = data_dir
    if work_dir:
        suite["work_dir"] = work_dir
    out = Path(out) if out else RESULTS / f"{suite['suite']}.json"
    work = Path(suite.get("work_dir", "runs/bench")) / suite["suite"]
    data_cfg, model_cfg, trains = _configs(suite)
    settings(suite)  # a malformed settings block fails before any work
    if cpu:
        for cfg in trains.values():
            cfg.cpu = True
    results = json.loads(out.read_text()) if out.is_file() else {"suite": suite["suite"],
                                                                  "records": []}
    results["meta"] = run_meta(suite)
    if "settings" not in suite:  # records from before settings existed: the one setting
        for record in results["records"]:
            record.setdefault("setting", "new-region")
    done = {_key(r) for r in results["records"]}
    shared = {_key({**r, "setting": None}): r for r in results["records"]
              if r["method"] in jobs.TARGET_ONLY}
    todo = [j for j in plan(suite) if _key(j) not in done
            and (not methods or j["method"] in methods)
            and (not regions or j["region"] in regions)
            and (not only_settings or j["setting"] in only_settings)]
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
        _write(results, out)
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
    results = json.loads(out.read_text()) if out.is_file() else {"suite": suite["suite"],
                                                                  "records": []}
    done = {_key(r) for r in results["records"]}
    for other in others:
        for record in json.loads(Path(other).read_text())["records"]:
            if _key(record) not in done:
                results["records"].append(record)
                done.add(_key(record))
    results["meta"] = run_meta(suite)
    _write(results, out)
    write_report(results, out.parent, out.stem)
    return out


def configure_logging() -> None:
    """Benchmark entry points: INFO lines with times on stdout, library chatter at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    for noisy in ("accelerate", "regiontune", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _split(text: str | None) -> list[str] | None:
    return [x for x in text.split(",") if x] if text else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("suite", help="wsdm, ml100k, cost (serving: python -m "
                        "benchmarks.serving), or a path to a suite YAML")
    parser.add_argument("--quick", action="store_true", help="small smoke version")
    parser.add_argument("--out", type=Path, help="results JSON (default benchmarks/results/)")
    parser.add_argument("--methods", help="comma-separated subset of the suite's methods")
    parser.add_argument("--regions", help="comma-separated subset of the target regions")
    parser.add_argument("--settings", help="comma-separated subset of the suite's settings "
                        "(new-region, all-regions)")
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
        from benchmarks.cost import main as cost_main

        cost_main(["--quick"] if args.quick else [])
        return
    if args.merge:
        path = merge_results(args.suite, args.merge, args.out, args.quick)
        print(f"results: {path}  report: {path.with_suffix('.md')}")
        return
    path = run_suite(args.suite, args.quick, args.out, _split(args.methods),
                     _split(args.regions), args.cpu, args.data_dir, args.work_dir,
                     args.budget_minutes, _split(args.settings))
    print(f"results: {path}  report: {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
