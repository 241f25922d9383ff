"""Region adaptation: frozen backbone + a new adapter trained on one region's data alone.

Refresh (``init_from``): an existing adapter continued on new data. Same backbone (checked by
fingerprint before anything is trained or written), the parent's method and options, the
parent's item side with the new data's items appended (old rows kept exactly, new rows as a
fresh adapter starts them), a new optimizer and schedule, early stopping as usual; the saved
metadata records the lineage (parent, data period, metrics before and after). Optional
replay (``adapt_cfg.replay``): a seeded share of the parent's training histories trained again
with the new data (training/replay.py). Context (``adapt_cfg.refresh_context``): each user's
earlier items (the parent's and its ancestors' data) ahead of the new ones, read as input, never
a target; the hold-out and test cases read them too (training/context.py).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from regiontune.adapters import (
    ItemSide,
    RegionTask,
    count_trainable,
    get_method,
    load_adapter,
    save_adapter,
)
from regiontune.adapters.folder import WEIGHTS, AdapterFolder
from regiontune.adapters.io import build_item_side, round_trainable, weights_dtype
from regiontune.adapters.item_item import attach_item_item
from regiontune.artifacts import ADAPTER_META, BACKBONE_META, ArtifactError
from regiontune.config import AdaptConfig, DataConfig, TrainConfig, to_dict
from regiontune.data.recipes import load_data
from regiontune.data.splits import RegionData, subsample_users
from regiontune.evaluation.evaluate import evaluate_task
from regiontune.model.backbone import load_backbone
from regiontune.model.recmodel import RecModel
from regiontune.model.textenc import TextVectors
from regiontune.model.vocab import ItemVocab
from regiontune.training.budget import auto_item_rank, neighbours_for
from regiontune.training.context import (
    context_cases,
    context_histories,
    context_record,
    context_sequences,
    parent_context,
)
from regiontune.training.distill import fit_teacher
from regiontune.training.item_item import fit_item_item
from regiontune.training.loop import epoch_steps, fit, make_accelerator
from regiontune.training.pool import region_pool
from regiontune.training.region_text import region_text_vectors
from regiontune.training.replay import (
    check_replay,
    parent_training_histories,
    refresh_train_config,
    replay_record,
    sample_replay,
)
from regiontune.training.unseen import (
    calibrate_unseen,
    lift_text_items,
    trained_items,
    unlift_parent_items,
)

logger = logging.getLogger(__name__)
VALID_CASES = 1000
# a refresh whose new data is at least this share of all data so far gets a warning: on the
# ml-100k refresh study the refresh reached 93.5% of a retrained adapter where the new data
# was 50% of all (benchmarks/results/refresh.md, period 1) and >= 97% at every share from 11%
# to 33% (refresh.md periods 2-3, refresh_increments.md)
RETRAIN_HINT_SHARE = 0.4


def build_region_task(backbone: RecModel, vocab: ItemVocab, catalogue: list[str],
                      adapt_cfg: AdaptConfig, total_steps: int = 1000,
                      num_negatives: int = 0) -> RegionTask:
    """Attach a fresh adapter of ``adapt_cfg.method`` and an item-side part to the backbone."""
    method = get_method(adapt_cfg.method)
    for p in backbone.parameters():
        p.requires_grad_(False)
    body = method.attach(backbone, dict(adapt_cfg.options), adapt_cfg.region or "default",
                         total_steps)
    base = method.base_of(body)
    scale = float(backbone.item_table()[0].detach().std())
    own_body = None if method.copies_backbone else body
    neighbours = neighbours_for(backbone, own_body, len(catalogue), adapt_cfg)
    rank = adapt_cfg.item_rank
    if rank < 0:
        rank = auto_item_rank(backbone, own_body, len(catalogue), adapt_cfg, neighbours)
    item_side = ItemSide(catalogue, vocab, backbone.config.hidden_size, rank,
                         adapt_cfg.item_bias, scale=scale)
    # scores nothing (weight 0) until fit_item_item fills it after training
    attach_item_item(item_side, neighbours)
    return RegionTask(body, base, item_side, num_negatives)


def region_sequences(task: RegionTask, data: RegionData) -> list[list[int]]:
    sequences = [task.vocab.encode(h) for h in data.train.values()]
    return [s for s in sequences if len(s) >= 2]


# ---------------------------------------------------------------- refresh: the parent adapter

def parent_method(init_from: str | Path) -> str:
    """The method of the adapter at ``init_from`` (metadata only; a clear error when the folder
    is not an adapter)."""
    return read_parent(init_from).trained_method


def read_parent(init_from: str | Path, backbone_fingerprint: str | None = None, *,
                weights: bool = False) -> AdapterFolder:
    """The adapter a refresh continues; with ``backbone_fingerprint``, one of another backbone
    is refused before any weight is read."""
    path = Path(init_from)
    if (path / BACKBONE_META).is_file() and not (path / ADAPTER_META).is_file():
        raise ArtifactError(f"--init-from {path}: a backbone directory, not an adapter; "
                            "--init-from takes the adapter directory to refresh (the backbone "
                            "goes to --backbone)")
    return AdapterFolder.read(path, backbone_fingerprint, weights=weights)


def file_digest(path: Path) -> str:
    """``sha256:`` of a file's bytes (names the exact weights a refresh started from)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def parent_options(parent: AdapterFolder, arch: str, options: dict[str, Any]) -> dict[str, Any]:
    """The parent's method options; options given for the refresh must agree with them."""
    method = get_method(parent.trained_method)
    saved = {**method.default_options(arch), **parent.meta.get("options", {})}
    differ = {k: v for k, v in options.items() if saved.get(k) != v}
    if differ:
        raise ValueError(f"a refresh continues the parent's adapter: options {differ} differ "
                         f"from the parent's {saved}; drop them")
    return saved


