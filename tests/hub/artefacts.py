"""Small hand-made artefact folders (an adapter, a backbone) for the hub and card tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from regiontune.artifacts import write_json


def make_adapter(root: Path, fp: str = "sha256:aaa", value: float = 1.0) -> Path:
    directory = root / "adapter"
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "adapter_config.json", {"peft_type": "LORA", "r": 2,
                                                   "target_modules": ["q_proj"]})
    save_file({"base_model.model.q_proj.lora_A.weight": torch.full((2, 8), value),
               "base_model.model.q_proj.lora_B.weight": torch.arange(16.0).reshape(8, 2)},
              str(directory / "adapter_model.safetensors"))
    write_json(directory / "region.json", {
        "kind": "adapter", "region": "de", "method": "lora", "peft_loadable": True,
        "dataset": "synthetic",
        "protocol": "leave-one-out, full ranking", "backbone_fingerprint": fp,
        "metrics": {"ndcg@10": 0.61, "hr@10": 0.8, "mrr": 0.5}, "trainable_params": 32,
        "adapter_bytes": (directory / "adapter_model.safetensors").stat().st_size,
        "catalogue": ["i1", "i2", "i3"], "new_items": ["i3"], "train_seconds": 1.25,
        "config": {"adapter": {"method": "lora", "r": 2}}})
    return directory


def make_backbone(root: Path, fp: str = "sha256:aaa") -> Path:
    directory = root / "backbone"
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", {"arch": "llama", "hidden_size": 8})
    save_file({"item_emb.weight": torch.randn(5, 8)}, str(directory / "model.safetensors"))
    write_json(directory / "regiontune.json", {
        "kind": "backbone", "fingerprint": fp, "regions": ["us", "uk"],
        "data": {"recipe": "synthetic"}, "stats": {"users": 10, "items": 5},
        "metrics": {"us": {"ndcg@10": 0.4}, "uk": {"ndcg@10": 0.3}},
        "config": {"model": {"arch": "llama", "hidden_size": 8}}})
    return directory


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}
