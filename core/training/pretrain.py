"""Backbone pretraining on the pooled data of several regions."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from regiontune.config import DataConfig, ModelConfig, TrainConfig, to_dict
from regiontune.data.itemtext import load_item_text
from regiontune.data.recipes import load_regions
from regiontune.data.splits import RegionData, subsample_users
from regiontune.evaluation.evaluate import evaluate_task
from regiontune.model.backbone import save_backbone
from regiontune.model.recmodel import build_backbone
from regiontune.model.task import BackboneTask
from regiontune.model.textenc import CACHE_FILE, TextVectors, encode_items
from regiontune.model.vocab import ItemVocab
from regiontune.training.loop import fit, make_accelerator

logger = logging.getLogger(__name__)
VALID_CASES_PER_REGION = 1000  # enough for a stable early-stopping signal, fast on a CPU


def pooled_vocab(regions: dict[str, RegionData]) -> ItemVocab:
    """Every item of the pretraining regions, sorted (deterministic token ids)."""
    return ItemVocab(sorted({i for data in regions.values() for i in data.catalogue}))


def validation_fn(task: BackboneTask, regions: dict[str, RegionData]):
    """Mean validation NDCG@10 over regions (full ranking over each region's catalogue)."""

    def evaluate() -> dict[str, float]:
        per_region = [evaluate_task(task, d.catalogue, d.valid[:VALID_CASES_PER_REGION])
                      for d in regions.values()]
        return {"ndcg@10": sum(m["ndcg@10"] for m in per_region) / len(per_region)}

    return evaluate


def test_metrics(task, regions: dict[str, RegionData]) -> dict[str, dict]:
    """Reported metrics per region on its test cases, with the protocol used."""
    out = {}
    for name, data in regions.items():
        if data.test:
            out[name] = {**evaluate_task(task, data.catalogue, data.test),
                         "protocol": data.protocol}
    return out


def text_options(model_cfg: ModelConfig, text: TextVectors | None) -> dict[str, Any]:
    """The backbone config's item-text settings (none when item text is off)."""
    if not model_cfg.item_text:
        return {}
    if text is None:
        raise ValueError("model.item_text is on: the item text vectors are needed "
                         "(core/model/textenc.py: encode_items)")
    return {"item_text": True, "text_dim": text.dim, "text_encoder": text.encoder,
            "text_encoder_hash": text.encoder_hash,
            "text_id_dropout": model_cfg.text_id_dropout, "text_loss": model_cfg.text_loss,
            "text_loss_negatives": model_cfg.text_loss_negatives}


def item_text_vectors(data_cfg: DataConfig, model_cfg: ModelConfig,
                      cache: str | Path | None = None,
                      progress: bool = True) -> TextVectors | None:
    """The data's item text encoded by the configured encoder (``cache`` reused and
    refreshed); None when item text is off."""
    if not model_cfg.item_text:
        return None
    texts = load_item_text(data_cfg)
    return encode_items(texts, model_cfg.text_encoder, cache, progress=progress)


def train_backbone(regions: dict[str, RegionData], model_cfg: ModelConfig,
                   train_cfg: TrainConfig, work: str | Path | None = None, resume: bool = False,
                   accelerator=None, desc: str = "pretrain", text: TextVectors | None = None):
    """Build a backbone over the regions' pooled items and train it; returns (task, result).

    Also the ``scratch`` baseline: the same architecture trained on one region alone. With
    ``model_cfg.item_text`` the items' ``text`` vectors feed a learned projection.
    """
    set_seed(train_cfg.seed)  # initial weights follow the run's seed
    vocab = pooled_vocab(regions)
    ordered = all(d.ordered for d in regions.values())
    model = build_backbone(len(vocab), ordered=ordered, arch=model_cfg.arch,
                           hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers,
                           num_heads=model_cfg.num_heads,
                           intermediate_size=model_cfg.intermediate_size,
                           max_len=model_cfg.max_len, dropout=model_cfg.dropout,
                           set_orders=model_cfg.set_orders,
                           **text_options(model_cfg, text))
    if model.config.item_text:
        model.set_text_vectors(vocab.items, text)
    task = BackboneTask(model, vocab, train_cfg.num_negatives)
    sequences = [vocab.encode(h) for d in regions.values() for h in d.train.values()]
    sequences = [s for s in sequences if len(s) >= 2]
    result = fit(task, sequences, validation_fn(task, regions), train_cfg, work, resume,
                 accelerator=accelerator, desc=desc)
    result.sequences = len(sequences)
    return task, result


def pretrain(data_cfg: DataConfig, model_cfg: ModelConfig, train_cfg: TrainConfig,
             out: str | Path, resume: bool = False, fraction: float = 1.0,
             extra_meta: dict[str, Any] | None = None, desc: str = "pretrain") -> dict[str, Any]:
    """Pretrain a backbone on ``data_cfg.regions`` pooled and save it to ``out``.

    ``fraction`` keeps a seeded share of each region's training users (``subsample_users``, as
    adaptation does; evaluation keeps every user); ``extra_meta`` is added to the metadata. With
    one region this is the ``scratch`` model an adapter is compared against.
    """
    regions = {name: subsample_users(data, fraction, train_cfg.seed)
               for name, data in load_regions(data_cfg).items()}
    accelerator = make_accelerator(train_cfg)
    out = Path(out)
    work = out.parent / f"{out.name}.work"  # checkpoints live beside, not inside, the artefact
    text = None
    if model_cfg.item_text:
        work.mkdir(parents=True, exist_ok=True)
        text = item_text_vectors(data_cfg, model_cfg, work / CACHE_FILE, train_cfg.progress)
        extra_meta = {**(extra_meta or {}), "item_text": {
            "encoder": text.encoder, "encoder_hash": text.encoder_hash, "items": len(text),
            "dim": text.dim, "encode_seconds": round(text.seconds, 1)}}
    started = time.perf_counter()
    task, result = train_backbone(regions, model_cfg, train_cfg, work, resume, accelerator,
                                  desc=desc, text=text)
    seconds = time.perf_counter() - started
    meta = {"regions": sorted(regions), "data": {r: d.stats() for r, d in regions.items()},
            "train": {"best_valid_ndcg@10": result.best_metric, "best_epoch": result.best_epoch,
                      "epochs_run": result.epochs_run, "stopped": result.stopped,
                      "seconds": round(seconds, 1), "sequences": result.sequences,
                      "fraction": fraction},
            **(extra_meta or {}),
            "config": to_dict(data_cfg, model_cfg, train_cfg)}
    if accelerator.is_main_process:
        meta["metrics"] = test_metrics(task, regions)
        meta = save_backbone(task.model, task.vocab, meta, out)
    accelerator.wait_for_everyone()
    return meta