def copy_trainable(source: torch.nn.Module, target: torch.nn.Module, method: str) -> None:
    """Every trainable tensor of ``target`` (a freshly attached adapter) takes the value of the
    same-named tensor of ``source`` (the parent, loaded). A method whose loaded form differs
    from its trainable form cannot be continued: a clear error names the tensor."""
    loaded = dict(source.named_parameters())
    with torch.no_grad():
        for name, param in target.named_parameters():
            if not param.requires_grad:
                continue
            old = loaded.get(name)
            if old is None or old.shape != param.shape:
                found = "missing" if old is None else f"of shape {tuple(old.shape)}"
                raise ValueError(
                    f"the {method} adapter cannot be continued: its trainable tensor {name} "
                    f"{tuple(param.shape)} is {found} in the saved parent (its saved form "
                    "differs from its trainable form); train a new adapter instead")
            param.copy_(old.to(param.dtype))


def continue_region_task(backbone: RecModel, vocab: ItemVocab, parent: AdapterFolder,
                         catalogue: list[str], adapt_cfg: AdaptConfig, total_steps: int = 1000,
                         num_negatives: int = 0,
                         fresh_out: dict[str, torch.Tensor] | None = None) -> RegionTask:
    """The parent adapter (read with its weights), trainable again, over its catalogue plus the
    items of ``catalogue`` it lacks (appended). Before training it scores the parent's items
    exactly as the parent does. ``fresh_out`` receives the trainable tensors a fresh adapter
    of the method starts from (what :func:`shrink_toward` shrinks toward)."""
    method = get_method(parent.trained_method)
    for p in backbone.parameters():
        p.requires_grad_(False)
    options = parent_options(parent, backbone.config.arch, adapt_cfg.options)
    name = adapt_cfg.region or parent.region or "default"
    # the parent is loaded on a copy (PEFT wraps a backbone in place), the fresh trainable
    # adapter attached to the backbone itself, then given the parent's values
    donor = method.load(copy.deepcopy(backbone), parent.config, parent.tensors, name)
    body = method.attach(backbone, options, name, total_steps)
    if fresh_out is not None:
        fresh_out.update({n: p.detach().clone() for n, p in body.named_parameters()
                          if p.requires_grad})
    copy_trainable(donor, body, method.name)
    del donor
    hidden = backbone.config.hidden_size
    parent_side = build_item_side(parent, vocab, hidden)
    item_side = parent_side.extended(catalogue, vocab, hidden)
    # the item-item part: the parent's, extended (so the refresh starts as the parent
    # scores), or a new one; fitted again on the new data once training ends
    parent_part = getattr(parent_side, "item_item", None)
    if parent_part is not None:
        item_side.item_item = parent_part.extended(len(item_side.catalogue))
    else:
        attach_item_item(item_side, neighbours_for(
            backbone, None if method.copies_backbone else body, len(item_side.catalogue),
            adapt_cfg))
    return RegionTask(body, method.base_of(body), item_side, num_negatives)


