"""One routing mechanism for every method whose rows can mix in a forward pass.

:func:`route` sets, for the current thread, which adapter each row of the batch goes through;
each method's layers read it (:func:`current_route`): the bottleneck method's training layer,
and the routed serving forms that ``adapters/<method>/routed.py`` define (banks of frozen
tensors, :func:`bank_add`). A method declares its serving form as a :class:`RoutedForm`.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from regiontune.model.recmodel import RecModel

BASE = "__base__"  # rows that take no adapter (PEFT's name for it; every routed layer skips it)
# (adapter names, row -> name index or None for one name, {slot ids: row slots}) of the batch
# running in this thread; layers whose banks number the adapters alike share the row slots
_ROUTE: contextvars.ContextVar[tuple | None] = contextvars.ContextVar("route", default=None)


@dataclass(frozen=True)
class RoutedForm:
    """How a method serves many adapters in one module tree.

    ``parse(model, config, tensors)`` validates a saved adapter against the model and returns
    ``{module path: args}``; ``wrap(layer, model)`` replaces a plain layer by the routed one
    (of ``layer_type``), whose ``add(name, *args)``, ``remove(name)`` and ``names()`` manage
    the adapters it holds.
    """

    layer_type: type[nn.Module]
    wrap: Callable[[nn.Module, RecModel], nn.Module]
    parse: Callable[[RecModel, dict[str, Any], dict[str, torch.Tensor]], dict[str, tuple]]


def shared_clone(backbone: RecModel) -> RecModel:
    """A new module tree over the *same* weight tensors: layers can be wrapped in place without
    touching the backbone, and no weight is copied."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(backbone.parameters(),
                                                              backbone.buffers())}
    return copy.deepcopy(backbone, memo)


def freeze(module: nn.Module) -> nn.Module:
    """Inference only: eval mode (no dropout) and nothing trainable."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


@contextlib.contextmanager
def route(names: list[str] | None) -> Iterator[None]:
    """Within the block (this thread only), row ``i`` goes through adapter ``names[i]``;
    ``None``: no routing (a training body uses its active adapter)."""
    if names is None:
        value = None
    else:
        unique = list(dict.fromkeys(names))
        index = torch.tensor([unique.index(n) for n in names]) if len(unique) > 1 else None
        value = (unique, index, {})
    token = _ROUTE.set(value)
    try:
        yield
    finally:
        _ROUTE.reset(token)


def current_route() -> tuple | None:
    """The route set by the innermost :func:`route` of this thread: ``(unique names, row ->
    name index or None when all rows share one name, row-slot cache)``, or None."""
    return _ROUTE.get()


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
        stacks = tuple(copy_into(s.new_zeros(size + extra, *shape), s)
                       for s, shape in zip(stacks, shapes, strict=True))
        free += range(size, size + extra)
    slot = free.pop(0)
    for stack, part in zip(stacks, parts, strict=True):
        stack[slot].zero_()
        copy_into(stack[slot], part)
    return stacks, {**slots, name: slot}


def bank_remove(bank: Bank, free: list[int], name: str) -> Bank:
    stacks, slots = bank
    if name not in slots:
        return bank
    free.append(slots[name])
    return stacks, {k: v for k, v in slots.items() if k != name}


def route_rows(route: tuple, ids: list[int]) -> torch.Tensor:
    """Bank slot of each row, for a layer whose slots of the routed adapters are ``ids``."""
    _, index, cache = route
    key = tuple(ids)
    rows = cache.get(key)
    if rows is None:
        rows = cache[key] = torch.tensor(ids)[index]
    return rows


def copy_into(out: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    out[tuple(slice(0, n) for n in src.shape)] = src
    return out


