"""Why the adapters' learning rate matters on WSDM t1: cold candidate items.

An eighth of t1's official validation positives never occur in t1's training data. The full
softmax over the region's catalogue pushes such items down at every step, so a large
learning rate ranks them last. This script trains one adapter per learning rate, with those
items in the training softmax (the default until 2026-11-28) and without
(``unseen_as_negatives=False``, uncalibrated: see ``benchmarks.unseen_items``), and
splits the official NDCG@10 by whether the positive occurs in the (sub-sampled) training data,
next to the early-stopping hold-out's figure, which cannot see the effect.

    python -m benchmarks.cold_items --lrs 0.001,0.005 --fraction 0.25

Writes ``benchmarks/results/cold_items.json`` and ``.md``.
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
from regiontune.core.adapt import train_region
from regiontune.core.backbone import load_backbone
from regiontune.core.config import AdaptConfig, DataConfig, TrainConfig, from_dict
from regiontune.core.evaluate import evaluate_task
from regiontune.core.recipes import load_regions
from regiontune.core.splits import RegionData, subsample_users
from regiontune.core.unseen import trained_items

log = logging.getLogger("benchmarks")


def split_by_cold(data: RegionData, lr: float, fraction: float, method: str, suite: dict,
                  backbone_dir: Path, unseen_as_negatives: bool = True) -> dict:
    train_cfg = from_dict(TrainConfig, {**suite["adapt"], "progress": False, "lr": lr})
    adapt_cfg = AdaptConfig(method=method, region=data.region, fraction=fraction,
                            unseen_as_negatives=unseen_as_negatives, calibrate_unseen=False)
    backbone, vocab, _ = load_backbone(backbone_dir)
    task, stats = train_region(backbone, vocab, data, adapt_cfg, train_cfg)
    seen = trained_items(subsample_users(data, fraction, train_cfg.seed).train)
    return {"region": data.region, "method": method, "lr": lr, "data_fraction": fraction,
            "unseen_as_negatives": unseen_as_negatives,
            "holdout_ndcg@10": stats["best_valid_ndcg@10"], "best_epoch": stats["best_epoch"],
            **warm_cold(task, data, seen)}


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


def to_markdown(records: list[dict]) -> str:
    header = ["lr", "unseen items in the softmax", "hold-out NDCG@10", "official NDCG@10",
              "warm positives", "cold positives"]
    rows = [[f"{r['lr']:g}", "yes" if r["unseen_as_negatives"] else "no",
             f"{r['holdout_ndcg@10']:.4f}", f"{r['all_ndcg@10']:.4f}",
             f"{r['warm_ndcg@10']:.4f} ({r['warm_users']})",
             f"{r['cold_ndcg@10']:.4f} ({r['cold_users']})"] for r in records]
    lines = ["# Cold candidate items and the adapters' learning rate", "",
             "Official NDCG@10 split by whether the positive occurs in the training data "
             "(warm) or not (cold); users per split in brackets.", "", *table(header, rows)]
    r = records[0]
    lines += ["", f"{r['method']} on {r['region']}, {r['data_fraction']:g} of the users, "
              "suite settings otherwise.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", default="0.001,0.005", help="Comma-separated learning rates.")
    parser.add_argument("--fraction", type=float, default=0.25)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--region", default="t1")
    add_backbone_option(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    suite = load_suite("wsdm")
    data_cfg = replace(from_dict(DataConfig, suite["data"]), regions=[args.region])
    data = load_regions(data_cfg)[args.region]  # once: every run trains on the same split
    records = [split_by_cold(data, float(lr), args.fraction, args.method, suite, args.backbone,
                             unseen) for lr in args.lrs.split(",") for unseen in (True, False)]
    out = RESULTS / "cold_items.json"
    out.write_text(json.dumps({"meta": run_meta(suite), "records": records}, indent=1) + "\n")
    out.with_suffix(".md").write_text(to_markdown(records), encoding="utf-8")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
