"""The serving suite's HTTP scenarios.

* ``http_load``: an in-process server, client threads over loopback while an admin thread
  replaces an adapter via ``PUT``;
* ``http``: ``regiontune serve`` in a subprocess on loopback, driven by a bounded asyncio/httpx
  load generator (closed loop: each client sends its next request when the last is answered)
  at 1, 8, 32, 128 clients, with and without dynamic batching (two servers, measured in
  alternating rounds); ``plot_http`` draws it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from benchmarks.serving_common import BATCH_WAIT_MS, free_port, percentiles, record, run_threads
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender

log = logging.getLogger(__name__)
CLIENTS = (1, 8, 32, 128)


def http_load(backbone: Path, dirs: list[Path], histories: list[list[str]], seconds: float,
              clients: int = 4) -> dict[str, Any]:
    """Client threads over loopback while an admin thread replaces an adapter via PUT."""
    rec = Recommender.from_dirs(backbone, dirs[:10])
    rec.load("hot", dirs[10])
    port, token = free_port(), "bench-token"
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
    elapsed, server.should_exit = run_threads(workers, stop, seconds), True
    return record("http_load", regions_loaded=len(regions), regions_per_batch=1, batch_size=1,
                  requests_per_s=round(len(latencies) / elapsed, 1), requests=len(latencies),
                  failed_requests=counts["failed"], **percentiles(latencies),
                  adapter_replacements=counts["replaced"],
                  failed_replacements=counts["failed_replacements"], client_threads=clients,
                  seconds=round(elapsed, 1))


def start_server(backbone: Path, adapters: Path, batch_wait_ms: float, threads: int,
                 extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``regiontune serve`` on a free loopback port; (process, base url) once it answers."""
    port = free_port()
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
        records.append(record("http", clients=c, dynamic_batching=batching,
                              batch_wait_ms=BATCH_WAIT_MS if batching else 0,
                              regions_loaded=len(histories), regions_per_batch=None,
                              requests=len(lat), failed_requests=failed,
                              requests_per_s=round(len(lat) / elapsed, 1),
                              **percentiles(lat), seconds=round(elapsed, 1)))
    return sorted(records, key=lambda r: (r["clients"], not r["dynamic_batching"]))


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


