"""Which data a refresh's item-item part should be fitted on, on the refresh's hold-out.

    OMP_NUM_THREADS=1 python -m benchmarks.refresh_parts [--seeds 0,1,2] [--neighbours 16]

The ml-100k chain of ``benchmarks/refresh.py`` (backbone and first adapter on period 0, then
each period p = 1 .. P-2 refreshed from the previous step), with an item-item part of
``--neighbours`` per item forced on (at the library's size budget this benchmark's 64-wide
backbone gives its adapters none, so ``refresh.md`` cannot show the part). After each refresh
is trained, its part is fitted three ways on the same trained adapter, each blend weight chosen
on the refresh's own early-stopping hold-out (the last items of period p's users), as
``fit_item_item`` chooses it:

* ``new`` -- EASE on period p's training histories alone (what a refresh does);
* ``all`` -- EASE on the training histories of periods 0..p (the new data plus everything its
  ancestors trained on: what a refresh with the whole replay pool would fit on);
* ``parent`` -- the parent's part, extended to the new items (no new EASE fit).

and ``chosen``, the refresh as the library returns it; for reference, an adapter retrained
from nothing on periods 0..p (its own part). The committed results are of commit de60ff1,
where ``chosen`` was the hold-out's choice between ``new`` and ``parent``
(``replay.refresh_item_item``, since withdrawn: the parent's part is attached while the
refresh trains, so early stopping picked the body's epoch *with* it and the hold-out favours
it; ``new`` and ``all`` are both fitted after training, so they compare fairly). At later
commits ``chosen`` is ``new``.
Records: the hold-out NDCG@10 of each variant (the figure a choice may read) and the
next-period NDCG@10 of ``refresh.py``'s protocol (reported, never read for a choice). The chain
continues with ``chosen`` (the library's behaviour). Writes
``benchmarks/results/refresh_parts.{json,md}``.
"""

from __future__ import annotations

import copy
import shutil
import statistics
from collections import defaultdict
from pathlib import Path

import pandas as pd
import torch

from benchmarks.common import (
    RESULTS,
    configure_logging,
    integers,
    load_results,
    study_command,
    study_parser,
    write_results,
)
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from benchmarks.refresh import (
    ADAPT,
    MODEL,
    PRETRAIN,
    REGION,
    load_periods,
    next_period_cases,
    next_period_ndcg,
    region_data,
)
from regiontune.adapters import AdapterFolder, save_adapter
from regiontune.adapters.io import build_item_side
from regiontune.adapters.item_item import ItemItem, detach_item_item
from regiontune.config import AdaptConfig, TrainConfig
from regiontune.evaluation.baselines import tuned_ease
from regiontune.evaluation.evaluate import allowed_mask, task_scores
from regiontune.model.backbone import load_backbone, save_backbone
from regiontune.training.adapt import VALID_CASES, train_region
from regiontune.training.item_item import blend_weight
from regiontune.training.pretrain import train_backbone

OUT = RESULTS / "refresh_parts.json"
VARIANTS = ("new", "all", "parent")
METHODS = ("chosen", *VARIANTS)


def with_part(task, part: ItemItem | None, holdout) -> float:
    """Give ``task`` ``part`` with its weight chosen on ``holdout`` (as fit_item_item does;
    weight 0 drops it); returns the hold-out NDCG@10 at the chosen weight."""
    detach_item_item(task.item_side)
    catalogue = task.item_side.catalogue
    cases = [c for c in holdout if c.target in task.vocab.index]
    histories = [c.history for c in cases]
    base = task_scores(task, histories, catalogue)
    allowed = allowed_mask(cases, task.vocab.index, exclude_seen=True)
    target = torch.tensor([task.vocab.index[c.target] for c in cases])
    if part is None:
        from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks

        return metrics_from_ranks(target_ranks(base, target, allowed))["ndcg@10"]
    with torch.no_grad():
        part.weight.zero_()
    extra = part.rows([task.vocab.columns(h).tolist() for h in histories])
    best, unit, found = blend_weight(base, extra, allowed, target)
    if best > 0:
        with torch.no_grad():
            part.weight.fill_(best * unit)
        task.item_side.item_item = part
    return found[best]


def ease_part(train: dict, catalogue: list[str], holdout, k: int) -> ItemItem:
    cases = [c for c in holdout if c.target in set(catalogue)]
    model, _, _ = tuned_ease(train, catalogue, cases)
    part = ItemItem(len(catalogue), k)
    part.init_from(torch.from_numpy(model.b))
    return part