def shrink_toward(task: RegionTask, fresh: dict[str, torch.Tensor], keep: float) -> None:
    """A refresh's start, shrunk toward a fresh adapter (``AdaptConfig.refresh_shrink``): each
    trainable tensor of the body becomes ``keep * itself + (1 - keep) * fresh``, the item
    side's per-item low-rank rows and biases ``keep * themselves`` (a fresh item side starts
    them at zero; its shared low-rank basis is kept)."""
    with torch.no_grad():
        for name, param in task.body.named_parameters():
            if param.requires_grad and name in fresh:
                param.mul_(keep).add_(fresh[name].to(param.device, param.dtype), alpha=1 - keep)
        side = task.item_side
        for tensor in (side.lowrank_a, side.bias):
            if tensor is not None:
                tensor.mul_(keep)


def check_shrink(keep: float) -> None:
    if not (math.isfinite(keep) and 0 < keep <= 1):
        raise ValueError(f"refresh_shrink must be in (0, 1] (the parent's share of a "
                         f"refresh's starting weights; 1: the parent's exactly), not {keep}")


PARENT_ITEMS = "\0parent-catalogue"  # a pseudo-history: the items the parent already knows


def train_region(backbone: RecModel, vocab: ItemVocab, data: RegionData, adapt_cfg: AdaptConfig,
                 train_cfg: TrainConfig, work: str | Path | None = None, resume: bool = False,
                 accelerator=None, parent: AdapterFolder | None = None,
                 replay: dict[str, list[str]] | None = None, text: TextVectors | None = None,
                 context: dict[str, list[str]] | None = None,
                 pool: tuple[list[list[str]], dict[str, Any]] | None = None
                 ) -> tuple[RegionTask, dict[str, Any]]:
    """Train one region's adapter (on ``adapt_cfg.fraction`` of its users); returns task, stats.

    ``parent`` (an adapter folder read with its weights, on this backbone): continue it
    instead of starting a new adapter (a refresh). Its catalogue comes first, the data's new
    items after; validation ranks over that whole catalogue; the items the parent knows stay
    in the training softmax, and only items neither the parent nor the new data has seen are
    calibrated as unseen. ``replay`` (with ``parent``): the parent's training histories, of
    which ``adapt_cfg.replay`` (seeded) join the training data (training/replay.py).
    ``text``: the region's own item text vectors (training/region_text.py). ``context``
    (user -> earlier items, what ``adapt`` loads when ``adapt_cfg.refresh_context``): each
    training history is read after the user's earlier items, the loss on the history's own
    items alone; the hold-out cases read them too (training/context.py). ``pool``: what
    ``training/pool.py: region_pool`` returns -- other regions' histories (the backbone's
    pretraining data) read by the item-item part's EASE at ``adapt_cfg.neighbour_pool``, and
    its record (why there are none, when the data was not there).
    """
    if adapt_cfg.neighbour_pool < 0:
        raise ValueError(f"adapt.neighbour_pool must be >= 0 (0: the region's own histories "
                         f"alone), got {adapt_cfg.neighbour_pool}")
    check_replay(adapt_cfg.replay, parent.path if parent is not None else None)
    check_shrink(adapt_cfg.refresh_shrink)
    if parent is not None:
        train_cfg = refresh_train_config(train_cfg, adapt_cfg.refresh_lr,
                                         adapt_cfg.refresh_patience, adapt_cfg.refresh_epochs,
                                         adapt_cfg.refresh_evals_per_pass)
    if parent is not None and adapt_cfg.method != parent.trained_method:
        raise ValueError(f"method {adapt_cfg.method!r} differs from the parent adapter's "
                         f"{parent.trained_method!r}: a refresh continues the parent's method")
    # a typo (or float16 for full) fails before any training
    dtype = weights_dtype(adapt_cfg.weights_dtype, adapt_cfg.method)
    if adapt_cfg.calibrate_unseen and not adapt_cfg.item_bias:
        raise ValueError("calibrate_unseen needs the item bias, where the offset is stored: "
                         "set item_bias: true, or calibrate_unseen: false")
    set_seed(train_cfg.seed)  # the adapter's initial weights too follow the run's seed
    data = subsample_users(data, adapt_cfg.fraction, train_cfg.seed)
    replayed = {}
    if parent is not None and adapt_cfg.replay > 0:
        if replay is None:
            raise ValueError("replay needs the parent's training histories")
        replayed = sample_replay(replay, adapt_cfg.replay, train_cfg.seed,
                                 list(parent.meta["catalogue"]) + data.catalogue)
        data = replace(data, train={**data.train, **replayed})
    if context is not None:  # the hold-out reads each user's earlier items, as serving does
        data = replace(data, valid=context_cases(data.valid, context))
    n_seq = sum(1 for u, h in data.train.items()
                if len(h) >= 2 or (h and context and context.get(u)))
    total_steps = train_cfg.epochs * max(1, epoch_steps(n_seq, train_cfg))
    known = dict(data.train)  # what counts as trained: the data's items (and the parent's)
    # a shrunk refresh keeps the fresh adapter's values to shrink toward (full: a whole copy)
    fresh = {} if parent is not None and adapt_cfg.refresh_shrink < 1 else None
    if parent is None:
        task = build_region_task(backbone, vocab, data.catalogue, adapt_cfg, total_steps,
                                 train_cfg.num_negatives)
    else:
        task = continue_region_task(backbone, vocab, parent, data.catalogue, adapt_cfg,
                                    total_steps, train_cfg.num_negatives, fresh)
    if text is not None:
        task.set_region_text(text)
    if parent is not None:  # the parent's lift off the items it lifted: unseen, lifted anew
        unlifted = set(unlift_parent_items(task, parent))
        known[PARENT_ITEMS] = [i for i in parent.meta["catalogue"] if i not in unlifted]
    catalogue = task.item_side.catalogue  # the data's catalogue, or the parent's extended
    if not adapt_cfg.unseen_as_negatives:
        task.restrict_negatives(trained_items(known))
    started = time.perf_counter()  # the teacher's fitting counts as training time
    distilled = {}
    if adapt_cfg.distill > 0:
        task.teacher, more = fit_teacher(data.train, task.item_side.catalogue,
                                              data.valid[:VALID_CASES], adapt_cfg.distill)
        distilled = {**distilled, **more}
    sequences = (region_sequences(task, data) if context is None else
                 context_sequences(task.vocab, data.train, context, task.max_len, task.ordered,
                                   adapt_cfg.refresh_context_loss))
    method = get_method(adapt_cfg.method)
    result = fit(task, sequences,
                 lambda: evaluate_task(task, catalogue, data.valid[:VALID_CASES]),
                 train_cfg, work, resume, step_hooks=method.step_hooks(task.body),
                 accelerator=accelerator, desc=f"adapt {data.region} ({adapt_cfg.method})",
                 eval_at_start=adapt_cfg.start_as_candidate,
                 on_start=(lambda: shrink_toward(task, fresh, adapt_cfg.refresh_shrink))
                 if fresh is not None else None)
    task.teacher = None  # training only
    calibration = (calibrate_unseen(task, catalogue, known, data.valid[:VALID_CASES])
                   if adapt_cfg.calibrate_unseen else {})
    round_trainable(task, dtype)  # evaluated == saved, also for float16 adapters
    # with context, the part is fitted on all periods so far (training/context.py)
    part_data = (data if context is None else
                 replace(data, train=context_histories(data, context)))
    pool_histories, pool_record = pool or ([], {})
    blended = fit_item_item(task, part_data, data.valid[:VALID_CASES], dtype,
                            adapt_cfg.max_neighbour_catalogue, pool_histories,
                            adapt_cfg.neighbour_pool)
    if "unavailable" in pool_record and "item_item_pool" in blended:
        blended["item_item_pool"]["unavailable"] = pool_record["unavailable"]
    # item text: the text-only never-trained items' lift, last: after all that scores
    lifted = lift_text_items(task, catalogue, known, data.valid[:VALID_CASES],
                             adapt_cfg.text_lift_budget, dtype)
    stats = {**calibration, **distilled, **blended, **lifted,
             "train_seconds": round(time.perf_counter() - started, 2),
             "trainable_params": count_trainable(task),
             # in passes over the data (fractions of one with train.epoch_parts > 1)
             "best_epoch": passes(result.best_epoch, train_cfg.epoch_parts),
             "epochs_run": passes(result.epochs_run, train_cfg.epoch_parts),
             "evaluations": (result.epochs_run // train_cfg.eval_every
                             + int(adapt_cfg.start_as_candidate)),
             "stopped": result.stopped,
             "best_valid_ndcg@10": result.best_metric, "train_users": len(data.train),
             # tokens one epoch reads (each sequence cut to the model's window): a cost
             # measure free of the machine's load
             "epoch_tokens": sum(min(len(q), task.max_len + 1) for q in sequences)}
    if parent is not None and adapt_cfg.replay > 0:
        stats["replay"] = replay_record(adapt_cfg.replay, replayed)
    if context is not None:
        stats["context"] = context_record(context, data.train)
    return task, stats


