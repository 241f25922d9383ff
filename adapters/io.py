"""Saving and loading adapters (the folder itself: :mod:`regiontune.adapters.folder`).

Writes are atomic; loads check the backbone fingerprint first.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regiontune.artifacts import ADAPTER_META, ArtifactError, atomic_dir, write_json
from regiontune.model.recmodel import RecModel
from regiontune.model.textenc import CACHE_FILE, TextEncoderError, TextVectors
from regiontune.model.vocab import ItemVocab

from .base import get_method
from .folder import WEIGHTS, AdapterFolder, write_files
from .item_item import attach_item_item
from .item_side import ItemSide
from .region_task import RegionTask
from .text_growth import attach_text_prior

logger = logging.getLogger(__name__)
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def weights_dtype(name: str, method: str = "lora") -> torch.dtype:
    """The torch dtype ``method``'s weights are saved in (``AdaptConfig.weights_dtype``);
    ``auto``: float16 for adapters, float32 for a method that copies the whole backbone."""
    whole = get_method(method).copies_backbone
    if name == "auto":
        name = "float32" if whole else "float16"
    if name not in WEIGHT_DTYPES:
        raise ValueError(f"unknown adapter weights dtype {name!r}; "
                         f"choose one of {['auto', *sorted(WEIGHT_DTYPES)]}")
    if whole and name != "float32":
        raise ValueError(f"{method} saves the whole model in float32, not {name}; "
                         "weights_dtype applies to adapters")
    return WEIGHT_DTYPES[name]


def round_trainable(task: nn.Module, dtype: torch.dtype) -> None:
    """Round the trainable weights to ``dtype`` in place (they stay float32 tensors), so the
    model evaluated after training is exactly the one a save in ``dtype`` then load gives."""
    with torch.no_grad():
        for param in task.parameters():
            if param.requires_grad and param.is_floating_point():
                param.copy_(param.to(dtype))


def save_adapter(task: RegionTask, method_name: str, adapter_name: str, meta: dict[str, Any],
                 directory: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write the adapter of ``task`` with its model card; returns the metadata written to
    ``region.json``. ``dtype`` other than float32 halves the weights file (see
    ``round_trainable``)."""
    from regiontune.artifacts.cards import write_card  # at call time (tests replace it)

    method = get_method(method_name)
    torch_dtype = weights_dtype(dtype, method_name)
    item_state = task.item_side.state()
    weights = method.weights(task.body, adapter_name)  # first: it may complete the config
    config = method.adapter_config(task.body, adapter_name)
    config["base_model_name_or_path"] = meta.get("backbone_path")
    text = getattr(task, "region_text", None)
    if text is not None:  # the region's own item text vectors, for its region-new items
        text = text.subset(task.item_side.new_items)
    with atomic_dir(directory) as tmp:
        write_files(tmp, config, {**weights, **item_state}, torch_dtype)
        extra = method.save_extras(task.body, adapter_name, tmp, config, item_state, torch_dtype)
        if text is not None and len(text):
            text.save(tmp / CACHE_FILE)
            extra = {**extra, "item_text": {"items": len(text), "encoder": text.encoder,
                                            "encoder_hash": text.encoder_hash}}
        meta = {**meta, "kind": "adapter", "method": method_name,
                "peft_loadable": method.peft_loadable,
                "weights_dtype": str(torch_dtype).removeprefix("torch."),
                "adapter_bytes": (tmp / WEIGHTS).stat().st_size,
                "catalogue": task.item_side.catalogue, "new_items": task.item_side.new_items,
                "item_rank": task.item_side.rank, "item_bias": task.item_side.has_bias,
                "neighbours": task.item_item.k if task.item_item is not None else 0,
                **({"text_prior": text_prior_dim(task.item_side)}
                   if text_prior_dim(task.item_side) else {}),
                **extra}
        write_json(tmp / ADAPTER_META, meta)
        write_card(tmp, meta, "adapter")
    logger.info("adapter saved to %s", directory)
    return meta


def text_prior_dim(item_side: nn.Module) -> int:
    """The width of the item side's text prior (``text_growth.TextPrior``; 0: none)."""
    prior = getattr(item_side, "text_prior", None)
    return 0 if prior is None else int(prior.weight.shape[0])


def build_item_side(folder: AdapterFolder, vocab: ItemVocab, hidden_size: int) -> ItemSide:
    """The region's item side as saved in ``folder`` (frozen)."""
    meta = folder.meta
    item_side = ItemSide(meta["catalogue"], vocab, hidden_size, int(meta.get("item_rank", 0)),
                         bool(meta.get("item_bias", True)))
    if int(meta.get("cf_rank", 0) or 0):
        raise ValueError(f"{folder.path.name}: its item-item part is the low-rank form of an "
                         "earlier regiontune (cf_rank), which this version no longer reads; "
                         "train the adapter again (the part is now the item's EASE neighbours)")
    attach_item_item(item_side, int(meta.get("neighbours", 0) or 0))
    attach_text_prior(item_side, int(meta.get("text_prior", 0) or 0))
    item_side.load(folder.tensors)
    for p in item_side.parameters():
        p.requires_grad_(False)
    return item_side


def read_region_text(directory: str | Path, backbone: RecModel) -> TextVectors | None:
    """The adapter's own item text vectors (``text_vectors.safetensors``: region-new items'
    text encoded at adapt or growth time), None when it has none. Vectors of another encoder
    than the backbone's are refused."""
    path = Path(directory) / CACHE_FILE
    if not path.is_file():
        return None
    try:
        text = TextVectors.load(path)
    except TextEncoderError as err:
        raise ArtifactError(str(err)) from err
    config = backbone.config
    if not getattr(config, "item_text", False):
        raise ArtifactError(f"{path}: item text vectors, but the backbone is id-only")
    if text.encoder_hash != config.text_encoder_hash or text.dim != config.text_dim:
        raise ArtifactError(f"{path}: made by encoder {text.encoder_hash}, the backbone's "
                            f"is {config.text_encoder_hash}")
    return text


def load_adapter(directory: str | Path, backbone: RecModel, vocab: ItemVocab,
                 backbone_fingerprint: str, name: str | None = None,
                 body: nn.Module | None = None) -> RegionTask:
    """Load an adapter onto ``backbone`` (adding it to ``body`` when given)."""
    folder = AdapterFolder.read(directory, backbone_fingerprint)
    method = get_method(folder.method)
    name = name or folder.region or "default"
    try:
        body = method.load(backbone, folder.config, folder.tensors, name, body)
        item_side = build_item_side(folder, vocab, backbone.config.hidden_size)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ArtifactError(f"{directory}: adapter weights do not fit ({err})") from err
    task = RegionTask(body, method.base_of(body), item_side,
                      text=read_region_text(directory, backbone))
    task.meta = folder.meta
    return task.eval()
