"""Serving internals: shared adapter bodies, loaded region entries, the mixed-region forward.

A *shared body* is one copy of the backbone's module tree (sharing every weight tensor with
the backbone) that holds the adapters of many regions, LoRA (AdaLoRA adapters join through
their ``lora_export/`` LoRA copy) or bottleneck; each row of a batch is routed to its own
adapter, so one forward pass serves many regions. IA3 and full fine-tuning cannot route rows:
each such region gets its own body and its own sub-batch.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regiontune.adapters import AdapterFolder, AdapterMethod, ItemSide, get_method
from regiontune.adapters.io import build_item_side, read_region_text
from regiontune.adapters.item_side import PREFIX as ITEM_SIDE_PREFIX
from regiontune.adapters.routing import BASE, freeze, route, shared_clone
from regiontune.model.recmodel import N_SPECIAL, RecModel
from regiontune.model.vocab import ItemVocab
from regiontune.serving.item_item import item_item_factors
from regiontune.serving.item_text import TextBatch, text_factors, text_table

_VERSIONS = itertools.count(1)


def internal_name(region: str) -> str:
    """A unique adapter name per load (module keys may not hold '.'; never ``__base__``)."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', region)}_v{next(_VERSIONS)}"


class SharedBody:
    """One module tree over the backbone's weights holding many adapters of one method.

    Rows are routed through context variables (per thread), so forward passes take no lock and
    may run concurrently; adds and removals are serialised by ``lock`` and only ever touch
    adapters no request can route to (not yet published, or retired and unused).
    """

    def __init__(self, method: AdapterMethod, backbone: RecModel) -> None:
        if method.routed is None:
            raise ValueError(f"{method.name} adapters cannot share a body")
        self.method, self.form, self.lock = method.name, method.routed, threading.Lock()
        self.model = shared_clone(backbone).eval()
        self.layer_type = self.form.layer_type
        self.names: set[str] = set()

    def add(self, name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Add adapter ``name``; on failure the body is left as it was."""
        with self.lock, torch.no_grad():
            # validated first: nothing below can fail
            for path, args in self.form.parse(self.model, config, tensors).items():
                self._layer(path).add(name, *args)
            self.names.add(name)

    def _layer(self, path: str) -> nn.Module:
        """The routed layer at ``path``, wrapping the plain one on first use."""
        layer = self.model.get_submodule(path)
        if not isinstance(layer, self.layer_type):
            parent, _, child = path.rpartition(".")
            layer = self.form.wrap(layer, self.model)
            setattr(self.model.get_submodule(parent), child, layer)
        return layer

    def remove(self, name: str) -> None:
        """Delete adapter ``name`` (only once no request can still route to it)."""
        with self.lock:
            self.names.discard(name)
            for layer in self.model.modules():
                if isinstance(layer, self.layer_type):
                    layer.remove(name)

    def held(self) -> set[str]:
        """Adapter names present in the layers (a consistency check: equals ``names``)."""
        return {n for m in self.model.modules() if isinstance(m, self.layer_type)
                for n in m.names()}

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor, names: list[str]) -> torch.Tensor:
        with route(names):
            out = self.model(inputs_embeds=embeds, attention_mask=mask)
        return out.last_hidden_state[:, -1]


class AdapterRef:
    """The entries that route to one adapter of a shared body (an entry and its grown
    successors share it): the adapter is removed with the last of them."""

    def __init__(self) -> None:
        self.count, self.lock = 1, threading.Lock()

    def take(self) -> None:
        with self.lock:
            self.count += 1

    def drop(self) -> bool:
        """One entry fewer; True when it was the last."""
        with self.lock:
            self.count -= 1
            return self.count == 0


@dataclass(eq=False)  # identity semantics: entries are keys of the in-flight counts
class RegionEntry:
    """One loaded region (immutable once published): its body route and its item side.

    The item side stays low-rank, as in the file: no dense ``[n_items, hidden]`` table is
    cached. Item ``i`` of the catalogue is ``base row columns[i] + A[i] @ B`` (new items,
    ``columns[i] == -1``, have no base row) with bias ``base bias + bias[i]``; scores and
    input embeddings are computed from these factors per batch (see :class:`ItemBatch`).
    The item-item part (``neighbours > 0``) adds ``w * B[history, i]`` (``serving/item_item.py``).
    """

    region: str
    method: str  # as trained
    served_as: str  # lora / bottleneck / ia3 / full / adalora / backbone
    path: str
    name: str  # internal adapter name, BASE for the un-adapted backbone
    vocab: ItemVocab  # the region's token space (its catalogue)
    base_embed: torch.Tensor  # [N_SPECIAL + V, hidden]: the base model's table (shared, no copy)
    base_bias: torch.Tensor  # [V]: the base model's item bias (shared, no copy)
    columns: torch.Tensor  # int32 [n]: base column of each catalogue item, -1 for new items
    item_a: torch.Tensor | None = None  # [n, r] low-rank item delta (None: rank 0)
    item_b: torch.Tensor | None = None  # [r, hidden]
    item_bias: torch.Tensor | None = None  # [n] bias delta (None: none)
    nb_index: torch.Tensor | None = None  # int [n, k] item-item part (None: no part)
    nb_value: torch.Tensor | None = None  # [n, k] its weights B[i, neighbour]
    nb_weight: float = 0.0  # the blend weight w
    # item text: new items with a text vector (the backbone's cache or the adapter's own) get
    # the backbone's projection of it as their base row: row text_slot[i] of text_rows
    text_slot: torch.Tensor | None = None  # int32 [n], -1: no text row
    text_rows: torch.Tensor | None = None  # [m, hidden]
    text_prior: nn.Module | None = None  # bias of items added with text alone (growth)
    shared: SharedBody | None = None
    body: nn.Module | None = None  # own body when not shared
    meta: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    fingerprint_ok: bool = True
    ref: AdapterRef = field(default_factory=AdapterRef)  # who else routes to ``name``

    @property
    def hidden(self) -> int:
        return self.base_embed.shape[1]

    @property
    def rank(self) -> int:
        return 0 if self.item_a is None else self.item_a.shape[1]

    @property
    def neighbours(self) -> int:
        return 0 if self.nb_index is None else self.nb_index.shape[1]

    @property
    def adapted(self) -> bool:
        return self.served_as != "backbone"

    def item_bytes(self) -> int:
        """Bytes of this region's own item-side tensors (the base tables are shared)."""
        return sum(t.nbytes for t in (self.columns, self.item_a, self.item_b, self.item_bias,
                                      self.nb_index, self.nb_value, self.text_slot,
                                      self.text_rows)
                   if t is not None)

    def release(self) -> None:
        """Free the adapter in its shared body (own bodies go with the last reference)."""
        if self.shared is not None and self.ref.drop():
            self.shared.remove(self.name)

    def info(self) -> dict[str, Any]:
        return {"region": self.region, "method": self.method, "served_as": self.served_as,
                "path": self.path, "fingerprint_ok": self.fingerprint_ok,
                "n_items": len(self.vocab), "new_items": self.meta.get("n_new_items", 0),
                "internal_name": self.name, "tensor_bytes": self.meta.get("tensor_bytes"),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.loaded_at))}