def passes(epochs: int, parts: int) -> int | float:
    """Epochs of ``parts`` to a pass, counted in passes (an int when whole)."""
    return epochs // parts if epochs % parts == 0 else round(epochs / parts, 2)


def adapt(backbone_dir: str | Path, data_cfg: DataConfig, adapt_cfg: AdaptConfig,
          train_cfg: TrainConfig, out: str | Path, resume: bool = False,
          init_from: str | Path | None = None,
          text_encoder: str | Path | None = None) -> dict[str, Any]:
    """Load the backbone, train ``adapt_cfg.region``'s adapter, evaluate it, save it to ``out``.

    ``init_from``: refresh that adapter on this data instead (see the module's docstring);
    every check (an adapter, the same method, the same backbone) passes before anything is
    trained or written. ``text_encoder``: the backbone's text encoder folder, when not where
    pretraining recorded it (training/region_text.py).
    """
    if not adapt_cfg.region:
        raise ValueError("name the region to adapt to (--region)")
    get_method(adapt_cfg.method)  # fail fast on a typo, before loading anything
    check_replay(adapt_cfg.replay, init_from)
    out = Path(out)
    replay = context = None
    if init_from is not None:
        if Path(init_from).resolve() == out.resolve():
            raise ValueError("--out must differ from --init-from: the parent adapter stays as "
                             "the refreshed one's lineage")
        method = read_parent(init_from).trained_method  # metadata only: before the backbone
        if adapt_cfg.method != method:
            raise ValueError(f"--method {adapt_cfg.method} differs from the parent adapter's "
                             f"method {method}: a refresh continues the parent's method "
                             "(drop --method)")
        if adapt_cfg.replay > 0:  # the parent's data, reloaded before anything is trained
            replay = parent_training_histories(read_parent(init_from))
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    parent = (read_parent(init_from, bmeta["fingerprint"], weights=True)
              if init_from is not None else None)
    if parent is not None and adapt_cfg.refresh_context:
        # the users' earlier items: the lineage's data, reloaded once the parent is known to
        # be of this backbone and before anything is trained or written
        context = parent_context(parent)
    data_cfg = copy.deepcopy(data_cfg)
    data_cfg.regions = [adapt_cfg.region]
    regions, summary = load_data(data_cfg)
    data = regions[adapt_cfg.region]
    earlier = None if context is None else sum(map(len, context.values()))
    share = new_share(summary.rows, earlier)
    if share is not None and share >= RETRAIN_HINT_SHARE:
        logger.warning("the new data is %.0f%% of all data so far (%s new interactions, %s "
                       "earlier): with new data about as large as the old, a refresh fell "
                       "short of a new adapter trained on everything (README, Region "
                       "life-cycle); consider adapt without --init-from on all the data",
                       100 * share, f"{summary.rows:,}", f"{earlier:,}")
    if context is not None:  # test cases read each user's earlier items, as serving does
        data = replace(data, test=context_cases(data.test, context))
    before = None
    if parent is not None:  # the parent as it serves today, on the new data's test cases
        parent_task = load_adapter(init_from, copy.deepcopy(backbone), vocab, bmeta["fingerprint"])
        catalogue = parent_task.item_side.catalogue
        catalogue = catalogue + [i for i in data.catalogue if i not in set(catalogue)]
        before = evaluate_task(parent_task, catalogue, data.test)
        del parent_task
    text = region_text_vectors(backbone, vocab, bmeta, data_cfg, data.catalogue, init_from,
                               text_encoder, train_cfg.progress)
    pool = region_pool(bmeta, adapt_cfg.region, adapt_cfg.neighbour_pool)
    accelerator = make_accelerator(train_cfg)
    task, stats = train_region(backbone, vocab, data, adapt_cfg, train_cfg,
                               out.parent / f"{out.name}.work", resume, accelerator, parent,
                               replay, text, context, pool)
    meta = {"region": adapt_cfg.region, "protocol": data.protocol,
            "backbone_fingerprint": bmeta["fingerprint"],
            "backbone_path": str(Path(backbone_dir).resolve()),
            "backbone_repo": bmeta.get("hub", {}).get("repo_id"),
            "dataset": data_cfg.recipe, **stats,
            "trained_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "total_params": sum(p.numel() for p in task.parameters()),
            "options": {**get_method(adapt_cfg.method).default_options(backbone.config.arch),
                        **(parent.meta.get("options", {}) if parent else {}),
                        **adapt_cfg.options},
            "config": to_dict(data_cfg, adapt_cfg, train_cfg)}
    if accelerator.is_main_process:
        # a refresh ranks over its whole catalogue (the parent's and the new items), as served
        catalogue = task.item_side.catalogue if parent is not None else data.catalogue
        meta["metrics"] = evaluate_task(task, catalogue, data.test)
        if parent is not None:
            meta["lineage"] = lineage(parent, out, summary.time_range, summary.rows,
                                      len(catalogue) - len(parent.meta["catalogue"]),
                                      before, meta["metrics"])
            meta["lineage"]["replay"] = stats.get("replay")
            meta["lineage"]["context"] = stats.get("context")
            meta["lineage"]["new_share"] = None if share is None else round(share, 4)
        meta = save_adapter(task, adapt_cfg.method, adapt_cfg.region or "default", meta, out,
                            adapt_cfg.weights_dtype)
    accelerator.wait_for_everyone()
    return meta


