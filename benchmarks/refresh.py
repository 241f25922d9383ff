"""Refresh vs stale vs retrained adapters over time (issue 17): MovieLens-100K by period.

    OMP_NUM_THREADS=1 python -m benchmarks.refresh [--periods 5] [--seeds 0] [--method lora]
    OMP_NUM_THREADS=1 python -m benchmarks.refresh --first-share 0.6 \
        --out benchmarks/results/refresh_increments.json
    python -m benchmarks.refresh --file my.csv --columns user=uid,item=sku,timestamp=ts ...

Data: ``ml-100k.inter`` (the ``ml-100k`` recipe's file), all 943 users as one region (the
recipe's zip regions hold 18-150 users each: a fifth of that per period is too few), or
``--file`` (any interaction file with a timestamp column, read as ``regiontune adapt --file``
reads it, every row one region), sorted by timestamp and cut into ``--periods`` consecutive
periods of equal interaction counts. With ``--first-share F`` period 0 holds the share F of
the interactions and the rest is cut into ``--periods - 1`` equal periods: each new period is
then a small share of the data so far (at 0.6 and 5 periods: 10,000 new interactions against
60,000-80,000 before them on ml-100k), the situation a routine weekly refresh is for; with
equal periods, period 1 doubles the data.

* a small backbone is pretrained on period 0 alone, and a first adapter trained on period 0;
* at each later period p (1 .. P-2), three adapters of ``--method``:
  - **stale**: the adapter in service at p-1, unchanged (no training);
  - **refreshed**: that adapter refreshed on period p's interactions
    (``train_region(parent=...)``, what ``regiontune adapt --init-from`` runs); with
    ``AdaptConfig.refresh_context`` (``--context on|off``; default the library's), each user's
    items of periods 0..p-1 are read ahead of period p's (targets too with
    ``AdaptConfig.refresh_context_loss``; the refresh's hold-out reads them too), what
    ``adapt --init-from`` reloads from the lineage's recorded data; the refreshed adapter
    is the one in service at p (so refreshes chain: p0 -> p1 -> p2 ...);
  - **refreshed-replay**: as refreshed, with ``--replay`` (default 0.5, fixed a priori, not
    tuned) of the parent's training users trained again with period p
    (``train_region(parent=..., replay=...)``, what ``adapt --init-from --replay`` runs); it
    chains too (p0 -> p1 -> p2 ...), so its parent was trained on period p-1 (period 0 for
    p = 1) and that period's training histories are the replay pool;
  - **refreshed-alone**: as refreshed (the same settings otherwise), with context forced off
    (period p's histories alone), whatever the library's default; it chains too
    (its own p0 -> p1 -> p2 ...). Reported, not chosen: the default of
    ``AdaptConfig.refresh_context`` is chosen on the refreshes' hold-out
    (``benchmarks/refresh_choice.py --metric served``, ``refresh_context_choice.md``);
  - **retrained**: a new adapter trained on every interaction of periods 0..p.
  Each training run splits its own data leave-last-out (the last two items of each user held
  out for early stopping), as ``regiontune adapt`` does. The adapters trained from nothing
  (the first one and the retrained ones) stop early with patience ``ADAPT.patience`` (6,
  ``--adapter-patience``), chosen on the retrained adapters' own hold-out by the rule the
  refresh's patience was chosen by (``refresh_baseline_choice.py``: both sides of the
  seconds comparison stop by a patience chosen the same way; 3 before that choice).
* evaluation, next-period NDCG@10: every user with interactions both up to the end of p and
  in p+1; the model reads the user's whole history up to the end of p (time order) and ranks
  the catalogue known by the end of p (every item some interaction of periods 0..p holds),
  the history excluded; relevant = the user's items of period p+1 within that catalogue
  (binary), NDCG@10 with the ideal DCG of min(#relevant, 10) hits, averaged over users. Items
  a model has no row for (the stale adapter lacks period p's new items) score -inf.

Records (``benchmarks/results/refresh.json``): dataset, period, method (stale | refreshed |
retrained), ndcg@10, train_seconds (``train_region``'s clock: training, early stopping and
calibration), seed, and the run's details. The Markdown report and the PNG go beside it.
Bar (issue 17): on every period, refreshed >= 97% of retrained NDCG@10 and > stale, at <= 50%
of retraining's seconds.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import statistics
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import (  # noqa: E402
    RESULTS,
    configure_logging,
    integers,
    load_results,
    study_command,
    study_parser,
    write_results,
)
from benchmarks.markdown import table  # noqa: E402
from benchmarks.meta import run_meta  # noqa: E402
from benchmarks.report import save_figure  # noqa: E402
from regiontune.adapters import AdapterFolder, load_adapter, save_adapter  # noqa: E402
from regiontune.config import AdaptConfig, ModelConfig, TrainConfig, to_dict  # noqa: E402
from regiontune.data.loading import column_mapping, load_file  # noqa: E402
from regiontune.data.splits import histories as user_histories  # noqa: E402
from regiontune.data.splits import split_region  # noqa: E402
from regiontune.evaluation.evaluate import evaluate_task, task_scores  # noqa: E402
from regiontune.model.backbone import load_backbone, save_backbone  # noqa: E402
from regiontune.training.adapt import VALID_CASES, train_region  # noqa: E402
from regiontune.training.context import context_cases  # noqa: E402
from regiontune.training.pretrain import train_backbone  # noqa: E402

log = logging.getLogger("benchmarks.refresh")
NAME = "refresh"
REGION = "all"
METHODS = ("stale", "refreshed", "refreshed-replay", "refreshed-alone", "retrained")
BASE = ("stale", "refreshed", "retrained")  # the bar's three; the other refreshes are optional
VARIANTS = {"refreshed-replay": "replay", "refreshed-alone": "alone"}
REPLAY = 0.5  # share of the parent's training users replayed (a priori, not tuned)
MODEL = ModelConfig(arch="llama", hidden_size=64, num_layers=2, num_heads=2,
                    intermediate_size=128, max_len=50, dropout=0.2)
PRETRAIN = TrainConfig(epochs=20, lr=2e-3, patience=3, batch_size=64, progress=False)
# patience chosen on the retrained adapters' hold-out (refresh_baseline_choice.md: 6 over 3)
ADAPT = TrainConfig(epochs=20, lr=5e-3, patience=6, batch_size=32, progress=False)
K = 10
BAR_QUALITY, BAR_SECONDS = 0.97, 0.5
BOOTSTRAP_DRAWS = 2000  # resamples of the evaluated users (the report's intervals)


# ---------------------------------------------------------------- data

def load_interactions(data_dir: Path, file: Path | None = None,
                      columns: dict[str, str] | None = None,
                      sep: str | None = None) -> pd.DataFrame:
    """One region's interactions: ml-100k's ``ml-100k.inter`` in ``data_dir``, or ``file`` (a
    user's own, read as ``regiontune adapt --file`` reads it: ``columns`` maps ``user`` /
    ``item`` / ``timestamp`` to its headers). Every row is one region (the file's region
    column, if any, is ignored); a file without timestamps cannot be cut by time."""
    if file is None:
        file, columns = data_dir / "ml-100k.inter", {"user": "user_id", "item": "item_id"}
    frame = load_file(file, columns or {}, region=REGION, sep=sep).assign(region=REGION)
    if "timestamp" not in frame.columns:
        raise SystemExit(f"{file.name} has no timestamp column (map yours with --columns "
                         f"timestamp=NAME): the refresh study cuts the data by time")
    return frame


def load_periods(data_dir: Path, periods: int, first_share: float | None = None,
                 frame: pd.DataFrame | None = None) -> list[pd.DataFrame]:
    """The interactions (one region) sorted by time and cut into ``periods`` consecutive
    slices: of equal counts, or, with ``first_share``, period 0 holding that share of all
    interactions and the rest cut into ``periods - 1`` equal slices (each new period a small
    share of the data so far: what a weekly refresh sees)."""
    if frame is None:
        frame = load_interactions(data_dir)
    if first_share is not None and not 0 < first_share < 1:
        raise SystemExit(f"--first-share must be in (0, 1), not {first_share}")
    frame = frame.sort_values(["timestamp", "user", "item"], kind="stable")
    frame = frame.reset_index(drop=True)
    n = len(frame)
    if first_share is None:
        cut = [n * i // periods for i in range(periods + 1)]
    else:
        head = round(n * first_share)
        cut = [0, *(head + (n - head) * i // (periods - 1) for i in range(periods))]
    return [frame.iloc[cut[i]:cut[i + 1]].reset_index(drop=True) for i in range(periods)]


def region_data(frame: pd.DataFrame):
    return split_region(REGION, frame.reset_index(drop=True))


def time_range(frame: pd.DataFrame) -> str:
    low, high = (pd.to_datetime(frame["timestamp"].agg(f), unit="s").strftime("%Y-%m-%d")
                 for f in ("min", "max"))
    return f"{low} .. {high}"


def next_period_cases(past: pd.DataFrame, upcoming: pd.DataFrame
                      ) -> tuple[list[str], list[list[str]], list[set[str]]]:
    """(catalogue, histories, relevant sets) of the next-period protocol (module docstring)."""
    catalogue = sorted(past["item"].unique())
    known = set(catalogue)
    ordered = past.sort_values(["user", "timestamp"], kind="stable")
    history = {u: list(g) for u, g in ordered.groupby("user", sort=True)["item"]}
    nxt = {u: set(g) & known for u, g in upcoming.groupby("user", sort=True)["item"]}
    users = [u for u in sorted(nxt) if u in history and nxt[u]]
    return catalogue, [history[u] for u in users], [nxt[u] for u in users]


def next_period_user_ndcg(task, catalogue: list[str], histories: list[list[str]],
                          relevant: list[set[str]], k: int = K) -> list[float]:
    """Each user's next-period NDCG@k (the protocol of the module docstring), in order."""
    index = {item: i for i, item in enumerate(catalogue)}
    scores = task_scores(task, histories, catalogue)
    out = []
    for row, (history, rel) in enumerate(zip(histories, relevant, strict=True)):
        s = scores[row].clone()
        s[[index[i] for i in history if i in index]] = float("-inf")
        top = torch.topk(s, k).indices.tolist()
        dcg = sum(1 / math.log2(rank + 2) for rank, col in enumerate(top)
                  if catalogue[col] in rel)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(rel), k)))
        out.append(dcg / ideal)
    return out


