"""``regiontune`` commands that use trained artefacts: evaluate, recommend, serve, push, pull."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from regiontune.cli.common import (
    KNOWN_ERRORS,
    DataDirOpt,
    DataOpt,
    VerboseOpt,
    app,
    backbone_data,
    fail,
    print_metrics,
    setup_logging,
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


@app.command()
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
    setup_logging(verbose)
    from regiontune.config import DataConfig
    from regiontune.data.recipes import load_regions
    from regiontune.evaluation.evaluate import evaluate_task
    from regiontune.model.task import BackboneTask

    if split not in ("test", "valid"):
        fail(ValueError(f"--split {split!r}: use test or valid"))
    if k <= 0:
        fail(ValueError("-k must be positive"))
    try:
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
    except KNOWN_ERRORS as err:
        fail(err)
    print_metrics(results, k)
    target = json_out or model / f"eval-{'-'.join(names)}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    typer.echo(f"metrics written to {target}")


def adapter_dir(adapters: list[Path], region: str) -> Path | None:
    from regiontune.artifacts import read_json

    for directory in adapters:
        if read_json(directory / "region.json").get("region") == region:
            return directory
    return None


@app.command()
def recommend(model: Path = ModelOpt, adapter: list[Path] = AdapterOpt,
              region: str = typer.Option(..., "--region", help="The user's region."),
              history: str = typer.Option(..., "--history", help="Comma-separated item ids the "
                                          "user interacted with (oldest first)."),
              k: int = typer.Option(10, "-k", help="How many items to return."),
              verbose: bool = VerboseOpt) -> None:
    """Print the top-k items for one user history in a region."""
    setup_logging(verbose)
    from regiontune.evaluation.evaluate import task_scores
    from regiontune.model.task import BackboneTask

    if k <= 0:
        fail(ValueError("-k must be positive"))
    try:
        backbone, vocab, meta, tasks = _load(model, adapter)
        task = tasks.get(region) or BackboneTask(backbone, vocab)
        items = [i.strip() for i in history.split(",") if i.strip()]
        catalogue = task.vocab.items
        scores = task_scores(task, [items], catalogue)[0]
        seen = {catalogue.index(i) for i in items if i in task.vocab}
        for col in seen:
            scores[col] = float("-inf")
        top = scores.topk(min(k, len(catalogue)))
    except KNOWN_ERRORS as err:
        fail(err)
    unknown = task.vocab.unknown(items)
    source = "adapter" if region in tasks else "backbone (no adapter for this region)"
    typer.echo(f"region {region}, served by the {source}")
    if unknown:
        typer.echo(f"ignored unknown items: {', '.join(unknown)}")
    for rank, (score, col) in enumerate(zip(top.values.tolist(), top.indices.tolist(),
                                            strict=True), start=1):
        typer.echo(f"{rank:>3}. {catalogue[col]:<20} {score:.4f}")


@app.command()
def serve(backbone: Path = typer.Option(..., "--backbone", help="Backbone directory."),
          adapters: Path = typer.Option(None, "--adapters", help="Directory whose "
                                        "sub-directories are adapters; all are served, and "
                                        "admin PUT may load others from it."),
          adapter: list[str] = typer.Option([], "--adapter", help="REGION=SOURCE: one more "
                                            "adapter, SOURCE a directory or a hub id "
                                            "org/name[@revision]. Repeatable."),
          adapter_root: list[Path] = typer.Option([], "--adapter-root", help="A directory "
                                                  "admin PUT may load local adapters from "
                                                  "(besides --adapters). Repeatable."),
          host: str = typer.Option("127.0.0.1", "--host"),
          port: int = typer.Option(8000, "--port"),
          unknown_region: str = typer.Option("error", "--unknown-region", help="error: a "
                                             "region without an adapter gets a 404; backbone: "
                                             "served by the un-adapted backbone (a WARNING "
                                             "names each such region once)."),
          max_body_bytes: int = typer.Option(2 * 2**20, "--max-body-bytes", min=1,
                                             help="Larger request bodies get a 413."),
          max_history: int = typer.Option(200, "--max-history", min=1,
                                          help="Items per history."),
          max_item_chars: int = typer.Option(256, "--max-item-chars", min=1,
                                             help="Characters per item id."),
          max_batch: int = typer.Option(256, "--max-batch", min=1,
                                        help="Requests per batch."),
          max_k: int = typer.Option(1000, "--max-k", min=1, help="Items per answer."),
          hub_timeout: float = typer.Option(10.0, "--hub-timeout", min=0.001, help="Seconds a "
                                            "hub request may wait to connect or for a byte."),
          hub_deadline: float = typer.Option(120.0, "--hub-deadline", min=0.001, help="Seconds "
                                             "a whole hub download may take (then a 422)."),
          verbose: bool = VerboseOpt) -> None:
    """Serve every region from one process over HTTP.

    Admin routes (PUT/DELETE /v1/regions/...) require the token in REGIONTUNE_ADMIN_TOKEN.
    """
    import os

    setup_logging(verbose)
    from regiontune.serving.app import ServingLimits
    from regiontune.serving.app import serve as run

    try:
        pairs = [tuple(a.split("=", 1)) for a in adapter]
        if any(len(p) != 2 for p in pairs):
            raise ValueError("--adapter takes REGION=SOURCE")
        limits = ServingLimits(max_body_bytes=max_body_bytes, max_history=max_history,
                               max_item_chars=max_item_chars, max_batch=max_batch, max_k=max_k)
        run(backbone, adapters, host, port, os.environ.get("REGIONTUNE_ADMIN_TOKEN"),
            unknown_region, pairs, adapter_roots=adapter_root, limits=limits,
            hub_timeout_s=hub_timeout, hub_deadline_s=hub_deadline)
    except KNOWN_ERRORS as err:
        fail(err)


EndpointOpt = typer.Option(None, "--endpoint", help="Hub URL (default: HF_ENDPOINT or "
                           "https://huggingface.co). The token comes from HF_TOKEN or the "
                           "hub's login cache.")


@app.command()
def push(directory: Path = typer.Argument(..., help="Adapter or backbone directory."),
         repo: str = typer.Option(..., "--repo", help="ORG/NAME on the hub."),
         private: bool = typer.Option(False, "--private"),
         revision: str = typer.Option(None, "--revision", help="Branch to push to."),
         endpoint: str = EndpointOpt, verbose: bool = VerboseOpt) -> None:
    """Publish an adapter or backbone (safetensors only) with its model card."""
    setup_logging(verbose)
    from regiontune.hub.client import HubError
    from regiontune.hub.client import push as run

    try:
        commit = run(directory, repo, endpoint=endpoint, private=private, revision=revision)
    except (*KNOWN_ERRORS, HubError) as err:
        fail(err)
    typer.echo(f"pushed {directory} to {repo} (commit {commit})")


@app.command()
def pull(repo: str = typer.Argument(..., help="ORG/NAME on the hub."),
         out: Path = typer.Option(..., "--out", help="Directory to write."),
         revision: str = typer.Option(None, "--revision", help="Branch, tag or commit."),
         backbone: Path = typer.Option(None, "--backbone", help="Check that a pulled adapter "
                                       "was made for this backbone."),
         endpoint: str = EndpointOpt, verbose: bool = VerboseOpt) -> None:
    """Download an adapter or backbone; refuses pickle weights and foreign backbones."""
    setup_logging(verbose)
    from regiontune.hub.client import HubError
    from regiontune.hub.client import pull as run

    try:
        path = run(repo, out, revision=revision, endpoint=endpoint, backbone_dir=backbone)
    except (*KNOWN_ERRORS, HubError) as err:
        fail(err)
    typer.echo(f"pulled {repo} into {path}")
