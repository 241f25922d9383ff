"""Items as text: never-trained ("cold") items scored from their text, on MovieLens-100K.

A seeded share of the items (15% by default) is held out of training entirely: every
interaction with them is removed from the training histories, so they are only ever
evaluation targets (and history items of the evaluation cases, as new arrivals are). Methods,
all scored by full ranking over the whole catalogue, seen items excluded, leave-last-out:

* ``id-only``: the backbone without text, pretrained on the warm items, plus a region adapter
  at the defaults (``train_region``: LoRA, item side, the calibrated offset of never-trained
  items, the item-item part); the cold items have no row (zero embedding) and that offset;
* ``text``: the item-text backbone (id row + learned projection of the frozen MiniLM vector)
  plus the same default adapter; cold items get the projection of their text alone, the
  calibrated offset, and the lift and text prior (predicted popularity) chosen on the hold-out
  within ``AdaptConfig.text_lift_budget`` (``training/unseen.py: lift_text_items``). Variants
  of the same adapter: ``text-unlifted`` (no lift, no prior), ``text-lift-only`` (no prior),
  ``text-budget-2%`` / ``-5%`` (smaller budgets);
* ``text-similarity``: no training: a user is the mean text vector of their history, items
  ranked by cosine;
* ``popularity``: training counts (cold items have none: they tie at the bottom).

NDCG@10 on the test cases whose target is cold, warm, and all. The encoding cost of the
catalogue (items/s on this CPU, one thread) is measured once per run.

    python -m benchmarks.cold_text                        # 3 seeds, all methods
    python -m benchmarks.cold_text --choose               # the text variant, on the hold-out

Writes ``benchmarks/results/cold_text.json`` and ``.md`` (``--choose``: ``cold_text_choice``);
resumes: records already in the JSON are kept and not rerun.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch

from benchmarks.common import (
    RESULTS,
    configure_logging,
    done_keys,
    floats,
    integers,
    load_results,
    names,
    study_parser,
    write_results,
)
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from regiontune.adapters.io import weights_dtype
from regiontune.adapters.item_side import ItemSide
from regiontune.adapters.region_task import RegionTask
from regiontune.config import ADAPT_LR, AdaptConfig, DataConfig, ModelConfig, TrainConfig
from regiontune.data.itemtext import ml100k_item_text
from regiontune.data.recipes import load_regions
from regiontune.data.splits import EvalCase, RegionData
from regiontune.evaluation.evaluate import evaluate_scorer, evaluate_task
from regiontune.model.textenc import TextEncoder, encode_items
from regiontune.training.adapt import VALID_CASES, train_region
from regiontune.training.pretrain import train_backbone
from regiontune.training.unseen import calibrate_unseen, lift_text_items

log = logging.getLogger("benchmarks")
OUT = RESULTS / "cold_text.json"
CHOICE_OUT = RESULTS / "cold_text_choice.json"
METHODS = ("id-only", "text", "text-unlifted", "text-lift-only", "text-budget-2%",
           "text-budget-5%", "text-similarity", "popularity")
# the text adapter's variants: (text prior scales, lift budget); None: the default
VARIANTS = {"text": (None, None), "text-unlifted": ((0.0,), 0.0),
            "text-lift-only": ((0.0,), None), "text-budget-2%": (None, 0.02),
            "text-budget-5%": (None, 0.05)}
BUDGETS = {"text-budget-2%": 0.02, "text-budget-5%": 0.05, "text": AdaptConfig.text_lift_budget}
BAR_WARM = 0.98  # the bar: warm NDCG@10 at most 2% below the id-only model's
DATA_DIR = Path("../shared/data/ml-100k")
WORK = Path("runs/bench/cold_text")
HOLDOUT_CASES = 2000
MODEL = dict(arch="llama", hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
             max_len=50, dropout=0.2)
TRAIN = dict(epochs=20, lr=2e-3, patience=3, batch_size=64, progress=False)


def pooled(regions: dict[str, RegionData]) -> RegionData:
    """All regions as one: the cold-item question is about items, not regions."""
    train, valid, test = {}, [], []
    for data in regions.values():
        train.update(data.train)
        valid += data.valid
        test += data.test
    catalogue = sorted({i for d in regions.values() for i in d.catalogue})
    return RegionData("all", train, valid, test, catalogue, True)


def cold_items(catalogue: list[str], share: float, seed: int) -> set[str]:
    rng = random.Random(f"cold-text-{seed}")
    return set(rng.sample(catalogue, round(len(catalogue) * share)))


def without(data: RegionData, cold: set[str]) -> RegionData:
    """Training data with every cold interaction removed; early stopping on warm targets."""
    train = {u: [i for i in h if i not in cold] for u, h in data.train.items()}
    valid = [c for c in data.valid if c.target not in cold]
    return RegionData("all", {u: h for u, h in train.items() if h}, valid, [],
                      sorted(set(data.catalogue) - cold), True)


def splits(cases: list[EvalCase], cold: set[str]) -> dict[str, list[EvalCase]]:
    return {"cold": [c for c in cases if c.target in cold],
            "warm": [c for c in cases if c.target not in cold], "all": cases}


def backbone_scorer(warm: RegionData, full: RegionData, text, item_text: bool, seed: int,
                    id_dropout: float = 0.0, epochs: int | None = None,
                    text_loss: float = 0.0, text_negatives: str = "text"):
    """Pretrain on the warm items; the region task over the whole catalogue, with the cold
    (and any other never-trained) items' offset calibrated on the hold-out."""
    train_cfg = TrainConfig(**{**TRAIN, "seed": seed, **({"epochs": epochs} if epochs else {})})
    model_cfg = ModelConfig(**MODEL, item_text=item_text, text_id_dropout=id_dropout,
                            text_loss=text_loss, text_loss_negatives=text_negatives)
    started = time.perf_counter()
    task, result = train_backbone({"all": warm}, model_cfg, train_cfg,
                                  text=text if item_text else None)
    seconds = time.perf_counter() - started
    model = task.model.eval()
    side = ItemSide(full.catalogue, task.vocab, model.config.hidden_size, rank=0, bias=True)
    region = RegionTask(model, model, side).eval()
    info = calibrate_unseen(region, full.catalogue, warm.train, full.valid[:HOLDOUT_CASES])
    stats = {"train_seconds": round(seconds, 1), "best_epoch": result.best_epoch,
             "unseen_offset": info["unseen_offset"], "unseen_items": info["unseen_items"]}
    return region, stats


