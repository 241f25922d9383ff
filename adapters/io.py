"""Adapter directories: PEFT's two-file layout plus region metadata and a model card.

``adapter_config.json`` + ``adapter_model.safetensors`` (which also holds the item-side
tensors under ``regiontune.item_side.*``; plain PEFT ignores those keys), ``region.json`` and
``README.md``. Writes are atomic; loads check the backbone fingerprint first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from regiontune.artifacts import (
    ADAPTER_META,
    ArtifactError,
    BackboneMismatchError,
    atomic_dir,
    load_safetensors,
    read_json,
    refuse_pickles,
    write_json,
)
from regiontune.model.recmodel import RecModel
from regiontune.model.vocab import ItemVocab

from .base import get_method
from .item_side import ItemSide
from .region_task import RegionTask

logger = logging.getLogger(__name__)
CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LORA_EXPORT = "lora_export"  # AdaLoRA adapters also ship as plain LoRA (for mixed batches)
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weights_dtype(name: str, method: str = "lora") -> torch.dtype:
    """The torch dtype ``method``'s weights are saved in (``AdaptConfig.weights_dtype``);
    ``auto``: float16 for adapters, float32 for full fine-tuning."""
    if name == "auto":
        name = "float32" if method == "full" else "float16"
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"unknown adapter weights dtype {name!r}; "
                         f"choose one of {['auto', *sorted(WEIGHT_DTYPES)]}")
    if method == "full" and name != "float32":
        raise ValueError(f"full fine-tuning saves the whole model in float32, not {name}; "
                         "weights_dtype applies to adapters")
    return WEIGHT_DTYPES[name]


def round_trainable(task: nn.Module, dtype: torch.dtype) -> None:
    """Round the trainable weights to ``dtype`` in place (they stay float32 tensors), so the
    model evaluated after training is exactly the one a save in ``dtype`` then load gives."""
    with torch.no_grad():
        for param in task.parameters():
            if param.requires_grad and param.is_floating_point():
                param.copy_(param.to(dtype))


def _cast(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}


def save_adapter(task: RegionTask, method_name: str, adapter_name: str, meta: dict[str, Any],
                 directory: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write the adapter of ``task``; returns the metadata written to ``region.json``.

    ``dtype`` other than float32 halves the weights file (see ``round_trainable``)."""
    from regiontune.artifacts.cards import write_card

    method = get_method(method_name)
    torch_dtype = weights_dtype(dtype, method_name)
    tensors = _cast({**method.weights(task.body, adapter_name), **task.item_side.state()},
                    torch_dtype)
    config = method.adapter_config(task.body, adapter_name)
    config["base_model_name_or_path"] = meta.get("backbone_path")
    with atomic_dir(directory) as tmp:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
        if method_name == "adalora":
            _write_lora_export(task, adapter_name, tmp / LORA_EXPORT, config, torch_dtype)
        meta = {**meta, "kind": "adapter", "method": method_name,
                "weights_dtype": str(torch_dtype).removeprefix("torch."),
                "adapter_bytes": (tmp / WEIGHTS).stat().st_size,
                "catalogue": task.item_side.catalogue, "new_items": task.item_side.new_items,
                "item_rank": task.item_side.rank, "item_bias": task.item_side.has_bias}
        if method_name == "adalora":
            meta["rank_pattern"] = {k: int(sum(v)) for k, v in config["rank_pattern"].items()}
        write_json(tmp / ADAPTER_META, meta)
        write_card(tmp, meta, "adapter")
    logger.info("adapter saved to %s", directory)
    return meta


def _write_lora_export(task: RegionTask, name: str, directory: Path, config: dict,
                       dtype: torch.dtype) -> None:
    from .adalora import export_lora

    lora_config, tensors = export_lora(task.body, name)
    lora_config["base_model_name_or_path"] = config.get("base_model_name_or_path")
    directory.mkdir()
    save_file(_cast({**tensors, **task.item_side.state()}, dtype), str(directory / WEIGHTS),
              metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(lora_config, indent=2, default=str) + "\n")


def read_adapter(directory: str | Path, backbone_fingerprint: str | None = None
                 ) -> tuple[dict, dict, dict]:
    """Validate and read an adapter directory: (region meta, adapter config, tensors).

    The backbone fingerprint is checked before any weight is read.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such adapter directory")
    refuse_pickles(directory)
    meta = read_json(directory / ADAPTER_META, "region metadata (region.json)")
    recorded = meta.get("backbone_fingerprint")
    if backbone_fingerprint is not None and recorded != backbone_fingerprint:
        raise BackboneMismatchError(str(recorded), backbone_fingerprint, str(directory))
    config = read_json(directory / CONFIG, "adapter config")
    get_method(meta.get("method", "?"))  # unknown method: clear error before loading weights
    tensors = load_safetensors(directory / WEIGHTS)
    return meta, config, tensors


def load_adapter(directory: str | Path, backbone: RecModel, vocab: ItemVocab,
                 backbone_fingerprint: str, name: str | None = None,
                 body: nn.Module | None = None) -> RegionTask:
    """Load an adapter onto ``backbone`` (adding it to ``body`` when given)."""
    meta, config, tensors = read_adapter(directory, backbone_fingerprint)
    method = get_method(meta["method"])
    name = name or meta.get("region", "default")
    try:
        body = method.load(backbone, config, tensors, name, body)
        item_side = ItemSide(meta["catalogue"], vocab, backbone.config.hidden_size,
                             int(meta.get("item_rank", 0)), bool(meta.get("item_bias", True)))
        item_side.load(tensors)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ArtifactError(f"{directory}: adapter weights do not fit ({err})") from err
    for p in item_side.parameters():
        p.requires_grad_(False)
    task = RegionTask(body, method.base_of(body), item_side)
    task.meta = meta
    return task.eval()
