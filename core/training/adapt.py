"""Region adaptation: frozen backbone + a new adapter trained on one region's data alone."""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from regiontune.adapters import ItemSide, RegionTask, count_trainable, get_method, save_adapter
from regiontune.adapters.io import round_trainable, weights_dtype
from regiontune.adapters.item_side import PREFIX
from regiontune.config import AdaptConfig, DataConfig, TrainConfig, to_dict
from regiontune.data.recipes import load_regions
from regiontune.data.splits import RegionData, subsample_users
from regiontune.evaluation.evaluate import evaluate_task
from regiontune.model.backbone import load_backbone
from regiontune.model.recmodel import RecModel
from regiontune.model.vocab import ItemVocab
from regiontune.training.distill import fit_teacher
from regiontune.training.loop import epoch_steps, fit, make_accelerator
from regiontune.training.unseen import calibrate_unseen, trained_items

logger = logging.getLogger(__name__)
VALID_CASES = 1000


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
    rank = adapt_cfg.item_rank
    if rank < 0:
        rank = auto_item_rank(backbone, None if method.copies_backbone else body,
                              len(catalogue), adapt_cfg)
    item_side = ItemSide(catalogue, vocab, backbone.config.hidden_size, rank,
                         adapt_cfg.item_bias, scale=scale)
    return RegionTask(body, base, item_side, num_negatives)