def adapted(warm: RegionData, full: RegionData, text, item_text: bool, seed: int,
            neighbours: int = -1) -> tuple[RegionTask, dict, RegionData]:
    """Pretrain on the warm items, then the default region adapter (``train_region``) over
    the whole catalogue: the cold items are region-new items never trained on; its hold-out
    (early stopping, offset, item-item weight, lift) is the data's validation cases. A text
    backbone's adapter is trained with no lift (``text_lift_budget`` 0): :func:`lifted`
    then applies the step ``train_region`` ends with, per variant."""
    started = time.perf_counter()
    task, result = train_backbone(
        {"all": warm}, ModelConfig(**MODEL, item_text=item_text),
        TrainConfig(**{**TRAIN, "seed": seed}), text=text if item_text else None)
    seconds = time.perf_counter() - started
    model = task.model.eval()
    region = RegionData("all", warm.train, full.valid, full.test, full.catalogue, True)
    adapter, stats = train_region(model, task.vocab, region,
                                  AdaptConfig(region="all", text_lift_budget=0.0,
                                              neighbours=neighbours),
                                  TrainConfig(**{**TRAIN, "lr": ADAPT_LR, "seed": seed}))
    keep = ("unseen_offset", "unseen_items", "text_only_items", "item_item_weight",
            "neighbours", "best_epoch", "train_seconds")
    return adapter.eval(), {"pretrain_seconds": round(seconds, 1),
                            "pretrain_best_epoch": result.best_epoch,
                            **{k: stats[k] for k in keep if k in stats}}, region


def lifted(task: RegionTask, region: RegionData, bias: torch.Tensor, scales, budget) -> dict:
    """The adapter as ``train_region`` leaves it with these prior ``scales`` and lift
    ``budget`` (None: the defaults): the unlifted ``bias`` restored, the lift step applied
    with exactly ``train_region``'s arguments (catalogue, trained items, hold-out, dtype)."""
    with torch.no_grad():
        task.item_side.bias.copy_(bias)
    if getattr(task.item_side, "text_prior", None) is not None:
        del task.item_side.text_prior
    budget = AdaptConfig.text_lift_budget if budget is None else budget
    info = lift_text_items(task, task.item_side.catalogue, dict(region.train),
                           region.valid[:VALID_CASES], budget,
                           weights_dtype("auto", AdaptConfig.method),
                           **({"scales": scales} if scales is not None else {}))
    return {k: info[k] for k in ("text_lift", "text_prior_scale", "text_lift_budget")
            if k in info}


