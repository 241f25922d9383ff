"""One benchmark job: train/fit one method on one region at one data fraction and seed."""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from benchmarks.common import backbone_name, setting_model, settings
from benchmarks.meta import PeakRSS
from regiontune.adapters import count_trainable, save_adapter
from regiontune.adapters.item_item import ItemItem
from regiontune.artifacts import BACKBONE_META, read_json
from regiontune.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig
from regiontune.data.recipes import load_regions
from regiontune.data.splits import RegionData, subsample_users
from regiontune.evaluation.baselines import fit_baseline
from regiontune.evaluation.evaluate import ScoreFn, allowed_mask, case_ranks, task_scores
from regiontune.evaluation.metrics import metrics_from_ranks
from regiontune.model.backbone import load_backbone
from regiontune.model.task import BackboneTask
from regiontune.training.adapt import VALID_CASES, train_region
from regiontune.training.item_item import blend_weight, ease_weights
from regiontune.training.pool import region_pool
from regiontune.training.pretrain import pretrain, train_backbone
from regiontune.training.unseen import trained_items

log = logging.getLogger("benchmarks")
BASELINE_METHODS = ("popularity", "itemknn", "ease")
TARGET_ONLY = (*BASELINE_METHODS, "scratch", "scratch-nb")  # never read the backbone
BACKBONE_SHAPE = ("hidden_size", "num_layers", "num_heads", "intermediate_size")  # recorded


@dataclass
class Context:
    """What jobs share: the suite, the split data, the (cached) pretrained backbone."""

    suite: dict[str, Any]
    data_cfg: DataConfig
    model_cfg: ModelConfig
    trains: dict[str, TrainConfig]
    work: Path

    def __post_init__(self) -> None:
        self._regions: dict[str, RegionData] | None = None

    def backbone_dir(self, job: dict[str, Any]) -> Path:
        """The backbone a job's setting pretrains for its target."""
        return self.work / backbone_name(settings(self.suite)[job["setting"]][job["region"]],
                                         setting_model(self.suite, job["setting"]))

    def regions(self) -> dict[str, RegionData]:
        if self._regions is None:
            cfg = replace(self.data_cfg, regions=list(self.suite["targets"]))
            self._regions = load_regions(cfg)
        return self._regions

    def ensure_backbone(self, job: dict[str, Any]) -> Path:
        """Pretrain the job's backbone once (resumable); later jobs and runs reuse it."""
        directory = self.backbone_dir(job)
        if not (directory / "regiontune.json").is_file():
            markets = settings(self.suite)[job["setting"]][job["region"]]
            log.info("pretraining the backbone on %s", markets)
            cfg = replace(self.data_cfg, regions=markets)
            model = replace(self.model_cfg, **setting_model(self.suite, job["setting"]))
            pretrain(cfg, model, self.trains["pretrain"], directory, resume=True)
        return directory

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        data = self.regions()[job["region"]]
        directory = None if job["method"] in TARGET_ONLY else self.ensure_backbone(job)
        with PeakRSS() as rss:
            record = self._dispatch(job, data, directory)
        if directory is not None:
            meta = load_backbone_meta(directory)
            record["pretrain_regions"] = sorted(meta.get("regions", []))
            record["backbone_model"] = {k: meta["config"]["model"][k] for k in BACKBONE_SHAPE}
            record["backbone_bytes"] = (directory / "model.safetensors").stat().st_size
        device = "cuda:" + torch.cuda.get_device_name(0) if (
            torch.cuda.is_available() and not self.trains["adapt"].cpu) else "cpu"
        return {"protocol": data.protocol, "backbone_bytes": None,
                "peak_rss_mb": rss.mb, "device": device, **record}

    def _dispatch(self, job: dict[str, Any], data: RegionData,
                  backbone_dir: Path | None) -> dict[str, Any]:
        method = job["method"]
        if method in BASELINE_METHODS:
            return baseline_job(method, data, job["data_fraction"], job["seed"])
        if method == "zero-shot":
            backbone, vocab, _ = load_backbone(backbone_dir)
            task = BackboneTask(backbone, vocab)
            return {**evaluate_task_record(task, data), "trainable_params": 0,
                    "total_params": _params(task), "adapter_bytes": 0, "train_seconds": 0.0}
        train_cfg = replace(self.trains["scratch" if method.startswith("scratch") else "adapt"],
                            seed=job["seed"],
                            **self.suite.get("method_train", {}).get(method, {}))
        if method == "scratch":
            return scratch_job(data, job["data_fraction"], self.model_cfg, train_cfg)
        if method == "scratch-nb":
            return scratch_nb_job(data, job["data_fraction"], self.model_cfg, train_cfg)
        options = copy.deepcopy(self.suite.get("method_options", {}).get(method, {}))
        adapt_cfg = AdaptConfig(method=method, region=job["region"],
                                fraction=job["data_fraction"], options=options,
                                **self.suite.get("item_side", {}))
        return adapter_job(backbone_dir, data, adapt_cfg, train_cfg)


