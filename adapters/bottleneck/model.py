"""Injecting bottleneck adapters into a backbone, and the method behind the protocol."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from regiontune.model.recmodel import RecModel

from ..base import MethodDefaults, register
from ..routing import route
from .config import BottleneckConfig
from .layer import BottleneckLayer
from .routed import ROUTED_BOTTLENECK


class BottleneckModel(nn.Module):
    """The backbone with bottleneck layers; ``adapter_names=`` routes rows like PEFT's LoRA."""

    def __init__(self, backbone: RecModel) -> None:
        super().__init__()
        self.model = backbone
        self.configs: dict[str, BottleneckConfig] = {}

    def layers(self) -> list[tuple[str, BottleneckLayer]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, BottleneckLayer)]

    def add_adapter(self, name: str, config: BottleneckConfig) -> None:
        patterns = [re.compile(p) for p in config.patterns()]
        hidden = self.model.config.hidden_size
        width = max(1, hidden // int(config.reduction_factor))
        targets = [n for n, _ in self.model.named_modules()
                   if any(p.search(n) for p in patterns) and not n.endswith("base_layer")]
        if not targets:
            raise ValueError(f"no module of the {config.arch} backbone matches {config.patterns()}")
        for path in targets:
            parent_path, _, child = path.rpartition(".")
            parent = self.model.get_submodule(parent_path)
            layer = getattr(parent, child)
            if not isinstance(layer, BottleneckLayer):
                layer = BottleneckLayer(layer)
                setattr(parent, child, layer)
            layer.add(name, hidden, width, config.non_linearity, config.dropout)
        self.configs[name] = config
        self.set_adapter(name)

    def set_adapter(self, name: str | None) -> None:
        for _, layer in self.layers():
            layer.active = name

    def forward(self, adapter_names: list[str] | None = None, **kwargs):
        with route(adapter_names):
            return self.model(**kwargs)

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        return {f"{path}.bottleneck.{k}": v.detach().cpu().contiguous()
                for path, layer in self.layers() if name in layer.bottleneck
                for k, v in layer.bottleneck[name].state_dict().items()}

    def load_adapter_state(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        expected = self.adapter_state(name)
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise ValueError(f"bottleneck weights lack {len(missing)} tensors, e.g. {missing[:2]}")
        for path, layer in self.layers():
            if name in layer.bottleneck:
                prefix = f"{path}.bottleneck."
                layer.bottleneck[name].load_state_dict(
                    {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


class BottleneckMethod(MethodDefaults):
    name = "bottleneck"
    routed = ROUTED_BOTTLENECK

    def default_options(self, arch: str) -> dict[str, Any]:
        return {"reduction_factor": 16, "non_linearity": "relu", "placement": "houlsby",
                "dropout": 0.0}

    def attach(self, backbone: RecModel, options: dict[str, Any], name: str,
               total_steps: int) -> nn.Module:
        for p in backbone.parameters():
            p.requires_grad_(False)
        body = BottleneckModel(backbone)
        body.add_adapter(name, BottleneckConfig.from_dict(
            {**self.default_options(backbone.config.arch), **options,
             "arch": backbone.config.arch}))
        return body

    def base_of(self, body: nn.Module) -> RecModel:
        return body.model

    def weights(self, body: nn.Module, name: str) -> dict[str, torch.Tensor]:
        return body.adapter_state(name)

    def adapter_config(self, body: nn.Module, name: str) -> dict[str, Any]:
        return body.configs[name].to_dict()

    def load(self, backbone: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor],
             name: str, body: nn.Module | None = None) -> nn.Module:
        body = body if body is not None else BottleneckModel(backbone)
        body.add_adapter(name, BottleneckConfig.from_dict(config))
        body.load_adapter_state(name, tensors)
        for p in body.parameters():
            p.requires_grad_(False)
        return body


BOTTLENECK = register(BottleneckMethod())
