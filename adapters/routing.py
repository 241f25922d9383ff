"""Routed adapter layers for serving: many regions' LoRA or bottleneck adapters in one layer.

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
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from peft.utils.other import get_pattern_key
from torch import nn
from transformers.pytorch_utils import Conv1D

from regiontune.adapters.bottleneck.config import BottleneckConfig
from regiontune.adapters.item_side import PREFIX as ITEM_SIDE_PREFIX
from regiontune.model.recmodel import RecModel

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
