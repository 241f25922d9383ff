"""Hyper-parameter search for a region's LoRA adapter with Optuna, on the training hold-out.

    OMP_NUM_THREADS=1 python -m benchmarks.search [--suite wsdm] [--setting all-regions]
        [--region t1] [--trials N] [--timeout-minutes M] [--seed 0] [--confirm-seeds 0,1,2]

What is searched: the adapter's training settings (learning rate, weight decay, batch size),
LoRA's rank, alpha and dropout, and the share of the size budget the item-item part gets
(``AdaptConfig.neighbours_share``); the space is ``SPACE`` below, the budget (trials, minutes)
the suite file's ``search`` block, so a run's cost is written down before it starts.

Objective: the hold-out NDCG@10 the adapter is served with -- the adapter blended with its
item-item part at the weight ``fit_item_item`` chose (the early-stopping hold-out: each
user's withheld item among 99 negatives drawn as the official lists draw theirs). The
official validation lists are never read by the search. Sampler: TPE, seeded; the default
configuration is the first trial, so the search can only report a gain over it.

Resumable: the study lives in an Optuna journal file under ``runs/search/``; a killed run
continues with the trials it has. ``--confirm-seeds``: the best trial's settings and the
defaults are then trained again with these seeds, and the hold-out figures of both reported
(a choice made on one seed's hold-out is checked on others before it is adopted).

Results: ``benchmarks/results/search_<setting>_<region>.{json,md}``.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS,
    configure_logging,
    integers,
    load_suite,
    study_command,
    study_parser,
    suite_configs,
    write_results,
)
from benchmarks.jobs import Context
from benchmarks.markdown import table
from benchmarks.meta import run_meta
from regiontune.config import AdaptConfig
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import train_region

log = logging.getLogger("benchmarks.search")

# name -> (kind, choices or (low, high)); "log": log-uniform float, "float": uniform
SPACE: dict[str, tuple[str, Any]] = {
    "lr": ("log", (1e-3, 1e-2)),
    "weight_decay": ("log", (1e-3, 0.3)),
    "batch_size": ("choice", (128, 256, 512)),
    "r": ("choice", (4, 8, 16)),
    "alpha_per_r": ("choice", (1, 2, 4)),
    "lora_dropout": ("float", (0.0, 0.3)),
    "neighbours_share": ("float", (0.3, 0.9)),
}


def defaults(suite: dict[str, Any]) -> dict[str, Any]:
    """The point of ``SPACE`` the suite trains with today (the search's first trial)."""
    _, _, trains = suite_configs(suite)
    adapt = AdaptConfig()
    return {"lr": trains["adapt"].lr, "weight_decay": trains["adapt"].weight_decay,
            "batch_size": trains["adapt"].batch_size, "r": 8, "alpha_per_r": 2,
            "lora_dropout": 0.05, "neighbours_share": adapt.neighbours_share}


def suggest(trial) -> dict[str, Any]:
    point = {}
    for name, (kind, spec) in SPACE.items():
        if kind == "log":
            point[name] = trial.suggest_float(name, *spec, log=True)
        elif kind == "float":
            point[name] = trial.suggest_float(name, *spec)
        else:
            point[name] = trial.suggest_categorical(name, list(spec))
    return point


def served_holdout(stats: dict[str, Any]) -> float:
    """The hold-out NDCG@10 of the adapter as saved: with its item-item part at the chosen
    weight, or alone when the part was dropped."""
    found = stats.get("item_item_holdout_ndcg@10")
    return max(found.values()) if found else float(stats["best_valid_ndcg@10"])


def train_point(ctx: Context, job: dict[str, Any], point: dict[str, Any],
                seed: int) -> dict[str, Any]:
    """Train LoRA with ``point``'s settings on the job's region; the hold-out and timings."""
    data = ctx.regions()[job["region"]]
    backbone, vocab, _ = load_backbone(ctx.ensure_backbone(job))
    train_cfg = replace(ctx.trains["adapt"], seed=seed, progress=False, lr=point["lr"],
                        weight_decay=point["weight_decay"], batch_size=point["batch_size"])
    options = {"r": point["r"], "lora_alpha": point["r"] * point["alpha_per_r"],
               "lora_dropout": point["lora_dropout"]}
    adapt_cfg = AdaptConfig(method="lora", region=job["region"], options=options,
                            neighbours_share=point["neighbours_share"])
    started = time.perf_counter()
    _, stats = train_region(backbone, vocab, data, adapt_cfg, train_cfg)
    return {"holdout_ndcg@10": round(served_holdout(stats), 4),
            "adapter_alone_holdout_ndcg@10": round(float(stats["best_valid_ndcg@10"]), 4),
            "neighbours": stats.get("neighbours"), "epochs_run": stats["epochs_run"],
            "trainable_params": stats["trainable_params"],
            "train_seconds": stats["train_seconds"],
            "wall_seconds": round(time.perf_counter() - started, 1)}


def parse(argv: list[str] | None):
    parser = study_parser(__doc__)
    parser.add_argument("--suite", default="wsdm")
    parser.add_argument("--setting", default=None, help="default: the suite's search block")
    parser.add_argument("--region", default=None, help="default: the suite's search block")
    parser.add_argument("--trials", type=int, default=None,
                        help="total trials (default: the suite's search.trials)")
    parser.add_argument("--timeout-minutes", type=float, default=None,
                        help="stop starting trials after this long (default: the suite's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--confirm-seeds", type=integers, default=[])
    parser.add_argument("--work", type=Path, default=Path("runs/search"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import optuna

    args = parse(argv)
    configure_logging()
    suite = load_suite(args.suite)
    budget = suite.get("search", {})
    setting = args.setting or budget.get("setting", "all-regions")
    region = args.region or budget.get("region", "t1")
    trials = args.trials if args.trials is not None else int(budget.get("trials", 16))
    minutes = (args.timeout_minutes if args.timeout_minutes is not None
               else float(budget.get("timeout_minutes", 60)))
    data_cfg, model_cfg, trains = suite_configs(suite)
    ctx = Context(suite, data_cfg, model_cfg, trains, Path("runs/bench") / suite["suite"])
    job = {"setting": setting, "region": region}
    name = f"search_{setting}_{region}"
    args.work.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(args.work / f"{name}.journal")))
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=args.seed),
                                load_if_exists=True)
    if not study.trials:
        study.enqueue_trial(defaults(suite))
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        point = suggest(trial)
        result = train_point(ctx, job, point, args.seed)
        for key, value in result.items():
            trial.set_user_attr(key, value)
        log.info("trial %d: %s -> %s", trial.number, point, result)
        return result["holdout_ndcg@10"]

    done = sum(t.state.is_finished() for t in study.trials)
    if done < trials:
        study.optimize(objective, n_trials=trials - done, timeout=minutes * 60)
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(finished, key=lambda t: (t.value, -t.number))
    confirm = []
    for seed in args.confirm_seeds:
        for label, point in (("default", defaults(suite)), ("best", dict(best.params))):
            result = train_point(ctx, job, point, seed)
            confirm.append({"label": label, "seed": seed, **result})
            log.info("confirm %s seed %d: %s", label, seed, result)
    results = {"meta": run_meta({"suite": args.suite, "setting": setting, "region": region}),
               "command": study_command("benchmarks.search", argv),
               "suite": args.suite, "setting": setting, "region": region, "seed": args.seed,
               "budget": {"trials": trials, "timeout_minutes": minutes},
               "space": {k: [kind, list(spec)] for k, (kind, spec) in SPACE.items()},
               "default": defaults(suite), "best_trial": best.number,
               "best": dict(best.params), "best_value": best.value,
               "trials": [{"number": t.number, "params": dict(t.params), "value": t.value,
                           **t.user_attrs} for t in finished],
               "confirm": confirm}
    out = RESULTS / f"{name}.json"
    write_results(results, out)
    (RESULTS / f"{name}.md").write_text(report(results))
    log.info("wrote %s (best trial %d: %.4f)", out, best.number, best.value)


