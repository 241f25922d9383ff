"""Adapters for the serving tests: trained briefly, perturbed so that versions differ."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from regiontune.adapters import save_adapter
from regiontune.adapters.io import WEIGHTS
from regiontune.config import AdaptConfig, TrainConfig
from regiontune.model.backbone import load_backbone
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender
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

TOKEN = "s3cret-admin-token"


def client_for(dirs, unknown_region: str = "backbone", **kw) -> TestClient:
    rec = Recommender.from_dirs(dirs["backbone"], [dirs["west"], dirs["delta"]],
                                unknown_region=unknown_region)
    return TestClient(create_app(rec, **kw))


def good(client, dirs) -> dict:
    """A valid request; asserted to succeed after every bad one."""
    r = client.post("/v1/recommend", json={"region": "west", "history": dirs["h_west"][0],
                                           "k": 5})
    assert r.status_code == 200, r.text
    return r.json()


def wait_ready(client, seconds: float = 60.0) -> dict:
    """/readyz once nothing is pending any more (its last answer)."""
    deadline = time.monotonic() + seconds
    while True:
        body = client.get("/readyz").json()
        if not body["pending"] or time.monotonic() > deadline:
            return body
        time.sleep(0.05)