def next_period_ndcg(task, catalogue: list[str], histories: list[list[str]],
                     relevant: list[set[str]], k: int = K) -> float:
    """The next-period NDCG@k averaged over users."""
    per_user = next_period_user_ndcg(task, catalogue, histories, relevant, k)
    return sum(per_user) / max(len(per_user), 1)


# ---------------------------------------------------------------- the study

def run_seed(periods: list[pd.DataFrame], method: str, seed: int, work: Path,
             refresh_epochs: int | None = None, methods: tuple[str, ...] = METHODS,
             replay: float = REPLAY, refresh_lr: float | None = None,
             refresh_patience: int | None = None, refresh_context: bool | None = None,
             refresh_evals_per_pass: int | None = None,
             dataset: str = "ml-100k", adapter_patience: int | None = None,
             refresh_shrink: float | None = None,
             refresh_context_loss: bool | None = None) -> list[dict]:
    work = work / f"seed{seed}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pretrain_cfg = TrainConfig(**{**PRETRAIN.__dict__, "seed": seed})
    adapt_train = TrainConfig(**{**ADAPT.__dict__, "seed": seed,
                                 "patience": adapter_patience or ADAPT.patience})
    refresh_train = adapt_train  # the refresh_* settings of adapt_cfg apply to refreshes
    adapt_cfg = AdaptConfig(method=method, region=REGION)
    # the refresh_* settings given; the others stay the library's (AdaptConfig's defaults)
    given = {"refresh_epochs": refresh_epochs, "refresh_lr": refresh_lr,
             "refresh_patience": refresh_patience, "refresh_context": refresh_context,
             "refresh_evals_per_pass": refresh_evals_per_pass, "refresh_shrink": refresh_shrink,
             "refresh_context_loss": refresh_context_loss}
    adapt_cfg = replace(adapt_cfg, **{k: v for k, v in given.items() if v is not None})
    started = time.perf_counter()
    task, result = train_backbone({REGION: region_data(periods[0])}, MODEL, pretrain_cfg)
    bb_meta = save_backbone(task.model, task.vocab, {"benchmark": NAME, "seed": seed},
                            work / "backbone")
    log.info("seed %d: backbone on period 0 (%s), %.0f s, valid ndcg@10 %.4f", seed,
             time_range(periods[0]), time.perf_counter() - started, result.best_metric)
    fingerprint = bb_meta["fingerprint"]

    def fresh():
        return load_backbone(work / "backbone")[:2]

    def save(task, name: str) -> Path:
        out = work / name
        save_adapter(task, method, REGION, {"region": REGION, "backbone_fingerprint":
                                            fingerprint}, out, adapt_cfg.weights_dtype)
        return out

    backbone, vocab = fresh()
    first, stats = train_region(backbone, vocab, region_data(periods[0]), adapt_cfg, adapt_train)
    in_service = in_service_replay = in_service_alone = save(first, "p0")
    log.info("seed %d: adapter p0, %.0f s", seed, stats["train_seconds"])
    records = []
    for p in range(1, len(periods) - 1):
        past = pd.concat(periods[:p + 1], ignore_index=True)
        catalogue, histories, relevant = next_period_cases(past, periods[p + 1])
        base = {"dataset": dataset, "period": p, "seed": seed, "adapter_method": method,
                "eval_period": p + 1, "eval_users": len(histories),
                "period_range": time_range(periods[p]),
                "eval_range": time_range(periods[p + 1])}
        runs = {}
        if "stale" in methods:
            backbone, vocab = fresh()
            stale = load_adapter(in_service, backbone, vocab, fingerprint)
            runs["stale"] = (stale, {"train_seconds": 0.0}, 0)
        backbone, vocab = fresh()
        parent = AdapterFolder.read(in_service, fingerprint)
        # each user's items of periods 0..p-1, time-ordered: what adapt --init-from reloads
        # from the lineage's recorded data (training/context.py: parent_context)
        earlier = user_histories(pd.concat(periods[:p], ignore_index=True))
        context = earlier if adapt_cfg.refresh_context else None
        new = region_data(periods[p])
        refreshed, stats = train_region(backbone, vocab, new, adapt_cfg, refresh_train,
                                        parent=parent, context=context)
        # the refresh's own hold-out (period p's last items), each history read after the
        # user's earlier items as serving reads it: comparable with and without context
        stats["holdout_served"] = evaluate_task(
            refreshed, refreshed.item_side.catalogue,
            context_cases(new.valid[:VALID_CASES], earlier))["ndcg@10"]
        if "refreshed" in methods:
            runs["refreshed"] = (refreshed, stats, len(periods[p]))
        if "refreshed-replay" in methods:
            backbone, vocab = fresh()
            parent = AdapterFolder.read(in_service_replay, fingerprint)
            pool = region_data(periods[p - 1]).train  # what the parent trained on
            replayed, stats = train_region(backbone, vocab, region_data(periods[p]),
                                           replace(adapt_cfg, replay=replay), refresh_train,
                                           parent=parent, replay=pool, context=context)
            runs["refreshed-replay"] = (replayed, stats, len(periods[p]))
        if "refreshed-alone" in methods:
            backbone, vocab = fresh()
            parent = AdapterFolder.read(in_service_alone, fingerprint)
            alone, stats = train_region(backbone, vocab, new,
                                        replace(adapt_cfg, refresh_context=False),
                                        refresh_train, parent=parent)
            runs["refreshed-alone"] = (alone, stats, len(periods[p]))
        if "retrained" in methods:
            backbone, vocab = fresh()
            retrained, stats = train_region(backbone, vocab, region_data(past), adapt_cfg,
                                            adapt_train)
            runs["retrained"] = (retrained, stats, len(past))
        for name, (task, stats, rows) in runs.items():
            per_user = next_period_user_ndcg(task, catalogue, histories, relevant)
            record = {**base, "method": name,
                      "ndcg@10": round(sum(per_user) / max(len(per_user), 1), 5),
                      # in the order of next_period_cases' users (sorted ids): the report's
                      # bootstrap over users pairs them across methods and seeds
                      "user_ndcg@10": [round(x, 4) for x in per_user],
                      "train_seconds": stats["train_seconds"], "train_interactions": rows,
                      "epochs_run": stats.get("epochs_run", 0),
                      "best_epoch": stats.get("best_epoch", 0),
                      "epoch_tokens": stats.get("epoch_tokens", 0),
                      "valid_ndcg@10": stats.get("best_valid_ndcg@10"),
                      **({"patience": adapt_train.patience} if name == "retrained" else {}),
                      **({"refresh_lr": adapt_cfg.refresh_lr,
                          "refresh_context": (adapt_cfg.refresh_context
                                              and name != "refreshed-alone"),
                          "holdout_served_ndcg@10": stats.get("holdout_served"),
                          "refresh_patience": adapt_cfg.refresh_patience
                          or refresh_train.patience,
                          "refresh_epochs": adapt_cfg.refresh_epochs or refresh_train.epochs,
                          "refresh_evals_per_pass": adapt_cfg.refresh_evals_per_pass
                          or refresh_train.epoch_parts,
                          "refresh_shrink": adapt_cfg.refresh_shrink,
                          "refresh_context_loss": adapt_cfg.refresh_context_loss,
                          "evaluations": stats.get("evaluations")}
                         if name.startswith("refreshed") else {}),
                      "catalogue": len(task.item_side.catalogue)}
            if stats.get("replay"):
                record["replay"] = stats["replay"]
            if stats.get("context"):
                record["context"] = stats["context"]
            records.append(record)
            log.info("%s", {k: v for k, v in record.items() if k != "user_ndcg@10"})
        in_service = save(refreshed, f"p{p}")
        if "refreshed-replay" in methods:
            in_service_replay = save(replayed, f"p{p}-replay")
        if "refreshed-alone" in methods:
            in_service_alone = save(alone, f"p{p}-alone")
    return records