def load_backbone_meta(directory: Path) -> dict:
    return read_json(directory / BACKBONE_META, "backbone metadata")


def _metrics(m: dict) -> dict:
    return {"ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"], "mrr": m["mrr"],
            "eval_users": m["users"]}


def never_trained(data: RegionData) -> torch.Tensor:
    """Mask over the test cases: True where the positive never occurs in a training history."""
    trained = trained_items(data.train)
    return torch.tensor([c.target not in trained for c in data.test], dtype=torch.bool)


def evaluate_record(score_fn: ScoreFn, data: RegionData) -> dict[str, Any]:
    """Metrics on every test case, plus NDCG@10 on the never-trained positives alone: how a
    model scores items it never saw in the region decides those cases. Each case is scored
    once; the subset's metrics come from the same ranks."""
    ranks = case_ranks(score_fn, data.catalogue, data.test)
    cold = never_trained(data)
    record = _metrics(metrics_from_ranks(ranks))
    record["never_trained_users"] = int(cold.sum())
    record["ndcg@10_never_trained"] = (metrics_from_ranks(ranks[cold])["ndcg@10"]
                                       if cold.any() else None)
    return record


def evaluate_task_record(task, data: RegionData) -> dict[str, Any]:
    return evaluate_record(partial(task_scores, task, catalogue=data.catalogue), data)


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def baseline_job(method: str, data: RegionData, fraction: float = 1.0,
                 seed: int = 0) -> dict[str, Any]:
    """A classic baseline fitted on the job's share of the users (tuned on its hold-out)."""
    started = time.perf_counter()
    sub = subsample_users(data, fraction, seed)
    scorer, info = fit_baseline(method, sub)
    seconds = time.perf_counter() - started
    metrics = evaluate_record(scorer.score, data)
    n = len(data.catalogue)
    params = {"popularity": n, "ease": n * n,
              "itemknn": int(scorer.sim.nnz) if method == "itemknn" else None}
    return {**metrics, "trainable_params": params[method],
            "total_params": params[method], "adapter_bytes": None,
            "train_seconds": round(seconds, 2), "train_users": len(sub.train), "info": info}


def scratch_job(data: RegionData, fraction: float, model_cfg: ModelConfig,
                train_cfg: TrainConfig) -> dict[str, Any]:
    """The same architecture trained on the target region's (sub-sampled) data alone."""
    region = subsample_users(data, fraction, train_cfg.seed)
    started = time.perf_counter()
    task, result = train_backbone({data.region: region}, model_cfg, train_cfg, desc="scratch")
    seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in task.model.state_dict().items()}, str(path))
        size = path.stat().st_size
    return {**evaluate_task_record(task, data), "trainable_params": count_trainable(task),
            "total_params": _params(task), "adapter_bytes": size,
            "train_seconds": round(seconds, 2),
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch}


SCRATCH_NEIGHBOURS = 8  # scratch-nb's k: top 8 kept nearly all of the blend's gain
                        # (results/item_item.md); as many as LoRA gets on t1, more than on t2


