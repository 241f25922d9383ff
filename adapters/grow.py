"""Catalogue growth: new items added to a trained adapter without retraining.

``grow_catalogue`` appends items to an adapter's catalogue (its item side); every existing
tensor row, the method's weights and the rest of the metadata stay bit-identical, so the
scores of the old items for histories that do not hold a new item do not change. Each added
item gets an item-side row (``A`` row: its low-rank embedding delta; bias delta):

**Embedding.**

* An item the backbone knows keeps the backbone's row (``A`` row zero), as a refresh starts
  it: the backbone learned it from other regions' data.
* An item new to the backbone (its embedding is ``A @ B`` alone) that co-occurs with items of
  the catalogue in the given interactions (the same user holds both; each user counts once
  per pair) gets the co-occurrence-weighted mean ``e`` of those items' *effective* rows
  (backbone row + delta, or the delta alone for region-new items) -- ``cooccurrence``.
* Otherwise it gets the base model's mean item embedding -- ``mean``.

A region-new item's embedding can only be a row of ``A`` times the adapter's shared ``B``
(``rank x hidden``), which stays as it is. The row kept is the least-squares one,
``A_new = e @ pinv(B)``: ``A_new @ B`` is the orthogonal projection of ``e`` onto the row space
of ``B``, the part outside it (``hidden - rank`` dimensions) is lost. Storing that residual
would need a new ``B`` row per item, i.e. a different rank and new tensors for every old
row too, so it is not stored; the share of ``|e|`` kept is recorded instead
(``projection_kept``, averaged over the items). An adapter of item rank 0 cannot hold any
embedding for a region-new item: it scores by its bias alone (``zero``).

**Bias.** The adapter's calibrated unseen-items offset when it holds one (``unseen_offset``
in its metadata, fitted on its hold-out for exactly such never-trained items:
:mod:`regiontune.training.unseen` adds it to their bias delta) -- ``unseen_offset``. Without
one (calibration off, merged adapters): the co-occurrence-weighted mean effective bias of its
co-occurring items (``cooccurrence``); else, for a backbone-known item, the backbone's bias
(delta 0, ``backbone``); else the lowest effective bias of the catalogue, as a merge gives
items it knows nothing of (``lowest``). Co-occurrence is not the first choice: popular items
co-occur with everything, so their biases would lift every new item towards the top.

Items already in the catalogue are skipped (reported); a call that adds none is an error.
The folder is rewritten atomically (in place or to ``out``) with ``grown`` in its metadata:
one entry per growth (the items, how each was initialised, when). The serving layer grows a
loaded adapter in memory with :func:`plan_growth` and :func:`grown_tensors` too.
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from regiontune.artifacts import (
    ADAPTER_META,
    ArtifactError,
    atomic_dir,
    load_safetensors,
    write_json,
)
from regiontune.model.backbone import load_backbone
from regiontune.model.textenc import CACHE_FILE, TextVectors
from regiontune.model.vocab import ItemVocab

from .folder import WEIGHTS, AdapterFolder
from .io import load_adapter, read_region_text
from .item_side import PREFIX
from .text_growth import TextRowsOf, growth_text_rows

logger = logging.getLogger(__name__)
# the item-side tensors growth extends (the item-item part: new items get no neighbours,
# and no old item lists them, so every old score stays as it was)
ITEM_TENSORS = ("lowrank_a", "lowrank_b", "bias", "item_item.neighbours", "item_item.strengths",
                "item_item.weight", "text_prior.weight", "text_prior.bias")
NEIGHBOUR_TENSORS = ("item_item.neighbours", "item_item.strengths")


# ---------------------------------------------------------------- inputs

def split_items(catalogue: Sequence[str], items: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(added, already)``: the items to append (in the given order, repeats once) and those
    the catalogue already holds. ValueError for a non-string or blank id, an empty list, or a
    list the catalogue holds entirely (nothing to add)."""
    if isinstance(items, str):
        raise ValueError("give the items to add as a list of item ids, not one string")
    items = list(items)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"item ids must be non-empty strings, got {item!r}")
    items = list(dict.fromkeys(items))
    if not items:
        raise ValueError("no items to add: the list is empty")
    known = set(catalogue)
    added = [i for i in items if i not in known]
    already = [i for i in items if i in known]
    if not added:
        raise ValueError(f"all {len(items)} item(s) are already in the catalogue "
                         f"(e.g. {already[:3]}): nothing to add")
    return added, already