# ---------------------------------------------------------------- report

def epochs_times(runs: dict[str, list[dict]], field: str) -> dict[str, float]:
    """Mean over seeds of epochs run x ``field`` (a per-epoch cost), refreshed and retrained."""
    return {m: statistics.fmean(r.get("epochs_run", 0) * r.get(field, 0) for r in runs[m])
            for m in ("refreshed", "retrained")}


def verdicts(records: list[dict]) -> list[dict]:
    """Per period (means over seeds): the bar's three checks."""
    by = defaultdict(lambda: defaultdict(list))
    for r in records:
        by[r["period"]][r["method"]].append(r)
    out = []
    for period in sorted(by):
        mean = {m: {key: statistics.fmean(x[key] for x in by[period][m])
                    for key in ("ndcg@10", "train_seconds")} for m in METHODS
                if by[period][m]}
        if any(m not in mean for m in BASE):
            continue
        ref, ret, stale = mean["refreshed"], mean["retrained"], mean["stale"]
        quality = ref["ndcg@10"] / ret["ndcg@10"] if ret["ndcg@10"] else float("nan")
        seconds = (ref["train_seconds"] / ret["train_seconds"] if ret["train_seconds"]
                   else float("nan"))
        extra = {}
        for variant, short in VARIANTS.items():
            if variant in mean:
                rr = mean[variant]
                extra = {**extra, f"{short}_seeds": len(by[period][variant]),
                         f"{short}_quality_ratio": rr["ndcg@10"] / ret["ndcg@10"],
                         f"{short}_seconds_ratio": rr["train_seconds"] / ret["train_seconds"],
                         f"{short}_beats_stale": rr["ndcg@10"] > stale["ndcg@10"]}
        # per seed, refreshed and retrained timed back to back (under one load)
        retrained_s = {r["seed"]: r["train_seconds"] for r in by[period]["retrained"]}
        per_seed = sorted(r["train_seconds"] / retrained_s[r["seed"]]
                          for r in by[period]["refreshed"] if retrained_s.get(r["seed"]))
        epochs = {m: statistics.fmean(r.get("epochs_run", 0) for r in by[period][m])
                  for m in ("refreshed", "retrained")}
        # a compute proxy free of the machine's load: epochs run x interactions trained on,
        # and epochs run x tokens an epoch reads (histories cut to the model's window)
        work = epochs_times(by[period], "train_interactions")
        tokens = epochs_times(by[period], "epoch_tokens")
        extra = {**extra, "work_ratio": (work["refreshed"] / work["retrained"]
                                         if work["retrained"] else None),
                 "token_ratio": (tokens["refreshed"] / tokens["retrained"]
                                 if tokens["retrained"] else None),
                 "seconds_ratio_per_seed": per_seed,
                 "seconds_ratio_median": statistics.median(per_seed) if per_seed else None,
                 "epochs_refreshed": epochs["refreshed"], "epochs_retrained": epochs["retrained"]}
        out.append({"period": period, "seeds": len(by[period]["refreshed"]), **extra, **{
            f"{m}_{k}": mean[m][k] for m in mean for k in ("ndcg@10", "train_seconds")},
            "quality_ratio": quality, "seconds_ratio": seconds,
            "beats_stale": ref["ndcg@10"] > stale["ndcg@10"],
            "met": (quality >= BAR_QUALITY and ref["ndcg@10"] > stale["ndcg@10"]
                    and seconds <= BAR_SECONDS)})
    return out


