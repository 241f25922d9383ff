"""The ``serving`` suite: region switching, adapter loads, mixed batches, memory, HTTP load.

``python -m benchmarks.serving [--quick]`` builds its own small backbone and adapters (synthetic
data), measures, and writes ``benchmarks/results/serving.json`` + ``serving.md``. Honest note:
one LoRA adapter is trained; the other regions are copies of it with perturbed weights over the
same catalogue, so every adapter has the size and shape of a real one but not its quality.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
SIZES = (1, 10, 100)
BATCH = 64
NOTE = ("adapters: one LoRA adapter trained briefly on the synthetic 'west' region; the others "
        "are copies with perturbed weights over the same catalogue (same size, not same quality)")
FIELDS = ("scenario", "regions_loaded", "regions_per_batch", "batch_size", "requests_per_s",
          "switch_ms", "load_ms", "rss_mb")


def record(scenario: str, **values: Any) -> dict[str, Any]:
    """A result row: every common field present (None where it does not apply)."""
    return {**{f: None for f in FIELDS}, "scenario": scenario, **values}


# ---------------------------------------------------------------- fixture

def build(root: Path, quick: bool) -> tuple[Path, list[Path], list[list[str]]]:
    """Pretrain a small backbone, train one LoRA adapter, copy it to 100 regions."""
    from regiontune.adapters import save_adapter
    from regiontune.core.adapt import train_region
    from regiontune.core.backbone import load_backbone
    from regiontune.core.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig
    from regiontune.core.pretrain import pretrain
    from regiontune.core.recipes import load_regions

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
    save_adapter(task, "lora", "west", {"region": "r000", "note": NOTE,
                                        "backbone_fingerprint": bmeta["fingerprint"]}, first)
    dirs = [first] + [perturbed(first, root / "adapters" / f"r{i:03d}", i)
                      for i in range(1, max(SIZES) + 2)]  # one spare for replacements
    return root / "backbone", dirs, [h for h in data.train.values() if h]


def perturbed(src: Path, dst: Path, seed: int) -> Path:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: v + 0.01 * torch.randn(v.shape, generator=gen)
               for k, v in load_file(str(dst / "adapter_model.safetensors")).items()}
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    meta = json.loads((dst / "region.json").read_text())
    (dst / "region.json").write_text(json.dumps({**meta, "region": dst.name}))
    return dst


# ---------------------------------------------------------------- in-process measurements

def throughput(rec, histories: list[list[str]], regions: list[str], budget_s: float) -> float:
    """Requests/s of batches of BATCH rows whose regions cycle through ``regions``."""
    def batch(i: int) -> tuple[list[list[str]], list[str]]:
        rows = range(i * BATCH, (i + 1) * BATCH)
        return ([histories[r % len(histories)] for r in rows],
                [regions[r % len(regions)] for r in rows])

    rec.recommend(*batch(0), k=10)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget_s:
        rec.recommend(*batch(done), k=10)
        done += 1
    return done * BATCH / (time.perf_counter() - start)


def single_latency_ms(rec, histories: list[list[str]], regions: list[str], n: int) -> float:
    """Mean latency of ``n`` one-row requests, region ``regions[i % len(regions)]``."""
    rec.recommend([histories[0]], [regions[0]], k=10)
    start = time.perf_counter()
    for i in range(n):
        rec.recommend([histories[i % len(histories)]], [regions[i % len(regions)]], k=10)
    return (time.perf_counter() - start) * 1000 / n


def in_process(backbone: Path, dirs: list[Path], histories: list[list[str]], quick: bool
               ) -> list[dict[str, Any]]:
    from regiontune.core.serving import Recommender

    rec = Recommender.from_dirs(backbone)
    budget, records, loaded = (1.0 if quick else 3.0), [], 0
    for n in SIZES:
        while loaded < n:
            rec.load(dirs[loaded].name, dirs[loaded])
            loaded += 1
        names = [d.name for d in dirs[:n]]
        single = throughput(rec, histories, names[:1], budget)
        records.append(record("batch_single_region", regions_loaded=n, regions_per_batch=1,
                              batch_size=BATCH, requests_per_s=round(single, 1)))
        if n > 1:
            mixed = throughput(rec, histories, names, budget)
            records.append(record("batch_mixed_regions", regions_loaded=n,
                                  regions_per_batch=min(n, BATCH), batch_size=BATCH,
                                  requests_per_s=round(mixed, 1),
                                  relative_to_single=round(mixed / single, 3)))
    reps = 100 if quick else 400
    same = single_latency_ms(rec, histories, ["r000"], reps)
    switching = single_latency_ms(rec, histories, [d.name for d in dirs[:10]], reps)
    common = dict(regions_loaded=loaded, regions_per_batch=1, batch_size=1)
    records.append(record("single_request_same_region", latency_ms=round(same, 3),
                          requests_per_s=round(1000 / same, 1), **common))
    records.append(record("single_request_switching", latency_ms=round(switching, 3),
                          switch_ms=round(switching - same, 3),
                          requests_per_s=round(1000 / switching, 1), **common))
    times = []
    for i in range(20):  # replace back and forth: a real load each time, old one deleted
        start = time.perf_counter()
        rec.load("loadtest", dirs[-1 - i % 2])
        times.append((time.perf_counter() - start) * 1000)
    records.append(record("adapter_load", regions_loaded=loaded + 1,
                          load_ms=round(statistics.median(times), 2),
                          load_ms_max=round(max(times), 2),
                          adapter_bytes=(dirs[0] / "adapter_model.safetensors").stat().st_size))
    return records


# ---------------------------------------------------------------- memory (fresh process)

def rss_probe(backbone: str, adapters: list[str]) -> dict[str, float]:
    """RSS (MB) after the backbone alone, then with 1, 10, 100 adapters (run in a child)."""
    import psutil

    from regiontune.core.serving import Recommender

    proc = psutil.Process()
    rec = Recommender.from_dirs(backbone)
    rec.recommend([["x"]], ["r000"])  # first-call allocations belong to the baseline
    gc.collect()
    out = {"0": proc.memory_info().rss / 2**20}
    for i, directory in enumerate(adapters, start=1):
        rec.load(Path(directory).name, directory)
        if i in SIZES:
            gc.collect()
            out[str(i)] = proc.memory_info().rss / 2**20
    out["tensor_mb"] = rec.regions()[0]["tensor_bytes"] / 2**20  # weights + cached table
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


# ---------------------------------------------------------------- HTTP load test

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_load(backbone: Path, dirs: list[Path], histories: list[list[str]], seconds: float,
              clients: int = 4) -> dict[str, Any]:
    """Client threads over loopback while an admin thread replaces an adapter via PUT."""
    import httpx
    import uvicorn

    from regiontune.core.server import create_app
    from regiontune.core.serving import Recommender

    rec = Recommender.from_dirs(backbone, dirs[:10])
    rec.load("hot", dirs[10])
    port, token = free_port(), "bench-token"
    server = uvicorn.Server(uvicorn.Config(create_app(rec, admin_token=token), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url, stop = f"http://127.0.0.1:{port}", threading.Event()
    regions = [d.name for d in dirs[:10]] + ["hot"]
    latencies: list[float] = []
    failed, replacements, failed_replacements = [0], [0], [0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                body = {"region": rng.choice(regions), "history": rng.choice(histories)[-50:],
                        "k": 10}
                start = time.perf_counter()
                try:
                    ok = http.post("/v1/recommend", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - start) * 1000)
                failed[0] += not ok

    def admin() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=30, headers=headers) as http:
            while not stop.wait(0.2):
                path = str(dirs[11 - replacements[0] % 2])
                if http.put("/v1/regions/hot", json={"path": path}).status_code == 200:
                    replacements[0] += 1
                else:
                    failed_replacements[0] += 1

    workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    workers.append(threading.Thread(target=admin))
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    server.should_exit = True
    thread.join(timeout=10)
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [None] * 99
    return record("http_load", regions_loaded=len(regions), regions_per_batch=1, batch_size=1,
                  requests_per_s=round(len(latencies) / elapsed, 1), requests=len(latencies),
                  failed_requests=failed[0], p50_ms=round(cuts[49], 2),
                  p99_ms=round(cuts[98], 2), adapter_replacements=replacements[0],
                  failed_replacements=failed_replacements[0], client_threads=clients,
                  seconds=round(elapsed, 1))


# ---------------------------------------------------------------- the suite

def targets(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The serving targets, each with its measured value and whether it holds."""
    def find(scenario: str, n: int) -> dict[str, Any]:
        return next(r for r in records if r["scenario"] == scenario and r["regions_loaded"] == n)

    mixed = find("batch_mixed_regions", max(SIZES))
    load = next(r for r in records if r["scenario"] == "adapter_load")
    mem = find("memory", max(SIZES))
    return {"mixed_100_over_single_throughput": {"value": mixed["relative_to_single"],
                                                 "target": ">= 0.70",
                                                 "ok": mixed["relative_to_single"] >= 0.7},
            "adapter_load_ms": {"value": load["load_ms"], "target": "< 50",
                                "ok": load["load_ms"] < 50},
            "memory_per_adapter_over_file_size": {"value": mem["per_adapter_over_file"],
                                                  "target": "<= ~2",
                                                  "ok": mem["per_adapter_over_file"] <= 2.2}}


