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

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

from benchmarks.markdown import table
from benchmarks.meta import run_meta
from benchmarks.run import RESULTS, add_backbone_option, load_suite
from regiontune.config import AdaptConfig, DataConfig, TrainConfig, from_dict
from regiontune.data.recipes import load_regions
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
    train_cfg = from_dict(TrainConfig, {**suite["adapt"], "progress": False, "seed": seed})
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", default="t1,t2")
    parser.add_argument("--fractions", default="0.25,1.0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--modes", default=",".join(MODES))
    add_backbone_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("accelerate", "regiontune"):  # per-epoch lines; the records say it all
        logging.getLogger(noisy).setLevel(logging.WARNING)
    modes = args.modes.split(",")
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    suite = load_suite("wsdm")
    done = json.loads(OUT.read_text())["records"] if OUT.is_file() else []
    key = ("region", "method", "data_fraction", "seed", "mode")
    have = {tuple(r[k] for k in key) for r in done}
    for region in args.regions.split(","):
        data_cfg = replace(from_dict(DataConfig, suite["data"]), regions=[region])
        data = load_regions(data_cfg)[region]
        for fraction in map(float, args.fractions.split(",")):
            for seed in map(int, args.seeds.split(",")):
                todo = [m for m in modes
                        if (region, args.method, fraction, seed, m) not in have]
                if todo:
                    done += run_modes(data, fraction, args.method, seed, suite, args.backbone,
                                      todo)
                    OUT.write_text(json.dumps({"meta": run_meta(suite), "records": done},
                                              indent=1) + "\n")
                    OUT.with_suffix(".md").write_text(to_markdown(done), encoding="utf-8")
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    main()
