"""The ``serving`` suite: region switching, adapter loads, mixed batches, memory, HTTP load.

``python -m benchmarks.serving [--quick]`` builds its own small backbone and adapters (synthetic
data) and writes ``benchmarks/results/serving.json`` + ``.md``. Honest note: see ``NOTE``.

Two scenarios run on the WSDM all-regions backbone (``--wsdm-backbone``, with LoRA adapters of
a few markets under ``--wsdm-adapters``; ``--quick``: the small synthetic model instead):

* ``http``: ``regiontune serve`` in a subprocess on loopback, driven by a bounded asyncio/httpx
  load generator (closed loop: each client sends its next request when the last is answered)
  at 1, 8, 32, 128 clients, with and without dynamic batching (two servers, measured in
  alternating rounds);
* ``many_regions``: 10,000 region folders (symlinks to the few trained adapters) under one
  adapter root, at most ``MAX_LOADED`` in memory, Zipf-popular regions, in a child process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import logging
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch
import uvicorn
from safetensors.torch import load_file, save_file

from benchmarks.common import configure_logging, study_parser
from benchmarks.meta import run_meta
from benchmarks.report import write_results_and_report
from regiontune.adapters import save_adapter
from regiontune.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig
from regiontune.data.recipes import load_regions
from regiontune.model.backbone import load_backbone
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender, trim_heap
from regiontune.training.adapt import train_region
from regiontune.training.pretrain import pretrain

log = logging.getLogger(__name__)
SIZES = (1, 10, 100)
BATCH = 64
BOTTLENECK_REGIONS = 64  # a mixed batch of BATCH rows: one bottleneck adapter per row
NOTE = ("adapters: one LoRA (and one bottleneck) adapter trained briefly on the synthetic 'west' "
        "region; the others are copies with perturbed weights over the same catalogue (same "
        "size, not same quality)")
ROOT = Path(__file__).resolve().parents[1]
WSDM_BACKBONE = ROOT / "runs/bench/wsdm/backbone-s1-s2-s3-t1-t2"
WSDM_ADAPTERS = ROOT / "runs/serving-bench/wsdm-adapters"  # t1/, t2/, s3/: quick LoRA adapters
WSDM_DATA = ROOT.parent / "shared/data/wsdm22-xmrec"
CLIENTS = (1, 8, 32, 128)
BATCH_WAIT_MS = 2.0
REGIONS_REGISTERED = 10_000
MAX_LOADED = 200
ZIPF_S = 1.1
SHARED_NOTE = ("measured on a 2-core machine shared with other agents' jobs (CPU contention "
               "varies); the load generator runs on the same cores as the server; both "
               "configurations are measured in alternating rounds so bursts hit both alike")
FIELDS = ("scenario", "regions_loaded", "regions_per_batch", "batch_size", "requests_per_s",
          "switch_ms", "load_ms", "rss_mb")


def record(scenario: str, **values: Any) -> dict[str, Any]:
    """A result row: every common field present (None where it does not apply)."""
    return {**{f: None for f in FIELDS}, "scenario": scenario, **values}


def build(root: Path, quick: bool) -> tuple[Path, list[Path], list[Path], list[list[str]]]:
    """Pretrain a small backbone, train one LoRA adapter, copy it to 100 regions (+ spare);
    train one bottleneck adapter, copy it to ``BOTTLENECK_REGIONS`` regions."""
    scale, hidden = (0.1, 32) if quick else (0.2, 64)
    train = TrainConfig(epochs=1, batch_size=64, progress=False)
    pretrain(DataConfig(synthetic_scale=scale, regions=["north", "south", "east"]),
             ModelConfig(hidden_size=hidden, num_layers=2, num_heads=2,
                         intermediate_size=2 * hidden, max_len=50, dropout=0.1),
             train, root / "backbone")
    backbone, vocab, bmeta = load_backbone(root / "backbone")
    data = load_regions(DataConfig(synthetic_scale=scale, regions=["west"]))["west"]
    task, _ = train_region(backbone, vocab, data, AdaptConfig(method="lora", region="west"), train)
    first = root / "adapters" / "r000"
    meta = {"region": "r000", "note": NOTE, "backbone_fingerprint": bmeta["fingerprint"]}
    save_adapter(task, "lora", "west", meta, first)
    dirs = [first] + [perturbed(first, root / "adapters" / f"r{i:03d}", i)
                      for i in range(1, max(SIZES) + 2)]  # one spare for replacements
    task, _ = train_region(backbone, vocab, data,
                           AdaptConfig(method="bottleneck", region="west"), train)
    first = root / "bottleneck" / "b000"
    save_adapter(task, "bottleneck", "west", {**meta, "region": "b000"}, first)
    bottleneck = [first] + [perturbed(first, root / "bottleneck" / f"b{i:03d}", i)
                            for i in range(1, BOTTLENECK_REGIONS)]
    return root / "backbone", dirs, bottleneck, [h for h in data.train.values() if h]


def perturbed(src: Path, dst: Path, seed: int) -> Path:
    """Copy of an adapter for region ``dst.name`` with every weight nudged."""
    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: v + 0.01 * torch.randn(v.shape, generator=gen)
               for k, v in load_file(str(dst / "adapter_model.safetensors")).items()}
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    meta = {**json.loads((dst / "region.json").read_text()), "region": dst.name}
    (dst / "region.json").write_text(json.dumps(meta))
    return dst


def rate(rec, histories: list[list[str]], regions: list[str], rows: int, budget_s: float) -> float:
    """Requests/s over ``budget_s`` of batches of ``rows`` rows, regions cycling."""
    rec.recommend(histories[:rows], (regions * rows)[:rows], k=10)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        idx = range(done, done + rows)
        rec.recommend([histories[i % len(histories)] for i in idx],
                      [regions[i % len(regions)] for i in idx], k=10)
        done += rows
    return done / (time.perf_counter() - start)


def interleaved(runs: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median per measurement over alternating rounds: load bursts hit every scenario alike."""
    values: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            values[key].append(fn())
    return {k: statistics.median(v) for k, v in values.items()}


