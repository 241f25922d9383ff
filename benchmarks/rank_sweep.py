"""Size against quality: a rank sweep of the default LoRA adapter on the WSDM targets.

Two one-dimensional sweeps around the default (LoRA r = 8 on attention and MLP, the
item-item part's neighbours from half of the budget the LoRA weights leave, item rank auto =
the largest <= 32 keeping the float16 adapter file within 5% of the backbone's after them;
``core/training/budget.py``):

* the item-side rank (the low-rank delta on the region's item table, which is also the only
  representation region-new items get) at LoRA r = 8;
* the LoRA rank, at the region's default item rank.

Every point is one adaptation with the wsdm suite's settings and seed 0, scored on the
official 100-candidate protocol, next to the adapter's weights file. The run resumes: points
already in the results file are skipped.

    python -m benchmarks.rank_sweep --regions t1,t2

Writes ``benchmarks/results/rank_sweep.{json,md,png}``.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import (  # noqa: E402
    RESULTS,
    add_backbone_option,
    add_grid_options,
    configure_logging,
    done_keys,
    integers,
    load_results,
    load_suite,
    study_parser,
    suite_regions,
    train_config,
    write_results,
)
from benchmarks.jobs import adapter_job  # noqa: E402
from benchmarks.markdown import table  # noqa: E402
from benchmarks.meta import run_meta  # noqa: E402
from benchmarks.report import save_figure  # noqa: E402
from regiontune.config import AdaptConfig  # noqa: E402
from regiontune.model.backbone import load_backbone  # noqa: E402
from regiontune.training.adapt import build_region_task  # noqa: E402

log = logging.getLogger("benchmarks")
OUT = RESULTS / "rank_sweep.json"
DEFAULT_R = 8


def default_item_rank(backbone_dir: Path, region: str, catalogue: list[str]) -> int:
    """The item rank ``regiontune adapt`` picks for the default LoRA on this catalogue."""
    backbone, vocab, _ = load_backbone(backbone_dir)
    task = build_region_task(backbone, vocab, catalogue, AdaptConfig(method="lora", region=region))
    return task.item_side.rank


def grid(item_ranks: list[int], lora_ranks: list[int], auto_rank: int) -> list[tuple[int, int]]:
    """(LoRA r, item rank) points: item sweep at r = 8, LoRA sweep at the default item rank."""
    points = [(DEFAULT_R, k) for k in sorted(set(item_ranks) | {auto_rank})]
    points += [(r, auto_rank) for r in sorted(set(lora_ranks) - {DEFAULT_R})]
    return points


def mark_default(records: list[dict], region: str, auto_rank: int) -> None:
    """Relabel the region's points by today's default (the auto rank follows the code)."""
    for record in records:
        if record["region"] == region:
            record["default"] = record["lora_r"] == DEFAULT_R and record["item_rank"] == auto_rank


def run_point(data, r: int, item_rank: int, auto_rank: int, suite: dict,
              backbone_dir: Path) -> dict:
    train_cfg = train_config(suite, "adapt")
    adapt_cfg = AdaptConfig(method="lora", region=data.region, item_rank=item_rank,
                            options={"r": r, "lora_alpha": 2 * r})  # alpha/r = 2, as the default
    record = adapter_job(backbone_dir, data, adapt_cfg, train_cfg)
    return {"region": data.region, "lora_r": r, "item_rank": item_rank,
            "default": r == DEFAULT_R and item_rank == auto_rank, **record}


def full_reference(region: str) -> float | None:
    """Mean NDCG@10 of full fine-tuning at all data in the committed wsdm suite."""
    path = RESULTS / "wsdm.json"
    if not path.is_file():
        return None
    scores = [r["ndcg@10"] for r in json.loads(path.read_text())["records"]
              if r["region"] == region and r["method"] == "full" and r["data_fraction"] == 1.0]
    return statistics.mean(scores) if scores else None


def to_markdown(records: list[dict], backbone_bytes: int, full: dict[str, float]) -> str:
    """Tables per region; ``full`` maps a region to full fine-tuning's NDCG@10."""
    lines = ["# Rank sweep: adapter size against NDCG@10 (LoRA, WSDM official-100)", "",
             "One seed per point (seed 0); read differences below ~0.01 as noise. "
             "`% of full` divides by full fine-tuning's 3-seed mean in wsdm.json. The budget "
             f"line of the issue is 5% of the backbone's weights file ({backbone_bytes:,} "
             f"bytes): {0.05 * backbone_bytes:,.0f} bytes.", ""]
    header = ["region", "LoRA r", "item rank", "neighbours", "adapter bytes", "% of backbone",
              "trainable params", "NDCG@10", "% of full", "best epoch", "train s"]
    for region in sorted({r["region"] for r in records}):
        ref = full.get(region)
        rows = [[region, r["lora_r"], f"{r['item_rank']}{' (default)' if r['default'] else ''}",
                 r.get("neighbours", "-"), f"{r['adapter_bytes']:,}",
                 f"{100 * r['adapter_bytes'] / backbone_bytes:.1f}",
                 f"{r['trainable_params']:,}", f"{r['ndcg@10']:.4f}",
                 f"{100 * r['ndcg@10'] / ref:.1f}" if ref else "-", r["best_epoch"],
                 f"{r['train_seconds']:.0f}"]
                for r in sorted((r for r in records if r["region"] == region),
                                key=lambda r: (r["lora_r"] != DEFAULT_R, r["adapter_bytes"]))]
        lines += table(header, rows) + [""]
    lines += ["![rank sweep](rank_sweep.png)", ""]
    return "\n".join(lines)


