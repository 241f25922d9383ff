"""How a region adapter spends its size budget (``AdaptConfig.item_budget``, a share of the
backbone's bytes): the adapter's own weights first, then the item-item part's neighbours
(``neighbours_share`` of what is left), then the item side's rank (the rest)."""

from __future__ import annotations

import math

import torch

from regiontune.adapters.io import weights_dtype
from regiontune.adapters.item_item import part_bytes
from regiontune.adapters.item_side import PREFIX
from regiontune.config import AdaptConfig
from regiontune.model.recmodel import RecModel

# safetensors header: 8-byte length, {"__metadata__": {"format": "pt"}}, then per tensor
# "name": {"dtype": "F16", "shape": [a, b], "data_offsets": [x, y]} -- at most ~90 bytes
# besides the name (the parameter names are longer than the saved ones: PEFT drops the
# adapter name), padded to 8 bytes
HEADER_FIXED, HEADER_PER_TENSOR = 64, 96
ITEM_SIDE_NAMES = [PREFIX + n for n in ("lowrank_a", "lowrank_b", "bias", "item_item.neighbours",
                                        "item_item.strengths", "item_item.weight")]


def header_bytes(tensor_names: list[str]) -> int:
    """An upper bound of the safetensors header size for tensors of these names."""
    return HEADER_FIXED + sum(len(n) + HEADER_PER_TENSOR for n in tensor_names)


def _number_bits(adapt_cfg: AdaptConfig) -> int:
    return torch.finfo(weights_dtype(adapt_cfg.weights_dtype, adapt_cfg.method)).bits


def free_numbers(backbone: RecModel, body, adapt_cfg: AdaptConfig) -> int:
    """What the budget leaves for the item side, in numbers of the adapter's dtype (a float16
    adapter fits twice as many in the budget of the float32 backbone's bytes)."""
    number_bits = _number_bits(adapt_cfg)
    per_number = torch.finfo(torch.float32).bits // number_bits
    # the adapter's tensors, which PEFT injects into the backbone's own module tree
    trainable = ([(n, p) for n, p in body.named_parameters() if p.requires_grad]
                 if body is not None else [])
    adapter = {id(p) for _, p in trainable}
    own = sum(p.numel() for p in backbone.parameters() if id(p) not in adapter)
    budget = adapt_cfg.item_budget * per_number * own
    used = sum(p.numel() for _, p in trainable)
    # the file's JSON header takes room too (one entry per tensor: ~4 KB for a LoRA of WSDM's
    # backbone, a few ranks' worth of a small catalogue), counted in numbers of the dtype
    names = [n for n, _ in trainable] + ITEM_SIDE_NAMES
    used += math.ceil(8 * header_bytes(names) / number_bits)
    return int(budget - used)


def auto_neighbours(backbone: RecModel, body, n_items: int, adapt_cfg: AdaptConfig) -> int:
    """Neighbours per item of the item-item part: ``neighbours_share`` of the free budget, at
    most ``max_neighbours``; 0 when the catalogue is past ``max_neighbour_catalogue`` or the
    share buys less than one neighbour an item."""
    if n_items > adapt_cfg.max_neighbour_catalogue or n_items == 0:
        return 0
    number_bits = _number_bits(adapt_cfg)
    share = adapt_cfg.neighbours_share * free_numbers(backbone, body, adapt_cfg) * number_bits
    k = int(share // (8 * part_bytes(n_items, 1, number_bits)))
    return max(0, min(adapt_cfg.max_neighbours, k))


def neighbours_for(backbone: RecModel, body, n_items: int, adapt_cfg: AdaptConfig) -> int:
    """``adapt_cfg.neighbours`` when given (>= 0), else :func:`auto_neighbours`."""
    if adapt_cfg.neighbours >= 0:
        return adapt_cfg.neighbours
    return auto_neighbours(backbone, body, n_items, adapt_cfg)


def auto_item_rank(backbone: RecModel, body, n_items: int, adapt_cfg: AdaptConfig,
                   neighbours: int = 0) -> int:
    """Largest item rank keeping the adapter within ``item_budget`` of the backbone's size,
    after an item-item part of ``neighbours`` per item.

    Each catalogue item costs ``rank + 1`` numbers (its row of ``A`` and its bias), so big
    catalogues get a smaller rank (the size/quality trade-off on WSDM:
    benchmarks/results/rank_sweep.md).
    """
    number_bits = _number_bits(adapt_cfg)
    free = free_numbers(backbone, body, adapt_cfg)
    free -= math.ceil(8 * part_bytes(n_items, neighbours, number_bits) / number_bits)
    hidden = backbone.config.hidden_size
    rank = int((free - n_items) // (n_items + hidden))
    return max(1, min(adapt_cfg.max_item_rank, rank))