def auto_item_rank(backbone: RecModel, body, n_items: int, adapt_cfg: AdaptConfig) -> int:
    """Largest item rank keeping the adapter within ``item_budget`` of the backbone's size.

    Each catalogue item costs ``rank + 1`` numbers (its row of ``A`` and its bias), so big
    catalogues get a smaller rank (the size/quality trade-off on WSDM:
    benchmarks/results/rank_sweep.md).
    """
    # in numbers of the adapter's dtype: a float16 adapter fits twice as many in the budget
    # of the (float32) backbone's bytes
    number_bits = torch.finfo(weights_dtype(adapt_cfg.weights_dtype, adapt_cfg.method)).bits
    per_number = torch.finfo(torch.float32).bits // number_bits
    # the adapter's tensors, which PEFT injects into the backbone's own module tree
    trainable = ([(n, p) for n, p in body.named_parameters() if p.requires_grad]
                 if body is not None else [])
    adapter = {id(p) for _, p in trainable}
    own = sum(p.numel() for p in backbone.parameters() if id(p) not in adapter)
    budget = adapt_cfg.item_budget * per_number * own
    used = sum(p.numel() for _, p in trainable)
    # the file's JSON header takes room too (one entry per tensor: ~4 KB for a LoRA of WSDM's
    # backbone, a few ranks' worth of a small catalogue), counted in numbers of the dtype
    names = [n for n, _ in trainable] + ITEM_SIDE_NAMES
    used += math.ceil(8 * header_bytes(names) / number_bits)
    hidden = backbone.config.hidden_size
    rank = int((budget - used - n_items) // (n_items + hidden))
    return max(1, min(adapt_cfg.max_item_rank, rank))


# safetensors header: 8-byte length, {"__metadata__": {"format": "pt"}}, then per tensor
# "name": {"dtype": "F16", "shape": [a, b], "data_offsets": [x, y]} -- at most ~90 bytes
# besides the name (the parameter names are longer than the saved ones: PEFT drops the
# adapter name), padded to 8 bytes
HEADER_FIXED, HEADER_PER_TENSOR = 64, 96
ITEM_SIDE_NAMES = [PREFIX + n for n in ("lowrank_a", "lowrank_b", "bias")]


def header_bytes(tensor_names: list[str]) -> int:
    """An upper bound of the safetensors header size for tensors of these names."""
    return HEADER_FIXED + sum(len(n) + HEADER_PER_TENSOR for n in tensor_names)


def region_sequences(task: RegionTask, data: RegionData) -> list[list[int]]:
    sequences = [task.vocab.encode(h) for h in data.train.values()]
    return [s for s in sequences if len(s) >= 2]


def train_region(backbone: RecModel, vocab: ItemVocab, data: RegionData, adapt_cfg: AdaptConfig,
                 train_cfg: TrainConfig, work: str | Path | None = None, resume: bool = False,
                 accelerator=None) -> tuple[RegionTask, dict[str, Any]]:
    """Train one region's adapter (on ``adapt_cfg.fraction`` of its users); returns task, stats."""
    # a typo (or float16 for full) fails before any training
    dtype = weights_dtype(adapt_cfg.weights_dtype, adapt_cfg.method)
    if adapt_cfg.calibrate_unseen and not adapt_cfg.item_bias:
        raise ValueError("calibrate_unseen needs the item bias, where the offset is stored: "
                         "set item_bias: true, or calibrate_unseen: false")
    set_seed(train_cfg.seed)  # the adapter's initial weights too follow the run's seed
    data = subsample_users(data, adapt_cfg.fraction, train_cfg.seed)
    n_seq = sum(1 for h in data.train.values() if len(h) >= 2)
    total_steps = train_cfg.epochs * max(1, epoch_steps(n_seq, train_cfg))
    task = build_region_task(backbone, vocab, data.catalogue, adapt_cfg, total_steps,
                             train_cfg.num_negatives)
    if not adapt_cfg.unseen_as_negatives:
        task.restrict_negatives(trained_items(data.train))
    started = time.perf_counter()  # the teacher's fitting counts as training time
    distilled = {}
    if adapt_cfg.distill > 0:
        task.teacher, distilled = fit_teacher(data.train, task.item_side.catalogue,
                                              data.valid[:VALID_CASES], adapt_cfg.distill)
    sequences = region_sequences(task, data)
    method = get_method(adapt_cfg.method)
    result = fit(task, sequences,
                 lambda: evaluate_task(task, data.catalogue, data.valid[:VALID_CASES]),
                 train_cfg, work, resume, step_hooks=method.step_hooks(task.body),
                 accelerator=accelerator, desc=f"adapt {data.region} ({adapt_cfg.method})",
                 eval_at_start=adapt_cfg.start_as_candidate)
    task.teacher = None  # training only
    calibration = (calibrate_unseen(task, data.catalogue, data.train, data.valid[:VALID_CASES])
                   if adapt_cfg.calibrate_unseen else {})
    round_trainable(task, dtype)  # evaluated == saved, also for float16 adapters
    stats = {**calibration, **distilled, "train_seconds": round(time.perf_counter() - started, 2),
             "trainable_params": count_trainable(task), "best_epoch": result.best_epoch,
             "epochs_run": result.epochs_run, "stopped": result.stopped,
             "best_valid_ndcg@10": result.best_metric, "train_users": len(data.train)}
    return task, stats


def adapt(backbone_dir: str | Path, data_cfg: DataConfig, adapt_cfg: AdaptConfig,
          train_cfg: TrainConfig, out: str | Path, resume: bool = False) -> dict[str, Any]:
    """Load the backbone, train ``adapt_cfg.region``'s adapter, evaluate it, save it to ``out``."""
    if not adapt_cfg.region:
        raise ValueError("name the region to adapt to (--region)")
    get_method(adapt_cfg.method)  # fail fast on a typo, before loading anything
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    data_cfg = copy.deepcopy(data_cfg)
    data_cfg.regions = [adapt_cfg.region]
    data = load_regions(data_cfg)[adapt_cfg.region]
    accelerator = make_accelerator(train_cfg)
    out = Path(out)
    task, stats = train_region(backbone, vocab, data, adapt_cfg, train_cfg,
                               out.parent / f"{out.name}.work", resume, accelerator)
    meta = {"region": adapt_cfg.region, "protocol": data.protocol,
            "backbone_fingerprint": bmeta["fingerprint"],
            "backbone_path": str(Path(backbone_dir).resolve()),
            "backbone_repo": bmeta.get("hub", {}).get("repo_id"),
            "dataset": data_cfg.recipe, **stats,
            "total_params": sum(p.numel() for p in task.parameters()),
            "options": {**get_method(adapt_cfg.method).default_options(backbone.config.arch),
                        **adapt_cfg.options},
            "config": to_dict(data_cfg, adapt_cfg, train_cfg)}
    if accelerator.is_main_process:
        meta["metrics"] = evaluate_task(task, data.catalogue, data.test)
        meta = save_adapter(task, adapt_cfg.method, adapt_cfg.region or "default", meta, out,
                            adapt_cfg.weights_dtype)
    accelerator.wait_for_everyone()
    return meta