def text_similarity(text, catalogue: list[str]):
    vectors, found = text.rows(catalogue)
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    index = {item: i for i, item in enumerate(catalogue)}

    def scores(histories: list[list[str]]) -> torch.Tensor:
        users = torch.zeros(len(histories), vectors.shape[1])
        for row, history in enumerate(histories):
            cols = [index[i] for i in history if i in index]
            if cols:
                users[row] = vectors[cols].mean(0)
        return torch.nn.functional.normalize(users, dim=-1) @ vectors.T

    return scores


def popularity(train: dict[str, list[str]], catalogue: list[str]):
    counts: dict[str, int] = {}
    for history in train.values():
        for item in history:
            counts[item] = counts.get(item, 0) + 1
    row = torch.tensor([float(counts.get(i, 0)) for i in catalogue])
    return lambda histories: row.expand(len(histories), -1)


def records_for(method: str, seed: int, data: RegionData, cold: set[str], score=None,
                task=None, **extra) -> list[dict]:
    out = []
    holdout = {}
    for name, cases in splits(data.valid[:HOLDOUT_CASES], cold).items():
        metrics = (evaluate_task(task, data.catalogue, cases) if task is not None
                   else evaluate_scorer(score, data.catalogue, cases))
        holdout[f"holdout_{name}_ndcg@10"] = metrics["ndcg@10"]
    for name, cases in splits(data.test, cold).items():
        metrics = (evaluate_task(task, data.catalogue, cases) if task is not None
                   else evaluate_scorer(score, data.catalogue, cases))
        if name == "cold":  # the target among the never-trained items only
            extra = {**extra, "cold_only_ndcg@10": among_cold(task, score, data, cold, cases)}
        out.append({"dataset": "ml-100k", "method": method, "items": name,
                    "ndcg@10": metrics["ndcg@10"], "hr@10": metrics.get("hr@10"),
                    "users": metrics["users"], "seed": seed, "cold_items": len(cold),
                    **holdout, **extra})
        log.info("%s seed %d %s: NDCG@10 %.4f (%d cases)", method, seed, name,
                 metrics["ndcg@10"], metrics["users"])
    return out


def among_cold(task, score, data: RegionData, cold: set[str], cases: list[EvalCase]) -> float:
    """NDCG@10 of cold targets ranked among the cold items alone (ties count against)."""
    subset = sorted(cold)
    if task is not None:
        return evaluate_task(task, subset, cases)["ndcg@10"]
    columns = torch.tensor([data.catalogue.index(i) for i in subset])
    return evaluate_scorer(lambda h: score(h)[:, columns], subset, cases)["ndcg@10"]


def measure_encoding(texts: dict[str, str]) -> dict:
    """Fresh encoding of the whole catalogue's text (no cache): items per second."""
    encoder = TextEncoder()
    started = time.perf_counter()
    encoder.encode(list(texts.values()), progress=False)
    seconds = time.perf_counter() - started
    return {"items": len(texts), "seconds": round(seconds, 2),
            "items_per_s": round(len(texts) / seconds, 1), "threads": torch.get_num_threads(),
            "encoder": encoder.name, "encoder_hash": encoder.hash}


def prepare(share: float, seed: int, data: RegionData) -> tuple[set[str], RegionData]:
    cold = cold_items(data.catalogue, share, seed)
    return cold, without(data, cold)


