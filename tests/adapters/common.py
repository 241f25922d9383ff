"""Shared constants and helpers of the adapter tests."""

from __future__ import annotations

from pathlib import Path

import torch

from regiontune.adapters import (
    METHODS,
)
from regiontune.model.backbone import load_backbone

ALL = sorted(METHODS)
PEFT_METHODS = sorted(m for m in METHODS if METHODS[m].peft_loadable)
SMALL = ["adalora", "bottleneck", "ia3", "lora"]  # adapter file well below the backbone's
ADAPTER_PARAM = {"lora": "lora_", "adalora": "lora_", "ia3": "ia3_l", "bottleneck": ".bottleneck."}
ADAPTER_KEYS = ("lora_", "ia3_", ".bottleneck.", "ranknum")
REGION = "island"  # a small region with region-only items ("island-3") unknown to the backbone


def fresh_backbone(backbone_dir):
    return load_backbone(backbone_dir)


def probe_histories(data) -> list[list[str]]:
    """The region's validation histories, plus one made of region-new items only."""
    new = [i for i in data.catalogue if i.startswith(f"{REGION}-")]
    return [c.history for c in data.valid] + [new[:2]]


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Seeded noise on every trainable parameter: a non-trivial adapter to save and load."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def base_weights(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone weights inside a body, under the backbone's own names."""
    return {k.replace(".base_layer", ""): v for k, v in base.state_dict().items()
            if not any(a in k for a in ADAPTER_KEYS)}


def file_snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}