def _base_tables(base: RecModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's input/output table (PAD and MASK rows first; a text-aware model's with
    their text part: ``item_text.text_table``) and its item bias."""
    return text_table(base), base.item_bias.detach()[N_SPECIAL:]


def _item_factors(item_side: ItemSide) -> dict[str, torch.Tensor | None]:
    """The item side as stored: base columns (-1: new item), ``A``, ``B``, bias delta."""
    columns = torch.where(item_side.known.bool(), item_side.columns, -1).to(torch.int32)
    a, b, bias = (None if t is None else t.detach().contiguous()
                  for t in (item_side.lowrank_a, item_side.lowrank_b, item_side.bias))
    return {"columns": columns, "item_a": a, "item_b": b, "item_bias": bias}


def backbone_entry(backbone: RecModel, vocab: ItemVocab, path: str = "") -> RegionEntry:
    """Entry serving the un-adapted backbone over its whole vocabulary."""
    embed, bias = _base_tables(backbone)
    columns = torch.arange(len(vocab), dtype=torch.int32)
    return RegionEntry("", "backbone", "backbone", path, BASE, vocab, embed, bias, columns,
                       body=backbone)


def build_entry(region: str, directory: Path, backbone: RecModel, vocab: ItemVocab,
                backbone_fp: str, shared: dict[str, SharedBody],
                same_region: bool = False) -> RegionEntry:
    """Load an adapter directory into a new entry (shared bodies get a new adapter); with
    ``same_region``, an adapter trained for another region is refused before any weight."""
    folder = AdapterFolder.read(directory, backbone_fp, serving=True,
                                region=region if same_region else None)
    item_side = build_item_side(folder, vocab, backbone.config.hidden_size)
    factors = {**_item_factors(item_side), **item_item_factors(item_side),
               "text_prior": getattr(item_side, "text_prior", None)}
    own_text = read_region_text(folder.path, backbone)  # region-new items' own text vectors
    # catalogue strings shared with the backbone vocabulary: only new items cost their own
    region_vocab = ItemVocab([vocab.items[vocab.index[i]] if i in vocab.index else i
                              for i in item_side.catalogue])
    name = internal_name(region)
    method = get_method(folder.method)
    if folder.method in shared:
        base = backbone  # shared bodies hold the backbone's weights
        body = shared[folder.method]
        body.add(name, folder.config, folder.tensors)  # last step that can fail
        own = None
    else:
        with torch.no_grad():
            start = backbone if method.copies_backbone else shared_clone(backbone)
            own = freeze(method.load(start, folder.config, folder.tensors, name, None))
        base = method.base_of(own)
    embed, bias = _base_tables(base)
    factors.update(text_factors(base, item_side, own_text))
    meta = folder.meta
    # the catalogue lives in the vocabulary: do not keep a second copy in the metadata
    small_meta = {k: v for k, v in meta.items() if k not in ("catalogue", "new_items")}
    small_meta["n_new_items"] = len(meta.get("new_items") or [])
    entry = RegionEntry(region, folder.trained_method, folder.method, str(directory), name,
                        region_vocab, embed, bias, **factors,
                        shared=body if own is None else None, body=own, meta=small_meta,
                        fingerprint_ok=meta.get("backbone_fingerprint") == backbone_fp)
    # what this region holds in memory: adapter weights (unpadded) + its low-rank item side
    small_meta["tensor_bytes"] = entry.item_bytes() + sum(
        t.nbytes for k, t in folder.tensors.items() if not k.startswith(ITEM_SIDE_PREFIX))
    return entry


class ItemBatch:
    """The item sides of one batch's regions, concatenated once per batch.

    Scoring and embedding then run as a few batched operations whatever the number of
    regions, and no region's dense item table is ever built:

    * scores: ``(h @ base_table.T + base_bias)`` over the base vocabulary, once per batch for
      all rows that share a base table, gathered at each row's region columns (new items:
      base part 0), plus ``(h @ B.T) @ A.T + bias``; ``-inf`` past a row's catalogue;
    * input embeddings, only for the tokens in the batch: ``base_table[columns[tok]]``
      (0 for new items) ``+ A[tok] @ B``; PAD and MASK take the base model's rows.

    Regions of smaller item rank (or none) are zero-padded to the largest: zeros add exactly
    nothing. The item-item parts are added after (``serving/item_item.py``). Item ``j`` of
    region ``u`` is row ``offsets[u] + j`` of the concatenations; with several regions, a
    last sentinel row (column -1, bias ``-inf``, ``A`` 0) pads each row's scores past the end
    of its catalogue.
    """

    def __init__(self, entries: list[RegionEntry]) -> None:
        index: dict[RegionEntry, int] = {}
        self.run = torch.tensor([index.setdefault(e, len(index)) for e in entries],
                                dtype=torch.long)  # row -> its region among ``unique``
        self.unique = unique = list(index)
        self.single = len(unique) == 1
        sizes = [len(e.columns) for e in unique]
        self.width = max(sizes)
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.offsets = torch.tensor([0, *itertools.accumulate(sizes)][:-1], dtype=torch.long)
        self.hidden = unique[0].hidden
        rank = max(e.rank for e in unique)
        columns = [e.columns for e in unique]
        bias = [e.item_bias if e.item_bias is not None else torch.zeros(n)
                for e, n in zip(unique, sizes, strict=True)]
        a = [_zero_padded(e.item_a, (n, rank)) for e, n in zip(unique, sizes, strict=True)]
        if self.single:  # one region: its own tensors, no copy
            self.columns, self.bias, self.a = columns[0], bias[0], a[0]
        else:
            self.columns = torch.cat([*columns, torch.tensor([-1], dtype=torch.int32)])
            self.bias = torch.cat([*bias, torch.tensor([float("-inf")])])
            self.a = torch.cat([*a, torch.zeros(1, rank)])  # [sum n + 1, rank]
        self.b = torch.stack([_zero_padded(e.item_b, (rank, e.hidden)) for e in unique])
        self.text = TextBatch.of(unique, sizes, self.single)  # None: no region has text rows
        if not rank:
            self.a = self.b = None
        # regions per distinct base table (one, unless own bodies bring their own tables)
        bases: dict[int, list[int]] = {}
        for i, entry in enumerate(unique):
            bases.setdefault(entry.base_embed.data_ptr(), []).append(i)
        self.bases = [(unique[ids[0]], ids) for ids in bases.values()]

    def embed(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[len(rows), length, hidden]`` of region tokens ``ids``; all
        ``rows`` (batch rows, for their regions) must share one base table (one body)."""
        run = self.run[rows]
        special = ids < N_SPECIAL
        # PAD and MASK point at some item here (masked below): every index stays in range
        flat = (self.offsets[run][:, None] + ids).sub_(N_SPECIAL).clamp_(min=0)
        column = self.columns[flat]  # [rows, length], -1: new item
        tokens = torch.where(special, ids, column + N_SPECIAL)
        out = F.embedding(tokens, self.unique[int(run[0])].base_embed)
        out.masked_fill_(((column < 0) & ~special)[..., None], 0.0)  # new items: no base row
        if self.text is not None:  # new items with text: its projection instead
            self.text.embed(out, flat, special)
        if self.a is not None:
            a = self.a[flat].masked_fill_(special[..., None], 0.0)  # [rows, length, rank]
            if self.single:
                out += a @ self.b[0]
            else:
                out.baddbmm_(a, self.b[run])
        return out

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores ``[rows, width]`` of each row's catalogue, ``-inf`` past its end (without
        the item-item parts: ``serving.item_item.add_item_item_scores``)."""
        if len(self.bases) == 1:
            entry = self.bases[0][0]
            base = torch.addmm(entry.base_bias, users, entry.base_embed[N_SPECIAL:].T)
        else:
            base = users.new_zeros(len(users), max(len(e.base_bias) for e, _ in self.bases))
            for entry, ids in self.bases:
                mine = torch.isin(self.run, torch.tensor(ids)).nonzero()[:, 0]
                base[mine, :len(entry.base_bias)] = torch.addmm(
                    entry.base_bias, users[mine], entry.base_embed[N_SPECIAL:].T)
        if self.single:  # one catalogue: its factors as they are
            column = self.columns
            scores = base.index_select(1, column.clamp(min=0))
            scores.masked_fill_(column < 0, 0.0)  # new items: no base part
            if self.a is not None:
                scores.addmm_(users @ self.b[0].T, self.a.T)
            if self.text is not None:
                self.text.add_scores(scores, users, self.run)
            return scores.add_(self.bias)
        position = torch.arange(self.width)
        flat = torch.where(position < self.sizes[self.run][:, None],
                           self.offsets[self.run][:, None] + position, len(self.columns) - 1)
        column = self.columns[flat]  # [rows, width]; past a catalogue: the sentinel's -1
        scores = base.gather(1, column.clamp(min=0).long())
        scores.masked_fill_(column < 0, 0.0)  # new items (and padding): no base part
        if self.a is not None:
            user_b = torch.bmm(self.b[self.run], users[:, :, None])  # [rows, rank, 1]
            scores[:, :, None].baddbmm_(self.a[flat], user_b)
        if self.text is not None:
            self.text.add_scores(scores, users, self.run)
        return scores.add_(self.bias[flat])


def _zero_padded(t: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """``t`` (absent: nothing) zero-padded to ``shape``: ``A`` or ``B`` to a larger rank."""
    if t is not None and t.shape == shape:
        return t
    out = torch.zeros(shape)
    if t is not None:
        out[:t.shape[0], :t.shape[1]] = t
    return out
