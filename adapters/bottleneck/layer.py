"""The bottleneck layer: wraps an output projection, adds down -> act -> up as a residual.

Several named adapters can live in one layer; a context variable routes each batch row to
its own adapter, so one forward pass serves a batch that mixes regions.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

_ROUTE: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("route", default=None)
ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


@contextlib.contextmanager
def route(adapter_names: list[str] | None) -> Iterator[None]:
    """Within the block, row ``i`` of a batch goes through adapter ``adapter_names[i]``."""
    token = _ROUTE.set(adapter_names)
    try:
        yield
    finally:
        _ROUTE.reset(token)


class Bottleneck(nn.Module):
    def __init__(self, hidden: int, width: int, act: str, dropout: float) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, width)
        self.act = ACT[act]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(width, hidden)
        nn.init.zeros_(self.up.weight)  # starts as the identity: adaptation begins at the backbone
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(h))))


class BottleneckLayer(nn.Module):
    """``base_layer`` followed by the active (or routed) bottleneck adapter."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.bottleneck = nn.ModuleDict()
        self.active: str | None = None

    def add(self, name: str, hidden: int, width: int, act: str, dropout: float) -> None:
        self.bottleneck[name] = Bottleneck(hidden, width, act, dropout)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        names = _ROUTE.get()
        if names is None:
            return out + self.bottleneck[self.active](out) if self.active else out
        delta = torch.zeros_like(out)
        for name in set(names):
            if name not in self.bottleneck:
                continue  # rows of regions without an adapter get the plain backbone
            rows = torch.tensor([i for i, n in enumerate(names) if n == name], device=out.device)
            delta[rows] = self.bottleneck[name](out[rows])
        return out + delta
