"""Which form of EASE an adapter's item-item part keeps: the blend of a LoRA adapter with
EASE's whole ``B``, its top-k neighbours per item, or a rank-r SVD, weight chosen on the
hold-out (issue 13; ``adapters/item_item.py``).

For one (setting, target, data fraction, seed) of the wsdm suite: a LoRA adapter without the
part (``neighbours=0``) is trained; EASE is fitted on the same training users (lambda on the
hold-out); for each form of ``B`` the adapter's scores plus ``w * unit *`` the form's scores
are ranked, ``unit`` the ratio of the two score spreads on the hold-out and ``w`` the best of
a fixed grid on the hold-out. Records: ``holdout_ndcg@10`` (what ``w`` was chosen on),
``ndcg@10`` (the official lists, reported only), ``ease_alone`` (the form's own NDCG@10),
``nnz`` (stored weights).

    python -m benchmarks.item_item --setting all-regions --regions t1 --fractions 1.0

Writes ``benchmarks/results/item_item.json`` and ``.md``; resumable.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS,
    add_grid_options,
    append_record,
    configure_logging,
    done_keys,
    load_results,
    load_suite,
    study_parser,
    suite_configs,
)
from benchmarks.jobs import Context
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from regiontune.config import AdaptConfig
from regiontune.data.splits import subsample_users
from regiontune.evaluation.baselines import tuned_ease
from regiontune.evaluation.evaluate import allowed_mask, task_scores
from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import VALID_CASES, train_region
from regiontune.training.item_item import blend_weight

log = logging.getLogger("benchmarks")
OUT = RESULTS / "item_item.json"
GRID = (0, 0.1, 0.25, 0.5, 1, 2, 4, 8)
TOP_K = (8, 16, 32, 64, 128)
SVD_RANKS = (32, 64, 128)
KEY = ("setting", "region", "data_fraction", "seed", "form")


def _forms(b: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"full": b}
    for k in TOP_K:
        values, index = b.topk(k, dim=1)
        top = torch.zeros_like(b)
        top.scatter_(1, index, values.half().float())  # stored as float16
        out[f"top{k}"] = top
    u, s, vh = torch.linalg.svd(b, full_matrices=False)
    for r in SVD_RANKS:
        out[f"svd{r}"] = (u[:, :r] * s[:r]) @ vh[:r]
    return out


def point(context: Context, setting: str, region: str, fraction: float, seed: int) -> list[dict]:
    data = context.regions()[region]
    backbone, vocab, _ = load_backbone(context.ensure_backbone({"setting": setting,
                                                                "region": region}))
    train_cfg = replace(context.trains["adapt"], seed=seed)
    cfg = AdaptConfig(method="lora", region=region, fraction=fraction, neighbours=0)
    task, stats = train_region(backbone, vocab, data, cfg, train_cfg)
    sub = subsample_users(data, fraction, seed)
    holdout = sub.valid[:VALID_CASES]
    catalogue = list(data.catalogue)
    ease, lam, _ = tuned_ease(sub.train, catalogue, holdout)
    index = {item: i for i, item in enumerate(catalogue)}

    def binary(cases) -> torch.Tensor:
        x = torch.zeros(len(cases), len(catalogue))
        for row, case in enumerate(cases):
            x[row, [index[i] for i in set(case.history) if i in index]] = 1.0
        return x

    def parts(cases):
        return (task_scores(task, [c.history for c in cases], catalogue), binary(cases),
                allowed_mask(cases, index, True),
                torch.tensor([index.get(c.target, -1) for c in cases]))

    hold, test = parts(holdout), parts(data.test)
    records = []
    for form, b in _forms(torch.from_numpy(ease.b).float()).items():
        extra_h, extra_t = hold[1] @ b, test[1] @ b
        w, unit, on_hold = blend_weight(hold[0], extra_h, hold[2], hold[3], GRID)

        def ndcg(p, extra, w, unit=unit):
            return metrics_from_ranks(target_ranks(p[0] + w * unit * extra, p[3], p[2]))[
                "ndcg@10"]

        records.append({"setting": setting, "region": region, "data_fraction": fraction,
                        "seed": seed, "form": form, "weight": w,
                        "holdout_ndcg@10": round(on_hold[w], 4),
                        "ndcg@10": round(ndcg(test, extra_t, w), 4),
                        "adapter_alone": round(ndcg(test, extra_t, 0), 4),
                        "ease_alone": round(metrics_from_ranks(target_ranks(
                            extra_t, test[3], test[2]))["ndcg@10"], 4),
                        "nnz": int((b != 0).sum()), "ease_lambda": lam,
                        "adapter_train_seconds": stats["train_seconds"]})
    return records


def run(setting: str, regions: list[str], fractions: list[float], seeds: list[int],
        out: Path = OUT) -> dict:
    suite = load_suite("wsdm")
    data_cfg, model_cfg, trains = suite_configs(suite)
    context = Context(suite, data_cfg, model_cfg, trains, Path("runs/bench") / suite["suite"])
    results = load_results(out)
    results["meta"] = run_meta(suite)
    done = {k[:4] for k in done_keys(results["records"], KEY)}
    for region in regions:
        for fraction in fractions:
            for seed in seeds:
                if (setting, region, fraction, seed) in done:
                    continue
                for record in point(context, setting, region, fraction, seed):
                    append_record(results, out, record)
    write_markdown(results, out.with_suffix(".md"))
    return results


def write_markdown(results: dict, path: Path) -> None:
    rows = [[r["setting"], r["region"], r["data_fraction"], r["seed"], r["form"], r["nnz"],
             r["weight"], r["holdout_ndcg@10"], r["ndcg@10"], r["adapter_alone"],
             r["ease_alone"]] for r in results["records"]]
    lines = ["# The item-item part: which form of EASE to keep", "",
             "A LoRA adapter (no item-item part) blended with a form of EASE's `B`, the weight "
             "chosen on the hold-out (`hold-out`); `official`: the reported figure (t1 "
             "official validation, t2 built candidates), never chosen on. `adapter alone` and "
             "`form alone`: each part by itself on the official lists. `python -m "
             "benchmarks.item_item`.", "",
             *table(["setting", "region", "fraction", "seed", "form", "stored weights",
                     "w", "hold-out", "official", "adapter alone", "form alone"], rows), ""]
    notes = results.get("notes")
    if notes:
        lines += [f"* {n}" for n in notes] + [""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--setting", default="new-region")
    add_grid_options(parser, regions="t1", seeds="0", fractions="1.0")
    parser.add_argument("--out", type=Path, default=OUT, help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    configure_logging()
    run(args.setting, args.regions, args.fractions, args.seeds, args.out)


if __name__ == "__main__":
    main()