def plot(records: list[dict], backbone_bytes: int, full: dict[str, float], path: Path) -> None:
    regions = sorted({r["region"] for r in records})
    fig, axes = plt.subplots(1, len(regions), figsize=(5 * len(regions), 4), squeeze=False)
    for ax, region in zip(axes[0], regions, strict=True):
        mine = [r for r in records if r["region"] == region]
        for label, keep in (("item rank (LoRA r=8)", lambda r: r["lora_r"] == DEFAULT_R),
                            ("LoRA r (default item rank)", lambda r: r["default"]
                             or r["lora_r"] != DEFAULT_R)):
            pts = sorted((r["adapter_bytes"], r["ndcg@10"]) for r in mine if keep(r))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        if region in full:
            ax.axhline(full[region], color="black", lw=1, label="full fine-tuning (3 seeds)")
            ax.axhline(0.98 * full[region], color="black", lw=1, ls=":", label="98% of full")
        ax.axvline(0.05 * backbone_bytes, color="grey", ls="--", lw=1, label="5% of backbone")
        ax.set(xscale="log", xlabel="adapter weights file (bytes)", ylabel="NDCG@10",
               title=region)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    add_grid_options(parser, regions="t1,t2")
    parser.add_argument("--item-ranks", type=integers, default="4,8,16,32")
    parser.add_argument("--lora-ranks", type=integers, default="2,8,16")
    add_backbone_option(parser)
    args = parser.parse_args(argv)
    configure_logging()
    suite = load_suite("wsdm")
    results = load_results(OUT, meta=run_meta(suite))  # a resumed run keeps the first meta
    done = done_keys(results["records"], ("region", "lora_r", "item_rank"))
    backbone_bytes = (args.backbone / "model.safetensors").stat().st_size
    for region in args.regions:
        data = suite_regions(suite, [region])[region]
        auto = default_item_rank(args.backbone, region, data.catalogue)
        mark_default(results["records"], region, auto)
        for r, k in grid(args.item_ranks, args.lora_ranks, auto):
            if (region, r, k) in done:
                continue
            log.info("%s: LoRA r=%d, item rank %d", region, r, k)
            results["records"].append(run_point(data, r, k, auto, suite, args.backbone))
            write_results(results, OUT)
            log.info("NDCG@10 %.4f", results["records"][-1]["ndcg@10"])
    regions = {r["region"] for r in results["records"]}
    full = {r: f for r in regions if (f := full_reference(r)) is not None}
    OUT.with_suffix(".md").write_text(to_markdown(results["records"], backbone_bytes, full),
                                      encoding="utf-8")
    plot(results["records"], backbone_bytes, full, OUT.with_suffix(".png"))
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    main()
