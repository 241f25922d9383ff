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

This module runs the suite (``run``, ``main``), the in-process and memory scenarios and the
targets; the HTTP scenarios live in :mod:`benchmarks.serving_http`, the scale fixture and
``many_regions`` in :mod:`benchmarks.serving_scale` (their names are importable from here).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors.torch import load_file, save_file

from benchmarks.common import configure_logging, study_parser
from benchmarks.meta import run_meta
from benchmarks.report import write_results_and_report
from benchmarks.serving_common import BATCH_WAIT_MS, FIELDS, ROOT, record
from benchmarks.serving_http import CLIENTS, http_batching, http_load, plot_http
from benchmarks.serving_scale import (
    MAX_LOADED,
    REGIONS_REGISTERED,
    WSDM_BACKBONE,
    ZIPF_S,
    many_probe,
    many_regions,
    region_root,
    scale_fixture,
)
from regiontune.adapters import save_adapter
from regiontune.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig
from regiontune.data.recipes import load_regions
from regiontune.model.backbone import load_backbone
from regiontune.serving.recommender import Recommender, trim_heap
from regiontune.training.adapt import train_region
from regiontune.training.pretrain import pretrain

# the scenarios of serving_http / serving_scale, importable from here as before
__all__ = ["BATCH_WAIT_MS", "CLIENTS", "FIELDS", "MAX_LOADED", "REGIONS_REGISTERED", "ROOT",
           "WSDM_BACKBONE", "ZIPF_S", "http_batching", "http_load", "main", "many_probe",
           "many_regions", "plot_http", "record", "region_root", "run", "scale_fixture",
           "targets"]
log = logging.getLogger(__name__)
SIZES = (1, 10, 100)
BATCH = 64
BOTTLENECK_REGIONS = 64  # a mixed batch of BATCH rows: one bottleneck adapter per row
NOTE = ("adapters: one LoRA (and one bottleneck) adapter trained briefly on the synthetic 'west' "
        "region; the others are copies with perturbed weights over the same catalogue (same "
        "size, not same quality)")
SHARED_NOTE = ("measured on a 2-core machine shared with other agents' jobs (CPU contention "
               "varies); the load generator runs on the same cores as the server; both "
               "configurations are measured in alternating rounds so bursts hit both alike")


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