def to_markdown(results: dict) -> str:
    records = results["records"]
    lines = ["# Items as text: never-trained items on MovieLens-100K", ""]
    enc = results.get("encoding")
    if enc:
        lines += [f"Encoding cost ({enc['encoder']}, this CPU, {enc['threads']} thread(s)): "
                  f"{enc['items']} item texts in {enc['seconds']} s = "
                  f"**{enc['items_per_s']} items/s** (once per catalogue; cached beside the "
                  "backbone).", ""]
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    seeds = sorted({r["seed"] for r in records})
    header = ["method", *(f"{s} NDCG@10" for s in ("cold", "warm", "all")),
              "cold among cold", "seeds"]
    rows = []
    for m in methods:
        row = [m]
        among = [r["cold_only_ndcg@10"] for r in records
                 if r["method"] == m and r["items"] == "cold" and "cold_only_ndcg@10" in r]
        for split in ("cold", "warm", "all"):
            vals = [r["ndcg@10"] for r in records if r["method"] == m and r["items"] == split]
            mean = sum(vals) / len(vals)
            sd = (sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1)) ** 0.5
            row.append(f"{mean:.4f} ± {sd:.4f}")
        row.append(f"{sum(among) / len(among):.4f}" if among else "–")
        row.append(len({r['seed'] for r in records if r['method'] == m}))
        rows.append(row)
    lines += ["Mean ± standard deviation over seeds " + ", ".join(map(str, seeds)) + ". Full "
              "ranking over the 1,682 items, seen excluded; *cold*: test cases whose target is "
              "a held-out item (110-151 per seed), *cold among cold*: those targets ranked among "
              "the held-out items alone (id-only and popularity give all of them one score: "
              "ties count against the target, so 0).", "",
              *table(header, rows), ""]
    lines += budget_choice(records)
    per_seed = [[r["seed"], r["method"], r["items"], f"{r['ndcg@10']:.4f}", r["users"],
                 f"{r['holdout_' + r['items'] + '_ndcg@10']:.4f}",
                 f"{r['unseen_offset']:+.2f}" if "unseen_offset" in r else "–",
                 (f"{r['text_lift']:g} / {r.get('text_prior_scale', 0):g}"
                  if "text_lift" in r else "–"),
                 r.get("train_seconds", "–")] for r in sorted(
                     records, key=lambda r: (r["seed"], METHODS.index(r["method"]), r["items"]))]
    lines += ["Per seed (test cases per split; the hold-out is the early-stopping cases, "
              "which also fit the offset):", "",
              *table(["seed", "method", "items", "NDCG@10", "cases", "hold-out NDCG@10",
                      "offset", "lift / prior scale", "adapter train s"], per_seed), "",
              f"Settings: {results.get('settings')}. `python -m benchmarks.cold_text`.", ""]
    return "\n".join(lines)


def budget_choice(records: list[dict]) -> list[str]:
    """The default ``text_lift_budget``, read on the hold-out alone: the largest budget whose
    hold-out warm NDCG@10 stays at or above ``BAR_WARM`` of the id-only model's on every
    seed (the issue's warm bar, applied to the hold-out)."""
    ho = {(r["method"], r["seed"]): r["holdout_warm_ndcg@10"] for r in records
          if r["items"] == "warm"}
    seeds = sorted({s for m, s in ho if m == "id-only"})
    rows, passing = [], []
    for method, budget in sorted(BUDGETS.items(), key=lambda kv: kv[1]):
        if not all((method, s) in ho for s in seeds):
            continue
        ratios = [ho[(method, s)] / ho[("id-only", s)] for s in seeds]
        cold = [r["holdout_cold_ndcg@10"] for r in records
                if r["method"] == method and r["items"] == "cold"]
        ok = min(ratios) >= BAR_WARM
        passing += [budget] if ok else []
        rows.append([f"{budget:g}", method, " / ".join(f"{x:.3f}" for x in ratios),
                     f"{sum(cold) / len(cold):.4f}", "yes" if ok else "no"])
    if not rows:
        return []
    return ["Default budget, read on the hold-out alone: the largest budget whose hold-out "
            f"warm NDCG@10 is at least {BAR_WARM:g} of the id-only model's on every seed "
            f"(chosen: **{max(passing):g}**)." if passing else "No budget passes.", "",
            *table(["budget", "method", "hold-out warm / id-only's, per seed",
                    "hold-out cold NDCG@10", "passes"], rows), ""]


