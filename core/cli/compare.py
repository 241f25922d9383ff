"""``regiontune compare``: one region's table of the backbone, its adapters, other models
(e.g. the ``adapt --method scratch`` model) and the classic baselines, on the same test cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
    command,
)
from regiontune.cli.evaluate import eval_data_config

BASELINE_NAMES = {"popularity": "popularity", "itemknn": "ItemKNN", "ease": "EASE"}


def weights_size(directory: Path) -> tuple[int, int]:
    """(parameters, bytes) of a model directory's ``model.safetensors``, read from its header."""
    from safetensors import safe_open

    path = directory / "model.safetensors"
    if not path.is_file():
        return 0, 0
    params = 0
    with safe_open(str(path), framework="pt") as weights:
        for name in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
            shape = weights.get_slice(name).get_shape()
            count = 1
            for dim in shape:
                count *= dim
            params += count
    return params, path.stat().st_size


def _row(name: str, kind: str, metrics: dict, k: int, path: Path | None = None,
         trainable: int | None = None, size: int | None = None, **extra: Any) -> dict:
    return {"name": name, "kind": kind, "path": str(path) if path else None,
            f"ndcg@{k}": metrics[f"ndcg@{k}"], f"hr@{k}": metrics[f"hr@{k}"],
            "mrr": metrics["mrr"], "users": metrics.get("users"),
            "trainable_params": trainable, "bytes": size, **extra}


def _adapter_bytes(directory: Path, meta: dict) -> int | None:
    if meta.get("adapter_bytes") is not None:
        return int(meta["adapter_bytes"])
    files = [p for p in directory.iterdir() if p.suffix == ".safetensors"]
    return sum(p.stat().st_size for p in files) or None


def model_rows(backbone_dir: Path, adapters: list[Path], models: list[Path], region: str,
               data, k: int) -> list[dict]:
    """The backbone zero-shot, each adapter on its own copy of it, each extra model."""
    from regiontune.adapters import load_adapter
    from regiontune.artifacts import ADAPTER_META, read_json
    from regiontune.evaluation.evaluate import evaluate_task
    from regiontune.model.backbone import load_backbone
    from regiontune.model.task import BackboneTask

    def score(task) -> dict:
        return evaluate_task(task, data.catalogue, data.test, k)

    backbone, vocab, meta = load_backbone(backbone_dir)
    _, size = weights_size(backbone_dir)
    rows = [_row("backbone (zero-shot)", "backbone", score(BackboneTask(backbone, vocab)), k,
                 backbone_dir, 0, size, fingerprint=meta["fingerprint"])]
    for directory in adapters:
        ameta = read_json(directory / ADAPTER_META, "adapter metadata (not an adapter?)")
        if ameta.get("region") != region:
            raise ValueError(f"{directory} is the adapter of region {ameta.get('region')!r}, "
                             f"not {region!r}")
        fresh, fresh_vocab, _ = load_backbone(backbone_dir)  # PEFT wraps in place: one each
        task = load_adapter(directory, fresh, fresh_vocab, meta["fingerprint"])
        method = ameta.get("method", "adapter")
        rows.append(_row(f"{method} ({directory.name})", "adapter", score(task), k, directory,
                         ameta.get("trainable_params"), _adapter_bytes(directory, ameta),
                         method=method))
    for directory in models:
        model, model_vocab, mmeta = load_backbone(directory)
        params, size = weights_size(directory)
        method = (mmeta.get("scratch") or {}).get("method", "model")
        rows.append(_row(f"{method} ({directory.name})", "model",
                         score(BackboneTask(model, model_vocab)), k, directory, params, size,
                         method=method, trained_on=mmeta.get("regions"),
                         fingerprint=mmeta.get("fingerprint")))
    return rows