def user_intervals(records: list[dict], draws: int = BOOTSTRAP_DRAWS, seed: int = 0
                   ) -> list[dict]:
    """Per period, how much the bar's two quality figures move with the evaluated users: a
    bootstrap over users (``draws`` resamples, fixed ``seed``) of refreshed / retrained and
    refreshed - stale, each user's NDCG@10 first averaged over the seeds that hold all three
    methods (the seeds' spread is training noise; the users' is which users the period
    happened to bring). Percentile intervals (2.5%, 97.5%) and the share of resamples on the
    bar's side. Periods whose records carry no per-user figures are left out."""
    by = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get("user_ndcg@10") is not None:
            by[r["period"]][r["seed"]][r["method"]] = r["user_ndcg@10"]
    rng = np.random.default_rng(seed)
    out = []
    for period in sorted(by):
        seeds = [s for s, m in sorted(by[period].items()) if all(x in m for x in BASE)]
        if not seeds:
            continue
        mean = {m: np.mean([by[period][s][m] for s in seeds], axis=0) for m in BASE}
        users = len(mean["refreshed"])
        pick = rng.integers(0, users, size=(draws, users))
        ref, ret, stale = (mean[m][pick].mean(axis=1)
                           for m in ("refreshed", "retrained", "stale"))
        ratio, gain = ref / ret, ref - stale
        out.append({"period": period, "seeds": len(seeds), "users": users, "draws": draws,
                    "quality_ratio": float(mean["refreshed"].mean() / mean["retrained"].mean()),
                    "quality_ratio_interval": [float(x) for x in np.percentile(ratio,
                                                                               [2.5, 97.5])],
                    "quality_ratio_share_at_bar": float(np.mean(ratio >= BAR_QUALITY)),
                    "gain_over_stale": float(mean["refreshed"].mean() - mean["stale"].mean()),
                    "gain_over_stale_interval": [float(x) for x in np.percentile(gain,
                                                                                 [2.5, 97.5])],
                    "gain_over_stale_share_above": float(np.mean(gain > 0))})
    return out