def report(results: dict[str, Any]) -> str:
    trials = sorted(results["trials"], key=lambda t: -t["value"])
    rows = [[t["number"], *(_fmt(t["params"].get(k)) for k in SPACE), f"{t['value']:.4f}",
             f"{t.get('adapter_alone_holdout_ndcg@10', float('nan')):.4f}",
             t.get("neighbours"), t.get("epochs_run"), t.get("train_seconds")] for t in trials]
    lines = [f"# LoRA hyper-parameter search: {results['setting']} {results['region']}", "",
             f"- command: `{results['command']}`",
             f"- commit: `{results['meta'].get('git_commit')}`",
             f"- budget: {results['budget']['trials']} trials, "
             f"{results['budget']['timeout_minutes']} minutes (the suite's `search` block); "
             f"{len(trials)} completed; TPE seeded {results['seed']}; trial 0 = the defaults",
             "- objective: hold-out NDCG@10 as served (adapter + item-item part at its chosen "
             "weight); the official lists are never read", "",
             *table(["trial", *SPACE, "hold-out (served)", "adapter alone", "neighbours",
                     "epochs", "train s"], rows)]
    if results["confirm"]:
        by = confirmed(results)
        lines += ["", "## Best trial against the defaults, every seed (hold-out)", "",
                  f"Seed {results['seed']} is the search's own (trial 0 and the best trial); "
                  "the others are trained again with `--confirm-seeds`.", ""]
        lines += table(["settings", "seeds", "hold-out (served) per seed", "mean"],
                       [[label, len(v), ", ".join(f"{x:.4f}" for x in v),
                         f"{statistics.mean(v):.4f}"] for label, v in by.items()])
        gain = statistics.mean(by["best"]) - statistics.mean(by["default"])
        lines += ["", f"Verdict: best - default = {gain:+.4f} on the mean hold-out; "
                  + (f"the best trial's settings win by more than {ADOPT_MARGIN}."
                     if gain > ADOPT_MARGIN else
                     f"within {ADOPT_MARGIN} (the seeds' spread): the defaults stay.")]
    return "\n".join(lines) + "\n"


ADOPT_MARGIN = 0.001  # a mean hold-out gain below this is read as a tie (seeds differ by ~0.001)


def confirmed(results: dict[str, Any]) -> dict[str, list[float]]:
    """Hold-out NDCG@10 per seed of the defaults and of the best trial's settings: the
    search's own seed (trial 0, the best trial) first, then the ``--confirm-seeds`` runs."""
    values = {t["number"]: t["value"] for t in results["trials"]}
    by = {"default": [values[0]], "best": [values[results["best_trial"]]]}
    for row in results["confirm"]:
        by[row["label"]].append(row["holdout_ndcg@10"])
    return by


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