def in_process(backbone: Path, dirs: list[Path], histories: list[list[str]], quick: bool
               ) -> list[dict[str, Any]]:
    """Batch throughput (single vs mixed regions), single-request switching, load times."""
    rec = Recommender.from_dirs(backbone)
    budget, records, loaded = (0.2 if quick else 0.6), [], 0
    for n in SIZES:
        while loaded < n:
            rec.load(dirs[loaded].name, dirs[loaded])
            loaded += 1
        names = [d.name for d in dirs[:n]]
        runs = {"single": partial(rate, rec, histories, names[:1], BATCH, budget)}
        if n > 1:
            runs["mixed"] = partial(rate, rec, histories, names, BATCH, budget)
        rps = interleaved(runs, 5)
        records.append(record("batch_single_region", method="lora", regions_loaded=n,
                              regions_per_batch=1, batch_size=BATCH,
                              requests_per_s=round(rps["single"], 1)))
        if n > 1:
            records.append(record("batch_mixed_regions", method="lora", regions_loaded=n,
                                  regions_per_batch=min(n, BATCH), batch_size=BATCH,
                                  requests_per_s=round(rps["mixed"], 1),
                                  relative_to_single=round(rps["mixed"] / rps["single"], 3)))
    one = interleaved({"same": partial(rate, rec, histories, ["r000"], 1, budget / 2),
                       "switch": partial(rate, rec, histories, names[:10], 1, budget / 2)}, 5)
    same, switch, common = 1000 / one["same"], 1000 / one["switch"], dict(
        regions_loaded=loaded, regions_per_batch=1, batch_size=1)
    records += [record("single_request_same_region", requests_per_s=round(one["same"], 1),
                       latency_ms=round(same, 3), **common),
                record("single_request_switching", requests_per_s=round(one["switch"], 1),
                       latency_ms=round(switch, 3), switch_ms=round(switch - same, 3), **common)]
    times = []  # replace back and forth: a real load each time, the old one deleted
    for i in range(20):
        start = time.perf_counter()
        rec.load("loadtest", dirs[-1 - i % 2])
        times.append((time.perf_counter() - start) * 1000)
    records.append(record("adapter_load", regions_loaded=loaded + 1,
                          load_ms=round(statistics.median(times), 2),
                          load_ms_max=round(max(times), 2),
                          adapter_bytes=(dirs[0] / "adapter_model.safetensors").stat().st_size))
    return records