def run(out_json: Path, quick: bool) -> dict[str, Any]:
    """Run the suite, write ``out_json`` and its Markdown report; returns the results."""
    from benchmarks.meta import run_meta
    from benchmarks.report import write_report

    out_json = Path(out_json)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="regiontune-serving-bench-") as tmp:
        backbone, dirs, histories = build(Path(tmp), quick)
        log.info("fixture built in %.0f s", time.perf_counter() - started)
        records = memory(backbone, dirs)
        records += in_process(backbone, dirs, histories, quick)
        records.append(http_load(backbone, dirs, histories, 3.0 if quick else 10.0))
    config = {"quick": quick, "batch_size": BATCH, "sizes": list(SIZES), "note": NOTE,
              "torch_threads": torch.get_num_threads(),
              "seconds": round(time.perf_counter() - started, 1)}
    results = {"suite": "serving", "meta": {**run_meta(config), "targets": targets(records)},
               "records": records}
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=2) + "\n")
    md = write_report(results, out_json.parent, out_json.stem)[0]
    lines = ["## Targets", "", f"Note: {NOTE}.", ""]
    lines += [f"- {name}: {t['value']} (target {t['target']}): {'OK' if t['ok'] else 'MISSED'}"
              for name, t in results["meta"]["targets"].items()]
    md.write_text(md.read_text() + "\n" + "\n".join(lines) + "\n")
    return results


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m benchmarks.serving [--quick] [--out PATH]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller model, shorter runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serving.json"))
    parser.add_argument("--rss-probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe:  # internal: the memory measurement in a fresh process
        logging.disable(logging.WARNING)
        print(json.dumps(rss_probe(args.rss_probe[0], args.rss_probe[1:])))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "regiontune", "accelerate"):  # one line per request / per load otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    results = run(args.out, args.quick)
    for name, t in results["meta"]["targets"].items():
        log.info("%s = %s (target %s): %s", name, t["value"], t["target"],
                 "ok" if t["ok"] else "MISSED")


if __name__ == "__main__":
    main()
