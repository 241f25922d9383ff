"""LoRA on the attention and MLP projections (PEFT); mixed-region batches supported."""

from __future__ import annotations

from peft import LoraConfig

from ..base import register
from ..peft_common import PeftMethod, targets
from .routed import ROUTED_LORA


def lora_defaults(arch: str) -> dict:
    return {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "targets": "attention,mlp"}


def lora_config(options: dict, arch: str, total_steps: int) -> LoraConfig:
    return LoraConfig(r=int(options["r"]), lora_alpha=float(options["lora_alpha"]),
                      lora_dropout=float(options["lora_dropout"]),
                      target_modules=targets(arch, options["targets"]),
                      fan_in_fan_out=arch == "gpt2")  # GPT-2 uses Conv1D (transposed weights)


LORA = register(PeftMethod("lora", lora_config, lora_defaults, routed=ROUTED_LORA))
