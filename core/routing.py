"""Serving internals: shared adapter bodies, loaded region entries, the mixed-region forward.

A *shared body* is one copy of the backbone's module tree (sharing every weight tensor with
the backbone) that holds the adapters of many regions, LoRA (AdaLoRA adapters join through
their ``lora_export/`` LoRA copy) or bottleneck; each row of a batch is routed to its own
adapter, so one forward pass serves many regions. IA3 and full fine-tuning cannot route rows:
each such region gets its own body and its own sub-batch.

LoRA is served by :class:`RoutedLora`, not by PEFT's own mixed-batch path: PEFT walks every
module of the model on each forward (to install its routing hooks) and on each
``add_adapter``/``delete_adapter``, so both grow with the number of adapters loaded (at 100
adapters: ~25 ms per forward, ~150 ms per load on a small CPU model). The files are PEFT's and
the arithmetic is PEFT's LoRA (``base(x) + B(A(x)) * scaling``), routed per row.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import itertools
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft.utils.other import get_pattern_key
from torch import nn
from transformers.pytorch_utils import Conv1D

from regiontune.adapters import ItemSide, get_method
from regiontune.adapters.bottleneck import BOTTLENECK, BottleneckModel
from regiontune.adapters.io import CONFIG, LORA_EXPORT, WEIGHTS
from regiontune.adapters.item_side import PREFIX as ITEM_SIDE_PREFIX
from regiontune.core.artifacts import (
    ADAPTER_META,
    ArtifactError,
    BackboneMismatchError,
    load_safetensors,
    read_json,
    refuse_pickles,
)
from regiontune.core.model import N_SPECIAL, RecModel
from regiontune.core.vocab import ItemVocab

BASE = "__base__"  # rows that take no adapter (PEFT's name for it; the bottleneck skips it too)
SHARED_METHODS = ("lora", "bottleneck")  # methods whose rows mix in one forward pass
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
UNSUPPORTED_LORA = ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices",
                    "layer_replication", "alora_invocation_tokens", "use_qalora",
                    "target_parameters")
_VERSIONS = itertools.count(1)
# (adapter name, row indices or None for all rows) of the batch running in this thread
_LORA_ROUTE: contextvars.ContextVar[list | None] = contextvars.ContextVar("lora", default=None)


def shared_clone(backbone: RecModel) -> RecModel:
    """A new module tree over the *same* weight tensors: layers can be wrapped in place without
    touching the backbone, and no weight is copied."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(backbone.parameters(),
                                                              backbone.buffers())}
    return copy.deepcopy(backbone, memo)


def internal_name(region: str) -> str:
    """A unique adapter name per load (module keys may not hold '.'; never ``__base__``)."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', region)}_v{next(_VERSIONS)}"


def freeze(module: nn.Module) -> nn.Module:
    """Inference only: eval mode (no dropout) and nothing trainable."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


@contextlib.contextmanager
def lora_route(names: list[str]) -> Iterator[None]:
    """Within the block (this thread only), row ``i`` goes through LoRA ``names[i]``."""
    unique = list(dict.fromkeys(names))
    index = torch.tensor([unique.index(n) for n in names]) if len(unique) > 1 else None
    token = _LORA_ROUTE.set((unique, index))
    try:
        yield
    finally:
        _LORA_ROUTE.reset(token)


