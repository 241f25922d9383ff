"""Issue 13 on a lent GPU: wider all-regions backbones, chosen on the training hold-out.

    python3 benchmarks/device_wide.py --out DIR [--deadline-seconds 500] [--workers 14]

Run by ``benchmarks/device_wide.sh`` on the device machine (the ``device`` tool; one call,
minutes of GPU). Two candidate backbones for the all-regions setting -- hidden 192 (3 heads,
feed-forward 384) and hidden 256 (4 heads, 512), two layers as today -- each pretrained on all
five markets with the suite's pretraining block, then:

1. **choice cells** for both: the default LoRA adapter at 100% of t1, t2 and s3 (seeds 0-2)
   and the un-adapted backbone (zero-shot);
2. the **choice**, fixed before the run: the candidate with the higher mean served hold-out
   NDCG@10 (``benchmarks.search.served_holdout``: the adapter with its item-item part at the
   chosen weight) over those nine adapters. The official lists are never read for it;
3. the **rest of the all-regions cells** the suite file holds today, for the chosen backbone
   (then for the other, while time is left: a t1 LoRA adapter must still train in 3 minutes
   on the 2-core CPU, measured after the run, and the wider one may not):
   LoRA's learning curve (t1, t2), full fine-tuning, AdaLoRA, bottleneck and IA3.

Each cell is one ``python -m benchmarks.run`` process (``--seeds`` and the other filters pick
one job), ``--workers`` at a time on the one GPU (the models are small: the GPU is shared).
No job starts after ``--deadline-seconds``; a job still running at the hard stop is killed and
counted as missing. Everything lands in ``--out``: each cell's results file and log, the
choice, and the two backbones split in parts under 16 MB (``cat PART* | tar x`` rejoins).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = {"h192": {"hidden_size": 192, "num_heads": 3, "intermediate_size": 384},
              "h256": {"hidden_size": 256, "num_heads": 4, "intermediate_size": 512}}
TARGETS = ("t2", "t1", "s3")  # the largest first: the pool packs better
CURVE_TARGETS = ("t2", "t1")
SEEDS = (0, 1, 2)


def use_quick_suite() -> None:
    """``--quick``: the same steps on the suite's smoke version (synthetic data, tiny
    models), to check the script here before a device run."""
    global TARGETS, CURVE_TARGETS, SEEDS
    CANDIDATES.clear()
    CANDIDATES.update({"h24": {"hidden_size": 24, "num_heads": 2, "intermediate_size": 48},
                       "h32": {"hidden_size": 32, "num_heads": 2, "intermediate_size": 64}})
    TARGETS = CURVE_TARGETS = ("island",)
    SEEDS = (0, 1)  # the quick suite's two seeds


def write_suites(work: Path, quick: bool = False) -> dict[str, Path]:
    base = yaml.safe_load((ROOT / "benchmarks/suites/wsdm.yaml").read_text())
    if quick:
        sys.path.insert(0, str(ROOT))  # run as a script: the repository is not on the path
        from benchmarks.common import load_suite
        base = load_suite("wsdm", quick=True)
        base["suite"] = "wsdm"
    base.pop("quick", None)
    paths = {}
    for name, model in CANDIDATES.items():
        suite = {**base, "setting_model": {"all-regions": model}}
        paths[name] = work / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(suite, sort_keys=False))
    return paths


def choice_cells(cand: str) -> list[tuple]:
    cells = [(cand, t, "lora", 1.0, s) for t in TARGETS for s in SEEDS]
    return cells + [(cand, t, "zero-shot", 1.0, 0) for t in TARGETS
                    if t != TARGETS[1 % len(TARGETS)]]


def rest_cells(cand: str) -> list[tuple]:
    """In the order the suite's claims read them: every method once on t1, the t1 seeds
    and 10% points, then s3 and t2 (the slowest) and the rest of the curve."""
    methods = ("full", "adalora", "bottleneck", "ia3")
    cells = [(cand, TARGETS[1 % len(TARGETS)], m, 1.0, 0) for m in methods]
    for target in (TARGETS[1 % len(TARGETS)], *(t for t in TARGETS if t != "t1"
                                                  and t != TARGETS[1 % len(TARGETS)])):
        if target in CURVE_TARGETS:
            cells += [(cand, target, "lora", 0.1, s) for s in SEEDS]
        if target == TARGETS[1 % len(TARGETS)]:
            cells += [(cand, target, m, 1.0, s) for m in methods for s in SEEDS[1:]]
        else:
            cells += [(cand, target, m, 1.0, 0) for m in methods]
    cells += [(cand, t, "lora", f, 0) for t in CURVE_TARGETS for f in (0.05, 0.25, 0.5)]
    return cells


class Runner:
    def __init__(self, suites: dict[str, Path], out: Path, data_dir: str, work_dir: str,
                 deadline: float, hard_stop: float):
        self.suites, self.out, self.data_dir, self.work_dir = suites, out, data_dir, work_dir
        self.deadline, self.hard_stop = deadline, hard_stop

    def cell_name(self, cell: tuple) -> str:
        return "_".join(str(x) for x in cell)

    def __call__(self, cell: tuple) -> dict | None:
        cand, region, method, fraction, seed = cell
        name = self.cell_name(cell)
        if time.time() > self.deadline:
            print(f"skipped (deadline): {name}", flush=True)
            return None
        command = [sys.executable, "-m", "benchmarks.run", str(self.suites[cand]),
                   "--settings", "all-regions", "--regions", region, "--methods", method,
                   "--fractions", str(fraction), "--seeds", str(seed),
                   "--work-dir", self.work_dir, "--out", str(self.out / f"{name}.json")]
        if self.data_dir:
            command += ["--data-dir", self.data_dir]
        started = time.time()
        with open(self.out / f"{name}.log", "w") as log:
            try:
                subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                               timeout=max(1.0, self.hard_stop - time.time()), check=False)
            except subprocess.TimeoutExpired:
                print(f"killed at the hard stop: {name}", flush=True)
                return None
        path = self.out / f"{name}.json"
        records = json.loads(path.read_text())["records"] if path.is_file() else []
        if not records:
            print(f"failed: {name} (see its log)", flush=True)
            return None
        record = records[-1]
        print(f"{time.time() - started:5.0f} s {name}: ndcg@10={record['ndcg@10']:.4f} "
              f"train {record.get('train_seconds')} s", flush=True)
        return record


def served(record: dict) -> float:
    found = record.get("item_item_holdout_ndcg@10")
    return max(found.values()) if found else float(record["best_valid_ndcg@10"])


def pack_backbones(work: Path, out: Path, part_bytes: int = 15 * 2 ** 20) -> None:
    for cand, model in CANDIDATES.items():
        found = [d for d in (work / "wsdm").glob("backbone-*")
                 if (d / "regiontune.json").is_file()  # not the checkpoints beside it
                 and f"-h{model['hidden_size']}-" in d.name]
        if not found:
            continue
        archive = Path("/tmp") / f"bb_{cand}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(found[0], arcname=found[0].name)
        data = archive.read_bytes()
        for i in range(0, len(data), part_bytes):
            (out / f"bb_{cand}.tar.{i // part_bytes:02d}").write_bytes(data[i:i + part_bytes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-dir", default=".gpu/data/wsdm22-xmrec")
    parser.add_argument("--work-dir", default="/tmp/bench")
    parser.add_argument("--deadline-seconds", type=float, default=480)
    parser.add_argument("--hard-stop-seconds", type=float, default=540)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="the suite's smoke version")
    args = parser.parse_args()
    started = time.time()
    if args.quick:
        use_quick_suite()
    cells_dir = Path(args.work_dir) / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    suites = write_suites(cells_dir, args.quick)
    run = Runner(suites, cells_dir, None if args.quick else args.data_dir, args.work_dir,
                 started + args.deadline_seconds, started + args.hard_stop_seconds)
    # 1. pretrain both candidates (the t1 zero-shot cell pretrains its backbone first)
    with ThreadPoolExecutor(len(CANDIDATES)) as pool:
        list(pool.map(run, [(c, TARGETS[1 % len(TARGETS)], "zero-shot", 1.0, 0)
                            for c in CANDIDATES]))
    print(f"pretrained in {time.time() - started:.0f} s", flush=True)
    # 2. the choice cells of both, then the choice
    cells = [c for cand in CANDIDATES for c in choice_cells(cand)]
    with ThreadPoolExecutor(args.workers) as pool:
        records = dict(zip(cells, pool.map(run, cells), strict=True))
    scores = {}
    for cand in CANDIDATES:
        found = [served(r) for c, r in records.items() if c[0] == cand and c[2] == "lora"
                 and r is not None]
        scores[cand] = {"mean_served_holdout": sum(found) / len(found) if found else None,
                        "adapters": len(found)}
    complete = {c: s for c, s in scores.items()
                if s["adapters"] == len(SEEDS) * len(TARGETS)}
    chosen = max(complete, key=lambda c: complete[c]["mean_served_holdout"]) if complete else None
    choice = {"rule": "higher mean served hold-out NDCG@10 over LoRA at 100% of t1, t2, s3 "
                      "(every seed); only candidates with all of them",
              "scores": scores, "chosen": chosen, "seconds": round(time.time() - started)}
    (cells_dir / "choice.json").write_text(json.dumps(choice, indent=1))
    print("choice:", json.dumps(choice), flush=True)
    # 3. the rest of the all-regions cells for the chosen backbone
    if chosen:  # the chosen one's cells first; the other's while time is left
        order = [chosen, *(c for c in CANDIDATES if c != chosen)]
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(run, [cell for cand in order for cell in rest_cells(cand)]))
    print(f"all done in {time.time() - started:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(args.out / "cells.tar.gz", "w:gz") as tar:
        tar.add(cells_dir, arcname="cells")
    pack_backbones(Path(args.work_dir), args.out)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