def baseline_rows(data, k: int) -> list[dict]:
    """Popularity, ItemKNN, EASE fitted on the region's training histories, hyper-parameters
    tuned on its validation hold-out (``fit_baseline``, as the benchmarks do), then scored on
    the test cases like the models."""
    from regiontune.evaluation.baselines import fit_baseline
    from regiontune.evaluation.evaluate import evaluate_scorer

    rows = []
    n = len(data.catalogue)
    for method, label in BASELINE_NAMES.items():
        scorer, tuned = fit_baseline(method, data)
        params = {"popularity": n, "ease": n * n,
                  "itemknn": int(scorer.sim.nnz) if hasattr(scorer, "sim") else None}[method]
        rows.append(_row(label, "baseline", evaluate_scorer(scorer.score, data.catalogue,
                                                            data.test, k), k,
                         trainable=params, method=method, hyperparameters=tuned,
                         tuned_on="valid"))
    return rows


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:.1f} MiB" if value >= 2**20 else f"{value / 1024:.0f} KiB"


def _hyper(row: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in (row.get("hyperparameters") or {}).items())


def print_table(rows: list[dict], k: int) -> None:
    width = max(len(r["name"]) for r in rows)
    typer.echo(f"{'':<{width}} {f'NDCG@{k}':>8} {f'HR@{k}':>7} {'MRR':>7} {'trainable':>12} "
               f"{'size':>10}  tuned")
    for r in rows:
        typer.echo(f"{r['name']:<{width}} {r[f'ndcg@{k}']:>8.4f} {r[f'hr@{k}']:>7.4f} "
                   f"{r['mrr']:>7.4f} {_count(r['trainable_params']):>12} "
                   f"{_bytes(r['bytes']):>10}  {_hyper(r)}".rstrip())


@app.command()
@command
def compare(backbone: Path = typer.Option(..., "--backbone", help="Backbone directory (its "
                                          "zero-shot row; the adapters' base)."),
            adapter: list[Path] = typer.Option([], "--adapter", "-a", help="Adapter directory "
                                               "of the region. Repeatable."),
            model: list[Path] = typer.Option([], "--model", "-m", help="Another model directory"
                                             ", e.g. from adapt --method scratch. Repeatable."),
            region: str = typer.Option(..., "--region", help="The region to compare on."),
            data: str = DataOpt, data_dir: Path = DataDirOpt, file: list[str] = FileOpt,
            columns: list[str] = ColumnsOpt, sep: str = SepOpt,
            time_format: str = TimeFormatOpt, protocol: str = ProtocolOpt,
            negatives: int = NegativesOpt, negatives_from: str = NegativesFromOpt,
            candidates: str = CandidatesOpt,
            k: int = typer.Option(10, "-k", help="Cut-off of NDCG@k and HR@k."),
            json_out: Path = typer.Option(None, "--json", help="Write the rows here as JSON."),
            verbose: bool = VerboseOpt) -> None:
    """Compare on one region's test cases: backbone, adapters, other models, baselines."""
    from regiontune.data.recipes import load_regions

    if k <= 0:
        raise ValueError("-k must be positive")
    data_cfg = eval_data_config(backbone, [region], data, data_dir, file, columns, sep=sep,
                                time_format=time_format, protocol=protocol,
                                negatives=negatives, negatives_from=negatives_from,
                                candidates=candidates)
    region_data = load_regions(data_cfg)[region]
    if not region_data.test:
        raise ValueError(f"region {region!r} has no test cases")
    rows = model_rows(backbone, adapter, model, region, region_data, k)
    rows += baseline_rows(region_data, k)
    typer.echo(f"region {region} ({region_data.protocol}), {len(region_data.test)} test users, "
               f"{len(region_data.catalogue)} items; baselines tuned on the validation hold-out")
    print_table(rows, k)
    if json_out:
        report = {"region": region, "protocol": region_data.protocol, "split": "test", "k": k,
                  "test_users": len(region_data.test), "rows": rows}
        json_out.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(f"rows written to {json_out}")