def run_seed(periods: list[pd.DataFrame], seed: int, k: int, work: Path) -> list[dict]:
    work = work / f"seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    adapt_train = TrainConfig(**{**ADAPT.__dict__, "seed": seed})
    adapt_cfg = AdaptConfig(method="lora", region=REGION, neighbours=k)
    task, _ = train_backbone({REGION: region_data(periods[0])}, MODEL,
                             TrainConfig(**{**PRETRAIN.__dict__, "seed": seed}))
    fingerprint = save_backbone(task.model, task.vocab, {"seed": seed},
                                work / "backbone")["fingerprint"]

    def save(task, name: str) -> Path:
        save_adapter(task, "lora", REGION, {"region": REGION, "backbone_fingerprint":
                                            fingerprint}, work / name, "float16")
        return work / name

    backbone, vocab = load_backbone(work / "backbone")[:2]
    first, _ = train_region(backbone, vocab, region_data(periods[0]), adapt_cfg, adapt_train)
    in_service = save(first, "p0")
    records = []
    for p in range(1, len(periods) - 1):
        past = pd.concat(periods[:p + 1], ignore_index=True)
        catalogue, histories, relevant = next_period_cases(past, periods[p + 1])
        data = region_data(periods[p])
        holdout = data.valid[:VALID_CASES]
        backbone, vocab = load_backbone(work / "backbone")[:2]
        parent = AdapterFolder.read(in_service, fingerprint)
        refreshed, stats = train_region(backbone, vocab, data, adapt_cfg, adapt_train,
                                        parent=parent)
        cat = refreshed.item_side.catalogue
        older = {f"p{q}:{u}": h for q in range(p)
                 for u, h in region_data(periods[q]).train.items()}
        parent_side = build_item_side(parent, vocab, backbone.config.hidden_size)
        parts = {"new": ease_part(data.train, cat, holdout, k),
                 "all": ease_part({**data.train, **older}, cat, holdout, k),
                 "parent": (parent_side.item_item.extended(len(cat))
                            if getattr(parent_side, "item_item", None) is not None else None)}
        base = {"dataset": "ml-100k", "period": p, "seed": seed, "neighbours": k,
                "eval_users": len(histories)}
        chosen = copy.deepcopy(refreshed.item_item)  # the library's choice, kept for the chain
        records.append({**base, "method": "refreshed-chosen",
                        "item_item_fit": stats.get("item_item_fit", "new data"),
                        "holdout_ndcg@10": round(max(
                            [*stats.get("item_item_holdout_ndcg@10", {}).values(),
                             stats.get("item_item_parent_holdout_ndcg@10") or 0.0]), 5),
                        "part_weight": float(chosen.weight) if chosen is not None else 0.0,
                        "ndcg@10": round(next_period_ndcg(refreshed, catalogue, histories,
                                                          relevant), 5)})
        print(records[-1], flush=True)
        for name in VARIANTS:
            holdout_ndcg = with_part(refreshed, parts[name], holdout)
            records.append({**base, "method": f"refreshed-{name}",
                            "holdout_ndcg@10": round(holdout_ndcg, 5),
                            "part_weight": float(refreshed.item_item.weight)
                            if refreshed.item_item is not None else 0.0,
                            "ndcg@10": round(next_period_ndcg(refreshed, catalogue, histories,
                                                              relevant), 5)})
            print(records[-1], flush=True)
        detach_item_item(refreshed.item_side)  # the chain goes on as the library does
        if chosen is not None:
            refreshed.item_side.item_item = chosen
        in_service = save(refreshed, f"p{p}")
        backbone, vocab = load_backbone(work / "backbone")[:2]
        retrained, rstats = train_region(backbone, vocab, region_data(past), adapt_cfg,
                                         adapt_train)
        records.append({**base, "method": "retrained",
                        "part_weight": rstats.get("item_item_weight", 0.0),
                        "ndcg@10": round(next_period_ndcg(retrained, catalogue, histories,
                                                          relevant), 5)})
        print(records[-1], flush=True)
    return records


def to_markdown(results: dict) -> str:
    cells = defaultdict(list)
    for r in results["records"]:
        cells[(r["period"], r["method"])].append(r)
    periods = sorted({r["period"] for r in results["records"]})
    methods = [f"refreshed-{v}" for v in METHODS] + ["retrained"]
    rows = []
    for p in periods:
        for m in methods:
            mine = cells[(p, m)]
            if not mine:
                continue
            hold = [r["holdout_ndcg@10"] for r in mine if "holdout_ndcg@10" in r]
            rows.append([p, m, len(mine), f"{statistics.fmean(hold):.4f}" if hold else "–",
                         f"{statistics.fmean(r['ndcg@10'] for r in mine):.4f}",
                         f"{statistics.fmean(r['part_weight'] > 0 for r in mine):.0%}"])
    means = {m: statistics.fmean(r["holdout_ndcg@10"] for r in results["records"]
                                 if r["method"] == m) for m in methods[:-1]
             if any(r["method"] == m for r in results["records"])}
    return "\n".join([
        "# A refresh's item-item part: fitted on which data (refresh hold-out)", "",
        f"- command: `{results.get('command', '')}`",
        f"- commit: `{results.get('meta', {}).get('git_commit')}`", "",
        (__doc__ or "").split("\n\n", 2)[2].split("Writes")[0].strip(), "",
        *table(["period", "method", "seeds", "hold-out NDCG@10 (the refresh's)",
                "next-period NDCG@10 (reported only)", "part kept (weight > 0)"], rows), "",
        "Mean hold-out NDCG@10 over periods and seeds: " + ", ".join(
            f"{m.removeprefix('refreshed-')} {v:.4f}" for m, v in means.items()) + ".", ""])


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--periods", type=int, default=5)
    parser.add_argument("--seeds", type=integers, default="0,1,2")
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("/tmp/regiontune-refresh-parts"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    configure_logging()
    results = load_results(args.out, dataset="ml-100k")
    if not args.report_only:
        periods = load_periods(args.data_dir, args.periods)
        results["command"] = study_command("benchmarks.refresh_parts", argv)
        results["meta"] = run_meta({"seeds": args.seeds, "neighbours": args.neighbours})
        for seed in args.seeds:
            results["records"] = [r for r in results["records"] if r["seed"] != seed]
            results["records"] += run_seed(periods, seed, args.neighbours, args.work)
            write_results(results, args.out)
    args.out.with_suffix(".md").write_text(to_markdown(results) + "\n")


if __name__ == "__main__":
    main()
