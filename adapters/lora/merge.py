"""LoRA's merge rule: the exact weighted sum of the sources' deltas.

Each source's delta on a module is ``scaling * B @ A``. Concatenating the ``A`` rows (the
weight and the scaling folded in) and the ``B`` columns gives one LoRA whose delta is
``sum_s w_s * scaling_s * B_s @ A_s`` exactly -- PEFT's ``add_weighted_adapter(...,
combination_type="cat")``, with the factors folded into ``A`` alone. Ranks may differ; the
merged rank of a module is the sum of the sources' ranks there (a module only some sources
adapt gets only their parts: the others' delta there is zero). The config is a plain LoRA
with per-module ranks and ``alpha == r`` (scaling 1), as AdaLoRA's LoRA export writes it.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
from peft import LoraConfig
from peft.utils.other import get_pattern_key

if TYPE_CHECKING:
    from ..folder import AdapterFolder

KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
UNSUPPORTED = ("use_dora", "modules_to_save", "layer_replication", "lora_bias")


def scaling(config: dict[str, Any], path: str, rank: int) -> float:
    """The module's LoRA scaling as PEFT computes it (alpha and rank patterns, rsLoRA)."""
    alpha_pattern = config.get("alpha_pattern") or {}
    alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), path),
                              config.get("lora_alpha", 8))
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def modules(folder: AdapterFolder) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (A [r, in], B [out, r]) of one saved LoRA."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in folder.tensors.items():
        match = KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"{folder.path.name}: LoRA tensor {key} is not a plain lora_A/B "
                             "weight; such adapters cannot be merged")
        parts.setdefault(match.group(1), {})[match.group(2)] = tensor.float()
    broken = sorted(p for p, ab in parts.items() if set(ab) != {"A", "B"})
    if broken:
        raise ValueError(f"{folder.path.name}: LoRA modules without both A and B: {broken[:2]}")
    return {p: (ab["A"], ab["B"]) for p, ab in parts.items()}


def merge_lora(sources: list[AdapterFolder], weights: list[float]
               ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config, tensors) of the exact weighted sum of the sources' LoRA deltas."""
    for folder in sources:
        odd = [k for k in UNSUPPORTED if folder.config.get(k) not in (None, False, "none", [])]
        if odd or folder.config.get("bias", "none") != "none":
            raise ValueError(f"{folder.path.name}: LoRA with {odd or ['bias']} cannot be "
                             "merged as a plain sum of deltas")
    fan = {bool(f.config.get("fan_in_fan_out", False)) for f in sources}
    if len(fan) > 1:
        raise ValueError("LoRA adapters of different layouts (fan_in_fan_out) cannot be merged")
    a_parts: dict[str, list[torch.Tensor]] = {}
    b_parts: dict[str, list[torch.Tensor]] = {}
    for folder, weight in zip(sources, weights, strict=True):
        for path, (a, b) in modules(folder).items():
            factor = weight * scaling(folder.config, path, a.shape[0])
            a_parts.setdefault(path, []).append(factor * a)
            b_parts.setdefault(path, []).append(b)
    tensors, ranks = {}, {}
    for path in sorted(a_parts):
        shapes = {(a.shape[1], b.shape[0]) for a, b in zip(a_parts[path], b_parts[path],
                                                           strict=True)}
        if len(shapes) > 1:
            raise ValueError(f"LoRA module {path} has different shapes across the sources")
        a, b = torch.cat(a_parts[path], dim=0), torch.cat(b_parts[path], dim=1)
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = b.contiguous()
        ranks[path] = a.shape[0]
    if not ranks:
        raise ValueError("the LoRA adapters to merge hold no LoRA module")
    config = LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()),
                        target_modules=sorted(ranks), lora_dropout=0.0,
                        fan_in_fan_out=fan.pop(), rank_pattern=dict(ranks),
                        alpha_pattern=dict(ranks)).to_dict()
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    return config, tensors
