"""The bottleneck layer: wraps an output projection, adds down -> act -> up as a residual.

Several named adapters can live in one layer; :func:`regiontune.adapters.routing.route` routes
each batch row to its own adapter, so one forward pass serves a batch that mixes regions.
"""

from __future__ import annotations

import torch
from torch import nn

from ..routing import current_route

ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


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
        route = current_route()
        if route is None:
            return out + self.bottleneck[self.active](out) if self.active else out
        unique, index, _ = route
        delta = torch.zeros_like(out)
        for j, name in enumerate(unique):
            if name not in self.bottleneck:
                continue  # rows of regions without an adapter get the plain backbone
            if index is None:  # every row takes this one adapter
                return out + self.bottleneck[name](out)
            rows = (index == j).nonzero()[:, 0].to(out.device)
            delta[rows] = self.bottleneck[name](out[rows])
        return out + delta
