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
Bottleneck adapters are served the same way by :class:`RoutedBottleneck` (the files and the
arithmetic ``out + up(act(down(out)))`` are the bottleneck method's): one gather and two batched
products per layer, rather than one sub-batch per adapter per layer.
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
from regiontune.adapters.bottleneck.config import BottleneckConfig
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
# (adapter names, row -> name index or None for one name, {slot ids: row slots}) of the batch
# running in this thread; layers whose banks number the adapters alike share the row slots
_ROUTE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("route", default=None)
# the bottleneck method's activations (all map 0 to 0: zero-padded units add nothing)
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


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
def route(names: list[str]) -> Iterator[None]:
    """Within the block (this thread only), row ``i`` goes through adapter ``names[i]``."""
    unique = list(dict.fromkeys(names))
    index = torch.tensor([unique.index(n) for n in names]) if len(unique) > 1 else None
    token = _ROUTE.set((unique, index, {}))
    try:
        yield
    finally:
        _ROUTE.reset(token)


Bank = tuple[tuple[torch.Tensor, ...], dict[str, int]]  # (stacks, {adapter name: slot})


def bank_add(bank: Bank, free: list[int], name: str, parts: tuple[torch.Tensor, ...],
             grow: tuple[int | None, ...]) -> Bank:
    """``bank`` with adapter ``name``'s ``parts`` written to a free slot (one per stack).

    A free slot is written in place (no reader can route to it yet); when none is free, or a
    part is larger than its stack along its ``grow`` dim (rank, width), a grown copy is
    made (slot count doubled: loads stay O(1) amortised) and the caller publishes it; the
    old stacks stay valid for forward passes still reading them. Parts smaller along their
    ``grow`` dim are zero-padded. Slot 0 stays zero: rows without an adapter here.
    ``free`` (the free slots) is updated in place.
    """
    stacks, slots = bank
    shapes = [tuple(max(n, p.shape[d]) if d == dim else n for d, n in enumerate(s.shape[1:]))
              for s, p, dim in zip(stacks, parts, grow, strict=True)]
    if not free or any(shape != s.shape[1:] for s, shape in zip(stacks, shapes, strict=True)):
        size = stacks[0].shape[0]
        extra = size if not free else 0
        # (measured) gentler growth saves little RSS: the many freed copies fragment the heap
        stacks = tuple(_copy_into(s.new_zeros(size + extra, *shape), s)
                       for s, shape in zip(stacks, shapes, strict=True))
        free += range(size, size + extra)
    slot = free.pop(0)
    for stack, part in zip(stacks, parts, strict=True):
        stack[slot].zero_()
        _copy_into(stack[slot], part)
    return stacks, {**slots, name: slot}


def bank_remove(bank: Bank, free: list[int], name: str) -> Bank:
    stacks, slots = bank
    if name not in slots:
        return bank
    free.append(slots[name])
    return stacks, {k: v for k, v in slots.items() if k != name}


def _route_rows(route: tuple, ids: list[int]) -> torch.Tensor:
    """Bank slot of each row, for a layer whose slots of the routed adapters are ``ids``."""
    _, index, cache = route
    key = tuple(ids)
    rows = cache.get(key)
    if rows is None:
        rows = cache[key] = torch.tensor(ids)[index]
    return rows


def _copy_into(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    out[tuple(slice(0, n) for n in src.shape)] = src
    return out


class RoutedLora(nn.Module):
    """A linear layer plus per-row LoRA deltas, from a bank of frozen tensors.

    The bank stacks every adapter of the layer, ranks zero-padded to the largest (zeros add
    exactly nothing): ``A [slots, r, in]``, ``B [slots, out, r]``, scalings; slot 0 stays zero
    for rows without an adapter here. A mixed batch then costs one gather and two batched
    products per layer, whatever the number of regions. The bank tuple is swapped whole
    (:func:`bank_add`), so a forward pass reads one consistent bank.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        n_in, n_out = _features(base_layer)
        dtype = base_layer.weight.dtype
        self._bank: Bank = ((torch.zeros(1, 0, n_in, dtype=dtype),
                             torch.zeros(1, n_out, 0, dtype=dtype), torch.zeros(1, dtype=dtype)),
                            {})
        self._free: list[int] = []

    def names(self) -> set[str]:
        return set(self._bank[1])

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        self._bank = bank_add(self._bank, self._free, name,
                              (a, b, torch.tensor(scale, dtype=a.dtype)), (0, 1, None))

    def remove(self, name: str) -> None:
        self._bank = bank_remove(self._bank, self._free, name)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        route = _ROUTE.get()
        if route is None:
            return out
        (a_all, b_all, scales), slots = self._bank
        unique, index, _ = route
        ids = [slots.get(n, 0) for n in unique]  # 0: BASE, or an adapter not targeting this
        if not any(ids):
            return out
        if index is None:
            a, b = a_all[ids[0]], b_all[ids[0]]
            return out + (x @ a.T) @ b.T * scales[ids[0]]
        rows = _route_rows(route, ids)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(flat, a_all[rows].transpose(1, 2)),
                          b_all[rows].transpose(1, 2))
        return out + (delta * scales[rows][:, None, None]).reshape(out.shape)


class RoutedBottleneck(nn.Module):
    """A layer plus per-row bottleneck adapters ``out + up(act(down(out)))``, from a bank.

    The bank stacks ``down [slots, width, hidden]`` and its bias, ``up [slots, hidden,
    width]`` and its bias, widths zero-padded to the largest (a zero unit adds exactly
    nothing: every activation maps 0 to 0); slot 0 stays zero for rows without an adapter.
    Dropout is inactive at inference.
    """

    def __init__(self, base_layer: nn.Module, hidden: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        dtype = next(base_layer.parameters()).dtype
        self._bank: Bank = ((torch.zeros(1, 0, hidden, dtype=dtype), torch.zeros(1, 0, dtype=dtype),
                             torch.zeros(1, hidden, 0, dtype=dtype),
                             torch.zeros(1, hidden, dtype=dtype)), {})
        self._free: list[int] = []
        self._acts: dict[str, Any] = {}  # adapter name -> activation

    def names(self) -> set[str]:
        return set(self._bank[1])

    def add(self, name: str, parts: tuple[torch.Tensor, ...], act: str) -> None:
        self._acts[name] = ACTIVATIONS[act]  # before publishing: readers look it up
        self._bank = bank_add(self._bank, self._free, name, parts, (0, 0, 1, None))

    def remove(self, name: str) -> None:
        self._bank = bank_remove(self._bank, self._free, name)
        self._acts.pop(name, None)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        route = _ROUTE.get()
        if route is None:
            return out
        (down, down_b, up, up_b), slots = self._bank
        unique, index, _ = route
        ids = [slots.get(n, 0) for n in unique]  # 0: BASE, or an adapter not targeting this
        if not any(ids):
            return out
        if index is None:
            slot = ids[0]
            hidden = self._acts[unique[0]](F.linear(out, down[slot], down_b[slot]))
            return out + F.linear(hidden, up[slot], up_b[slot])
        rows = _route_rows(route, ids)
        flat = out.reshape(out.shape[0], -1, out.shape[-1])
        hidden = torch.baddbmm(down_b[rows][:, None], flat, down[rows].transpose(1, 2))
        acts = {self._acts[n] for n, slot in zip(unique, ids, strict=True) if slot}
        if len(acts) == 1:
            hidden = acts.pop()(hidden)
        else:  # rows of each activation (rows without an adapter: zeros either way)
            per_row = [self._acts.get(n) for n in unique]
            for act in acts:
                mine = torch.tensor([a is act for a in per_row])[index]
                hidden = torch.where(mine[:, None, None], act(hidden), hidden)
        delta = torch.baddbmm(up_b[rows][:, None], hidden, up[rows].transpose(1, 2))
        return out + delta.reshape(out.shape)


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


BOTTLENECK_PARTS = ("down.weight", "down.bias", "up.weight", "up.bias")


def parse_bottleneck(model: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor]
                     ) -> tuple[str, dict[str, tuple[torch.Tensor, ...]]]:
    """Validate a bottleneck adapter against ``model``: (activation, {module path: (down,
    down bias, up, up bias)}), checked as the bottleneck method's own loader checks it."""
    cfg = BottleneckConfig.from_dict(config)
    patterns = [re.compile(p) for p in cfg.patterns()]
    hidden = model.config.hidden_size
    width = max(1, hidden // int(cfg.reduction_factor))
    targets = [n for n, _ in model.named_modules()
               if any(p.search(n) for p in patterns) and not n.endswith("base_layer")]
    if not targets:
        raise ValueError(f"no module of the {cfg.arch} backbone matches {cfg.patterns()}")
    shapes = {"down.weight": (width, hidden), "down.bias": (width,),
              "up.weight": (hidden, width), "up.bias": (hidden,)}
    expected = {f"{path}.bottleneck.{k}" for path in targets for k in BOTTLENECK_PARTS}
    missing = sorted(expected - set(tensors))
    if missing:
        raise ValueError(f"bottleneck weights lack {len(missing)} tensors, e.g. {missing[:2]}")
    prefixes = tuple(f"{path}.bottleneck." for path in targets)
    unexpected = sorted(k for k in tensors if k.startswith(prefixes) and k not in expected)
    if unexpected:
        raise ValueError(f"unexpected bottleneck tensors {unexpected[:2]}")
    out = {}
    for path in targets:
        layer = model.get_submodule(path)
        base = layer.base_layer if isinstance(layer, RoutedBottleneck) else layer
        dtype = next(base.parameters()).dtype
        parts = []
        for key in BOTTLENECK_PARTS:
            tensor = tensors[f"{path}.bottleneck.{key}"]
            if tuple(tensor.shape) != shapes[key]:
                raise ValueError(f"{path}: bottleneck {key} has shape {tuple(tensor.shape)}, "
                                 f"not {shapes[key]}")
            parts.append(tensor.to(dtype).contiguous())
        out[path] = tuple(parts)
    return cfg.non_linearity, out


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
        self.layer_type = RoutedLora if method == "lora" else RoutedBottleneck
        self.names: set[str] = set()

    def add(self, name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Add adapter ``name``; on failure the body is left as it was."""
        with self.lock, torch.no_grad():
            # validated first: nothing below can fail
            if self.method == "lora":
                for path, adapter in parse_lora(self.model, config, tensors).items():
                    self._layer(path).add(name, *adapter)
            else:
                act, parsed = parse_bottleneck(self.model, config, tensors)
                for path, parts in parsed.items():
                    self._layer(path).add(name, parts, act)
            self.names.add(name)

    def _layer(self, path: str) -> RoutedLora | RoutedBottleneck:
        """The routed layer at ``path``, wrapping the plain one on first use."""
        layer = self.model.get_submodule(path)
        if not isinstance(layer, self.layer_type):
            parent, _, child = path.rpartition(".")
            layer = (RoutedLora(layer) if self.method == "lora"
                     else RoutedBottleneck(layer, self.model.config.hidden_size))
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
    a, b, bias = (None if t is None else t.detach().contiguous()
                  for t in (item_side.lowrank_a, item_side.lowrank_b, item_side.bias))
    return {"columns": columns, "item_a": a, "item_b": b, "item_bias": bias}


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
    factors = _item_factors(item_side)
    # catalogue strings shared with the backbone vocabulary: only new items cost their own
    region_vocab = ItemVocab([vocab.items[vocab.index[i]] if i in vocab.index else i
                              for i in item_side.catalogue])
    name = internal_name(region)
    method = get_method(served)
    if served in shared:
        base = backbone  # shared bodies hold the backbone's weights
        body = shared[served]
        body.add(name, config, tensors)  # last step that can fail: nothing left half-added
        own = None
    else:
        with torch.no_grad():
            start = backbone if served == "full" else shared_clone(backbone)
            own = freeze(method.load(start, config, tensors, name, None))
        base = method.base_of(own)
    embed, bias = _base_tables(base)
    # the catalogue lives in the vocabulary: do not keep a second copy in the metadata
    small_meta = {k: v for k, v in meta.items() if k not in ("catalogue", "new_items")}
    small_meta["n_new_items"] = len(meta.get("new_items") or [])
    entry = RegionEntry(region, meta["method"], served, str(directory), name,
                        region_vocab, embed, bias, **factors,
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
    nothing. Item ``j`` of region ``u`` is row ``offsets[u] + j`` of the concatenations; with
    several regions, a last sentinel row (column -1, bias ``-inf``, ``A`` 0) pads each row's
    scores past the end of its catalogue.
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
        if self.a is not None:
            a = self.a[flat].masked_fill_(special[..., None], 0.0)  # [rows, length, rank]
            if self.single:
                out += a @ self.b[0]
            else:
                out.baddbmm_(a, self.b[run])
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
        if self.single:  # one catalogue: its factors as they are
            column = self.columns
            scores = base.index_select(1, column.clamp(min=0))
            scores.masked_fill_(column < 0, 0.0)  # new items: no base part
            if self.a is not None:
                scores.addmm_(users @ self.b[0].T, self.a.T)
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
        return scores.add_(self.bias[flat])


def _zero_padded(t: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
    """``t`` (absent: nothing) zero-padded to ``shape``: ``A`` or ``B`` to a larger rank."""
    if t is not None and t.shape == shape:
        return t
    out = torch.zeros(shape)
    if t is not None:
        out[:t.shape[0], :t.shape[1]] = t
    return out
