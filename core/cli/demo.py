"""``regiontune demo``: the end-to-end demo on the built-in synthetic regions (a few minutes on
a laptop CPU). The training and evaluation modules are imported when the demo runs, so the
command line starts without them."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from regiontune.cli.common import VerboseOpt, app, command
from regiontune.config import AdaptConfig, DataConfig, ModelConfig, TrainConfig

logger = logging.getLogger(__name__)
BIG = ["north", "south", "east", "west"]
SMALL = ["island", "alpine", "delta"]
DEMO_MODEL = ModelConfig(hidden_size=64, intermediate_size=128, max_len=30, dropout=0.2)


@app.command()
@command
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", help="Where to write the "
                                  "backbone and adapters."),
         epochs: int = typer.Option(15, "--epochs", help="Maximum epochs per training run."),
         verbose: bool = VerboseOpt) -> None:
    """Pretrain on the big synthetic regions, adapt LoRA to the small ones, compare."""
    rows = run_demo(out, epochs)
    typer.echo(format_table(rows))
    typer.echo(f"backbone: {out / 'backbone'}  adapters: {out / 'adapters'}/<region>")


def popularity_metrics(data) -> dict:
    """NDCG@10 of ranking the region's items by training popularity."""
    from regiontune.evaluation.baselines import Popularity
    from regiontune.evaluation.evaluate import evaluate_scorer

    scorer = Popularity().fit(data.train, data.catalogue)
    return evaluate_scorer(scorer.score, data.catalogue, data.test)


def run_demo(out: Path, epochs: int = 15, progress: bool = True) -> list[dict]:
    """Pretrain on the big regions, evaluate everywhere, adapt LoRA to the small ones."""
    from regiontune.data.recipes import load_regions
    from regiontune.evaluation.evaluate import evaluate_task
    from regiontune.model.backbone import load_backbone
    from regiontune.model.task import BackboneTask
    from regiontune.training.adapt import adapt
    from regiontune.training.pretrain import pretrain

    started = time.perf_counter()
    train = TrainConfig(epochs=epochs, patience=3, progress=progress)
    pretrain(DataConfig(regions=BIG), DEMO_MODEL, train, out / "backbone")
    regions = load_regions(DataConfig())
    backbone, vocab, _ = load_backbone(out / "backbone")
    task = BackboneTask(backbone, vocab)
    rows = []
    for name, data in regions.items():
        row = {"region": name, "users": len(data.train), "pretrained_on": name in BIG,
               "backbone": evaluate_task(task, data.catalogue, data.test)["ndcg@10"],
               "popularity": popularity_metrics(data)["ndcg@10"]}
        if name in SMALL:
            meta = adapt(out / "backbone", DataConfig(), AdaptConfig(method="lora", region=name),
                         # small regions: small batches, so an epoch is more than one step;
                         # a larger step than ADAPT_LR, as the demo must finish in ~2 minutes
                         TrainConfig(epochs=2 * epochs, lr=5e-3, batch_size=16, patience=5,
                                     progress=progress),
                         out / "adapters" / name)
            row.update(lora=meta["metrics"]["ndcg@10"], lora_params=meta["trainable_params"],
                       lora_kib=meta["adapter_bytes"] / 1024, lora_seconds=meta["train_seconds"])
        rows.append(row)
    logger.info("demo finished in %.0f s", time.perf_counter() - started)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'region':<8} {'users':>6} {'role':<11} {'popularity':>10} {'backbone':>9} "
             f"{'+LoRA':>7} {'adapter':>9}",
             "-" * 66]
    for r in rows:
        role = "pretrain" if r["pretrained_on"] else "new region"
        lora = f"{r['lora']:.4f}" if "lora" in r else "–"
        size = f"{r['lora_kib']:.0f} KiB" if "lora" in r else ""
        lines.append(f"{r['region']:<8} {r['users']:>6} {role:<11} {r['popularity']:>10.4f} "
                     f"{r['backbone']:>9.4f} {lora:>7} {size:>9}")
    lines.append("NDCG@10, full ranking over each region's catalogue, leave-last-out test users.")
    return "\n".join(lines)