def bottleneck_batches(backbone: Path, dirs: list[Path], histories: list[list[str]],
                       quick: bool) -> list[dict[str, Any]]:
    """Batch throughput with bottleneck adapters: one region vs one region per row."""
    rec = Recommender.from_dirs(backbone, dirs)
    names = [d.name for d in dirs]
    budget = 0.2 if quick else 0.6
    rps = interleaved({"single": partial(rate, rec, histories, names[:1], BATCH, budget),
                       "mixed": partial(rate, rec, histories, names, BATCH, budget)}, 5)
    common = dict(method="bottleneck", regions_loaded=len(names), batch_size=BATCH)
    return [record("batch_single_region", regions_per_batch=1,
                   requests_per_s=round(rps["single"], 1), **common),
            record("batch_mixed_regions", regions_per_batch=min(len(names), BATCH),
                   requests_per_s=round(rps["mixed"], 1),
                   relative_to_single=round(rps["mixed"] / rps["single"], 3), **common)]


def rss_probe(backbone: str, adapters: list[str]) -> dict[str, float]:
    """RSS (MB) after the backbone alone, then with 1, 10, 100 adapters (run in a child).

    Each reading follows ``trim_heap()``, as every load does: memory freed before the baseline
    (backbone loading) is not credited to the adapters."""
    proc = psutil.Process()
    rec = Recommender.from_dirs(backbone)
    rec.recommend([["x"]], ["r000"])  # first-call allocations belong to the baseline
    out = {}
    for i, directory in enumerate([None, *adapters]):
        if directory is not None:
            rec.load(Path(directory).name, directory)
        if i in (0, *SIZES):
            gc.collect()
            trim_heap()
            out[str(i)] = proc.memory_info().rss / 2**20
    out["tensor_mb"] = rec.regions()[0]["tensor_bytes"] / 2**20  # weights + low-rank item side
    return out


def memory(backbone: Path, dirs: list[Path]) -> list[dict[str, Any]]:
    args = [sys.executable, "-m", "benchmarks.serving", "--rss-probe", str(backbone),
            *[str(d) for d in dirs[:max(SIZES)]]]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    rss = json.loads(done.stdout.strip().splitlines()[-1])
    file_mb = (dirs[0] / "adapter_model.safetensors").stat().st_size / 2**20
    records = [record("memory", regions_loaded=0, rss_mb=round(rss["0"], 1))]
    for n in SIZES:
        per = (rss[str(n)] - rss["0"]) / n
        records.append(record("memory", regions_loaded=n, rss_mb=round(rss[str(n)], 1),
                              per_adapter_mb=round(per, 3), adapter_file_mb=round(file_mb, 3),
                              per_adapter_over_file=round(per / file_mb, 2),
                              tensor_mb_per_adapter=round(rss["tensor_mb"], 3)))
    return records


