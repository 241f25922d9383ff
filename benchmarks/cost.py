"""The ``cost`` suite: disk and memory for N regions, adapters against full fine-tuned copies.

``python -m benchmarks.cost [--quick]``. Disk is counted from the real files: one backbone plus
N adapter files against N full model files. Memory is measured: a fresh process loads the
backbone and N adapters into one ``Recommender`` (what serving holds), another loads N full
models; each reports its resident set size (RSS).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, add_backbone_option, study_parser
from benchmarks.meta import run_meta
from benchmarks.report import write_results_and_report

MEASURE = r"""
import gc, json, sys, psutil, torch
torch.set_num_threads(1)
mode, backbone, adapter, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rss = lambda: psutil.Process().memory_info().rss
from regiontune.model.backbone import load_backbone
from regiontune.serving.recommender import Recommender
gc.collect(); before = rss()
if mode == "adapters":
    rec = Recommender.from_dirs(backbone)
    for i in range(n):
        rec.load(f"r{i}", adapter)
    held = rec
else:
    held = [load_backbone(backbone)[0] for _ in range(n)]
gc.collect()
print(json.dumps({"rss_mb": rss() / 2**20, "base_mb": before / 2**20}))
"""


def _measure(mode: str, backbone: Path, adapter: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, mode, str(backbone), str(adapter),
                          str(n)], capture_output=True, text=True, timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _tiny_artifacts(work: Path) -> tuple[Path, Path]:
    """For --quick: a small synthetic backbone and one LoRA adapter."""
    from regiontune.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig
    from regiontune.training.adapt import adapt
    from regiontune.training.pretrain import pretrain

    train = TrainConfig(epochs=1, progress=False)
    pretrain(DataConfig(synthetic_scale=0.1, regions=["north", "south"]),
             ModelConfig(hidden_size=16, intermediate_size=32, num_layers=1), train,
             work / "backbone")
    adapt(work / "backbone", DataConfig(synthetic_scale=0.1), AdaptConfig(region="island"),
          train, work / "island")
    return work / "backbone", work / "island"


def run(backbone: Path, adapter: Path, sizes: list[int], out: Path) -> Path:
    backbone_bytes = (backbone / "model.safetensors").stat().st_size
    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    records = []
    for n in sizes:
        shared = _measure("adapters", backbone, adapter, n)
        copies = _measure("full", backbone, adapter, n)
        records.append({"scenario": "adapters", "regions": n,
                        "disk_mb": round((backbone_bytes + n * adapter_bytes) / 2**20, 2),
                        "rss_mb": round(shared["rss_mb"], 1),
                        "rss_over_base_mb": round(shared["rss_mb"] - shared["base_mb"], 1)})
        records.append({"scenario": "full copies", "regions": n,
                        "disk_mb": round(n * backbone_bytes / 2**20, 2),
                        "rss_mb": round(copies["rss_mb"], 1),
                        "rss_over_base_mb": round(copies["rss_mb"] - copies["base_mb"], 1)})
    config = {"backbone": str(backbone), "adapter": str(adapter), "sizes": sizes,
              "backbone_bytes": backbone_bytes, "adapter_bytes": adapter_bytes,
              "note": "the same adapter file is loaded N times under N region names"}
    results = {"suite": "cost", "meta": run_meta(config), "records": records}
    write_results_and_report(results, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = study_parser(__doc__)
    add_backbone_option(parser)
    parser.add_argument("--adapter", type=Path, default=Path("runs/wsdm/adapters/t1-lora"))
    parser.add_argument("--quick", action="store_true", help="tiny synthetic artefacts")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        work = Path(tempfile.mkdtemp(prefix="regiontune-cost-"))
        backbone, adapter = _tiny_artifacts(work)
        path = run(backbone, adapter, [1, 10], args.out or work / "cost.json")
    else:
        path = run(args.backbone, args.adapter, [1, 10, 100], args.out or RESULTS / "cost.json")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