def write_report(results: dict, path: Path) -> list[Path]:
    records = results["records"]
    rows = verdicts(records)
    lines = [f"# Refresh vs stale vs retrained adapters ({results.get('dataset', 'ml-100k')})",
             "", f"- command: `{results.get('command', '')}`",
             f"- commit: `{results.get('meta', {}).get('git_commit')}`",
             f"- created: {results.get('meta', {}).get('created')}",
             f"- seeds: {sorted({r['seed'] for r in records})}; adapter method: "
             f"{sorted({r['adapter_method'] for r in records})}; epochs (cap): adapters "
             f"{results.get('config', {}).get('adapt', {}).get('epochs')}, refreshes "
             f"{results.get('config', {}).get('refresh_epochs')}",
             "", "Protocol: see the docstring of `benchmarks/refresh.py` ("
             + periods_text(results.get("config", {}))
             + ", backbone pretrained on period 0; at period p the stale "
             "adapter is the one in service at p-1, the refreshed one is it refreshed on "
             "period p alone, the retrained one is new on periods 0..p; next-period "
             "NDCG@10 on period p+1 for users seen before, over the catalogue known by the "
             "end of p).", "",
             f"Bar: refreshed >= {BAR_QUALITY:.0%} of retrained NDCG@10, > stale, at <= "
             f"{BAR_SECONDS:.0%} of retraining's seconds, on every period.", ""]
    detail = sorted(records, key=lambda r: (r["period"], r["seed"], METHODS.index(r["method"])))
    lines += table(["period", "seed", "method", "train range", "eval users", "NDCG@10",
                    "train s", "train interactions", "epochs (best)"],
                   [[r["period"], r["seed"], r["method"],
                     (f"{r['period_range']} + context of {r['context']['users']} users"
                      if r.get("context") else r["period_range"])
                     if r["method"] == "refreshed" else
                     (f"{r['period_range']} + {r['replay']['users']} replayed users"
                      if r["method"] == "refreshed-replay" else
                      r["period_range"] if r["method"] == "refreshed-alone" else
                     ("–" if r["method"] == "stale" else f"periods 0..{r['period']}")),
                     r["eval_users"], f"{r['ndcg@10']:.4f}", f"{r['train_seconds']:.1f}",
                     r["train_interactions"], f"{r['epochs_run']} ({r['best_epoch']})"]
                    for r in detail])
    lines += ["", "## Verdict per period (means over seeds)", ""]
    lines += table(["period", "stale", "refreshed", "retrained", "refreshed / retrained",
                    "refreshed s / retrained s", "> stale", "bar"],
                   [[v["period"], f"{v['stale_ndcg@10']:.4f}", f"{v['refreshed_ndcg@10']:.4f}",
                     f"{v['retrained_ndcg@10']:.4f}", f"{v['quality_ratio']:.1%}",
                     f"{v['seconds_ratio']:.1%}", "yes" if v["beats_stale"] else "no",
                     "met" if v["met"] else "missed"] for v in rows])
    if rows:
        lines += ["", "Bar met on every period: "
                  + ("**yes**" if all(v["met"] for v in rows) else "**no**")]
        lines += ["", "Seconds per seed (refreshed / retrained of the same seed, timed back to "
                  "back under one load; the bar reads the ratio of the means above):", ""]
        lines += table(["period", "seeds", "median", "range", "epochs run: refreshed",
                        "retrained", "epochs x interactions: refreshed / retrained",
                        "epochs x tokens: refreshed / retrained"],
                       [[v["period"], len(v["seconds_ratio_per_seed"]),
                         f"{v['seconds_ratio_median']:.1%}",
                         f"{v['seconds_ratio_per_seed'][0]:.1%} .. "
                         f"{v['seconds_ratio_per_seed'][-1]:.1%}",
                         f"{v['epochs_refreshed']:.1f}", f"{v['epochs_retrained']:.1f}",
                         f"{v['work_ratio']:.1%}" if v["work_ratio"] else "–",
                         f"{v['token_ratio']:.1%}" if v.get("token_ratio") else "–"]
                        for v in rows if v["seconds_ratio_per_seed"]])
    spread = user_intervals(records)
    if spread:
        lines += ["", "## How much the verdict moves with the evaluated users", "",
                  "A bootstrap over each period's evaluated users (each user's NDCG@10 first "
                  f"averaged over the seeds; {spread[0]['draws']} resamples, seed 0): the seeds "
                  "only vary training, so the seed spread above says nothing about which users "
                  "a period brought. 95% percentile intervals, and the share of resamples on the "
                  "bar's side.", ""]
        lines += table(["period", "users", "seeds", "refreshed / retrained", "95% interval",
                        f"resamples >= {BAR_QUALITY:.0%}", "refreshed - stale", "95% interval",
                        "resamples > 0"],
                       [[u["period"], u["users"], u["seeds"], f"{u['quality_ratio']:.1%}",
                         "{:.1%} .. {:.1%}".format(*u["quality_ratio_interval"]),
                         f"{u['quality_ratio_share_at_bar']:.0%}",
                         f"{u['gain_over_stale']:+.4f}",
                         "{:+.4f} .. {:+.4f}".format(*u["gain_over_stale_interval"]),
                         f"{u['gain_over_stale_share_above']:.0%}"] for u in spread])
    replay_rows = [v for v in rows if "replay_quality_ratio" in v]
    if replay_rows:
        fractions = sorted({r["replay"]["fraction"] for r in records if r.get("replay")})
        lines += ["", f"## Refreshed with replay ({', '.join(map(str, fractions))} of the "
                  "parent's training users; means over seeds)", "",
                  "The fraction was fixed before the run, not tuned: the benchmark evaluates on "
                  "the next period, so choosing it here would tune on the test.", ""]
        lines += table(["period", "seeds", "refreshed", "refreshed-replay", "retrained",
                        "replay / retrained", "replay s", "replay s / retrained s",
                        f">= {BAR_QUALITY:.0%}"],
                       [[v["period"], v["replay_seeds"], f"{v['refreshed_ndcg@10']:.4f}",
                         f"{v['refreshed-replay_ndcg@10']:.4f}",
                         f"{v['retrained_ndcg@10']:.4f}", f"{v['replay_quality_ratio']:.1%}",
                         f"{v['refreshed-replay_train_seconds']:.1f}",
                         f"{v['replay_seconds_ratio']:.1%}",
                         "yes" if v["replay_quality_ratio"] >= BAR_QUALITY else "no"]
                        for v in replay_rows])
    alone_rows = [v for v in rows if "alone_quality_ratio" in v]
    if alone_rows:
        lines += ["", "## Refreshed on the new period alone (context off, the refresh's other "
                  "settings the same; means over seeds)", "",
                  "Reported, not chosen: `AdaptConfig.refresh_context` is chosen on the "
                  "refreshes' hold-out (`refresh_context_choice.md`), never on these "
                  "next-period figures.", ""]
        lines += table(["period", "seeds", "refreshed", "refreshed-alone", "retrained",
                        "alone / retrained", "alone s", "alone s / retrained s",
                        f">= {BAR_QUALITY:.0%}", "bar"],
                       [[v["period"], v["alone_seeds"], f"{v['refreshed_ndcg@10']:.4f}",
                         f"{v['refreshed-alone_ndcg@10']:.4f}",
                         f"{v['retrained_ndcg@10']:.4f}", f"{v['alone_quality_ratio']:.1%}",
                         f"{v['refreshed-alone_train_seconds']:.1f}",
                         f"{v['alone_seconds_ratio']:.1%}",
                         "yes" if v["alone_quality_ratio"] >= BAR_QUALITY else "no",
                         "met" if (v["alone_quality_ratio"] >= BAR_QUALITY
                                   and v["alone_beats_stale"]
                                   and v["alone_seconds_ratio"] <= BAR_SECONDS) else "missed"]
                        for v in alone_rows])
    if results.get("notes"):
        lines += ["", "## Notes", "", *results["notes"]]
    md = path.with_suffix(".md")
    md.write_text("\n".join(lines) + "\n")
    return [md, plot(rows, path.with_suffix(".png"))]


