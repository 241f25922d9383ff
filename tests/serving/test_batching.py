"""Dynamic batching: concurrent calls gathered into one pass, each answered as if alone."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from regiontune.serving.batching import DynamicBatcher, Job
from regiontune.serving.errors import InvalidRequestError, UnknownRegionError
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import histories, make_adapter

METHOD_REGIONS = {"lora": "west", "bottleneck": "delta", "ia3": "alpine"}


@pytest.fixture(scope="module")
def adapter_dirs(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-adapters")
    out = {}
    for seed, (method, region) in enumerate(METHOD_REGIONS.items()):
        make_adapter(tiny_backbone_dir, tiny_regions[region], method, root / method, seed)
        out[method] = (root / method, tiny_regions[region])
    return out


def make(tiny_backbone_dir, adapter_dirs, **options) -> Recommender:
    rec = Recommender.from_dirs(tiny_backbone_dir, unknown_region="error", **options)
    for method, (directory, _) in adapter_dirs.items():
        rec.load(method, directory)
    return rec


def calls(adapter_dirs) -> list[tuple[list[str], str, int, bool]]:
    """Single-row calls of mixed regions, ``k`` and ``exclude_seen``."""
    out = []
    for i, (method, (_, data)) in enumerate(adapter_dirs.items()):
        for j, h in enumerate(histories(data, 4)):
            out.append((h, method, 3 + i + j, (i + j) % 2 == 0))
    return out


def together(rec: Recommender, jobs: list) -> list:
    """Every call from its own thread, released at once; (result or error) per call."""
    barrier = threading.Barrier(len(jobs))
    out: list = [None] * len(jobs)

    def one(i: int) -> None:
        h, region, k, flag = jobs[i]
        barrier.wait()
        try:
            out[i] = rec.recommend([h], [region], k=k, exclude_seen=flag)[0]
        except Exception as err:  # noqa: BLE001 - returned to the test
            out[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def same(got: dict, want: dict) -> None:
    assert got["items"] == want["items"] and got["region"] == want["region"]
    torch.testing.assert_close(torch.tensor(got["scores"]), torch.tensor(want["scores"]),
                               atol=1e-5, rtol=1e-5)


def test_gathered_calls_answer_as_each_alone(tiny_backbone_dir, adapter_dirs):
    alone = make(tiny_backbone_dir, adapter_dirs, batch_wait_ms=0)
    # a wide window: on a loaded machine the released threads can take 100s of ms to call
    gathered = make(tiny_backbone_dir, adapter_dirs, batch_wait_ms=1000, max_batch=64)
    jobs = calls(adapter_dirs)
    want = [alone.recommend([h], [r], k=k, exclude_seen=f)[0] for h, r, k, f in jobs]
    got = together(gathered, jobs)
    for g, w, (_, _, k, _) in zip(got, want, jobs, strict=True):
        assert isinstance(g, dict), g
        same(g, w)
        assert len(g["items"]) == k
    stats = gathered.stats()
    assert stats["gathered_calls"] > 1  # some calls shared a pass
    assert stats["batches"] < len(jobs)
    assert alone.stats()["batches"] == len(jobs) and alone.stats()["gathered_calls"] == 0
    gathered.close()


def test_a_bad_call_in_a_gathered_batch_fails_alone(tiny_backbone_dir, adapter_dirs,
                                                    monkeypatch):
    gathered = make(tiny_backbone_dir, adapter_dirs, batch_wait_ms=200)
    alone = make(tiny_backbone_dir, adapter_dirs, batch_wait_ms=0)
    jobs = calls(adapter_dirs)[:6]
    bad = [(["x"], "nowhere", 5, True), (["x"], "lora", 0, True), (["boom"], "lora", 5, True)]
    real = Recommender._recommend

    def fragile(self, hs, *args):  # a pass holding the "boom" row fails (a bug, say)
        if any("boom" in h for h in hs):
            raise RuntimeError("boom")
        return real(self, hs, *args)

    monkeypatch.setattr(Recommender, "_recommend", fragile)
    got = together(gathered, jobs + bad)
    assert isinstance(got[-3], UnknownRegionError)
    assert isinstance(got[-2], InvalidRequestError)
    assert isinstance(got[-1], RuntimeError)
    for g, (h, r, k, f) in zip(got[:-3], jobs, strict=True):
        assert isinstance(g, dict), g
        same(g, alone.recommend([h], [r], k=k, exclude_seen=f)[0])
    assert gathered.stats()["retired_pending"] == 0
    assert not gathered._in_flight  # every hold released, failed calls too
    gathered.close()


def test_zero_wait_disables_batching(tiny_backbone_dir, adapter_dirs):
    rec = make(tiny_backbone_dir, adapter_dirs, batch_wait_ms=0)
    assert rec._batcher is None
    jobs = calls(adapter_dirs)
    got = together(rec, jobs)
    assert all(isinstance(g, dict) for g in got)
    assert rec.stats()["gathered_calls"] == 0 and rec.stats()["batches"] == len(jobs)
    with pytest.raises(ValueError):
        Recommender.from_dirs(tiny_backbone_dir, batch_wait_ms=-1)


def test_lone_caller_does_not_wait(tiny_backbone_dir, adapter_dirs):
    """Nobody else is on the way in: the pass runs at once, not after batch_wait_ms."""
    rec = make(tiny_backbone_dir, adapter_dirs, batch_wait_ms=2000)
    h, region, k, flag = calls(adapter_dirs)[0]
    start = time.monotonic()
    rec.recommend([h], [region], k=k, exclude_seen=flag)
    assert time.monotonic() - start < 1.0
    rec.close()
    rec.recommend([h], [region], k=k)  # after close: answered alone


def test_batcher_bounds_rows_and_queue():
    passes: list[list[int]] = []
    gate = threading.Event()

    def run_many(jobs: list[Job]) -> None:
        gate.wait()
        passes.append([j.rows for j in jobs])
        for j in jobs:
            j.result = j.args

    def run_one(job: Job):
        passes.append([job.rows])
        return job.args

    batcher = DynamicBatcher(run_many, run_one, wait_ms=100, max_rows=4, max_queue_rows=6)
    results: list = []

    def submit(i: int, rows: int) -> None:
        batcher.arrive()
        results.append(batcher.submit(Job((i,), rows)))

    threads = [threading.Thread(target=submit, args=(i, rows))
               for i, rows in enumerate([1, 2, 1, 3, 2, 1, 4])]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert batcher._queued_rows <= 6  # bounded: the rest wait for room
    gate.set()
    for t in threads:
        t.join()
    batcher.close()
    assert sorted(r[0] for r in results) == list(range(7))
    assert all(sum(p) <= 4 for p in passes)
    assert sum(map(sum, passes)) == 14
    assert not batcher.fits(1) and not batcher.fits(5)