def scratch_nb_job(data: RegionData, fraction: float, model_cfg: ModelConfig,
                   train_cfg: TrainConfig) -> dict[str, Any]:
    """``scratch`` plus the item-item part the adapters carry (adapters/item_item.py): the
    transformer trained on the target alone, then blended with the top-8 EASE neighbours of
    the same training users, its weight chosen on the same hold-out (0 allowed) -- so a
    comparison with the adapters credits the pretrained backbone, not the part."""
    region = subsample_users(data, fraction, train_cfg.seed)
    started = time.perf_counter()
    task, result = train_backbone({data.region: region}, model_cfg, train_cfg, desc="scratch")
    catalogue = list(data.catalogue)
    index = {item: i for i, item in enumerate(catalogue)}
    holdout = [c for c in region.valid[:VALID_CASES] if c.target in index]
    part = ItemItem(len(catalogue), SCRATCH_NEIGHBOURS)
    b, lam, _ = ease_weights(region.train, catalogue, holdout)
    part.init_from(b)
    del b

    def rows(histories):
        return part.rows([[index.get(i, -1) for i in h] for h in histories])

    histories = [c.history for c in holdout]
    target = torch.tensor([index[c.target] for c in holdout])
    w, unit, found = blend_weight(task_scores(task, histories, catalogue), rows(histories),
                                  allowed_mask(holdout, index, True), target)

    def score(histories):
        return task_scores(task, histories, catalogue) + (w * unit) * rows(histories)

    seconds = time.perf_counter() - started
    return {**evaluate_record(score, data), "trainable_params": count_trainable(task),
            "total_params": _params(task), "adapter_bytes": None,
            "train_seconds": round(seconds, 2), "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "neighbours": SCRATCH_NEIGHBOURS,
            "item_item_weight": w * unit, "item_item_lambda": lam,
            "item_item_holdout_ndcg@10": {str(k): round(v, 4) for k, v in found.items()}}


def adapter_job(backbone_dir: Path, data: RegionData, adapt_cfg: AdaptConfig,
                train_cfg: TrainConfig) -> dict[str, Any]:
    """Train an adapter (or a full fine-tuned copy) on a fresh copy of the backbone."""
    backbone, vocab, meta = load_backbone(backbone_dir)
    # the item-item part reads the backbone's other regions, as `regiontune adapt` does
    task, stats = train_region(backbone, vocab, data, adapt_cfg, train_cfg,
                               pool=region_pool(meta, adapt_cfg.region, adapt_cfg.neighbour_pool))
    metrics = evaluate_task_record(task, data)
    with tempfile.TemporaryDirectory() as tmp:
        saved = save_adapter(task, adapt_cfg.method, adapt_cfg.region,
                             {"region": adapt_cfg.region,
                              "backbone_fingerprint": meta["fingerprint"]}, Path(tmp) / "a",
                             adapt_cfg.weights_dtype)
    return {**metrics, "trainable_params": stats["trainable_params"],
            "total_params": _params(task), "adapter_bytes": saved["adapter_bytes"],
            "train_seconds": stats["train_seconds"], "epochs_run": stats["epochs_run"],
            "best_epoch": stats["best_epoch"], "train_users": stats["train_users"],
            "best_valid_ndcg@10": stats["best_valid_ndcg@10"],
            "new_items": len(task.item_side.new_items),
            "unseen_items": unseen_mode(adapt_cfg), "unseen_offset": stats.get("unseen_offset"),
            **{k: stats[k] for k in ("neighbours", "item_item_weight", "item_item_lambda",
                                     "item_item_holdout_ndcg@10", "item_item_seconds",
                                     "item_item_pool", "item_item_ease_holdout_ndcg@10")
               if k in stats}}


def unseen_mode(cfg: AdaptConfig) -> str:
    """How the job scored items absent from its training data (benchmarks/unseen_items.py)."""
    if cfg.unseen_as_negatives:
        return "negatives+calibrate" if cfg.calibrate_unseen else "negatives"
    return "calibrate" if cfg.calibrate_unseen else "ignore"
