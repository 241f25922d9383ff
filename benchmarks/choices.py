"""How the adapter defaults were chosen: named variants side by side, read on the hold-out.

Each variant is a set of adapter / training settings, run on one (setting, target, data
fraction, seed) point of the wsdm suite with that setting's backbone. The record carries the
early-stopping hold-out's NDCG@10 (``holdout_ndcg@10``, positive + 99 negatives drawn as the
test lists draw theirs) -- the figure a default is chosen on -- and the official figure
(``ndcg@10``), reported only.

    python -m benchmarks.choices --variants lora,lora-distill0.5 --regions t1 --fractions 1.0

Writes ``benchmarks/results/choices.json`` and ``.md``; resumable (records kept).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from benchmarks.common import (
    RESULTS,
    add_grid_options,
    append_record,
    configure_logging,
    done_keys,
    load_results,
    load_suite,
    names,
    study_parser,
    suite_configs,
)
from benchmarks.jobs import Context, adapter_job
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from regiontune.config import AdaptConfig
from regiontune.training.adapt import VALID_CASES

log = logging.getLogger("benchmarks")
OUT = RESULTS / "choices.json"
# variant -> (method, adapt overrides, train overrides)
VARIANTS = {
    "lora": ("lora", {}, {}),
    "lora-distill0.3": ("lora", {"distill": 0.3}, {}),
    "lora-distill0.5": ("lora", {"distill": 0.5}, {}),
    "lora-distill0.8": ("lora", {"distill": 0.8}, {}),
    "lora-minsteps20": ("lora", {}, {"min_epoch_steps": 20}),
    "lora-distill0.5-minsteps20": ("lora", {"distill": 0.5}, {"min_epoch_steps": 20}),
    "lora-lr3e-3": ("lora", {}, {"lr": 0.003}),
    "lora-distill0.5-lr3e-3": ("lora", {"distill": 0.5}, {"lr": 0.003}),
    "lora-lr3e-3-minsteps20": ("lora", {}, {"lr": 0.003, "min_epoch_steps": 20}),
    "lora-nocalib": ("lora", {"calibrate_unseen": False}, {}),
    # the schedule grid of issue 15 (lr x maximum epochs; patience 5 as the default)
    "lora-lr1e-3-e30": ("lora", {}, {"lr": 0.001, "epochs": 30}),
    "lora-lr1e-3-e100": ("lora", {}, {"lr": 0.001, "epochs": 100}),
    "lora-lr5e-3-e30": ("lora", {}, {"lr": 0.005, "epochs": 30}),
    "lora-lr5e-3-e100": ("lora", {}, {"lr": 0.005, "epochs": 100}),
    "lora-minsteps8": ("lora", {}, {"min_epoch_steps": 8}),
    "lora-bs64": ("lora", {}, {"batch_size": 64}),
    "lora-bs128": ("lora", {}, {"batch_size": 128}),
    # issue 13: the item-item part (adapters/item_item.py; the default: auto neighbours);
    # records before it was the default, named lora-cf*, were the earlier low-rank form
    "lora-nb0": ("lora", {"neighbours": 0}, {}),
    "lora-nb8": ("lora", {"neighbours": 8}, {}),
    "lora-nb32": ("lora", {"neighbours": 32}, {}),
    "full": ("full", {}, {}),
    "full-distill0.5": ("full", {"distill": 0.5}, {}),
}
KEY = ("setting", "region", "variant", "data_fraction", "seed")


def run(variants: list[str], setting: str, regions: list[str], fractions: list[float],
        seeds: list[int], out: Path = OUT) -> dict:
    suite = load_suite("wsdm")
    data_cfg, model_cfg, trains = suite_configs(suite)
    context = Context(suite, data_cfg, model_cfg, trains, Path("runs/bench") / suite["suite"])
    results = load_results(out)
    results["meta"] = run_meta(suite)
    done = done_keys(results["records"], KEY)
    for region in regions:
        for fraction in fractions:
            for seed in seeds:
                for variant in variants:
                    key = (setting, region, variant, fraction, seed)
                    if key in done:
                        continue
                    method, adapt_over, train_over = VARIANTS[variant]
                    job = {"setting": setting, "region": region}
                    backbone = context.ensure_backbone(job)
                    data = context.regions()[region]
                    train_cfg = replace(trains["adapt"], seed=seed, **train_over)
                    adapt_cfg = AdaptConfig(method=method, region=region, fraction=fraction,
                                            **adapt_over)
                    record = adapter_job(backbone, data, adapt_cfg, train_cfg)
                    record = {**dict(zip(KEY, key, strict=True)),
                              "holdout_ndcg@10": record["best_valid_ndcg@10"],
                              **{k: record[k] for k in ("ndcg@10", "train_seconds",
                                                        "best_epoch", "epochs_run",
                                                        "train_users")},
                              **{k: record[k] for k in ("adapter_bytes", "neighbours",
                                                        "item_item_weight")
                                 if record.get(k) is not None}}
                    append_record(results, out, record)
    write_markdown(results, out.with_suffix(".md"))
    return results


def write_markdown(results: dict, path: Path) -> None:
    rows = [[r["setting"], r["region"], f"{r['data_fraction']:g}", r["seed"], r["variant"],
             f"{r['holdout_ndcg@10']:.4f}", f"{r['ndcg@10']:.4f}", r["best_epoch"],
             r["epochs_run"], r["train_seconds"]]
            for r in sorted(results["records"], key=lambda r: tuple(str(r[k]) for k in KEY))]
    lines = ["# Adapter defaults: variants read on the hold-out (WSDM)", "",
             f"`hold-out`: best early-stopping NDCG@10 on the first {VALID_CASES} hold-out "
             "cases (positive + 99 negatives drawn as the test lists draw theirs) -- what a "
             "choice is made on. `official`: the reported figure (t1/s3 official validation, "
             "t2 built candidates), never chosen on.", "",
             *table(["setting", "region", "fraction", "seed", "variant", "hold-out",
                     "official", "best epoch", "epochs", "train s"], rows), ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--variants", type=names, default="lora,lora-distill0.5",
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--setting", default="new-region")
    add_grid_options(parser, regions="t1", seeds="0", fractions="1.0")
    parser.add_argument("--out", type=Path, default=OUT, help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configure_logging()
    run(args.variants, args.setting, args.regions, args.fractions, args.seeds, args.out)


if __name__ == "__main__":
    main()
