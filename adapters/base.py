"""The adapter-method protocol and the registry (one line registers a method)."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from regiontune.model.recmodel import RecModel


class AdapterMethod(Protocol):
    """What a method provides; the item-side part is common to all and lives elsewhere."""

    name: str
    peft_loadable: bool  # the saved adapter loads with plain ``peft.PeftModel.from_pretrained``
    mixed_batches: bool  # one forward pass can route each row to a different adapter

    def default_options(self, arch: str) -> dict[str, Any]:
        """Method options (rank, targets, ...) at their defaults for a backbone family."""

    def attach(self, backbone: RecModel, options: dict[str, Any], name: str,
               total_steps: int) -> nn.Module:
        """Wrap the backbone with a fresh trainable adapter ``name``; returns the body."""

    def base_of(self, body: nn.Module) -> RecModel:
        """The backbone inside a body (its item table feeds the region table)."""

    def weights(self, body: nn.Module, name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors, as saved in ``adapter_model.safetensors``."""

    def adapter_config(self, body: nn.Module, name: str) -> dict[str, Any]:
        """The content of ``adapter_config.json``."""

    def load(self, backbone: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor],
             name: str, body: nn.Module | None = None) -> nn.Module:
        """Add a saved adapter ``name`` to ``body`` (or to a new body on ``backbone``)."""

    def step_hooks(self, body: nn.Module) -> tuple:
        """Callables ``hook(task, step)`` run after each optimizer step."""


METHODS: dict[str, AdapterMethod] = {}


def register(method: AdapterMethod) -> AdapterMethod:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> AdapterMethod:
    if name not in METHODS:
        raise ValueError(f"unknown adapter method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
