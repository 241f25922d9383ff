"""IA3: learned rescaling of keys, values and the FFN input (PEFT). No mixed batches.

Merging (``regiontune merge``): the inherited default, the weighted average of the scaling
vectors (``MethodDefaults.merge``).
"""

from __future__ import annotations

from peft import IA3Config

from ..base import register
from ..peft_common import PeftMethod

IA3_TARGETS = {"llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
               "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
               "bert": (r".*\.(key|value|layer\.\d+\.output\.dense)$",
                        r".*\.layer\.\d+\.output\.dense$")}


def ia3_defaults(arch: str) -> dict:
    return {}


def ia3_config(options: dict, arch: str, total_steps: int) -> IA3Config:
    target, feedforward = IA3_TARGETS[arch]
    return IA3Config(target_modules=target, feedforward_modules=feedforward,
                     fan_in_fan_out=arch == "gpt2")


IA3 = register(PeftMethod("ia3", ia3_config, ia3_defaults))