def http_load(backbone: Path, dirs: list[Path], histories: list[list[str]], seconds: float,
              clients: int = 4) -> dict[str, Any]:
    """Client threads over loopback while an admin thread replaces an adapter via PUT."""
    rec = Recommender.from_dirs(backbone, dirs[:10])
    rec.load("hot", dirs[10])
    with socket.socket() as sock:  # a free port on loopback
        sock.bind(("127.0.0.1", 0))
        port, token = sock.getsockname()[1], "bench-token"
    server = uvicorn.Server(uvicorn.Config(create_app(rec, admin_token=token), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    url, stop = f"http://127.0.0.1:{port}", threading.Event()
    regions = [d.name for d in dirs[:10]] + ["hot"]
    latencies: list[float] = []
    counts = {"failed": 0, "replaced": 0, "failed_replacements": 0}

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                body = {"region": rng.choice(regions), "history": rng.choice(histories)[-50:]}
                start = time.perf_counter()
                try:
                    ok = http.post("/v1/recommend", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - start) * 1000)
                counts["failed"] += not ok

    def admin() -> None:
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            while not stop.wait(0.2):
                body = {"path": str(dirs[11 - counts["replaced"] % 2])}
                ok = http.put("/v1/regions/hot", json=body).status_code == 200
                counts["replaced" if ok else "failed_replacements"] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    workers.append(threading.Thread(target=admin))
    start = time.perf_counter()
    for w in workers:
        w.start()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed, server.should_exit = time.perf_counter() - start, True
    cuts = statistics.quantiles(latencies, n=100)
    return record("http_load", regions_loaded=len(regions), regions_per_batch=1, batch_size=1,
                  requests_per_s=round(len(latencies) / elapsed, 1), requests=len(latencies),
                  failed_requests=counts["failed"], p50_ms=round(cuts[49], 2),
                  p99_ms=round(cuts[98], 2), adapter_replacements=counts["replaced"],
                  failed_replacements=counts["failed_replacements"], client_threads=clients,
                  seconds=round(elapsed, 1))


# ---------------------------------------------------------------- http: dynamic batching

def wsdm_histories(markets: list[str], per_market: int = 400) -> dict[str, list[list[str]]]:
    """Training histories (up to 50 items) of the first users of each market."""
    import pandas as pd

    out = {}
    for market in markets:
        frame = pd.read_csv(WSDM_DATA / market / "train_5core.tsv", sep="\t")
        groups = frame.groupby("userId")["itemId"].apply(list)
        out[market] = [h[:50] for h in groups.iloc[:per_market] if len(h) >= 2]
    return out


def start_server(backbone: Path, adapters: Path, batch_wait_ms: float, threads: int,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``regiontune serve`` on a free loopback port; (process, base url) once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = Path(sys.executable).parent / "regiontune"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([str(exe), "serve", "--backbone", str(backbone), "--adapters",
                             str(adapters), "--port", str(port), "--batch-wait-ms",
                             str(batch_wait_ms), *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"regiontune serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("regiontune serve did not answer within 180 s")


async def _load(url: str, clients: int, seconds: float, bodies: list[dict[str, Any]],
                seed: int) -> tuple[list[float], int, float]:
    """``clients`` closed-loop clients for ``seconds``: (latencies ms, failures, elapsed s)."""
    latencies: list[float] = []
    failed = [0]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        stop_at = time.perf_counter() + seconds

        async def client(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    ok = (await http.post("/v1/recommend", json=rng.choice(bodies))
                          ).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - start) * 1000)
                failed[0] += not ok

        start = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return latencies, failed[0], time.perf_counter() - start


def http_batching(backbone: Path, adapters: Path, histories: dict[str, list[list[str]]],
                  clients: tuple[int, ...], seconds: float, rounds: int, threads: int
                  ) -> list[dict[str, Any]]:
    """Requests/s and latency per client count, dynamic batching on and off (interleaved)."""
    bodies = [{"region": region, "history": h, "k": 10}
              for region, hs in histories.items() for h in hs]
    servers = {True: start_server(backbone, adapters, BATCH_WAIT_MS, threads),
               False: start_server(backbone, adapters, 0, threads)}
    got: dict[tuple[int, bool], list] = {(c, b): [[], 0, 0.0] for c in clients for b in servers}
    try:
        for _, url in servers.values():  # warm-up: first-call allocations, connections
            asyncio.run(_load(url, 8, 1.0, bodies, 0))
        for r in range(rounds):
            for c in clients:
                for batching in ((True, False) if r % 2 == 0 else (False, True)):
                    lat, failed, elapsed = asyncio.run(
                        _load(servers[batching][1], c, seconds, bodies, r))
                    acc = got[(c, batching)]
                    acc[0] += lat
                    acc[1] += failed
                    acc[2] += elapsed
                    log.info("http: %d clients, batching %s: %.0f req/s", c, batching,
                             len(lat) / elapsed)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    records = []
    for (c, batching), (lat, failed, elapsed) in got.items():
        cuts = statistics.quantiles(lat, n=100)
        records.append(record("http", clients=c, dynamic_batching=batching,
                              batch_wait_ms=BATCH_WAIT_MS if batching else 0,
                              regions_loaded=len(histories), regions_per_batch=None,
                              requests=len(lat), failed_requests=failed,
                              requests_per_s=round(len(lat) / elapsed, 1),
                              p50_ms=round(cuts[49], 2), p99_ms=round(cuts[98], 2),
                              seconds=round(elapsed, 1)))
    return sorted(records, key=lambda r: (r["clients"], not r["dynamic_batching"]))


# ---------------------------------------------------------------- many regions, one budget

def region_root(root: Path, adapters: list[Path], n: int) -> list[str]:
    """``n`` region folders under ``root``: symlinks to ``adapters`` in turn."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"r{i:05d}" for i in range(n)]
    for i, name in enumerate(names):
        (root / name).symlink_to(adapters[i % len(adapters)].resolve(), target_is_directory=True)
    return names


def many_probe(backbone: str, root: str, histories_json: str, max_loaded: int, seconds: float,
               clients: int) -> dict[str, Any]:
    """(In a child process.) Zipf-popular regions of ``root`` with at most ``max_loaded``
    adapters: failures, RSS, load-on-miss time, hit rate."""
    proc = psutil.Process()
    histories = json.loads(Path(histories_json).read_text())  # per adapter: its market's
    names = sorted(p.name for p in Path(root).iterdir())
    rec = Recommender.from_dirs(backbone, unknown_region="error", lazy_roots=[root],
                                max_loaded=max_loaded, batch_wait_ms=BATCH_WAIT_MS)
    gc.collect()
    trim_heap()
    baseline = proc.memory_info().rss / 2**20
    start = time.perf_counter()
    rec.preload()
    preload_s = time.perf_counter() - start
    rng = random.Random(0)
    order = names[:]
    rng.shuffle(order)  # popularity rank -> region (the preloaded ones are not the popular)
    weights = list(itertools.accumulate(1 / (r + 1) ** ZIPF_S for r in range(len(order))))
    counts = {"requests": 0, "failed": 0}
    peak = [proc.memory_info().rss / 2**20]
    stop = threading.Event()
    loaded_peak = [0]

    def client(seed: int) -> None:
        rand = random.Random(seed)
        while not stop.is_set():
            region = rand.choices(order, cum_weights=weights)[0]
            market = int(region[1:]) % len(histories)
            try:
                rec.recommend([rand.choice(histories[market])], [region], k=10)
            except Exception:  # noqa: BLE001 - counted
                counts["failed"] += 1
            counts["requests"] += 1

    def sampler() -> None:
        while not stop.wait(0.1):
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
            loaded_peak[0] = max(loaded_peak[0], rec.stats()["adapters_loaded"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sampler))
    stats0 = rec.stats()
    start = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    stats = rec.stats()
    gc.collect()
    trim_heap()
    hits = stats["region_hits"] - stats0["region_hits"]
    misses = stats["region_misses"] - stats0["region_misses"]
    loads = stats["lazy_loads"] - stats0["lazy_loads"]
    tensor_mb = max(r["tensor_bytes"] for r in rec.regions()) / 2**20
    return {"regions_registered": len(names), "max_loaded": max_loaded,
            "requests": counts["requests"], "failed_requests": counts["failed"],
            "requests_per_s": round(counts["requests"] / elapsed, 1),
            "rss_mb": round(peak[0], 1), "rss_end_mb": round(proc.memory_info().rss / 2**20, 1),
            "rss_backbone_mb": round(baseline, 1),
            "adapter_tensor_mb": round(tensor_mb, 3),
            "rss_budget_mb": round(baseline + 2 * max_loaded * tensor_mb, 1),
            "load_on_miss_ms": round((stats["lazy_load_us"] - stats0["lazy_load_us"])
                                     / max(loads, 1) / 1000, 2),
            "hit_rate": round(hits / max(hits + misses, 1), 3),
            "evictions": stats["evictions"] - stats0["evictions"], "lazy_loads": loads,
            "adapters_loaded_peak": loaded_peak[0], "retired_pending": stats["retired_pending"],
            "preload_s": round(preload_s, 1), "clients": clients, "zipf_s": ZIPF_S,
            "seconds": round(elapsed, 1)}


def many_regions(backbone: Path, adapters: list[Path], histories: list[list[list[str]]],
                 tmp: Path, seconds: float, threads: int) -> dict[str, Any]:
    root = tmp / "many-regions"
    region_root(root, adapters, REGIONS_REGISTERED)
    hist = tmp / "many-histories.json"
    hist.write_text(json.dumps(histories))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--many-probe",
                           str(backbone), str(root), str(hist), str(MAX_LOADED), str(seconds)],
                          capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    got = json.loads(done.stdout.strip().splitlines()[-1])
    return record("many_regions", method="lora", regions_loaded=got["max_loaded"], **got)


def plot_http(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Requests/s and p99 against clients, batching on and off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    http = [r for r in records if r["scenario"] == "http"]
    if not http:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for batching, style in ((True, "o-"), (False, "s--")):
        rows = sorted((r for r in http if r["dynamic_batching"] is batching),
                      key=lambda r: r["clients"])
        label = "dynamic batching" if batching else "one pass per request"
        xs = [r["clients"] for r in rows]
        axes[0].plot(xs, [r["requests_per_s"] for r in rows], style, label=label)
        axes[1].plot(xs, [r["p99_ms"] for r in rows], style, label=label)
    for ax, title in zip(axes, ("requests/s", "p99 latency (ms)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def targets(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The serving targets, each with its measured value and whether it holds."""
    def value(scenario: str, key: str) -> float:  # at the most regions loaded
        return next(r[key] for r in records if r["scenario"] == scenario
                    and r["regions_loaded"] in (max(SIZES), max(SIZES) + 1)
                    and r.get("method") in (None, "lora"))
    checks = {"mixed_100_over_single_throughput": (
                  value("batch_mixed_regions", "relative_to_single"), ">= 0.70", 0.7, 1),
              "adapter_load_ms": (value("adapter_load", "load_ms"), "< 50", 50, -1),
              "memory_per_adapter_over_file_size": (
                  value("memory", "per_adapter_over_file"), "<= ~2", 2.2, -1)}
    http = {(r["clients"], r["dynamic_batching"]): r for r in records if r["scenario"] == "http"}
    top = max((c for c, _ in http), default=None)
    at = 32 if (32, True) in http else top
    if at is not None:
        checks[f"http_batching_speedup_at_{at}_clients"] = (
            round(http[(at, True)]["requests_per_s"] / http[(at, False)]["requests_per_s"], 2),
            ">= 2", 2.0, 1)
        checks["http_p99_1_client_batching_over_off"] = (
            round(http[(1, True)]["p99_ms"] / http[(1, False)]["p99_ms"], 2), "<= 2", 2.0, -1)
    many = next((r for r in records if r["scenario"] == "many_regions"), None)
    if many is not None:
        checks["many_regions_failed_requests"] = (many["failed_requests"], "== 0", 0, -1)
        checks["many_regions_rss_over_budget_mb"] = (
            round(many["rss_mb"] - many["rss_budget_mb"], 1),
            "<= 0 (backbone RSS + 2 x max_loaded x adapter tensors)", 0, -1)
        checks["many_regions_loaded_peak_over_max"] = (
            many["adapters_loaded_peak"] - many["max_loaded"], "<= 0", 0, -1)
    return {name: {"value": v, "target": text, "ok": (v - bound) * sign >= 0}
            for name, (v, text, bound, sign) in checks.items()}


def scale_fixture(tmp: Path, quick: bool, backbone: Path, dirs: list[Path],
                  histories: list[list[str]]) -> tuple[Path, Path, dict[str, list[list[str]]]]:
    """(backbone, adapters folder, histories per region) of the http and many_regions runs:
    the WSDM backbone and its market adapters, or (quick) the small synthetic ones."""
    if quick:
        folder = tmp / "http-adapters"
        folder.mkdir()
        for d in dirs[:3]:
            (folder / d.name).symlink_to(d, target_is_directory=True)
        return backbone, folder, {d.name: histories for d in dirs[:3]}
    markets = sorted(p.name for p in WSDM_ADAPTERS.iterdir()
                     if (p / "region.json").is_file()) if WSDM_ADAPTERS.is_dir() else []
    if not WSDM_BACKBONE.is_dir() or not markets:
        raise FileNotFoundError(f"the http scenarios need {WSDM_BACKBONE} and LoRA adapters "
                                f"under {WSDM_ADAPTERS}/<market> (regiontune adapt --backbone "
                                "... --data wsdm22-xmrec --region t1 --fraction 0.1 --epochs "
                                "3 --out ...), or --quick")
    return WSDM_BACKBONE, WSDM_ADAPTERS, wsdm_histories(markets)


def run(out_json: Path, quick: bool, threads: int = 1) -> dict[str, Any]:
    """Run the suite, write ``out_json`` and its Markdown report; returns the results."""
    out_json, started = Path(out_json), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regiontune-serving-bench-") as tmp:
        backbone, dirs, bottleneck, histories = build(Path(tmp), quick)
        log.info("fixture built in %.0f s", time.perf_counter() - started)
        records = memory(backbone, dirs)
        records += in_process(backbone, dirs, histories, quick)
        records += bottleneck_batches(backbone, bottleneck, histories, quick)
        records.append(http_load(backbone, dirs, histories, 3.0 if quick else 10.0))
        big, adapters, by_region = scale_fixture(Path(tmp), quick, backbone, dirs, histories)
        records += http_batching(big, adapters, by_region, CLIENTS[:2] if quick else CLIENTS,
                                 1.5 if quick else 6.0, 1 if quick else 2, threads)
        folders = [adapters / r for r in by_region]
        records.append(many_regions(big, folders, list(by_region.values()), Path(tmp),
                                    4.0 if quick else 40.0, threads))
    config = {"quick": quick, "batch_size": BATCH, "sizes": list(SIZES), "note": NOTE,
              "torch_threads": torch.get_num_threads(),
              "scale_backbone": "synthetic (quick)" if quick else str(WSDM_BACKBONE.relative_to(
                  ROOT)),
              "http_clients": list(CLIENTS[:2] if quick else CLIENTS),
              "batch_wait_ms": BATCH_WAIT_MS, "notes": [SHARED_NOTE],
              "many_regions": f"{REGIONS_REGISTERED} region folders (symlinks to the "
                              f"{len(dirs[:3]) if quick else 'market'} adapters), at most "
                              f"{MAX_LOADED} loaded, Zipf s={ZIPF_S} popularity",
              "seconds": round(time.perf_counter() - started, 1)}
    results = {"suite": "serving", "meta": {**run_meta(config), "targets": targets(records)},
               "records": records}
    md = write_results_and_report(results, out_json, indent=2)[0]
    png = plot_http(records, out_json.with_name(f"{out_json.stem}_http.png"))
    lines = ["## Targets", "", f"Note: {NOTE}.", "", f"Machine: {SHARED_NOTE}.", ""]
    lines += [f"- {name}: {t['value']} (target {t['target']}): {'OK' if t['ok'] else 'MISSED'}"
              for name, t in results["meta"]["targets"].items()]
    if png is not None:
        lines += ["", f"![{png.stem}]({png.name})"]
    md.write_text(md.read_text() + "\n" + "\n".join(lines) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m benchmarks.serving [--quick] [--out PATH]``."""
    parser = study_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller model, shorter runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: "
                        "spin-waiting threads on a busy shared machine distort timings)")
    parser.add_argument("--rss-probe", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--many-probe", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.rss_probe:  # internal: the memory measurement in a fresh process
        logging.disable(logging.WARNING)
        print(json.dumps(rss_probe(args.rss_probe[0], args.rss_probe[1:])))
        return
    if args.many_probe:  # internal: the many-regions run in a fresh process
        logging.disable(logging.WARNING)
        backbone, root, hist, max_loaded, seconds = args.many_probe
        print(json.dumps(many_probe(backbone, root, hist, int(max_loaded), float(seconds), 8)))
        return
    configure_logging("%(asctime)s %(name)s %(message)s")  # quiet: a line per request else
    log.info("targets: %s", json.dumps(run(args.out, args.quick, args.threads)["meta"]["targets"]))


if __name__ == "__main__":
    main()
