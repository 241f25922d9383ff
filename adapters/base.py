"""The adapter-method protocol and the registry (one line registers a method).

Everything a method knows lives in its folder (``adapters/<method>/``): its options, how it
attaches to the backbone, what it saves, and -- for methods whose rows can mix in one forward
pass -- its routed serving form. Training, serving and the hub ask the method, never its name.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from regiontune.model.recmodel import RecModel

from .routing import RoutedForm

if TYPE_CHECKING:
    from .folder import AdapterFolder

# (the registered method the result is saved as, its adapter_config.json, its tensors)
Merged = tuple[str, dict[str, Any], dict[str, torch.Tensor]]


class AdapterMethod(Protocol):
    """What a method provides; the item-side part is common to all and lives elsewhere."""

    name: str
    peft_loadable: bool  # the saved adapter loads with plain ``peft.PeftModel.from_pretrained``
    copies_backbone: bool  # the "adapter" is a whole trained copy of the backbone (full FT)
    routed: RoutedForm | None  # the mixed-batch serving form, None when rows cannot mix

    @property
    def mixed_batches(self) -> bool:
        """One forward pass can route each row to a different adapter of this method."""

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

    def save_extras(self, body: nn.Module, name: str, directory: Path, config: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor], dtype: torch.dtype
                    ) -> dict[str, Any]:
        """Write any further files of the adapter into ``directory`` (being written
        atomically); returns entries to add to the region metadata."""

    def serving_form(self, directory: Path) -> tuple[str, Path]:
        """(method, folder) to serve a saved adapter as: another registered method's form
        when the folder ships one (AdaLoRA's plain-LoRA export), else (own name, folder)."""

    def load(self, backbone: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor],
             name: str, body: nn.Module | None = None) -> nn.Module:
        """Add a saved adapter ``name`` to ``body`` (or to a new body on ``backbone``)."""

    def step_hooks(self, body: nn.Module) -> tuple:
        """Callables ``hook(task, step)`` run after each optimizer step."""

    def merge(self, sources: list[AdapterFolder], weights: list[float]) -> Merged:
        """The weighted combination of saved adapters of this method (``regiontune merge``):
        ``sources`` read with their method tensors only (the item side is merged apart, by
        :mod:`regiontune.adapters.merge`), ``weights`` positive and summing to 1. Raises
        ``ValueError`` with a clear message when they cannot be combined."""


class MethodDefaults:
    """Defaults of the optional protocol members, for methods to inherit."""

    peft_loadable = False
    copies_backbone = False
    routed: RoutedForm | None = None

    @property
    def mixed_batches(self) -> bool:
        return self.routed is not None

    def save_extras(self, body: nn.Module, name: str, directory: Path, config: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor], dtype: torch.dtype
                    ) -> dict[str, Any]:
        return {}

    def serving_form(self, directory: Path) -> tuple[str, Path]:
        return self.name, directory

    def step_hooks(self, body: nn.Module) -> tuple:
        return ()

    def merge(self, sources: list[AdapterFolder], weights: list[float]) -> Merged:
        """Default: the weighted average of the tensors (a "model soup"), for sources of one
        configuration whose tensors agree in names and shapes."""
        from .merge import average_tensors  # merge.py reads the registry: import at call time

        return average_tensors(self.name, sources, weights)


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
