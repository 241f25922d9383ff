"""Many regions within a budget: lazy loads from the adapter roots, LRU eviction, in-flight
safety."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch

from regiontune.serving.recommender import Recommender
from tests.serving.helpers import histories, make_adapter, perturbed_copy

VERSIONS = 3


@pytest.fixture(scope="module")
def region_root(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """A root of 12 region folders ``r00``..``r11`` (symlinks to 3 adapter versions) and the
    versions themselves."""
    base = tmp_path_factory.mktemp("versions")
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", base / "v0", 0)
    versions = [base / "v0"] + [perturbed_copy(base / "v0", base / f"v{i}", i)
                                for i in range(1, VERSIONS)]
    root = tmp_path_factory.mktemp("regions")
    for i in range(12):
        (root / f"r{i:02d}").symlink_to(versions[i % VERSIONS], target_is_directory=True)
    return root, versions, tiny_regions["west"]


def lazy(tiny_backbone_dir, root, **options) -> Recommender:
    return Recommender.from_dirs(tiny_backbone_dir, unknown_region="error",
                                 lazy_roots=[root], batch_wait_ms=0, **options)


def loaded(rec: Recommender) -> list[str]:
    return [r["region"] for r in rec.regions()]


def test_lazy_load_on_first_request(tiny_backbone_dir, region_root):
    root, versions, data = region_root
    rec = lazy(tiny_backbone_dir, root, max_loaded=4)
    ref = Recommender.from_dirs(tiny_backbone_dir, batch_wait_ms=0)
    ref.load("r04", versions[1])
    h = histories(data, 2)
    assert loaded(rec) == []
    got = rec.recommend(h, ["r04", "r04"], k=8)
    want = ref.recommend(h, ["r04", "r04"], k=8)
    for g, w in zip(got, want, strict=True):
        assert g["items"] == w["items"] and g["adapted"]
        torch.testing.assert_close(g["scores"], w["scores"], atol=1e-5, rtol=1e-5)
    assert loaded(rec) == ["r04"]
    rec.recommend(h[:1], ["r04"], k=3)
    stats = rec.stats()
    assert stats["lazy_loads"] == 1 and stats["region_misses"] == 1 and stats["region_hits"] == 1
    with pytest.raises(LookupError):  # not under a root: still unknown
        rec.recommend(h[:1], ["r99"], k=3)


def test_eviction_is_least_recently_used(tiny_backbone_dir, region_root):
    root, _, data = region_root
    rec = lazy(tiny_backbone_dir, root, max_loaded=3)
    h = histories(data, 1)
    for region in ["r00", "r01", "r02", "r00", "r03"]:  # r00 touched again: r01 goes first
        rec.recommend(h, [region], k=3)
    assert loaded(rec) == ["r00", "r02", "r03"]
    rec.recommend(h, ["r04"], k=3)
    assert loaded(rec) == ["r00", "r03", "r04"]
    assert rec.stats()["evictions"] == 2


def test_explicit_loads_are_pinned_and_preload_fills_the_budget(tiny_backbone_dir,
                                                                region_root):
    root, versions, data = region_root
    rec = lazy(tiny_backbone_dir, root, max_loaded=3)
    rec.load("pinned", versions[0])
    assert rec.preload() == 2
    assert loaded(rec) == ["pinned", "r00", "r01"]
    h = histories(data, 1)
    for region in ["r05", "r06", "r07"]:
        rec.recommend(h, [region], k=3)
    assert "pinned" in loaded(rec) and len(loaded(rec)) == 3


def test_memory_budget_is_respected(tiny_backbone_dir, region_root):
    root, _, data = region_root
    rec = lazy(tiny_backbone_dir, root)
    rec.recommend(histories(data, 1), ["r00"], k=3)
    one = rec.stats()["adapter_bytes"]
    assert one > 0
    rec = lazy(tiny_backbone_dir, root, adapter_memory_mb=2.5 * one / 2**20)
    for i in range(8):
        rec.recommend(histories(data, 1), [f"r{i:02d}"], k=3)
        assert rec.stats()["adapter_bytes"] <= 2.5 * one
    assert len(loaded(rec)) == 2


def test_concurrent_misses_load_once(tiny_backbone_dir, region_root):
    root, _, data = region_root
    rec = lazy(tiny_backbone_dir, root, max_loaded=2)
    barrier = threading.Barrier(6)
    errors = []

    def one() -> None:
        barrier.wait()
        try:
            rec.recommend(histories(data, 1), ["r09"], k=3)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and rec.stats()["lazy_loads"] == 1 and not rec._in_flight


@pytest.mark.parametrize("wait_ms", [0, 5])
def test_eviction_never_breaks_requests_in_flight(tiny_backbone_dir, region_root, wait_ms):
    """Threads hammer 12 regions with room for 2 (skewed popularity): every answer is its
    region's own, nothing fails, the budget holds, every evicted adapter is deleted."""
    root, versions, data = region_root
    ref = Recommender.from_dirs(tiny_backbone_dir, batch_wait_ms=0)
    h = histories(data, 3)
    want = {}
    for v, directory in enumerate(versions):
        ref.load(f"v{v}", directory)
        want[v] = ref.recommend(h, [f"v{v}"] * 3, k=6)
    rec = Recommender.from_dirs(tiny_backbone_dir, unknown_region="error", lazy_roots=[root],
                                batch_wait_ms=wait_ms, max_loaded=2)
    errors, mismatches, served, over = [], [], [0], []
    stop = threading.Event()

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            i = min(int(rng.paretovariate(1.0)) - 1, 11)
            try:
                got = rec.recommend(h, [f"r{i:02d}"] * 3, k=6)
            except Exception as err:  # noqa: BLE001 - every error is a failure here
                errors.append(err)
                continue
            for g, w in zip(got, want[i % VERSIONS], strict=True):
                if g["items"] != w["items"] or not torch.allclose(
                        torch.tensor(g["scores"]), torch.tensor(w["scores"]), atol=1e-5):
                    mismatches.append((i, g))
            if len(rec._snapshot) > 2:
                over.append(len(rec._snapshot))
            served[0] += 1

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors and not mismatches and not over
    stats = rec.stats()
    assert served[0] > 20 and stats["evictions"] > 5
    assert stats["retired_pending"] == 0 and not rec._in_flight
    names = {e["internal_name"] for e in rec.regions()}
    for body in rec._shared.values():  # only the loaded adapters remain in the shared body
        assert body.held() == body.names
        assert body.names <= names
    rec.close()
