"""``regiontune evaluate`` and ``regiontune recommend``: use a backbone and its adapters."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from regiontune.cli.common import (
    CandidatesOpt,
    ColumnsOpt,
    DataDirOpt,
    DataOpt,
    FileOpt,
    NegativesFromOpt,
    NegativesOpt,
    ProtocolOpt,
    SepOpt,
    TimeFormatOpt,
    VerboseOpt,
    app,
    backbone_data,
    command,
    data_config,
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


def eval_data_config(model: Path, regions: list[str] | None, data: str | None,
                     data_dir: Path | None, files: list[str], columns: list[str],
                     **options):
    """The data of ``evaluate``/``recommend``: the backbone's recorded data is a hint only,
    used when neither --data nor --file is given; the other data options apply either way."""
    from regiontune.config import DataConfig

    cfg = DataConfig()
    if not (data or files):
        cfg = backbone_data(model, cfg)
    cfg = data_config(cfg, data, data_dir, files, columns, None, **options)
    cfg.regions = list(regions) if regions else None
    return cfg


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
             data: str = DataOpt, data_dir: Path = DataDirOpt, file: list[str] = FileOpt,
             columns: list[str] = ColumnsOpt, sep: str = SepOpt,
             time_format: str = TimeFormatOpt, protocol: str = ProtocolOpt,
             negatives: int = NegativesOpt, negatives_from: str = NegativesFromOpt,
             candidates: str = CandidatesOpt,
             split: str = typer.Option("test", "--split", help="test or valid."),
             k: int = typer.Option(10, "-k", help="Cut-off of NDCG@k and HR@k."),
             json_out: Path = typer.Option(None, "--json", help="Write the metrics here "
                                           "(default: <model>/eval-<regions>.json)."),
             verbose: bool = VerboseOpt) -> None:
    """Evaluate the backbone, or region adapters, on a region's held-out users.

    The data is --data/--file when given (any file, any region: an adapter trained on a region
    the backbone never saw evaluates on it), else the data the backbone was pretrained on."""
    from regiontune.data.recipes import load_data
    from regiontune.evaluation.evaluate import evaluate_task
    from regiontune.model.task import BackboneTask

    if split not in ("test", "valid"):
        raise ValueError(f"--split {split!r}: use test or valid")
    if k <= 0:
        raise ValueError("-k must be positive")
    backbone, vocab, meta, tasks = _load(model, adapter)
    names = [r.strip() for r in region.split(",") if r.strip()] if region else sorted(tasks)
    if not names and not (data or file):
        names = list(meta.get("regions", []))
    data_cfg = eval_data_config(model, names, data, data_dir, file, columns, sep=sep,
                                time_format=time_format, protocol=protocol,
                                negatives=negatives, negatives_from=negatives_from,
                                candidates=candidates)
    regions, summary = load_data(data_cfg)
    names = names or sorted(regions)
    typer.echo(f"data: {summary.line()}")
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
              history: str = typer.Option(None, "--history", help="Comma-separated item ids "
                                          "the user interacted with (oldest first)."),
              user: str = typer.Option(None, "--user", help="A user of the data (--file, "
                                       "--data, else the backbone's): their whole history in "
                                       "the region is the input."),
              data: str = DataOpt, data_dir: Path = DataDirOpt, file: list[str] = FileOpt,
              columns: list[str] = ColumnsOpt, sep: str = SepOpt,
              time_format: str = TimeFormatOpt,
              k: int = typer.Option(10, "-k", help="How many items to return."),
              verbose: bool = VerboseOpt) -> None:
    """Print the top-k items for one user history in a region.

    With data options (--file, --data) or --user, the ranked items are the region's catalogue
    in that data; else every item the backbone or adapter knows."""
    import torch

    from regiontune.evaluation.evaluate import task_scores
    from regiontune.model.task import BackboneTask

    if k <= 0:
        raise ValueError("-k must be positive")
    if (history is None) == (user is None):
        raise ValueError("pass one of --history ITEMS or --user ID")
    backbone, vocab, meta, tasks = _load(model, adapter)
    task = tasks.get(region) or BackboneTask(backbone, vocab)
    items = [i.strip() for i in (history or "").split(",") if i.strip()]
    catalogue = task.vocab.items
    if user is not None or data or file:
        from regiontune.data.recipes import load_data

        data_cfg = eval_data_config(model, [region], data, data_dir, file, columns, sep=sep,
                                    time_format=time_format)
        region_data = load_data(data_cfg)[0][region]
        catalogue = region_data.catalogue
        if user is not None:
            items = user_history(region_data, user)
    scores = task_scores(task, [items], catalogue)[0]
    index = {item: col for col, item in enumerate(catalogue)}
    for item in items:
        if item in index:
            scores[index[item]] = float("-inf")
    scorable = int(torch.isfinite(scores).sum())
    top = scores.topk(min(k, scorable))
    unknown = task.vocab.unknown(items)
    source = "adapter" if region in tasks else "backbone (no adapter for this region)"
    typer.echo(f"region {region}, served by the {source}")
    if unknown:
        typer.echo(f"ignored unknown items: {', '.join(unknown)}")
    for rank, (score, col) in enumerate(zip(top.values.tolist(), top.indices.tolist(),
                                            strict=True), start=1):
        typer.echo(f"{rank:>3}. {catalogue[col]:<20} {score:.4f}")


def user_history(data, user: str) -> list[str]:
    """A user's whole history in a region (time order where the data has one)."""
    for cases in (data.test, data.valid):
        for case in cases:
            if case.user == user:
                return [*case.history, case.target]
    if user in data.train:
        return list(data.train[user])
    raise ValueError(f"user {user!r} is not in region {data.region!r} of the data "
                     f"({len(data.train)} users)")
