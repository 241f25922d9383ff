"""The serving suite's scale fixture (the WSDM backbone and market adapters, or the small
synthetic ones) and its ``many_regions`` scenario: 10,000 region folders (symlinks to the few
trained adapters) under one adapter root, at most ``MAX_LOADED`` in memory, Zipf-popular
regions, in a child process (``python -m benchmarks.serving --many-probe``).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.serving_common import BATCH_WAIT_MS, ROOT, record, run_threads
from regiontune.serving.recommender import Recommender, trim_heap

WSDM_BACKBONE = ROOT / "runs/bench/wsdm/backbone-s1-s2-s3-t1-t2"
WSDM_ADAPTERS = ROOT / "runs/serving-bench/wsdm-adapters"  # t1/, t2/, s3/: quick LoRA adapters
WSDM_DATA = ROOT.parent / "shared/data/wsdm22-xmrec"
REGIONS_REGISTERED = 10_000
MAX_LOADED = 200
ZIPF_S = 1.1


def wsdm_histories(markets: list[str], per_market: int = 400) -> dict[str, list[list[str]]]:
    """Training histories (up to 50 items) of the first users of each market."""
    import pandas as pd

    out = {}
    for market in markets:
        frame = pd.read_csv(WSDM_DATA / market / "train_5core.tsv", sep="\t")
        groups = frame.groupby("userId")["itemId"].apply(list)
        out[market] = [h[:50] for h in groups.iloc[:per_market] if len(h) >= 2]
    return out


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
    elapsed = run_threads(threads, stop, seconds)
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