def new_share(rows: int, earlier: int | None) -> float | None:
    """The new data's share of all data so far: its ``rows`` interactions against the
    ``earlier`` items context reloaded (the parent's and its ancestors' data); None without
    context (``earlier`` None: the earlier data is not read then)."""
    if earlier is None:
        return None
    total = rows + earlier
    return rows / total if total else None


def lineage(parent: AdapterFolder, out: Path, time_range: tuple[str, str] | None, rows: int,
            new_items: int, before: dict | None, after: dict) -> dict[str, Any]:
    """What a refreshed adapter came from: the parent (its path relative to the new adapter's
    folder, a hash of its weights file, when it was trained), the data it was refreshed on
    (time range when the data has timestamps, else None), and the test metrics of the parent
    and of the refreshed adapter on that data's test cases (same catalogue: the refreshed
    adapter's; the parent cannot score the items it lacks)."""
    meta = parent.meta
    trained_at = meta.get("trained_at") or datetime.fromtimestamp(
        (parent.path / WEIGHTS).stat().st_mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = {"path": os.path.relpath(parent.path.resolve(), out.resolve()),
             "name": parent.path.resolve().name, "region": parent.region,
             "method": parent.trained_method,
             "weights_sha256": file_digest(parent.path / WEIGHTS), "trained_at": trained_at}
    previous = meta.get("lineage") or {}
    return {"parent": entry, "generation": int(previous.get("generation", 0)) + 1,
            "ancestors": [entry, *previous.get("ancestors", [])][:20],
            "data_period": ({"start": time_range[0], "end": time_range[1], "timezone": "UTC"}
                            if time_range else None),
            "interactions": rows, "kept_items": len(meta["catalogue"]), "new_items": new_items,
            "metrics_before": before, "metrics_after": after}