def choice_markdown(results: dict) -> str:
    rows = [[r["variant"], r["seed"], r["items"], f"{r['holdout_' + r['items'] + '_ndcg@10']:.4f}",
             f"{r['ndcg@10']:.4f}"] for r in results["records"]]
    return "\n".join(["# Items as text: choosing the text variant on the hold-out", "",
                      "Chosen by the hold-out column only (the test column is read, not used).",
                      "", *table(["variant", "seed", "items", "hold-out NDCG@10",
                                  "test NDCG@10"], rows), ""])


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    parser.add_argument("--seeds", type=integers, default="0,1,2")
    parser.add_argument("--methods", type=names, default=",".join(METHODS))
    parser.add_argument("--share", type=float, default=0.15)
    parser.add_argument("--id-dropout", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--choose", action="store_true",
                        help="seed 0: text backbones with --dropouts, hold-out figures")
    parser.add_argument("--dropouts", type=floats, default="0,0.5")
    parser.add_argument("--text-losses", type=floats, default="0,1")
    parser.add_argument("--text-loss", type=float, default=ModelConfig.text_loss)
    parser.add_argument("--text-negatives", type=names,
                        default=ModelConfig.text_loss_negatives,
                        help="negatives of the text-only loss (text, warm; --choose: a list)")
    parser.add_argument("--neighbours", type=int, default=-1,
                        help="adapt.neighbours (-1: the budget's; the defaults leave this "
                        "64-wide backbone's adapters none): the item-item part's effect")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    configure_logging()
    torch.set_num_threads(1)
    data = pooled(load_regions(DataConfig(recipe="ml-100k", data_dir=str(args.data_dir))))
    texts = ml100k_item_text(args.data_dir)
    WORK.mkdir(parents=True, exist_ok=True)
    text = encode_items(texts, None, WORK / "text_vectors.safetensors", progress=False)
    settings = {"model": MODEL, "train": TRAIN, "cold_share": args.share,
                "adapter": "AdaptConfig defaults (region 'all'), lr ADAPT_LR",
                "text_lift_budget": AdaptConfig.text_lift_budget,
                "neighbours": args.neighbours,
                "id_dropout": args.id_dropout, "text_loss": args.text_loss,
                "text_loss_negatives": args.text_negatives[0],
                "holdout_cases": HOLDOUT_CASES,
                "epochs": args.epochs or TRAIN["epochs"]}
    if args.choose:
        out = args.out or CHOICE_OUT
        results = load_results(out)
        have = done_keys(results["records"], ("variant", "seed"))
        grid = [(p, w, n) for n in args.text_negatives for w in args.text_losses
                for p in args.dropouts]
        for p, w, n in grid:
            variant = f"id_dropout={p:g}" + (f",text_loss={w:g}" if w else "") + (
                f",negatives={n}" if w and n != "text" else "")
            for seed in args.seeds[:1]:
                if (variant, seed) in have:
                    continue
                cold, warm = prepare(args.share, seed, data)
                task, stats = backbone_scorer(warm, data, text, True, seed, p,
                                              args.epochs, w, n)
                results["records"] += [{**r, "variant": variant} for r in
                                       records_for("text", seed, data, cold, task=task,
                                                   **stats)]
                results["meta"] = run_meta(settings)
                write_results(results, out)
                out.with_suffix(".md").write_text(choice_markdown(results), encoding="utf-8")
        return
    out = args.out or OUT
    results = load_results(out)
    if "encoding" not in results:
        results["encoding"] = measure_encoding(texts)
        log.info("encoding: %s", results["encoding"])
    results["settings"] = settings
    have = done_keys(results["records"], ("method", "seed"))
    for seed in args.seeds:
        cold, warm = prepare(args.share, seed, data)
        for method in args.methods:
            if (method, seed) in have:
                continue
            if method in VARIANTS and method != "text":
                continue  # recorded with text, from the same adapter
            if method in ("id-only", "text"):
                task, stats, region = adapted(warm, data, text, method == "text", seed,
                                              args.neighbours)
                if method == "id-only":
                    new = records_for(method, seed, data, cold, task=task, **stats)
                else:
                    new, bias = [], task.item_side.bias.detach().clone()
                    for name, (scales, budget) in VARIANTS.items():
                        if name in args.methods:
                            more = lifted(task, region, bias, scales, budget)
                            new += records_for(name, seed, data, cold, task=task,
                                               **stats, **more)
            elif method == "text-similarity":
                new = records_for(method, seed, data, cold, score=text_similarity(
                    text, data.catalogue))
            else:
                new = records_for(method, seed, data, cold,
                                  score=popularity(warm.train, data.catalogue))
            results["records"] += new
            results["meta"] = run_meta(settings)
            write_results(results, out)
            out.with_suffix(".md").write_text(to_markdown(results), encoding="utf-8")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
