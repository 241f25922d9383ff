"""How adapters should score items their region's training data never shows.

Three ways, one training run each (the last two share one): ``negatives`` -- such items are
in the training softmax and get pushed down at every step; ``ignore`` -- left out of the
softmax, their score level is whatever the backbone and the shared adapter weights give;
``calibrate`` -- left out, then one offset for all of them fitted on the early-stopping
hold-out (``regiontune.training.unseen``). Official NDCG@10 split by whether the positive occurs
in the (sub-sampled) training data, next to the hold-out figure.

    python -m benchmarks.unseen_items --regions t1,t2 --fractions 0.25,1.0

Writes ``benchmarks/results/unseen_items.json`` and ``.md``; resumes: records already in
the JSON are kept and not rerun.
"""

from __future__ import annotations

import logging
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    add_backbone_option,
    add_grid_options,
    configure_logging,
    done_keys,
    load_results,
    load_suite,
    names,
    study_parser,
    suite_regions,
    train_config,
    write_results,
)
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from regiontune.config import AdaptConfig
from regiontune.data.splits import RegionData, subsample_users
from regiontune.evaluation.evaluate import evaluate_task
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import VALID_CASES, train_region
from regiontune.training.unseen import calibrate_unseen, trained_items

log = logging.getLogger("benchmarks")
OUT = RESULTS / "unseen_items.json"
MODES = ("negatives", "ignore", "calibrate")


def warm_cold(task, data: RegionData, seen: set[str]) -> dict:
    """Official NDCG@10 on all test cases, on those whose positive is in ``seen`` (warm)
    and on the others (cold), with the number of users of each."""
    record = {}
    for name, cases in (("all", data.test),
                        ("warm", [c for c in data.test if c.target in seen]),
                        ("cold", [c for c in data.test if c.target not in seen])):
        metrics = evaluate_task(task, data.catalogue, cases)
        record[f"{name}_users"], record[f"{name}_ndcg@10"] = metrics["users"], metrics["ndcg@10"]
    return record


def _record(task, data: RegionData, sub: RegionData, seen: set[str], stats: dict,
            **keys) -> dict:
    """``data``: the region (official test cases); ``sub``: what the run trained on."""
    holdout = evaluate_task(task, sub.catalogue, sub.valid[:VALID_CASES])["ndcg@10"]
    return {**keys, "holdout_ndcg@10": holdout, **warm_cold(task, data, seen),
            "best_epoch": stats["best_epoch"], "train_seconds": stats["train_seconds"]}


def run_modes(data: RegionData, fraction: float, method: str, seed: int, suite: dict,
              backbone_dir: Path, modes: list[str]) -> list[dict]:
    """Train with unseen items as negatives, and without (scored before and after the
    calibration); one record per mode."""
    train_cfg = train_config(suite, "adapt", seed=seed)
    sub = subsample_users(data, fraction, seed)
    seen = trained_items(sub.train)
    keys = {"region": data.region, "method": method, "data_fraction": fraction, "seed": seed}
    records = []
    for as_negatives in (True, False):
        wanted = ["negatives"] if as_negatives else ["ignore", "calibrate"]
        if not set(wanted) & set(modes):
            continue
        cfg = AdaptConfig(method=method, region=data.region, fraction=fraction,
                          unseen_as_negatives=as_negatives, calibrate_unseen=False)
        backbone, vocab, _ = load_backbone(backbone_dir)
        task, stats = train_region(backbone, vocab, data, cfg, train_cfg)
        records.append(_record(task, data, sub, seen, stats, **keys, mode=wanted[0]))
        if not as_negatives and "calibrate" in modes:
            info = calibrate_unseen(task, sub.catalogue, sub.train, sub.valid[:VALID_CASES])
            records.append({**_record(task, data, sub, seen, stats, **keys, mode="calibrate"),
                            "unseen_offset": info["unseen_offset"],
                            "holdout_unseen_targets": info["holdout_unseen_targets"],
                            "holdout_cases": info["holdout_cases"]})
    return [r for r in records if r["mode"] in modes]


def to_markdown(records: list[dict]) -> str:
    header = ["region", "fraction", "seed", "unseen items", "hold-out NDCG@10",
              "official NDCG@10", "warm positives", "cold positives", "offset"]
    rows = [[r["region"], f"{r['data_fraction']:g}", r["seed"], r["mode"],
             f"{r['holdout_ndcg@10']:.4f}", f"{r['all_ndcg@10']:.4f}",
             f"{r['warm_ndcg@10']:.4f} ({r['warm_users']})",
             f"{r['cold_ndcg@10']:.4f} ({r['cold_users']})",
             f"{r['unseen_offset']:+.2f}" if "unseen_offset" in r else "–"] for r in records]
    methods = sorted({r["method"] for r in records})
    return "\n".join([
        "# Items the region's training data never shows", "",
        "`negatives`: in the training softmax (pushed down); `ignore`: left out of it; "
        "`calibrate`: left out, then one score offset fitted on the early-stopping hold-out "
        "(the `ignore` run, calibrated). Official NDCG@10 split by whether the positive occurs "
        "in the training data (warm) or not (cold); users per split in brackets.", "",
        *table(header, rows), "",
        f"Method: {', '.join(methods)}; wsdm suite settings otherwise "
        "(`python -m benchmarks.unseen_items`).", ""])


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    add_grid_options(parser, regions="t1,t2", seeds="0", fractions="0.25,1.0")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--modes", type=names, default=",".join(MODES))
    add_backbone_option(parser)
    args = parser.parse_args(argv)
    configure_logging()  # per-epoch lines quiet: the records say it all
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    suite = load_suite("wsdm")
    results = {"meta": None, "records": load_results(OUT)["records"]}
    have = done_keys(results["records"], ("region", "method", "data_fraction", "seed", "mode"))
    for region in args.regions:
        data = suite_regions(suite, [region])[region]
        for fraction in args.fractions:
            for seed in args.seeds:
                todo = [m for m in args.modes
                        if (region, args.method, fraction, seed, m) not in have]
                if todo:
                    results["records"] += run_modes(data, fraction, args.method, seed, suite,
                                                    args.backbone, todo)
                    results["meta"] = run_meta(suite)
                    write_results(results, OUT)
                    OUT.with_suffix(".md").write_text(to_markdown(results["records"]),
                                                      encoding="utf-8")
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    main()