def plot(rows: list[dict], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    periods = [v["period"] for v in rows]
    for i, m in enumerate(METHODS):
        if rows and all(f"{m}_ndcg@10" in v for v in rows):
            left.plot(periods, [v[f"{m}_ndcg@10"] for v in rows], marker="osDv^"[i], label=m)
    left.set(xlabel="period p (evaluated on p+1)", ylabel="next-period NDCG@10",
             title="Quality")
    left.set_xticks(periods)
    left.legend()
    bars = [m for m in METHODS[1:] if rows and all(f"{m}_train_seconds" in v for v in rows)]
    width = 0.8 / max(len(bars), 1)
    for i, m in enumerate(bars):
        right.bar([p + (i - (len(bars) - 1) / 2) * width for p in periods],
                  [v[f"{m}_train_seconds"] for v in rows], width, label=m,
                  color=f"C{METHODS.index(m)}")
    right.set(xlabel="period p", ylabel="train seconds", title="Training time")
    right.set_xticks(periods)
    right.legend()
    return save_figure(fig, path)


# ---------------------------------------------------------------- entry point

def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = study_parser(__doc__)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data/ml-100k"))
    parser.add_argument("--file", type=Path, default=None,
                        help="your own interaction file with a timestamp column, instead of "
                        "ml-100k (every row one region)")
    parser.add_argument("--columns", type=column_map, default=None,
                        help="--file's headers: user=NAME,item=NAME,timestamp=NAME")
    parser.add_argument("--sep", default=None, help="--file's separator (default: guessed)")
    parser.add_argument("--periods", type=int, default=5)
    parser.add_argument("--first-share", type=float, default=None,
                        help="period 0 holds this share of the interactions, the rest is cut "
                        "into --periods - 1 equal periods (default: all periods equal)")
    parser.add_argument("--seeds", type=integers, default="0")
    parser.add_argument("--method", default="lora", help="adapter method (registry name)")
    parser.add_argument("--methods", type=lambda t: tuple(t.split(",")), default=METHODS,
                        help=f"comma-separated subset of {','.join(METHODS)} (the refreshed "
                        "chain always trains: the stale adapter is its previous step)")
    parser.add_argument("--replay", type=float, default=REPLAY,
                        help="refreshed-replay: share of the parent's training users replayed")
    parser.add_argument("--refresh-epochs", type=int, default=None,
                        help="epoch cap of the refreshes (default: AdaptConfig.refresh_epochs, "
                        "none: the adapters' 20)")
    parser.add_argument("--adapter-patience", type=int, default=None,
                        help="early-stopping patience of the adapters trained from nothing "
                        f"(the first one and the retrained ones; default {ADAPT.patience})")
    parser.add_argument("--context", choices=("on", "off"), default=None,
                        help="refreshes read each user's earlier items as context (default: "
                        "AdaptConfig.refresh_context)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench/refresh"))
    parser.add_argument("--out", type=Path, default=RESULTS / f"{NAME}.json")
    parser.add_argument("--report-only", action="store_true")
    return parser.parse_args(argv)


