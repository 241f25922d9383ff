"""LoRA's routed serving form: many regions' LoRA adapters in one layer, routed per row.

LoRA is served by :class:`RoutedLora`, not by PEFT's own mixed-batch path: PEFT walks every
module of the model on each forward (to install its routing hooks) and on each
``add_adapter``/``delete_adapter``, so both grow with the number of adapters loaded (at 100
adapters: ~25 ms per forward, ~150 ms per load on a small CPU model). The files are PEFT's and
the arithmetic is PEFT's LoRA (``base(x) + B(A(x)) * scaling``), routed per row.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import torch
from peft.utils.other import get_pattern_key
from torch import nn
from transformers.pytorch_utils import Conv1D

from regiontune.model.recmodel import RecModel

from ..item_side import PREFIX as ITEM_SIDE_PREFIX
from ..routing import Bank, RoutedForm, bank_add, bank_remove, current_route, route_rows

LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
UNSUPPORTED_LORA = ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices",
                    "layer_replication", "alora_invocation_tokens", "use_qalora",
                    "target_parameters")


class RoutedLora(nn.Module):
    """A linear layer plus per-row LoRA deltas, from a bank of frozen tensors.

    The bank stacks every adapter of the layer, ranks zero-padded to the largest (zeros add
    exactly nothing): ``A [slots, r, in]``, ``B [slots, out, r]``, scalings; slot 0 stays zero
    for rows without an adapter here. A mixed batch then costs one gather and two batched
    products per layer, whatever the number of regions. The bank tuple is swapped whole
    (:func:`bank_add`), so a forward pass reads one consistent bank.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        n_in, n_out = _features(base_layer)
        dtype = base_layer.weight.dtype
        self._bank: Bank = ((torch.zeros(1, 0, n_in, dtype=dtype),
                             torch.zeros(1, n_out, 0, dtype=dtype), torch.zeros(1, dtype=dtype)),
                            {})
        self._free: list[int] = []

    def names(self) -> set[str]:
        return set(self._bank[1])

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        self._bank = bank_add(self._bank, self._free, name,
                              (a, b, torch.tensor(scale, dtype=a.dtype)), (0, 1, None))

    def remove(self, name: str) -> None:
        self._bank = bank_remove(self._bank, self._free, name)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        route = current_route()
        if route is None:
            return out
        (a_all, b_all, scales), slots = self._bank
        unique, index, _ = route
        ids = [slots.get(n, 0) for n in unique]  # 0: BASE, or an adapter not targeting this
        if not any(ids):
            return out
        if index is None:
            a, b = a_all[ids[0]], b_all[ids[0]]
            return out + (x @ a.T) @ b.T * scales[ids[0]]
        rows = route_rows(route, ids)
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        delta = torch.bmm(torch.bmm(flat, a_all[rows].transpose(1, 2)),
                          b_all[rows].transpose(1, 2))
        return out + (delta * scales[rows][:, None, None]).reshape(out.shape)


def _features(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, Conv1D):  # GPT-2: weight is [in, out]
        return tuple(layer.weight.shape)
    raise ValueError(f"LoRA on {type(layer).__name__} layers is not supported for serving")


def parse_lora(model: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor]
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """Validate a PEFT LoRA adapter against ``model``: {module path: (A, B, scaling)}."""
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(f"not a LoRA adapter (peft_type {config.get('peft_type')!r})")
    unsupported = [k for k in UNSUPPORTED_LORA if config.get(k)]
    if unsupported:
        raise ValueError(f"LoRA options {unsupported} are not supported for serving")
    pairs: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, tensor in tensors.items():
        if key.startswith(ITEM_SIDE_PREFIX):
            continue
        match = LORA_KEY.fullmatch(key)
        if not match:
            raise ValueError(f"unexpected tensor {key!r} in a LoRA adapter")
        pairs[match[1]][match[2]] = tensor
    if not pairs:
        raise ValueError("the adapter holds no LoRA tensors")
    ranks, alphas = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
    out = {}
    for path, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: the adapter lacks lora_A or lora_B")
        try:
            layer = model.get_submodule(path)
        except AttributeError as err:
            raise ValueError(f"{path}: no such module in the backbone") from err
        base = layer.base_layer if isinstance(layer, RoutedLora) else layer
        (n_in, n_out), r = _features(base), ab["A"].shape[0]
        if ab["A"].shape != (r, n_in) or ab["B"].shape != (n_out, r):
            raise ValueError(f"{path}: LoRA shapes {tuple(ab['A'].shape)}, "
                             f"{tuple(ab['B'].shape)} do not fit a {n_in}->{n_out} layer")
        if ranks.get(get_pattern_key(ranks.keys(), path), config.get("r")) != r:
            raise ValueError(f"{path}: rank {r} differs from the adapter config")
        alpha = float(alphas.get(get_pattern_key(alphas.keys(), path), config["lora_alpha"]))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        dtype = base.weight.dtype
        out[path] = (ab["A"].to(dtype).contiguous(), ab["B"].to(dtype).contiguous(), scale)
    return out


ROUTED_LORA = RoutedForm(RoutedLora, lambda layer, model: RoutedLora(layer), parse_lora)
