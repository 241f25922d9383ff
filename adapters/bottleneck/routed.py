"""The bottleneck method's routed serving form: many regions' adapters in one layer.

:class:`RoutedBottleneck` serves the bottleneck files with the method's arithmetic
``out + up(act(down(out)))``: one gather and two batched products per layer, rather than one
sub-batch per adapter per layer.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regiontune.model.recmodel import RecModel

from ..routing import Bank, RoutedForm, bank_add, bank_remove, current_route, route_rows
from .config import BottleneckConfig

# the method's activations (all map 0 to 0: zero-padded units add nothing)
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


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
        route = current_route()
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
        rows = route_rows(route, ids)
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


BOTTLENECK_PARTS = ("down.weight", "down.bias", "up.weight", "up.bias")


def parse_bottleneck(model: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor]
                     ) -> dict[str, tuple[tuple[torch.Tensor, ...], str]]:
    """Validate a bottleneck adapter against ``model``: {module path: ((down, down bias, up,
    up bias), activation)}, checked as the bottleneck method's own loader checks it."""
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
        out[path] = (tuple(parts), cfg.non_linearity)
    return out


ROUTED_BOTTLENECK = RoutedForm(
    RoutedBottleneck, lambda layer, model: RoutedBottleneck(layer, model.config.hidden_size),
    parse_bottleneck)
