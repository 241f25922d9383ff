"""Full fine-tuning of a copy of the backbone, behind the same protocol as the adapters.

Benchmarks treat it like any other method; its "adapter" file is a whole model's weights.
Merging (``regiontune merge``): the inherited default, the weighted average of the whole
models' weights (a model soup; ``MethodDefaults.merge``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from regiontune.model.recmodel import RecConfig, RecModel

from ..base import MethodDefaults, register

PREFIX = "backbone."


class FullMethod(MethodDefaults):
    name = "full"
    copies_backbone = True

    def default_options(self, arch: str) -> dict[str, Any]:
        return {}

    def attach(self, backbone: RecModel, options: dict[str, Any], name: str,
               total_steps: int) -> nn.Module:
        body = copy.deepcopy(backbone)  # the shared backbone itself is never touched
        for p in body.parameters():
            p.requires_grad_(True)
        body.encoder.get_input_embeddings().weight.requires_grad_(False)  # unused (see model.py)
        return body

    def base_of(self, body: nn.Module) -> RecModel:
        return body

    def weights(self, body: nn.Module, name: str) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v.detach().cpu().contiguous() for k, v in body.state_dict().items()}

    def adapter_config(self, body: nn.Module, name: str) -> dict[str, Any]:
        return {"peft_type": "FULL", "method": "full", "backbone_config": body.config.to_dict()}

    def load(self, backbone: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor],
             name: str, body: nn.Module | None = None) -> nn.Module:
        model = RecModel(RecConfig.from_dict(config["backbone_config"]))
        model.load_state_dict({k[len(PREFIX):]: v for k, v in tensors.items()
                               if k.startswith(PREFIX)})
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if getattr(model.config, "item_text", False):  # the text vectors are not weights
            with torch.no_grad():
                model.text_vectors.copy_(backbone.text_vectors)
                model.has_text.copy_(backbone.has_text)
            model.text_bank = backbone.text_bank
        return model


FULL = register(FullMethod())
