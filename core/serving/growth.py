"""Catalogue growth of a loaded region (:meth:`CatalogueGrowth.grow`), a base class of the
:class:`~regiontune.serving.recommender.Recommender`: items added to a served adapter without
retraining (:mod:`regiontune.adapters.grow`), hot-swapped in, persisted on request.

It works on the recommender's served state (``_snapshot``, ``_load_lock``, ``_lru``), its
``_swap`` and ``_evict``, and its backbone ``vocab`` and ``fingerprint``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import torch

from regiontune.adapters import AdapterFolder, get_method
from regiontune.adapters.grow import Growth, calibrated_offset, plan_growth, write_grown
from regiontune.adapters.item_side import PREFIX as ITEM_SIDE_PREFIX
from regiontune.adapters.text_growth import (
    check_texts,
    encode_new_text,
    growth_text_rows,
    texts_to_encode,
)
from regiontune.artifacts import ArtifactError
from regiontune.model.recmodel import N_SPECIAL, RecModel
from regiontune.model.textenc import TextEncoder, TextEncoderError, TextVectors, backbone_encoder
from regiontune.model.vocab import ItemVocab
from regiontune.serving.entries import RegionEntry
from regiontune.serving.errors import (
    InvalidRequestError,
    PersistError,
    TextEncodingError,
    UnknownRegionError,
    check_region,
)
from regiontune.serving.item_text import grown_text

logger = logging.getLogger("regiontune.serving.recommender")


def plan_entry_growth(entry: RegionEntry, items: Iterable[str], vocab: ItemVocab,
                      histories: Iterable[Sequence[str]] = (), text_rows_of=None) -> Growth:
    """The rows ``items`` would get in ``entry``'s item side (:func:`plan_growth` on the
    loaded factors; ``vocab``: the backbone's; ``text_rows_of``: item text,
    ``adapters/text_growth.py``). An item-item part is refused (ValueError)."""
    known = entry.columns >= 0
    base_bias = entry.base_bias
    bias = base_bias[entry.columns.clamp(min=0).long()] * known
    if entry.item_bias is not None:
        bias = bias + entry.item_bias

    def rows(index: torch.Tensor) -> torch.Tensor:
        columns = entry.columns[index].long()
        out = entry.base_embed[N_SPECIAL + columns.clamp(min=0)] * (columns >= 0)[:, None]
        if entry.item_a is not None:
            out = out + entry.item_a[index] @ entry.item_b
        if entry.text_slot is not None:  # new items' text rows
            slot = entry.text_slot[index].long()
            out = out + entry.text_rows[slot.clamp(min=0)] * (slot >= 0)[:, None]
        return out

    return plan_growth(entry.vocab.items, items, vocab=vocab, rows=rows, effective_bias=bias,
                       base_table=entry.base_embed[N_SPECIAL:], base_bias=base_bias,
                       lowrank_b=entry.item_b, has_bias=entry.item_bias is not None,
                       unseen_offset=calibrated_offset(entry.meta), histories=histories,
                       text_rows_of=text_rows_of,
                       text_lift=float(entry.meta.get("text_lift") or 0.0))


def grown_entry(entry: RegionEntry, growth: Growth, **record: Any) -> RegionEntry:
    """A new entry: ``entry`` with ``growth``'s items appended (old rows, the same values),
    routing to the same adapter (shared through ``ref``)."""
    vocab = ItemVocab(entry.vocab.items + growth.added)
    columns = torch.cat([entry.columns, growth.columns.to(torch.int32)])
    item_a = None if entry.item_a is None else torch.cat([entry.item_a, growth.a_rows])
    item_bias = None if entry.item_bias is None else torch.cat([entry.item_bias,
                                                                  growth.bias_rows])
    meta = {**entry.meta, "n_new_items": int(entry.meta.get("n_new_items", 0))
            + len(growth.region_new),
            "grown": [*(entry.meta.get("grown") or []), growth.record(**record)]}
    # the item-item part: new items get no neighbours and no old item lists them
    neighbours = {} if entry.nb_index is None else {
        "nb_index": torch.cat([entry.nb_index, entry.nb_index.new_zeros(len(growth.added),
                                                                         entry.neighbours)]),
        "nb_value": torch.cat([entry.nb_value, entry.nb_value.new_zeros(len(growth.added),
                                                                         entry.neighbours)])}
    new = dataclasses.replace(entry, vocab=vocab, columns=columns, item_a=item_a,
                              item_bias=item_bias, meta=meta, loaded_at=time.time(), **neighbours,
                              **grown_text(entry, growth))
    meta["tensor_bytes"] = int(entry.meta.get("tensor_bytes") or 0) + new.item_bytes() \
        - entry.item_bytes()
    entry.ref.take()
    return new


def entry_base(entry: RegionEntry, backbone: RecModel) -> RecModel:
    """The model whose text projection ``entry``'s items use: the backbone, or the base of
    the region's own body (a fully fine-tuned copy has its own)."""
    if entry.body is None or entry.body is backbone:
        return backbone
    return get_method(entry.served_as).base_of(entry.body)


