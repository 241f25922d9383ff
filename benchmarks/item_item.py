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

``--forms variants`` (written to ``item_item_variants.{json,md}``) tries what might lift the
blend past the shipped top-k at the same number of stored weights (issue 13, the t1
all-regions bar): ``mix{beta}-top{k}``, the top-k of ``B / s_B + beta * S / s_S`` (``S``:
ItemKNN's cosine similarity on the same histories, ``s``: the spread of each matrix's
hold-out scores), so one stored list carries both models; ``global{k}``, EASE's ``n * k``
largest weights wherever they fall (rows of items with many co-occurrences get more than k,
items without interactions none); and ``lambda{l}-top{k}``, EASE at another lambda than the
one tuned for EASE alone.

    python -m benchmarks.item_item --forms variants --setting all-regions --regions t1 \
        --fractions 1.0 --seeds 0,1
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
from regiontune.evaluation.baselines import EASE, tuned_ease
from regiontune.evaluation.evaluate import allowed_mask, task_scores
from regiontune.evaluation.metrics import metrics_from_ranks, target_ranks
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import VALID_CASES, train_region
from regiontune.training.item_item import blend_weight, score_spread

log = logging.getLogger("benchmarks")
OUT = RESULTS / "item_item.json"
VARIANTS_OUT = RESULTS / "item_item_variants.json"
GRID = (0, 0.1, 0.25, 0.5, 1, 2, 4, 8)
TOP_K = (8, 16, 32, 64, 128)
SVD_RANKS = (32, 64, 128)
KEY = ("setting", "region", "data_fraction", "seed", "form")


VARIANT_K = (8, 16)
VARIANT_MIX = (0.25, 0.5, 1.0)
VARIANT_LAMBDAS = (50, 200)


def _top(b: torch.Tensor, k: int) -> torch.Tensor:
    values, index = b.topk(k, dim=1)
    top = torch.zeros_like(b)
    top.scatter_(1, index, values.half().float())  # stored as float16
    return top


def _variant_forms(b: torch.Tensor, train_x: torch.Tensor, hold_x: torch.Tensor,
                   hold_allowed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The forms of ``--forms variants`` (module docstring), each at VARIANT_K weights an item."""
    gram = train_x.T @ train_x
    counts = gram.diagonal().clamp(min=1)
    cosine = gram / torch.sqrt(counts[:, None] * counts[None, :])
    cosine.fill_diagonal_(0)

    def spread(m):
        return score_spread(hold_x @ m, hold_allowed)

    out = {}
    for k in VARIANT_K:
        out[f"top{k}"] = _top(b, k)
        for beta in VARIANT_MIX:
            out[f"mix{beta}-top{k}"] = _top(b / spread(b) + beta * cosine / spread(cosine), k)
        threshold = b.flatten().topk(b.shape[0] * k).values[-1]
        out[f"global{k}"] = torch.where(b >= threshold, b, torch.zeros_like(b)).half().float()
        for lam in VARIANT_LAMBDAS:
            out[f"lambda{lam}-top{k}"] = _top(torch.from_numpy(EASE(lam)._fit_gram(gram).b), k)
    return out


def _forms(b: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"full": b}
    for k in TOP_K:
        out[f"top{k}"] = _top(b, k)
    u, s, vh = torch.linalg.svd(b, full_matrices=False)
    for r in SVD_RANKS:
        out[f"svd{r}"] = (u[:, :r] * s[:r]) @ vh[:r]
    return out


def point(context: Context, setting: str, region: str, fraction: float, seed: int,
          forms: str = "shipped") -> list[dict]:
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

    def binary(histories) -> torch.Tensor:
        x = torch.zeros(len(histories), len(catalogue))
        for row, history in enumerate(histories):
            x[row, [index[i] for i in set(history) if i in index]] = 1.0
        return x

    def parts(cases):
        return (task_scores(task, [c.history for c in cases], catalogue),
                binary([c.history for c in cases]),
                allowed_mask(cases, index, True),
                torch.tensor([index.get(c.target, -1) for c in cases]))

    hold, test = parts(holdout), parts(data.test)
    records = []
    b_tuned = torch.from_numpy(ease.b).float()
    if forms == "variants":
        found = _variant_forms(b_tuned, binary(list(sub.train.values())), hold[1], hold[2])
    else:
        found = _forms(b_tuned)
    for form, b in found.items():
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
        out: Path = OUT, forms: str = "shipped") -> dict:
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
                for record in point(context, setting, region, fraction, seed, forms):
                    append_record(results, out, record)
    write_markdown(results, out.with_suffix(".md"), forms)
    return results


VARIANTS_INTRO = (
    "Forms that might lift the blend past the shipped top-k at the same number of stored "
    "weights (`python -m benchmarks.item_item --forms variants`; the module docstring defines "
    "them): `mix{beta}-top{k}` keeps the top-k of EASE's B and ItemKNN's cosine similarity "
    "mixed, `global{k}` EASE's n*k largest weights wherever they fall, `lambda{l}-top{k}` "
    "EASE at another lambda than the one tuned for EASE alone. `top{k}` is the shipped form.")


def write_markdown(results: dict, path: Path, forms: str = "shipped") -> None:
    rows = [[r["setting"], r["region"], r["data_fraction"], r["seed"], r["form"], r["nnz"],
             r["weight"], r["holdout_ndcg@10"], r["ndcg@10"], r["adapter_alone"],
             r["ease_alone"]] for r in results["records"]]
    title = ("# The item-item part: variants at the shipped size" if forms == "variants"
             else "# The item-item part: which form of EASE to keep")
    lines = [title, "", *([VARIANTS_INTRO, ""] if forms == "variants" else []),
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
    parser.add_argument("--forms", choices=("shipped", "variants"), default="shipped",
                        help="shipped: whole B, top-k, SVD (item_item.json); variants: what "
                             "might beat the shipped top-k (item_item_variants.json)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results JSON (default: {OUT} or, with --forms variants, "
                             f"{VARIANTS_OUT})")
    args = parser.parse_args(argv)
    configure_logging()
    out = args.out or (VARIANTS_OUT if args.forms == "variants" else OUT)
    run(args.setting, args.regions, args.fractions, args.seeds, out, args.forms)


if __name__ == "__main__":
    main()