def column_map(text: str) -> dict[str, str]:
    """``user=U,item=I,timestamp=T`` -> {"user": "U", ...} (regiontune's names as keys)."""
    pairs = [part for part in text.split(",") if part]
    for part in pairs:
        key, equals, _ = part.partition("=")
        if not equals or key not in ("user", "item", "timestamp", "rating"):
            raise argparse.ArgumentTypeError(f"--columns: {part!r} is not NAME=HEADER with NAME "
                                             f"one of user, item, timestamp, rating")
    return column_mapping(pairs)


def periods_text(config: dict) -> str:
    """How the report's periods were cut."""
    share = config.get("first_share")
    if share is None:
        return "periods of equal interaction counts"
    return (f"period 0 holds {share:.0%} of the interactions, the rest cut into "
            f"{config.get('periods', 5) - 1} periods of equal counts")


def context_flag(value: str | None) -> bool:
    """``--context on|off``; None: the library's default (AdaptConfig.refresh_context)."""
    return AdaptConfig().refresh_context if value is None else value == "on"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if unknown := sorted(set(args.methods) - set(METHODS)):
        raise SystemExit(f"--methods: unknown {unknown}; choose from {METHODS}")
    configure_logging()
    dataset = args.file.name if args.file else "ml-100k"
    results = load_results(args.out, dataset=dataset)
    if not args.report_only:
        if args.periods < 3:
            raise SystemExit("--periods must be at least 3 (pretrain, refresh, evaluate)")
        frame = load_interactions(args.data_dir, args.file, args.columns, args.sep)
        periods = load_periods(args.data_dir, args.periods, args.first_share, frame)
        # a rerun replaces the records of the seeds it runs
        results["records"] = [r for r in results["records"] if r["seed"] not in args.seeds]
        results["command"] = study_command("benchmarks.refresh", argv)
        results["config"] = {"periods": args.periods, "first_share": args.first_share,
                             "method": args.method,
                             "refresh_epochs": (args.refresh_epochs
                                                or AdaptConfig().refresh_epochs
                                                or ADAPT.epochs),
                             "methods": list(args.methods), "replay": args.replay,
                             "refresh_context": context_flag(args.context),
                             "model": to_dict(MODEL)["model"],
                             "pretrain": to_dict(PRETRAIN)["train"],
                             "adapt": {**to_dict(ADAPT)["train"], "patience":
                                       args.adapter_patience or ADAPT.patience},
                             "period_ranges": [time_range(f) for f in periods]}
        results["meta"] = run_meta(results["config"])
        for seed in args.seeds:
            results["records"] += run_seed(periods, args.method, seed, args.work,
                                           args.refresh_epochs, args.methods, args.replay,
                                           refresh_context=context_flag(args.context),
                                           dataset=dataset,
                                           adapter_patience=args.adapter_patience)
            write_results(results, args.out)
    for path in write_report(results, args.out):
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
