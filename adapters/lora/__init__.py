"""LoRA on the attention and MLP projections (PEFT); mixed-region batches supported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peft import LoraConfig

from ..base import Merged, register
from ..peft_common import PeftMethod, targets
from .merge import merge_lora
from .routed import ROUTED_LORA

if TYPE_CHECKING:
    from ..folder import AdapterFolder


def lora_defaults(arch: str) -> dict:
    return {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "targets": "attention,mlp"}


def lora_config(options: dict, arch: str, total_steps: int) -> LoraConfig:
    return LoraConfig(r=int(options["r"]), lora_alpha=float(options["lora_alpha"]),
                      lora_dropout=float(options["lora_dropout"]),
                      target_modules=targets(arch, options["targets"]),
                      fan_in_fan_out=arch == "gpt2")  # GPT-2 uses Conv1D (transposed weights)


class LoraMethod(PeftMethod):
    def merge(self, sources: list[AdapterFolder], weights: list[float]) -> Merged:
        """The exact weighted sum of the deltas (``lora/merge.py``); ranks may differ."""
        return (self.name, *merge_lora(sources, weights))


LORA = register(LoraMethod("lora", lora_config, lora_defaults, routed=ROUTED_LORA))
