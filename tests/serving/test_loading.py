"""Loading adapters into a running Recommender: failures keep the old adapter, hub ids within
a deadline and outside the load lock, broken or foreign folders refused."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from regiontune.adapters.io import WEIGHTS
from regiontune.serving.errors import AdapterLoadError
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import histories
from tests.serving.recommender_common import shared_names


def test_failed_loads_keep_the_old_adapter(rec, adapters, tmp_path):
    lora_dir = adapters["lora"][0]
    h = histories(adapters["lora"][2], 3)
    want = rec.recommend(h, ["lora"] * 3, k=20)
    names = shared_names(rec)
    corrupt = shutil.copytree(lora_dir, tmp_path / "corrupt")
    (corrupt / WEIGHTS).write_bytes((corrupt / WEIGHTS).read_bytes()[:200])
    foreign = shutil.copytree(lora_dir, tmp_path / "foreign")
    meta = json.loads((foreign / "region.json").read_text())
    (foreign / "region.json").write_text(json.dumps({**meta, "backbone_fingerprint": "sha:x"}))
    pickled = shutil.copytree(lora_dir, tmp_path / "pickled")
    torch.save({"x": torch.zeros(1)}, pickled / "evil.bin")
    missing = shutil.copytree(lora_dir, tmp_path / "missing")  # fails inside the shared body
    tensors = load_file(str(missing / WEIGHTS))
    drop = next(k for k in tensors if "lora_B" in k)
    save_file({k: v for k, v in tensors.items() if k != drop}, str(missing / WEIGHTS))
    cases = {corrupt: "corrupt", foreign: "sha:x", pickled: "pickle", missing: "lack",
             tmp_path / "nowhere": "no such"}
    for path, reason in cases.items():
        with pytest.raises(AdapterLoadError, match=reason):
            rec.load("lora", path)
        assert rec.recommend(h, ["lora"] * 3, k=20) == want
    assert shared_names(rec) == names  # nothing half-added left behind
    assert rec.trainable_parameters() == 0


def test_hub_id_is_pulled_then_loaded(rec, adapters, monkeypatch, tmp_path):
    calls = []

    def fake_pull(repo_id, out, revision=None, backbone_dir=None, **kw):
        calls.append((repo_id, revision, backbone_dir))
        shutil.copytree(adapters["ia3"][0], out)
        return Path(out)

    monkeypatch.setattr("regiontune.hub.client.pull", fake_pull)
    info = rec.load("hubbed", "acme/ia3-adapter@v1")
    assert calls == [("acme/ia3-adapter", "v1", rec.backbone_dir)]
    assert info["method"] == "ia3" and info["path"] == "acme/ia3-adapter@v1"
    cache = rec.fetcher.cache_dir
    assert cache is not None and not any(cache.iterdir())  # in memory: the download is gone
    h = histories(adapters["ia3"][2], 1)
    assert rec.recommend(h, ["hubbed"])[0]["adapted"]
    rec.unload("hubbed")

    def failing_pull(repo_id, out, **kw):
        Path(out).mkdir(parents=True)
        (Path(out) / "partial.bin").write_bytes(b"x")  # half a download
        raise RuntimeError("hub unreachable")

    monkeypatch.setattr("regiontune.hub.client.pull", failing_pull)
    with pytest.raises(AdapterLoadError, match="no local directory.*hub unreachable"):
        rec.load("hubbed", "acme/missing")
    assert not any(cache.iterdir())  # cleaned on failure too
    rec.close()  # shutdown: the temporary cache folder goes
    assert not cache.exists()


def test_hub_deadline_outside_the_load_lock(tiny_backbone_dir, adapters, monkeypatch):
    """A hub that never answers: the load gives up at the deadline, other loads and unloads
    go on meanwhile, and the stuck download's folder is removed once it ends."""
    rec = Recommender.from_dirs(tiny_backbone_dir, [adapters["lora"][0]], hub_deadline_s=0.4)
    release, started, outs = threading.Event(), threading.Event(), []

    def stuck_pull(repo_id, out, **kw):
        outs.append(Path(out))
        Path(out).mkdir(parents=True)
        started.set()
        release.wait(10)
        Path(out).mkdir(parents=True, exist_ok=True)  # writes after the deadline
        (Path(out) / "late.bin").write_bytes(b"x")
        raise RuntimeError("finally failed")

    monkeypatch.setattr("regiontune.hub.client.pull", stuck_pull)
    errors = []

    def put() -> None:
        try:
            rec.load("slow", "acme/silent")
        except AdapterLoadError as err:
            errors.append(err)

    loader = threading.Thread(target=put)
    start = time.monotonic()
    loader.start()
    assert started.wait(5)
    rec.load("other", adapters["bottleneck"][0])  # not queued behind the download:
    rec.unload("other")
    assert loader.is_alive() and not errors  # done while the hub load still waits
    loader.join(5)
    assert time.monotonic() - start < 2.0
    assert len(errors) == 1 and "did not finish within 0.4 s" in str(errors[0])
    assert "slow" not in {r["region"] for r in rec.regions()}
    release.set()  # the worker writes on, then ends: its folder is removed then
    deadline = time.monotonic() + 5
    while outs[0].exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not outs[0].exists()
    rec.close()


def test_non_finite_weights_refused_at_load(rec, adapters, tmp_path):
    h = histories(adapters["lora"][2], 2)
    want = rec.recommend(h, ["lora"] * 2, k=10)
    for value in (float("nan"), float("inf")):
        bad = shutil.copytree(adapters["lora"][0], tmp_path / f"bad_{value}")
        tensors = load_file(str(bad / WEIGHTS))
        name = next(k for k in tensors if "lora_A" in k)
        tensors[name].view(-1)[0] = value
        save_file(tensors, str(bad / WEIGHTS))
        with pytest.raises(AdapterLoadError, match="non-finite.*lora_A"):
            rec.load("lora", bad)
        assert rec.recommend(h, ["lora"] * 2, k=10) == want


def test_not_an_adapter_directory_is_refused_without_a_walk(rec, tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "evil.pkl").write_bytes(b"x")
    with pytest.raises(AdapterLoadError, match="not an adapter directory") as err:
        rec.load("lora", tmp_path)
    assert "evil.pkl" not in str(err.value)  # nothing of the tree is listed


def test_two_folders_claiming_one_region_is_an_error(tiny_backbone_dir, adapters, tmp_path):
    twin = shutil.copytree(adapters["lora"][0], tmp_path / "twin")
    with pytest.raises(AdapterLoadError, match="claim one region.*'west'") as err:
        Recommender.from_dirs(tiny_backbone_dir, [adapters["lora"][0], twin])
    assert str(twin) in str(err.value)
    nameless = shutil.copytree(adapters["lora"][0], tmp_path / "nameless")
    meta = json.loads((nameless / "region.json").read_text())
    (nameless / "region.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                      if k != "region"}))
    with pytest.raises(AdapterLoadError, match="names no region"):
        Recommender.from_dirs(tiny_backbone_dir, [nameless])


def test_hub_deadline_must_be_positive(tiny_backbone_dir):
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="hub_deadline_s must be positive"):
            Recommender.from_dirs(tiny_backbone_dir, hub_deadline_s=bad)