class RoutedLora(nn.Module):
    """A linear layer plus per-row LoRA deltas, from a bank of frozen tensors.

    The bank stacks every adapter of the layer, ranks zero-padded to the largest (zeros add
    exactly nothing): ``A [slots, r, in]``, ``B [slots, out, r]``, scalings; slot 0 stays zero
    for rows without an adapter here. A mixed batch then costs one gather and two batched
    products per layer, whatever the number of regions. Adding writes a free slot in place
    (no reader can route to it yet) or publishes a grown copy; the bank tuple is swapped
    whole, so a forward pass reads one consistent bank.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        n_in, n_out = _features(base_layer)
        dtype = base_layer.weight.dtype
        self._bank: tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]] = (
            torch.zeros(1, 0, n_in, dtype=dtype), torch.zeros(1, n_out, 0, dtype=dtype),
            torch.zeros(1, dtype=dtype), {})
        self._free: list[int] = []

    def names(self) -> set[str]:
        return set(self._bank[3])

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        a_all, b_all, scales, slots = self._bank
        rank, size = max(a_all.shape[1], a.shape[0]), a_all.shape[0]
        if not self._free or rank > a_all.shape[1]:  # publish a grown copy
            # doubling keeps loads O(1) amortised; (measured) gentler growth saves little RSS,
            # the many freed copies fragment the heap
            grow = size if not self._free else 0
            a_all = F.pad(a_all, (0, 0, 0, rank - a_all.shape[1], 0, grow))
            b_all = F.pad(b_all, (0, rank - b_all.shape[2], 0, 0, 0, grow))
            scales = F.pad(scales, (0, grow))
            self._free += range(size, size + grow)
        slot, r = self._free.pop(0), a.shape[0]
        a_all[slot].zero_()
        b_all[slot].zero_()
        a_all[slot, :r], b_all[slot, :, :r], scales[slot] = a, b, scale
        self._bank = (a_all, b_all, scales, {**slots, name: slot})

    def remove(self, name: str) -> None:
        a_all, b_all, scales, slots = self._bank
        if name in slots:
            self._free.append(slots[name])
            self._bank = (a_all, b_all, scales, {k: v for k, v in slots.items() if k != name})

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        route = _LORA_ROUTE.get()
        if route is None:
            return out
        a_all, b_all, scales, slots = self._bank
        unique, index = route
        ids = [slots.get(n, 0) for n in unique]  # 0: BASE, or an adapter not targeting this
        if not any(ids):
            return out
        if index is None:
            a, b = a_all[ids[0]], b_all[ids[0]]
            return out + (x @ a.T) @ b.T * scales[ids[0]]
        rows = torch.tensor(ids)[index]
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(flat, a_all[rows].transpose(1, 2)),
                          b_all[rows].transpose(1, 2))
        return out + (delta * scales[rows][:, None, None]).reshape(out.shape)


def _features(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):  # GPT-2: weight is [in, out]
        return tuple(layer.weight.shape)
    raise ValueError(f"LoRA on {type(layer).__name__} layers is not supported for serving")


def parse_lora(model: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor]
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Validate a PEFT LoRA adapter against ``model``: {module path: (A, B, scaling)}."""
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(f"not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    unsupported = [k for k in UNSUPPORTED_LORA if config.get(k)]
    if unsupported:
        raise ValueError(f"LoRA options {unsupported} are not supported for serving")
    pairs: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in tensors.items():
        if key.startswith(ITEM_SIDE_PREFIX):
            continue
        match = LORA_KEY.fullmatch(key)
        if not match:
            raise ValueError(f"unexpected tensor {key!r} in a LoRA adapter")
        pairs[match[1]][match[2]] = tensor
    if not pairs:
        raise ValueError("the adapter holds no LoRA tensors")
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    out = {}
    for path, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: the adapter lacks lora_A or lora_B")
        try:
            layer = model.get_submodule(path)
        except AttributeError as err:
            raise ValueError(f"{path}: no such module in the backbone") from err
        base = layer.base_layer if isinstance(layer, RoutedLora) else layer
        (n_in, n_out), r = _features(base), ab["A"].shape[0]
        if ab["A"].shape != (r, n_in) or ab["B"].shape != (n_out, r):
            raise ValueError(f"{path}: LoRA shapes {tuple(ab['A'].shape)}, "
                             f"{tuple(ab['B'].shape)} do not fit a {n_in}->{n_out} layer")
        if ranks.get(get_pattern_key(ranks.keys(), path), config.get("r")) != r:
            raise ValueError(f"{path}: rank {r} differs from the adapter config")
        alpha = float(alphas.get(get_pattern_key(alphas.keys(), path), config["lora_alpha"]))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        dtype = base.weight.dtype
        out[path] = (ab["A"].to(dtype).contiguous(), ab["B"].to(dtype).contiguous(), scale)
    return out


class SharedBody:
    """One module tree over the backbone's weights holding many adapters of one method.

    Rows are routed through context variables (per thread), so forward passes take no lock and
    may run concurrently; adds and removals are serialised by ``lock`` and only ever touch
    adapters no request can route to (not yet published, or retired and unused).
    """

    def __init__(self, method: str, backbone: RecModel) -> None:
        if method not in SHARED_METHODS:
            raise ValueError(f"{method} adapters cannot share a body")
        self.method, self.lock = method, threading.Lock()
        self.model = shared_clone(backbone).eval()
        self.bottleneck = BottleneckModel(self.model) if method == "bottleneck" else None
        self.names: set[str] = set()

    def add(self, name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Add adapter ``name``; on failure the body is left as it was."""
        with self.lock, torch.no_grad():
            if self.bottleneck is None:
                self._add_lora(name, parse_lora(self.model, config, tensors))
            else:
                try:
                    BOTTLENECK.load(self.model, config, tensors, name, self.bottleneck)
                except BaseException:
                    self._delete(name)
                    raise
                for _, layer in self.bottleneck.layers():
                    if name in layer.bottleneck:
                        layer.bottleneck[name].eval()
                    layer.active = None  # only routed rows take an adapter
            self.names.add(name)

    def _add_lora(self, name: str, parsed: dict[str, tuple]) -> None:
        for path, adapter in parsed.items():  # validated already: nothing below can fail
            layer = self.model.get_submodule(path)
            if not isinstance(layer, RoutedLora):
                parent, _, child = path.rpartition(".")
                layer = RoutedLora(layer)
                setattr(self.model.get_submodule(parent), child, layer)
            layer.add(name, *adapter)

    def remove(self, name: str) -> None:
        """Delete adapter ``name`` (only once no request can still route to it)."""
        with self.lock:
            self.names.discard(name)
            self._delete(name)

    def _delete(self, name: str) -> None:
        if self.bottleneck is None:
            for layer in self.model.modules():
                if isinstance(layer, RoutedLora):
                    layer.remove(name)
            return
        for _, layer in self.bottleneck.layers():
            if name in layer.bottleneck:
                del layer.bottleneck[name]
        self.bottleneck.configs.pop(name, None)

    def held(self) -> set[str]:
        """Adapter names present in the layers (a consistency check: equals ``names``)."""
        if self.bottleneck is None:
            return {n for m in self.model.modules() if isinstance(m, RoutedLora)
                    for n in m.names()}
        return {n for _, layer in self.bottleneck.layers() for n in layer.bottleneck}

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor, names: list[str]) -> torch.Tensor:
        if self.bottleneck is not None:
            out = self.bottleneck(adapter_names=names, inputs_embeds=embeds, attention_mask=mask)
        else:
            with lora_route(names):
                out = self.model(inputs_embeds=embeds, attention_mask=mask)
        return out.last_hidden_state[:, -1]


@dataclass(eq=False)  # identity semantics: entries are keys of the in-flight counts
class RegionEntry:
    """One loaded region (immutable once published): its body route and its item side.

    The item side stays low-rank, as in the file: no dense ``[n_items, hidden]`` table is
    cached. Item ``i`` of the catalogue is ``base row columns[i] + A[i] @ B`` (new items,
    ``columns[i] == -1``, have no base row) with bias ``base bias + bias[i]``; scores and
    input embeddings are computed from these factors per batch (see :class:`ItemBatch`).
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
    shared: SharedBody | None = None
    body: nn.Module | None = None  # own body when not shared
    meta: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    fingerprint_ok: bool = True

    @property
    def hidden(self) -> int:
        return self.base_embed.shape[1]

    @property
    def rank(self) -> int:
        return 0 if self.item_a is None else self.item_a.shape[1]

    @property
    def adapted(self) -> bool:
        return self.served_as != "backbone"

    def item_bytes(self) -> int:
        """Bytes of this region's own item-side tensors (the base tables are shared)."""
        return sum(t.nbytes for t in (self.columns, self.item_a, self.item_b, self.item_bias)
                   if t is not None)

    def release(self) -> None:
        """Free the adapter in its shared body (own bodies go with the last reference)."""
        if self.shared is not None:
            self.shared.remove(self.name)

    def info(self) -> dict[str, Any]:
        return {"region": self.region, "method": self.method, "served_as": self.served_as,
                "path": self.path, "fingerprint_ok": self.fingerprint_ok,
                "n_items": len(self.vocab), "new_items": self.meta.get("n_new_items", 0),
                "internal_name": self.name, "tensor_bytes": self.meta.get("tensor_bytes"),
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.loaded_at))}


