"""``regiontune evaluate`` and ``regiontune recommend``: use a backbone and its adapters."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from regiontune.cli.common import (
    DataDirOpt,
    DataOpt,
    VerboseOpt,
    app,
    backbone_data,
    command,
    print_metrics,
)

ModelOpt = typer.Option(..., "--model", "-m", help="Backbone directory.")
AdapterOpt = typer.Option([], "--adapter", "-a", help="Adapter directory (its region is read "
                          "from region.json). Repeatable: one per region.")


def _load(model: Path, adapters: list[Path]):
    from regiontune.adapters import load_adapter
    from regiontune.model.backbone import load_backbone

    by_region = {}
    for directory in adapters:
        backbone, vocab, meta = load_backbone(model)  # PEFT wraps in place: one copy each
        task = load_adapter(directory, backbone, vocab, meta["fingerprint"])
        by_region[task.meta["region"]] = task
    backbone, vocab, meta = load_backbone(model)
    return backbone, vocab, meta, by_region


def adapter_dir(adapters: list[Path], region: str) -> Path | None:
    from regiontune.artifacts import read_json

    for directory in adapters:
        if read_json(directory / "region.json").get("region") == region:
            return directory
    return None


@app.command()
@command
def evaluate(model: Path = ModelOpt, adapter: list[Path] = AdapterOpt,
             region: str = typer.Option(None, "--region", help="Comma-separated regions "
                                        "(default: the adapters' regions, else the backbone's)."),
             data: str = DataOpt, data_dir: Path = DataDirOpt,
             split: str = typer.Option("test", "--split", help="test or valid."),
             k: int = typer.Option(10, "-k", help="Cut-off of NDCG@k and HR@k."),
             json_out: Path = typer.Option(None, "--json", help="Write the metrics here "
                                           "(default: <model>/eval-<regions>.json)."),
             verbose: bool = VerboseOpt) -> None:
    """Evaluate the backbone, or region adapters, on a region's held-out users."""
    from regiontune.config import DataConfig
    from regiontune.data.recipes import load_regions
    from regiontune.evaluation.evaluate import evaluate_task
    from regiontune.model.task import BackboneTask

    if split not in ("test", "valid"):
        raise ValueError(f"--split {split!r}: use test or valid")
    if k <= 0:
        raise ValueError("-k must be positive")
    backbone, vocab, meta, tasks = _load(model, adapter)
    names = region.split(",") if region else (sorted(tasks) or meta.get("regions", []))
    data_cfg = backbone_data(model, DataConfig(regions=names))
    data_cfg.recipe = data or data_cfg.recipe
    data_cfg.data_dir = str(data_dir) if data_dir else data_cfg.data_dir
    regions = load_regions(data_cfg)
    results = {}
    for name in names:
        task = tasks.get(name) or BackboneTask(backbone, vocab)
        cases = getattr(regions[name], split)
        results[name] = {**evaluate_task(task, regions[name].catalogue, cases, k),
                         "protocol": regions[name].protocol, "split": split,
                         "adapter": str(adapter_dir(adapter, name)) if name in tasks else None}
    print_metrics(results, k)
    target = json_out or model / f"eval-{'-'.join(names)}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    typer.echo(f"metrics written to {target}")


@app.command()
@command
def recommend(model: Path = ModelOpt, adapter: list[Path] = AdapterOpt,
              region: str = typer.Option(..., "--region", help="The user's region."),
              history: str = typer.Option(..., "--history", help="Comma-separated item ids the "
                                          "user interacted with (oldest first)."),
              k: int = typer.Option(10, "-k", help="How many items to return."),
              verbose: bool = VerboseOpt) -> None:
    """Print the top-k items for one user history in a region."""
    from regiontune.evaluation.evaluate import task_scores
    from regiontune.model.task import BackboneTask

    if k <= 0:
        raise ValueError("-k must be positive")
    backbone, vocab, meta, tasks = _load(model, adapter)
    task = tasks.get(region) or BackboneTask(backbone, vocab)
    items = [i.strip() for i in history.split(",") if i.strip()]
    catalogue = task.vocab.items
    scores = task_scores(task, [items], catalogue)[0]
    seen = {catalogue.index(i) for i in items if i in task.vocab}
    for col in seen:
        scores[col] = float("-inf")
    top = scores.topk(min(k, len(catalogue)))
    unknown = task.vocab.unknown(items)
    source = "adapter" if region in tasks else "backbone (no adapter for this region)"
    typer.echo(f"region {region}, served by the {source}")
    if unknown:
        typer.echo(f"ignored unknown items: {', '.join(unknown)}")
    for rank, (score, col) in enumerate(zip(top.values.tolist(), top.indices.tolist(),
                                            strict=True), start=1):
        typer.echo(f"{rank:>3}. {catalogue[col]:<20} {score:.4f}")
