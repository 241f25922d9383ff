"""Backbone artefacts: save (atomic) and load, with vocabulary, metadata and fingerprint."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from regiontune.artifacts import (
    BACKBONE_META,
    ArtifactError,
    atomic_dir,
    fingerprint,
    load_safetensors,
    read_json,
    refuse_pickles,
    write_json,
)
from regiontune.model.recmodel import RecConfig, RecModel
from regiontune.model.textenc import CACHE_FILE, TextVectors
from regiontune.model.vocab import ItemVocab

logger = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
ARCH_KEYS = ("arch", "n_items", "hidden_size", "num_layers", "num_heads", "intermediate_size",
             "max_len", "dropout", "ordered")
# hashed only when item text is on, so an id-only backbone's fingerprint is what it always was
TEXT_KEYS = ("item_text", "text_dim", "text_encoder_hash", "text_id_dropout", "text_loss")


def backbone_fingerprint(model: RecModel) -> str:
    """Hash of the architecture config and every weight of the backbone (with item text: the
    encoder's hash and the vocabulary's text vectors too)."""
    config = {k: getattr(model.config, k) for k in ARCH_KEYS}
    state = model.state_dict()
    if getattr(model.config, "item_text", False):
        config.update({k: getattr(model.config, k) for k in TEXT_KEYS})
        state = {**state, "text_vectors": model.text_vectors, "has_text": model.has_text}
    return fingerprint(config, state)


def save_backbone(model: RecModel, vocab: ItemVocab, meta: dict[str, Any],
                  directory: str | Path) -> dict[str, Any]:
    """Write config, weights, vocabulary, metadata and card; a kill leaves the old copy intact."""
    from regiontune.artifacts.cards import write_card

    meta = {**meta, "kind": "backbone", "fingerprint": backbone_fingerprint(model),
            "n_items": len(vocab), "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if model.config.item_text:
            if model.text_bank is None:
                raise ArtifactError("an item-text backbone without its text vectors")
            model.text_bank.save(tmp / CACHE_FILE)
        vocab.save(tmp)
        write_json(tmp / BACKBONE_META, meta)
        write_card(tmp, meta, "backbone")
    logger.info("backbone saved to %s (%s)", directory, meta["fingerprint"])
    return meta


def load_backbone(directory: str | Path) -> tuple[RecModel, ItemVocab, dict[str, Any]]:
    """Load a saved backbone; missing, corrupt or pickle files are clear errors."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such backbone directory")
    refuse_pickles(directory)
    meta = read_json(directory / BACKBONE_META, "backbone metadata (not a regiontune backbone?)")
    config_dict = read_json(directory / "config.json", "backbone config")
    state = load_safetensors(directory / WEIGHTS)  # validates the file before transformers
    config = RecConfig.from_dict(config_dict)
    model = RecModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{directory / WEIGHTS}: weights do not match config.json "
                            f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.eval()
    vocab = ItemVocab.load(directory)
    if len(vocab) != config.n_items:
        raise ArtifactError(f"{directory}: items.json has {len(vocab)} items, config "
                            f"{config.n_items}")
    if config.item_text:
        text = TextVectors.load(directory / CACHE_FILE)
        if text.encoder_hash != config.text_encoder_hash or text.dim != config.text_dim:
            raise ArtifactError(f"{directory / CACHE_FILE}: made by encoder "
                                f"{text.encoder_hash}, the backbone was trained on "
                                f"{config.text_encoder_hash}")
        model.set_text_vectors(vocab.items, text)
    actual = backbone_fingerprint(model)
    if meta.get("fingerprint") != actual:
        raise ArtifactError(f"{directory}: weights fingerprint {actual} differs from the "
                            f"recorded {meta.get('fingerprint')}; the files were modified")
    return model, vocab, meta
