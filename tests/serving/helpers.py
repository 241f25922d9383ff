"""Adapters for the serving tests: trained briefly, perturbed so that versions differ."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from regiontune.adapters import save_adapter
from regiontune.adapters.io import WEIGHTS
from regiontune.config import AdaptConfig, TrainConfig
from regiontune.model.backbone import load_backbone
from regiontune.training.adapt import train_region

QUICK = TrainConfig(epochs=1, batch_size=32, progress=False)


def make_adapter(backbone_dir: Path, data, method: str, out: Path, seed: int):
    """Train briefly, perturb every trainable weight (so adapters differ), save; the task."""
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    task, _ = train_region(backbone, vocab, data, AdaptConfig(method=method, region=data.region),
                           QUICK)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in task.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    meta = {"region": data.region, "backbone_fingerprint": bmeta["fingerprint"]}
    save_adapter(task, method, data.region, meta, out)
    return task.eval()


def perturbed_copy(src: Path, dst: Path, seed: int) -> Path:
    """A second version of an adapter: same files, every tensor nudged."""
    shutil.copytree(src, dst)
    tensors = load_file(str(dst / WEIGHTS))
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: v + 0.2 * torch.randn(v.shape, generator=gen) for k, v in tensors.items()}
    save_file(tensors, str(dst / WEIGHTS), metadata={"format": "pt"})
    return dst


def histories(data, n: int = 4) -> list[list[str]]:
    """Histories of different lengths (so rows are padded), from the region's own users."""
    users = [h for h in data.train.values() if len(h) >= 2]
    return [users[i % len(users)][: 2 + i] for i in range(n)]
