"""Item text for items added to a region without training (issue 18): catalogue growth and
adaptation encode the text of items a text-aware backbone's vocabulary and text cache do
not know with the backbone's own encoder; such an item's base row is the backbone's
projection of its text (:func:`~regiontune.adapters.region_task.text_rows`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from regiontune.model.recmodel import RecModel
from regiontune.model.textenc import (
    TextEncoder,
    TextVectors,
    backbone_encoder,
    encode_items,
    text_hash,
)
from regiontune.model.vocab import ItemVocab

from .item_side import PREFIX as ITEM_PREFIX
from .region_task import text_rows

logger = logging.getLogger(__name__)
# (added items, their backbone-known mask) -> (projected text rows [m, hidden], has text [m],
# the adapter's text prior for them [m] or None)
TextRowsOf = Callable[[list[str], torch.Tensor],
                      "tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None"]


class TextPrior(nn.Module):
    """The bias an item known by its text alone gets on top of the unseen-items offset:
    ``normalize(v) @ weight + bias`` for its text vector ``v`` -- a scaled ridge prediction of
    its (log) popularity in the region, plus the lift (``core/training/unseen.py``). Saved with
    the item side (``regiontune.item_side.text_prior.*``), so adaptation, growth and serving
    give such an item the same bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(dim))
        self.register_buffer("bias", torch.zeros(()))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return unit @ self.weight.float() + self.bias.float()


def attach_text_prior(item_side: nn.Module, dim: int) -> TextPrior | None:
    """Give ``item_side`` a text prior over ``dim``-wide text vectors (0: none)."""
    if dim <= 0:
        return None
    item_side.text_prior = TextPrior(dim).to(item_side.columns.device)
    return item_side.text_prior


def saved_text_prior(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     prefix: str = ITEM_PREFIX) -> TextPrior | None:
    """The text prior a saved adapter holds (``region.json: text_prior``, its width; the
    tensors ``<prefix>text_prior.*``), None when it has none."""
    dim = int(meta.get("text_prior", 0) or 0)
    if dim <= 0 or prefix + "text_prior.weight" not in tensors:
        return None
    prior = TextPrior(dim)
    prior.weight.copy_(tensors[prefix + "text_prior.weight"].float())
    prior.bias.copy_(tensors[prefix + "text_prior.bias"].float().reshape(()))
    return prior


def lifted_text_rows(meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                     vectors: torch.Tensor | None, has_text: torch.Tensor,
                     prefix: str = ITEM_PREFIX) -> tuple[torch.Tensor, torch.Tensor]:
    """Which rows of a saved item side hold a never-trained item known by its text alone, as
    the adapter's record gives it: such an item (catalogue row ``i``, ``has_text[i]``: a
    region-new item with a text vector ``vectors[i]``) keeps ``A`` row 0 and gets the bias
    ``unseen_offset`` plus its lift -- the adapter's text prior of its text when it holds one
    (``saved_text_prior``: it includes the lift), else ``text_lift`` (``lift_text_items``;
    growth gives items added with text alone the same; no lift recorded: none). Returns that
    mask and, per row, the lift (0 off the mask)."""
    n = len(has_text)
    bias = tensors.get(prefix + "bias")
    if bias is None or not bool(has_text.any()):
        return torch.zeros(n, dtype=torch.bool), torch.zeros(n)
    has_text = has_text.bool().cpu()
    prior = saved_text_prior(meta, tensors, prefix)
    if prior is not None and vectors is not None:
        with torch.no_grad():
            extra = prior(vectors.cpu()).float() * has_text
    else:
        extra = float(meta.get("text_lift") or 0.0) * has_text.float()
    offset = float(meta.get("unseen_offset") or 0.0)
    expected = offset + extra
    # the saved bias: the offset rounded to the weights' dtype, the lift added, rounded again;
    # the record's offset: 4 decimals
    eps = torch.finfo(bias.dtype).eps if bias.is_floating_point() else 0.0
    tolerance = 1e-3 * expected.abs().clamp(min=1.0) + eps * (abs(offset) + expected.abs())
    mask = has_text & ((bias.float().cpu() - expected).abs() <= tolerance)
    if prefix + "lowrank_a" in tensors:
        mask &= (tensors[prefix + "lowrank_a"] == 0).all(dim=1).cpu()
    return mask, extra * mask


def check_texts(texts: Mapping[str, str] | None, items: list[str]) -> dict[str, str]:
    """``texts`` as a plain dict; ValueError for a blank or non-string text, or a text of an
    item that is not among ``items``."""
    out: dict[str, str] = {}
    wanted = set(items)
    for item, text in (texts or {}).items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"the text of item {item!r} must be a non-empty string")
        if item not in wanted:
            raise ValueError(f"a text is given for item {item!r}, which is not among the items "
                             "to add")
        out[str(item)] = text.strip()
    return out


def texts_to_encode(backbone: RecModel, vocab: ItemVocab, texts: Mapping[str, str],
                    items: list[str], own: TextVectors | None = None) -> dict[str, str]:
    """The texts of ``items`` that need encoding: outside the vocabulary, and held neither by
    the backbone's cache nor by ``own`` (the region's vectors) with this very text."""
    bank = getattr(backbone, "text_bank", None)
    out = {}
    for item in dict.fromkeys(items):
        text = texts.get(item)
        if item in vocab.index or not text:
            continue
        held = [s.text_hash_of(item) for s in (bank, own) if s is not None]
        if text_hash(text) not in held:
            out[item] = text
    return out


def encode_new_text(backbone: RecModel, meta: dict[str, Any], todo: Mapping[str, str],
                    encoder: str | Path | TextEncoder | None = None,
                    progress: bool = True) -> TextVectors | None:
    """``todo``'s texts encoded by the backbone's encoder (None: nothing to encode)."""
    if not todo:
        return None
    if not isinstance(encoder, TextEncoder):
        encoder = backbone_encoder(backbone.config, meta, encoder)
    return encode_items(dict(todo), encoder, progress=progress)


def growth_text_rows(base: RecModel, meta: dict[str, Any], vocab: ItemVocab, added: list[str],
                     texts: Mapping[str, str] | None, own: TextVectors | None,
                     encoder: str | Path | TextEncoder | None = None,
                     fresh: TextVectors | None = None, prior: TextPrior | None = None
                     ) -> tuple[TextRowsOf | None, TextVectors | None]:
    """For a growth of ``added`` items: the ``text_rows_of`` callback of
    :func:`~regiontune.adapters.grow.plan_growth` and the vectors encoded now (saved with the
    adapter). ``own``: the adapter's own text vectors; ``fresh``: vectors the caller already
    encoded; ``prior``: the adapter's text prior (the added items' prior bias comes back as
    the callback's third value). An id-only backbone ignores ``texts`` (with a warning)."""
    texts = check_texts(texts, added) if texts else {}
    if not getattr(base.config, "item_text", False):
        if texts:
            logger.warning("the backbone is id-only: the text of %d item(s) is not used",
                           len(texts))
        return None, None
    if fresh is None:
        fresh = encode_new_text(base, meta, texts_to_encode(base, vocab, texts, added, own),
                                encoder, progress=False)
    merged = own if fresh is None else (fresh if own is None else own.updated(fresh))

    def rows_of(items: list[str], known: torch.Tensor):
        found = text_rows(base, items, known, merged)
        if found is None:
            return None
        vectors, has = found
        with torch.no_grad():
            rows = base.text_embedding(vectors).detach().float() * has[:, None]
            extra = None if prior is None else prior(vectors).detach() * has
        return rows, has, extra

    return rows_of, fresh
