"""Fixtures of the serving tests: adapter directories and a client with an admin token (HTTP);
adapters of every method and a Recommender serving them (library)."""

from __future__ import annotations

import shutil

import pytest

from regiontune.adapters.io import WEIGHTS
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import TOKEN, client_for, histories, make_adapter, perturbed_copy
from tests.serving.recommender_common import METHOD_REGIONS


@pytest.fixture(scope="module")
def dirs(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """Adapter directories: lora (west) + its version B, bottleneck (delta), a corrupt one."""
    root = tmp_path_factory.mktemp("server_adapters")
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", root / "west", 1)
    make_adapter(tiny_backbone_dir, tiny_regions["delta"], "bottleneck", root / "delta", 2)
    perturbed_copy(root / "west", root / "west_b", 3)
    corrupt = shutil.copytree(root / "west", root / "corrupt")
    (corrupt / WEIGHTS).write_bytes(b"not a safetensors file")
    return {"west": root / "west", "west_b": root / "west_b", "delta": root / "delta",
            "corrupt": corrupt, "backbone": tiny_backbone_dir, "root": root,
            "h_west": histories(tiny_regions["west"], 3),
            "h_delta": histories(tiny_regions["delta"], 2)}


@pytest.fixture
def client(dirs):
    return client_for(dirs, admin_token=TOKEN, max_history=50, max_k=100,
                      adapter_roots=[dirs["root"]])


@pytest.fixture(scope="package")
def adapters(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """{method: (adapter dir, in-memory task, region data)} plus version B of the lora one."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for seed, (method, region) in enumerate(METHOD_REGIONS.items()):
        data = tiny_regions[region]
        task = make_adapter(tiny_backbone_dir, data, method, root / method, seed)
        out[method] = (root / method, task, data)
    out["lora_b"] = (perturbed_copy(root / "lora", root / "lora_b", 99), None,
                     tiny_regions["west"])
    return out


@pytest.fixture(scope="package")
def rec(tiny_backbone_dir, adapters):
    rec = Recommender.from_dirs(tiny_backbone_dir)
    for method in METHOD_REGIONS:
        rec.load(method, adapters[method][0])
    return rec
