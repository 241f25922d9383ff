"""What the serving suite's scenarios share: the result row, the loopback port, timed threads."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH_WAIT_MS = 2.0
FIELDS = ("scenario", "regions_loaded", "regions_per_batch", "batch_size", "requests_per_s",
          "switch_ms", "load_ms", "rss_mb")


def record(scenario: str, **values: Any) -> dict[str, Any]:
    """A result row: every common field present (None where it does not apply)."""
    return {**{f: None for f in FIELDS}, "scenario": scenario, **values}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_threads(threads: list[threading.Thread], stop: threading.Event, seconds: float) -> float:
    """Start ``threads``, let them run ``seconds``, set ``stop`` and join them: elapsed s."""
    start = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def percentiles(latencies: list[float]) -> dict[str, float]:
    """``p50_ms`` and ``p99_ms`` of latencies in ms."""
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50_ms": round(cuts[49], 2), "p99_ms": round(cuts[98], 2)}
