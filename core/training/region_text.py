"""Item text of a region at adapt time (issue 18): the catalogue's items that a text-aware
backbone's vocabulary and text cache do not know, but whose text the region's data provides
(the recipe's text, a ``--item-text`` side file, a text column), encoded with the backbone's
own encoder, so they enter training with the embedding of their text, not the id-only
fallback. The vectors are saved with the adapter (``text_vectors.safetensors``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from regiontune.adapters.folder import AdapterFolder
from regiontune.adapters.io import read_region_text
from regiontune.adapters.text_growth import encode_new_text, texts_to_encode
from regiontune.config import DataConfig
from regiontune.data.itemtext import data_item_text
from regiontune.model.recmodel import RecModel
from regiontune.model.textenc import TextVectors
from regiontune.model.vocab import ItemVocab

logger = logging.getLogger(__name__)


def region_text_vectors(backbone: RecModel, vocab: ItemVocab, meta: dict[str, Any],
                        data_cfg: DataConfig, catalogue: list[str],
                        parent: str | Path | None = None,
                        encoder: str | Path | None = None,
                        progress: bool = True) -> TextVectors | None:
    """The region's own text vectors for its region-new items: a refreshed ``parent``
    adapter's (its catalogue comes first) plus the data's texts of ``catalogue`` that the
    backbone's cache lacks, encoded now. None for an id-only backbone or when no such item has
    text."""
    if not getattr(backbone.config, "item_text", False):
        return None
    inherited = None
    if parent is not None:
        inherited = read_region_text(parent, backbone)
        catalogue = list(AdapterFolder.read(parent, weights=False).meta["catalogue"]) \
            + list(catalogue)
    texts = data_item_text(data_cfg)
    todo = texts_to_encode(backbone, vocab, texts, catalogue, inherited)
    if todo:
        logger.info("%d region-new item(s) have text the backbone's cache lacks: encoding it "
                    "with the backbone's encoder", len(todo))
    fresh = encode_new_text(backbone, meta, todo, encoder, progress)
    out = inherited.subset(catalogue) if inherited is not None else None
    if fresh is not None:
        out = fresh if out is None else out.updated(fresh)
    return out if out is not None and len(out) else None