def histories_of(interactions: Mapping[str, Sequence[str]] | Iterable[Sequence[str]] | None
                 ) -> list[list[str]]:
    """Item sets to count co-occurrences in: a mapping user -> items, or ``(user, item)``
    rows (grouped by user)."""
    if interactions is None:
        return []
    if isinstance(interactions, Mapping):
        return [list(items) for items in interactions.values()]
    users: dict[str, list[str]] = {}
    for row in interactions:
        if isinstance(row, str) or len(row) != 2:
            raise ValueError(f"interactions must be (user, item) rows, got {row!r}")
        user, item = row
        users.setdefault(str(user), []).append(str(item))
    return list(users.values())


def calibrated_offset(meta: Mapping[str, Any]) -> float | None:
    """The adapter's unseen-items offset, when training calibrated one (there were unseen
    items and hold-out cases to fit it on); None otherwise."""
    offset = meta.get("unseen_offset")
    if offset is None or not meta.get("unseen_items") or not meta.get("holdout_cases"):
        return None
    return float(offset)


# ---------------------------------------------------------------- the new rows

@dataclass
class Growth:
    """The rows to append: ``a_rows`` ``[m, rank]`` (None: rank 0), ``bias_rows`` ``[m]``
    (None: the adapter has no item bias), and how each item was initialised."""

    added: list[str]
    already: list[str]
    columns: torch.Tensor  # backbone column of each added item, -1 if new to the backbone
    a_rows: torch.Tensor | None
    bias_rows: torch.Tensor | None
    embedding: dict[str, list[str]] = field(default_factory=dict)
    bias: dict[str, list[str]] = field(default_factory=dict)
    cooccurrences: int = 0
    projection_kept: float | None = None
    # item text: each added item's projected text row (zero: none) and which have one; the
    # vectors encoded for this growth, saved with the adapter
    text_base: torch.Tensor | None = None
    text_has: torch.Tensor | None = None
    text: TextVectors | None = None

    @property
    def region_new(self) -> list[str]:
        return [i for i, c in zip(self.added, self.columns.tolist(), strict=True) if c < 0]

    def rounded(self, dtype: torch.dtype) -> Growth:
        """The rows as a file of ``dtype`` holds them (float32 again): serve what is saved."""
        def r(t):
            return None if t is None else t.to(dtype).float()
        return Growth(self.added, self.already, self.columns, r(self.a_rows),
                      r(self.bias_rows), self.embedding, self.bias, self.cooccurrences,
                      self.projection_kept, self.text_base, self.text_has, self.text)

    def record(self, **extra: Any) -> dict[str, Any]:
        """The ``grown`` entry of the metadata."""
        return {"items": list(self.added), "embedding": self.embedding, "bias": self.bias,
                "cooccurrences": self.cooccurrences, "projection_kept": self.projection_kept,
                "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **extra}


def cooccurrence(histories: Iterable[Sequence[str]], added: Sequence[str],
                 catalogue: Sequence[str]) -> tuple[list[Counter], int]:
    """Per added item: catalogue row -> number of histories holding both; the total."""
    new_index = {item: i for i, item in enumerate(added)}
    old_index = {item: i for i, item in enumerate(catalogue)}
    counts = [Counter() for _ in added]
    total = 0
    for history in histories:
        items = set(history)
        new = [new_index[i] for i in items if i in new_index]
        if not new:
            continue
        old = [old_index[i] for i in items if i in old_index]
        for x in new:
            counts[x].update(old)
            total += len(old)
    return counts, total


def plan_growth(catalogue: Sequence[str], items: Iterable[str], *, vocab: ItemVocab,
                rows: Callable[[torch.Tensor], torch.Tensor], effective_bias: torch.Tensor,
                base_table: torch.Tensor, base_bias: torch.Tensor,
                lowrank_b: torch.Tensor | None, has_bias: bool,
                unseen_offset: float | None = None,
                histories: Iterable[Sequence[str]] = (),
                text_rows_of: TextRowsOf | None = None, text_lift: float = 0.0) -> Growth:
    """The rows of the ``items`` the catalogue lacks (see the module docstring).

    ``rows(index)``: the effective embeddings ``[len(index), hidden]`` of catalogue rows;
    ``effective_bias``: every catalogue item's effective bias; ``base_table`` /
    ``base_bias``: the base model's item table and bias over ``vocab`` (the backbone's);
    ``text_rows_of(added, known)``: the added items' projected text rows and which have one
    (a text-aware backbone), or None; ``text_lift``: the adapter's lift of text-only
    never-trained items (``text_lift`` in its metadata), added to the offset of the added
    items that start from their text alone -- or, when ``text_rows_of`` gives their text
    prior (the adapter holds one: ``TextPrior``), that prior instead (it includes the lift)."""
    added, already = split_items(catalogue, items)
    columns = vocab.columns(added)
    known = columns >= 0
    found = text_rows_of(added, known) if text_rows_of is not None else None
    text_base, text_has, text_prior = (tuple(found) + (None,) * (3 - len(found))
                                       if found is not None else
                                       (None, torch.zeros(len(added), dtype=torch.bool), None))
    counts, total = cooccurrence(histories, added, catalogue)
    rank = 0 if lowrank_b is None else lowrank_b.shape[0]
    hidden = base_table.shape[1]
    targets = torch.zeros(len(added), hidden, dtype=torch.float64)
    embedding: dict[str, list[str]] = {}
    bias_how: dict[str, list[str]] = {}
    bias = torch.zeros(len(added), dtype=torch.float64)
    eff_bias = effective_bias.detach().double()
    mean_row = base_table.detach().double().mean(dim=0)
    for x, item in enumerate(added):
        neighbours = sorted(counts[x])
        weights = torch.tensor([counts[x][y] for y in neighbours], dtype=torch.float64)
        idx = torch.tensor(neighbours, dtype=torch.long)
        if known[x]:
            how = "backbone"
        elif not rank:
            how = "text" if text_has[x] else "zero"
        elif neighbours:
            how = "cooccurrence"
            targets[x] = (weights[:, None] * rows(idx).detach().double()).sum(0) / weights.sum()
            if text_has[x]:  # its text row stays: A's row aims at what it lacks
                targets[x] -= text_base[x].detach().double()
        elif text_has[x]:
            how = "text"  # the projection of its text alone: A's row 0
        else:
            how = "mean"
            targets[x] = mean_row
        embedding.setdefault(how, []).append(item)
        own = float(base_bias[columns[x]]) if known[x] else 0.0
        if unseen_offset is not None and how == "text" and text_prior is not None:
            rule, bias[x] = "unseen_offset+text_prior", unseen_offset + float(text_prior[x])
        elif unseen_offset is not None and how == "text" and text_lift:
            rule, bias[x] = "unseen_offset+text_lift", unseen_offset + text_lift
        elif unseen_offset is not None:
            rule, bias[x] = "unseen_offset", unseen_offset
        elif neighbours:
            rule = "cooccurrence"
            bias[x] = (weights * eff_bias[idx]).sum() / weights.sum() - own
        elif known[x]:
            rule, bias[x] = "backbone", 0.0
        else:
            rule, bias[x] = "lowest", float(eff_bias.min()) if len(eff_bias) else 0.0
        bias_how.setdefault(rule, []).append(item)
    a_rows, kept = None, None
    if rank:
        b = lowrank_b.detach().double()
        a_rows = targets @ torch.linalg.pinv(b)  # least squares: min |a @ B - e|
        projected = [x for x, item in enumerate(added) if not known[x]]
        if projected:
            sel = torch.tensor(projected)
            norms = targets[sel].norm(dim=1)
            share = (a_rows[sel] @ b).norm(dim=1) / norms.clamp(min=1e-12)
            kept = round(float(share[norms > 0].mean()), 4) if (norms > 0).any() else None
        a_rows = a_rows.float()
        if not bool(torch.isfinite(a_rows).all()):
            raise ValueError("the least-squares rows of the new items are not finite (the "
                             "adapter's item factor B is degenerate)")
    return Growth(added, already, columns, a_rows, bias.float() if has_bias else None,
                  embedding, bias_how, total, kept,
                  text_base if bool(text_has.any()) else None,
                  text_has if bool(text_has.any()) else None)


def grown_tensors(tensors: Mapping[str, torch.Tensor], growth: Growth, n_old: int
                  ) -> dict[str, torch.Tensor]:
    """``tensors`` (a weights file's) with the item side's new rows appended in each tensor's
    own dtype; every other tensor, and every old row, as it was (the same bits)."""
    out = dict(tensors)
    for name in ("lowrank_a", "bias", *NEIGHBOUR_TENSORS):  # one row per catalogue item
        t = out.get(PREFIX + name)
        if t is not None and t.shape[0] != n_old:
            raise ArtifactError(f"item-side tensor {name} has {t.shape[0]} rows for a "
                                f"catalogue of {n_old} items")
    a, bias = out.get(PREFIX + "lowrank_a"), out.get(PREFIX + "bias")
    if a is not None:
        if growth.a_rows is None or growth.a_rows.shape[1] != a.shape[1]:
            raise ArtifactError("the new rows do not fit the item side's rank")
        out[PREFIX + "lowrank_a"] = torch.cat([a, growth.a_rows.to(a.dtype)]).contiguous()
    if bias is not None:
        out[PREFIX + "bias"] = torch.cat([bias, growth.bias_rows.to(bias.dtype)]).contiguous()
    for name in NEIGHBOUR_TENSORS:  # new items: no neighbours
        t = out.get(PREFIX + name)
        if t is not None:
            out[PREFIX + name] = torch.cat([t, t.new_zeros(len(growth.added), t.shape[1])])
    return out


def check_growable(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse an item side holding per-item tensors growth does not know how to extend."""
    odd = sorted(k for k in tensors if k.startswith(PREFIX)
                 and k[len(PREFIX):] not in ITEM_TENSORS)
    if odd:
        raise ValueError(f"{where}: the item side holds {odd[:3]}, which catalogue growth "
                         "cannot extend; retrain (or refresh) the adapter on data with the "
                         "new items instead")


# ---------------------------------------------------------------- the folder

def write_grown(folder: AdapterFolder, growth: Growth, out: str | Path,
                text_backbone=None, **record: Any) -> dict[str, Any]:
    """Write ``folder`` grown by ``growth`` to ``out`` (atomically; ``out`` may be the folder
    itself); returns the new metadata. Every weights file of the folder holding the item side
    (AdaLoRA's LoRA export too) is extended; everything else is copied as it is; the text
    vectors encoded for the growth join the adapter's own (``text_backbone``: the backbone,
    to check them against)."""
    from regiontune.artifacts.cards import write_card  # at call time (tests replace it)

    out = Path(out)
    n_old = len(folder.meta["catalogue"])
    with atomic_dir(out) as tmp:
        shutil.copytree(folder.path, tmp, dirs_exist_ok=True, symlinks=False)
        for weights in sorted(tmp.rglob(WEIGHTS)):
            tensors = load_safetensors(weights)
            if not any(k.startswith(PREFIX) for k in tensors):
                continue
            check_growable(tensors, str(weights.relative_to(tmp)))
            save_file(grown_tensors(tensors, growth, n_old), str(weights),
                      metadata={"format": "pt"})
        meta = dict(folder.meta)
        meta["catalogue"] = list(meta["catalogue"]) + growth.added
        meta["new_items"] = list(meta.get("new_items") or []) + growth.region_new
        meta["adapter_bytes"] = (tmp / WEIGHTS).stat().st_size
        if growth.text is not None and len(growth.text):
            own = read_region_text(folder.path, text_backbone) if text_backbone else None
            text = growth.text if own is None else own.updated(growth.text)
            text.save(tmp / CACHE_FILE)
            meta["item_text"] = {"items": len(text), "encoder": text.encoder,
                                 "encoder_hash": text.encoder_hash}
        meta["grown"] = [*(meta.get("grown") or []), growth.record(**record)]
        write_json(tmp / ADAPTER_META, meta)
        write_card(tmp, meta, "adapter")
    logger.info("adapter %s grown by %d item(s), written to %s", folder.path, len(growth.added),
                out)
    return meta


def grow_catalogue(folder: str | Path, backbone: str | Path, items: Iterable[str],
                   interactions: Mapping[str, Sequence[str]] | Iterable[Sequence[str]] | None
                   = None, out: str | Path | None = None,
                   texts: Mapping[str, str] | None = None,
                   text_encoder: str | Path | None = None) -> dict[str, Any]:
    """Add ``items`` to the catalogue of the adapter in ``folder`` (made on the backbone in
    directory ``backbone``), writing the grown adapter to ``out`` (default: ``folder`` itself,
    replaced atomically); returns its metadata. ``interactions``: a mapping user -> items or
    ``(user, item)`` rows, to initialise new items from the catalogue items they co-occur
    with. ``texts``: item -> text; with a text-aware backbone a new item with text starts from
    its text (encoded by the backbone's encoder: ``text_encoder`` when not where pretraining
    recorded it). Every check passes before anything is written."""
    folder = Path(folder)
    items = items if isinstance(items, str) else list(items)  # a str: refused below
    target = folder if out is None else Path(out)
    if target.resolve() != folder.resolve() and target.exists() and (
            not target.is_dir() or any(target.iterdir())) and not (target / ADAPTER_META).is_file():
        raise ValueError(f"{target} exists and is not an adapter folder: choose a new --out")
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: no such adapter directory")
    model, vocab, bmeta = load_backbone(backbone)
    read = AdapterFolder.read(folder, bmeta["fingerprint"])
    check_growable(read.tensors, str(folder))
    added, _ = split_items(read.meta["catalogue"], items)  # before the adapter is built
    task = load_adapter(folder, model, vocab, bmeta["fingerprint"])
    side = task.item_side
    hidden = model.config.hidden_size
    with torch.no_grad():
        table, bias = task.output_table()
        base_table, base_bias = task.backbone.item_table()
    table = table[:, :hidden]
    text_rows_of, fresh = growth_text_rows(task.backbone, bmeta, vocab, added, texts,
                                           task.region_text, text_encoder,
                                           prior=getattr(side, "text_prior", None))
    growth = plan_growth(side.catalogue, items, vocab=vocab, rows=lambda idx: table[idx],
                         effective_bias=bias, base_table=base_table, base_bias=base_bias,
                         lowrank_b=side.lowrank_b, has_bias=side.bias is not None,
                         unseen_offset=calibrated_offset(read.meta),
                         text_lift=float(read.meta.get("text_lift") or 0.0),
                         histories=histories_of(interactions), text_rows_of=text_rows_of)
    growth.text = fresh
    dtype = read.tensors.get(PREFIX + "lowrank_a", read.tensors.get(PREFIX + "bias"))
    if dtype is not None:
        growth = growth.rounded(dtype.dtype)
    return write_grown(read, growth, target, text_backbone=model)