def _base_tables(base: RecModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The base model's input/output table (PAD and MASK rows first) and its item bias."""
    return base.item_emb.weight.detach(), base.item_bias.detach()[N_SPECIAL:]


def _item_factors(item_side: ItemSide) -> dict[str, torch.Tensor | None]:
    """The item side as stored: base columns (-1: new item), ``A``, ``B``, bias delta."""
    columns = torch.where(item_side.known.bool(), item_side.columns, -1).to(torch.int32)
    def own(t: nn.Parameter | None) -> torch.Tensor | None:
        return None if t is None else t.detach().contiguous()
    return {"columns": columns, "item_a": own(item_side.lowrank_a),
            "item_b": own(item_side.lowrank_b), "item_bias": own(item_side.bias)}


def backbone_entry(backbone: RecModel, vocab: ItemVocab, path: str = "") -> RegionEntry:
    """Entry serving the un-adapted backbone over its whole vocabulary."""
    embed, bias = _base_tables(backbone)
    columns = torch.arange(len(vocab), dtype=torch.int32)
    return RegionEntry("", "backbone", "backbone", path, BASE, vocab, embed, bias, columns,
                       body=backbone)


def read_region_files(directory: Path, backbone_fp: str
                      ) -> tuple[dict, str, dict, dict[str, torch.Tensor]]:
    """(region meta, method to serve as, adapter config, tensors); fingerprint checked first.

    AdaLoRA adapters are served as their exported plain LoRA when they ship one.
    """
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such adapter directory")
    refuse_pickles(directory)
    meta = read_json(directory / ADAPTER_META, "region metadata (region.json)")
    recorded = meta.get("backbone_fingerprint")
    if recorded != backbone_fp:
        raise BackboneMismatchError(str(recorded), backbone_fp, str(directory))
    method = str(meta.get("method", "?"))
    get_method(method)  # unknown method: a clear error before reading weights
    source, served = directory, method
    if method == "adalora" and (directory / LORA_EXPORT / CONFIG).is_file():
        source, served = directory / LORA_EXPORT, "lora"
    config = read_json(source / CONFIG, "adapter config")
    return meta, served, config, load_safetensors(source / WEIGHTS)


def build_entry(region: str, directory: Path, backbone: RecModel, vocab: ItemVocab,
                backbone_fp: str, shared: dict[str, SharedBody]) -> RegionEntry:
    """Load an adapter directory into a new entry (shared bodies get a new adapter)."""
    meta, served, config, tensors = read_region_files(directory, backbone_fp)
    item_side = ItemSide(meta["catalogue"], vocab, backbone.config.hidden_size,
                         int(meta.get("item_rank", 0)), bool(meta.get("item_bias", True)))
    item_side.load(tensors)
    name = internal_name(region)
    method = get_method(served)
    if served in shared:
        base = backbone  # shared bodies hold the backbone's weights
        body = shared[served]
        body.add(name, config, tensors)
        own = None
    else:
        with torch.no_grad():
            start = backbone if served == "full" else shared_clone(backbone)
            own = freeze(method.load(start, config, tensors, name, None))
        base = method.base_of(own)
    embed, bias = _base_tables(base)
    factors = _item_factors(item_side)
    # the catalogue lives in the vocabulary: do not keep a second copy in the metadata
    small_meta = {k: v for k, v in meta.items() if k not in ("catalogue", "new_items")}
    small_meta["n_new_items"] = len(meta.get("new_items") or [])
    # catalogue strings shared with the backbone vocabulary: only new items cost their own
    catalogue = [vocab.items[vocab.index[i]] if i in vocab.index else i
                 for i in item_side.catalogue]
    entry = RegionEntry(region, meta["method"], served, str(directory), name,
                        ItemVocab(catalogue), embed, bias, **factors,
                        shared=body if own is None else None, body=own, meta=small_meta,
                        fingerprint_ok=meta.get("backbone_fingerprint") == backbone_fp)
    # what this region holds in memory: adapter weights (unpadded) + its low-rank item side
    small_meta["tensor_bytes"] = entry.item_bytes() + sum(
        t.nbytes for k, t in tensors.items() if not k.startswith(ITEM_SIDE_PREFIX))
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
    nothing. Item ``j`` of region ``u`` is row ``offsets[u] + j`` of the concatenations.
    """

    def __init__(self, entries: list[RegionEntry]) -> None:
        index: dict[RegionEntry, int] = {}
        self.run = torch.tensor([index.setdefault(e, len(index)) for e in entries],
                                dtype=torch.long)  # row -> its region among ``unique``
        self.unique = unique = list(index)
        sizes = [len(e.columns) for e in unique]
        self.width = max(sizes, default=0)
        self.sizes = torch.tensor(sizes, dtype=torch.long)
        self.offsets = torch.tensor([0, *itertools.accumulate(sizes)][:-1], dtype=torch.long)
        self.columns = _cat([e.columns for e in unique])  # int32, -1: new item
        self.bias = _cat([e.item_bias if e.item_bias is not None else torch.zeros(n)
                          for e, n in zip(unique, sizes, strict=True)])
        rank = max((e.rank for e in unique), default=0)
        self.a = self.b = None  # [sum n, rank], [m, rank, hidden]
        if rank:
            self.a = _cat([_zero_padded(e.item_a, (n, rank))
                           for e, n in zip(unique, sizes, strict=True)])
            self.b = torch.stack([_zero_padded(e.item_b, (rank, e.hidden)) for e in unique])
        # regions per distinct base table (one, unless own bodies bring their own tables)
        bases: dict[int, list[int]] = {}
        for i, entry in enumerate(unique):
            bases.setdefault(entry.base_embed.data_ptr(), []).append(i)
        self.bases = [(unique[ids[0]], ids) for ids in bases.values()]

    def embed(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[len(rows), length, hidden]`` of region tokens ``ids``; all
        ``rows`` (batch rows, for their regions) must share one base table (one body)."""
        run = self.run[rows]
        item = ids - N_SPECIAL
        is_item = item >= 0
        flat = self.offsets[run][:, None] + item.clamp(min=0)
        column = self.columns[flat]  # [rows, length], -1: new item
        tokens = torch.where(is_item, column + N_SPECIAL, ids).clamp(min=0)
        out = F.embedding(tokens, self.unique[int(run[0])].base_embed)
        out = torch.where((~is_item | (column >= 0))[..., None], out, 0.0)
        if self.a is not None:
            a = self.a[flat].masked_fill_(~is_item[..., None], 0.0)  # [rows, length, rank]
            out = out + torch.bmm(a, self.b[run])
        return out

    def scores(self, users: torch.Tensor) -> torch.Tensor:
        """Scores ``[rows, width]`` of each row's catalogue, ``-inf`` past its end."""
        if len(self.bases) == 1:
            entry = self.bases[0][0]
            base = torch.addmm(entry.base_bias, users, entry.base_embed[N_SPECIAL:].T)
        else:
            base = users.new_zeros(len(users), max(len(e.base_bias) for e, _ in self.bases))
            for entry, ids in self.bases:
                mine = torch.isin(self.run, torch.tensor(ids)).nonzero()[:, 0]
                base[mine, :len(entry.base_bias)] = torch.addmm(
                    entry.base_bias, users[mine], entry.base_embed[N_SPECIAL:].T)
        if len(self.unique) == 1:  # one catalogue: its factors as they are
            column, bias, a = self.columns, self.bias, self.a
            scores = base.index_select(1, column.clamp(min=0))
            scores = torch.where(column >= 0, scores, 0.0)
            if a is not None:
                scores = scores.addmm_(users @ self.b[0].T, a.T)
            return scores + bias
        position = torch.arange(self.width)
        inside = position < self.sizes[self.run][:, None]  # [rows, width]
        flat = (self.offsets[self.run][:, None] + position).clamp(max=len(self.columns) - 1)
        column = torch.where(inside, self.columns[flat], -1)
        scores = base.gather(1, column.clamp(min=0).long())
        scores = torch.where(column >= 0, scores, 0.0)
        if self.a is not None:
            user_b = torch.bmm(self.b[self.run], users[:, :, None])  # [rows, rank, 1]
            scores = scores + torch.bmm(self.a[flat], user_b)[:, :, 0]
        return scores + torch.where(inside, self.bias[flat], float("-inf"))


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _zero_padded(t: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """``t`` (absent: nothing) zero-padded to ``shape``: ``A`` or ``B`` to a larger rank."""
    if t is not None and t.shape == shape:
        return t
    out = torch.zeros(shape)
    if t is not None:
        out[:t.shape[0], :t.shape[1]] = t
    return out