class CatalogueGrowth:
    """Growing a loaded region's catalogue (see the module docstring)."""

    _encoder_lock = threading.Lock()
    # item text of grow calls: the encoder's folder (None: where pretraining recorded it;
    # ``regiontune serve --text-encoder``) and the seconds one call's encoding may take
    # (``--text-deadline``); texts are encoded by one worker thread, off the request's
    text_encoder_path: str | Path | None = None
    text_deadline_s: float = 60.0
    _encoding: ThreadPoolExecutor | None = None

    def text_encoder(self) -> TextEncoder:
        """The backbone's text encoder, loaded once (TextEncoderError: missing, malformed, or
        not the backbone's)."""
        with self._encoder_lock:
            if getattr(self, "_text_encoder", None) is None:
                self._text_encoder = backbone_encoder(self.backbone.config, self.meta,
                                                      self.text_encoder_path)
            return self._text_encoder

    def _encode_bounded(self, todo: Mapping[str, str]) -> TextVectors | None:
        """``todo`` encoded on the encoding thread, waiting at most ``text_deadline_s`` (one
        call's texts at a time: a second waits for the first within its own deadline)."""
        with self._encoder_lock:
            if self._encoding is None:
                self._encoding = ThreadPoolExecutor(1, thread_name_prefix="regiontune-text")
            pool = self._encoding
        future = pool.submit(lambda: encode_new_text(self.backbone, self.meta, todo,
                                                     self.text_encoder(), progress=False))
        try:
            return future.result(timeout=self.text_deadline_s)
        except FutureTimeout as err:
            future.cancel()  # still queued: dropped; running: finishes, its result unused
            raise TextEncodingError(f"encoding the texts of {len(todo)} item(s) took longer "
                                    f"than the server's {self.text_deadline_s:g} s; send "
                                    "fewer texts per call") from err

    def grow(self, region: str, items: Sequence[str],
             histories: Iterable[Sequence[str]] = (),
             persist_to: str | Path | None = None,
             texts: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Add ``items`` to the catalogue of ``region``'s loaded adapter without retraining
        (:mod:`regiontune.adapters.grow`; ``histories``: item sets in which new items
        co-occur with catalogue items) and hot-swap the grown adapter in: requests in flight
        finish with the old one, old items keep their rows.

        In memory only, unless ``persist_to`` names the adapter's folder: it is then rewritten
        (atomically) first, provided it still holds exactly the loaded item side (not replaced
        on disk, not grown in memory before), else :class:`PersistError` and nothing changes.
        An unloaded or lazily evicted region reloads from its folder: what was not persisted
        is lost. Items already in the catalogue are skipped; none left, a blank id, an empty
        list: :class:`InvalidRequestError`.

        ``texts`` (item -> text): with a text-aware backbone, a region-new item with text and
        no co-occurrence starts as the embedding of its text (encoded here, before the lock,
        by the backbone's encoder; persisted with the adapter)."""
        check_region(region)
        fresh = self._encode_texts(items, texts)
        with self._load_lock:
            entry = self._snapshot.get(region)
            if entry is None:
                raise UnknownRegionError(f"region {region!r} is not loaded")
            try:
                base = entry_base(entry, self.backbone)
                text_rows_of, _ = growth_text_rows(base, self.meta, self.vocab, list(items),
                                                   texts, None, fresh=fresh,
                                                   prior=entry.text_prior)
                growth = plan_entry_growth(entry, items, self.vocab, histories, text_rows_of)
            except ValueError as err:
                raise InvalidRequestError(str(err)) from err
            if fresh is not None:  # the vectors of the items actually added, to persist
                growth.text = fresh.subset(growth.region_new)
            if persist_to is not None:
                growth = self._persist(entry, growth, Path(persist_to))
            new = grown_entry(entry, growth, persisted=persist_to is not None)
            self._swap(region, new, evictable=region in self._lru)
            self._evict(keep=region)
        logger.info("region %s: %d item(s) added (%s)", region, len(growth.added),
                    "persisted" if persist_to is not None else "in memory only")
        return {"region": region, "added": growth.added, "already_present": growth.already,
                "n_items": len(new.vocab), "persisted": persist_to is not None,
                "path": new.path, **{k: v for k, v in new.meta["grown"][-1].items()
                                     if k in ("embedding", "bias", "cooccurrences",
                                              "projection_kept")}}

    def _encode_texts(self, items: Sequence[str], texts: Mapping[str, str] | None
                      ) -> TextVectors | None:
        """The texts of ``items`` the backbone's cache lacks, encoded by its encoder (loaded
        once, on first use); None: nothing to encode (or an id-only backbone)."""
        if not texts or not getattr(self.backbone.config, "item_text", False):
            return None
        try:
            todo = texts_to_encode(self.backbone, self.vocab, check_texts(texts, list(items)),
                                   list(items))
            if not todo:
                return None
            return self._encode_bounded(todo)
        except TextEncoderError as err:  # the server's encoder: its paths stay in the log
            logger.error("cannot encode item text: %s", err)
            raise TextEncodingError("the server cannot encode item text: the backbone's text "
                                    "encoder is not available (see the server log); grow "
                                    "without texts") from err
        except ValueError as err:
            raise InvalidRequestError(str(err)) from err

    def _persist(self, entry: RegionEntry, growth: Growth, directory: Path) -> Growth:
        """Write the grown adapter over ``directory`` (which must hold what ``entry``
        serves); the growth as saved (rows rounded to the file's dtype)."""
        try:
            folder = AdapterFolder.read(directory, self.fingerprint)
            served = AdapterFolder.read(directory, self.fingerprint, serving=True)
        except ArtifactError as err:
            raise PersistError(f"cannot persist to the adapter's folder: {err}") from err
        tensors = served.tensors
        same = folder.meta.get("catalogue") == entry.vocab.items
        for name, loaded in (("lowrank_a", entry.item_a), ("lowrank_b", entry.item_b),
                             ("bias", entry.item_bias)):
            saved = tensors.get(ITEM_SIDE_PREFIX + name)
            if (saved is None) != (loaded is None):
                same = False
            elif saved is not None and same:
                same = saved.shape == loaded.shape and torch.equal(saved.float(), loaded)
        if not same:
            raise PersistError("the adapter's folder no longer holds the adapter served (it "
                               "was replaced on disk, or this region was grown in memory "
                               "before): load it again (PUT), or grow without persist")
        saved = tensors.get(ITEM_SIDE_PREFIX + "lowrank_a", tensors.get(ITEM_SIDE_PREFIX + "bias"))
        if saved is not None:
            growth = growth.rounded(saved.dtype)
        try:
            write_grown(folder, growth, directory, text_backbone=self.backbone, persisted=True)
        except (OSError, ValueError) as err:
            raise PersistError(f"cannot write the grown adapter: {err}") from err
        return growth
