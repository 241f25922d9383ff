"""``regiontune pretrain`` and ``regiontune adapt``: train a backbone, then a region's adapter."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from regiontune.cli.common import (
    CandidatesOpt,
    ColumnsOpt,
    ConfigOpt,
    DataDirOpt,
    DataOpt,
    FileOpt,
    NegativesFromOpt,
    NegativesOpt,
    ProtocolOpt,
    SepOpt,
    SetOpt,
    TimeFormatOpt,
    VerboseOpt,
    app,
    backbone_data,
    command,
    data_config,
    load_configs,
    print_metrics,
)
from regiontune.config import ADAPT_LR


def parse_options(items: list[str]) -> dict:
    """``--option KEY=VALUE`` items; a VALUE that parses as JSON is taken as such."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"--option {item!r}: use KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
@command
def pretrain(out: Path = typer.Option(..., "--out", help="Backbone directory to write."),
             regions: str = typer.Option(None, "--regions", help="Comma-separated regions to "
                                         "pretrain on (default: all)."),
             data: str = DataOpt, data_dir: Path = DataDirOpt, file: list[str] = FileOpt,
             columns: list[str] = ColumnsOpt, sep: str = SepOpt,
             time_format: str = TimeFormatOpt, protocol: str = ProtocolOpt,
             negatives: int = NegativesOpt, negatives_from: str = NegativesFromOpt,
             candidates: str = CandidatesOpt,
             arch: str = typer.Option(None, "--arch",
             help="Backbone family: llama, gpt2 (causal) or bert (bidirectional)."),
             epochs: int = typer.Option(None, "--epochs", help="Maximum epochs."),
             fraction: float = typer.Option(1.0, "--fraction", help="Seeded share of each "
                                            "region's training users, e.g. 0.1 (evaluation "
                                            "uses all)."),
             resume: bool = typer.Option(False, "--resume", help="Continue from the last "
                                         "checkpoint of an interrupted run."),
             text: bool = typer.Option(False, "--text", help="Items as text: an item's "
                                       "embedding is its id row plus a learned projection of "
                                       "its text vector (a frozen sentence encoder; needs "
                                       "pip install 'regiontune[text]' or --text-encoder)."),
             item_text: Path = typer.Option(None, "--item-text", help="Side file of item,text "
                                            "rows (implies --text); ml-100k and synthetic "
                                            "bring their own text."),
             text_encoder: Path = typer.Option(None, "--text-encoder", help="A local "
                                               "sentence-transformers/BERT folder (implies "
                                               "--text; default: all-MiniLM-L6-v2)."),
             config: Path = ConfigOpt, set_: list[str] = SetOpt, verbose: bool = VerboseOpt
             ) -> None:
    """Pretrain a backbone on the pooled data of several regions."""
    from regiontune.training.pretrain import pretrain as run

    cfg = load_configs(config, set_)
    data_cfg = data_config(cfg["data"], data, data_dir, file, columns, regions, sep=sep,
                           time_format=time_format, protocol=protocol, negatives=negatives,
                           negatives_from=negatives_from, candidates=candidates)
    if arch:
        cfg["model"].arch = arch
    if epochs:
        cfg["train"].epochs = epochs
    if item_text:
        data_cfg.item_text = str(item_text)
    if text_encoder:
        cfg["model"].text_encoder = str(text_encoder)
    if text or item_text or text_encoder:
        cfg["model"].item_text = True
    if not 0 < fraction <= 1:
        raise ValueError(f"--fraction must be in (0, 1], not {fraction}")
    meta = run(data_cfg, cfg["model"], cfg["train"], out, resume=resume, fraction=fraction)
    print_metrics(meta.get("metrics", {}))
    typer.echo(f"backbone written to {out} ({meta.get('fingerprint')})")


@app.command()
@command
def adapt(backbone: Path = typer.Option(..., "--backbone", help="Backbone directory."),
          region: str = typer.Option(..., "--region", help="Region to adapt to."),
          out: Path = typer.Option(..., "--out", help="Adapter directory to write."),
          method: str = typer.Option(None, "--method", help="lora (default), adalora, ia3, "
                                     "bottleneck, full, or scratch: the backbone's architecture"
                                     " trained from random weights on the region alone, saved "
                                     "as a model directory (evaluate it with --model). With "
                                     "--init-from: the parent's method."),
          init_from: Path = typer.Option(None, "--init-from", help="Refresh this adapter on "
                                         "the data given: same backbone (checked), the "
                                         "parent's method and options, its item rows kept "
                                         "and the new items appended, optimizer and schedule "
                                         "restarted; region.json records the lineage (parent, "
                                         "data period, test metrics before and after)."),
          replay: float = typer.Option(None, "--replay", help="With --init-from: train "
                                       "again on this seeded share (0..1) of the parent's "
                                       "training users (histories only), against forgetting; "
                                       "their data is reloaded from the configuration the "
                                       "parent's region.json records (an error if it is "
                                       "gone). Default 0: none."),
          refresh_context: bool = typer.Option(None, "--refresh-context/--no-refresh-context",
                                               help="With --init-from: read each user's "
                                               "earlier items (the parent's and its "
                                               "ancestors' data, reloaded from the "
                                               "configurations their region.json files "
                                               "record; an error if gone) ahead of the new "
                                               "ones, as input only: the loss is on the new "
                                               "items. Default: adapt.refresh_context."),
          option: list[str] = typer.Option([], "--option", "-o", help="Method option KEY=VALUE"
                                           ", e.g. r=16, lora_alpha=32, targets=attention, "
                                           "reduction_factor=8, init_r=12. Repeatable."),
          item_rank: int = typer.Option(None, "--item-rank", help="Rank of the item-embedding "
                                        "delta (0 disables it)."),
          fraction: float = typer.Option(1.0, "--fraction", help="Seeded share of the region's "
                                         "training users, e.g. 0.1 (evaluation uses all)."),
          weights_dtype: str = typer.Option(None, "--weights-dtype", help="auto (default: "
                                            "float16 for adapters, float32 for full), float32,"
                                            " float16 or bfloat16. Half precision halves the "
                                            "file and doubles the auto item rank."),
          neighbour_pool: float = typer.Option(None, "--neighbour-pool", help="Weight (>= 0) "
                                               "of the backbone's other pretraining regions' "
                                               "histories in the item-item part's EASE fit "
                                               "(their co-occurrence of this region's items), "
                                               "reloaded from the data configuration the "
                                               "backbone records; 0: the region's own alone. "
                                               "Without that data: its own alone, with a "
                                               "warning. Default: adapt.neighbour_pool (0.5)."),
          data: str = DataOpt, data_dir: Path = DataDirOpt, file: list[str] = FileOpt,
          columns: list[str] = ColumnsOpt, sep: str = SepOpt,
          time_format: str = TimeFormatOpt, protocol: str = ProtocolOpt,
          negatives: int = NegativesOpt, negatives_from: str = NegativesFromOpt,
          candidates: str = CandidatesOpt,
          epochs: int = typer.Option(None, "--epochs", help="Maximum epochs."),
          resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
          item_text: Path = typer.Option(None, "--item-text", help="Side file of item,text "
                                         "rows: with a text-aware backbone, region-new items "
                                         "get the embedding of their text."),
          text_encoder: Path = typer.Option(None, "--text-encoder", help="A text-aware "
                                            "backbone's encoder folder, when not where "
                                            "pretraining recorded it: region-new items' text "
                                            "(--item-text, a text column) is encoded with it."),
          config: Path = ConfigOpt, set_: list[str] = SetOpt, verbose: bool = VerboseOpt) -> None:
    """Train a region's adapter on the frozen backbone and save it (PEFT layout)."""
    from regiontune.training.adapt import RETRAIN_HINT_SHARE, parent_method
    from regiontune.training.adapt import adapt as run

    data_options = {"sep": sep, "time_format": time_format, "protocol": protocol,
                    "negatives": negatives, "negatives_from": negatives_from,
                    "candidates": candidates}

    if replay is not None and init_from is None and replay != 0:
        raise ValueError("--replay replays the parent adapter's training data: it needs "
                         "--init-from PARENT_DIR")
    if refresh_context and init_from is None:
        raise ValueError("--refresh-context reads the parent adapter's data as context: it "
                         "needs --init-from PARENT_DIR")
    if init_from is not None:
        if method == SCRATCH:
            raise ValueError("--init-from refreshes an adapter; --method scratch trains a "
                             "whole model from random weights")
        if option or item_rank is not None:
            raise ValueError("--init-from continues the parent adapter with its own options "
                             "and item rank: drop --option and --item-rank")
        parent = parent_method(init_from)
        if method is not None and method != parent:
            raise ValueError(f"--method {method} differs from the parent adapter's method "
                             f"{parent}: a refresh continues the parent's method (drop "
                             "--method)")
        method = parent
    if method == SCRATCH:
        if option or item_rank is not None or weights_dtype is not None:
            raise ValueError("--method scratch trains a whole model: --option, --item-rank "
                             "and --weights-dtype do not apply")
        scratch(backbone, region, out, fraction, data, data_dir, file, columns, epochs, resume,
                config, set_, data_options)
        return
    cfg = load_configs(config, set_, defaults={"train": {"lr": ADAPT_LR}})
    data_cfg = data_config(cfg["data"], data, data_dir, file, columns, None, **data_options)
    if not (data or file or config):
        data_cfg = backbone_data(backbone, data_cfg)
    if item_text:
        data_cfg.item_text = str(item_text)
    adapt_cfg = cfg["adapt"]
    adapt_cfg.method = method or adapt_cfg.method
    adapt_cfg.region, adapt_cfg.fraction = region, fraction
    adapt_cfg.options.update(parse_options(option))
    if item_rank is not None:
        adapt_cfg.item_rank = item_rank
    if weights_dtype is not None:
        adapt_cfg.weights_dtype = weights_dtype
    if replay is not None:
        adapt_cfg.replay = replay
    if refresh_context is not None:
        adapt_cfg.refresh_context = refresh_context
    if neighbour_pool is not None:
        adapt_cfg.neighbour_pool = neighbour_pool
    if epochs:
        cfg["train"].epochs = epochs
    meta = run(backbone, data_cfg, adapt_cfg, cfg["train"], out, resume=resume,
               init_from=init_from, text_encoder=text_encoder or cfg["model"].text_encoder)
    print_metrics({region: {**meta.get("metrics", {}), "protocol": meta.get("protocol", "")}})
    lineage = meta.get("lineage")
    if lineage:
        before, after = lineage["metrics_before"] or {}, lineage["metrics_after"] or {}
        typer.echo(f"refreshed from {init_from} (generation {lineage['generation']}, "
                   f"{lineage['new_items']:,} new items): NDCG@10 "
                   f"{before.get('ndcg@10', 0):.4f} before, {after.get('ndcg@10', 0):.4f} "
                   "after")
        if lineage.get("context"):
            typer.echo(f"read {lineage['context']['items']:,} earlier items of "
                       f"{lineage['context']['users']:,} users as context")
        if lineage.get("new_share") is not None:
            typer.echo(f"the new data is {lineage['new_share']:.0%} of all data so far"
                       + (" -- about as large as the old: a new adapter trained on all of it "
                          "may do better (README, Region life-cycle)"
                          if lineage["new_share"] >= RETRAIN_HINT_SHARE else ""))
        if lineage.get("replay"):
            typer.echo(f"replayed {lineage['replay']['users']:,} of the parent's training "
                       f"users (--replay {lineage['replay']['fraction']})")
    typer.echo(f"adapter ({adapt_cfg.method}, {meta['trainable_params']:,} trainable parameters, "
               f"{meta['adapter_bytes'] / 1024:.0f} KiB, {meta['train_seconds']:.0f} s) "
               f"written to {out}")


SCRATCH = "scratch"  # not an adapter method: a whole model, the comparison an adapter must beat


def scratch(backbone: Path, region: str, out: Path, fraction: float, data: str | None,
            data_dir: Path | None, file: list[str], columns: list[str], epochs: int | None,
            resume: bool, config: Path | None, set_: list[str],
            data_options: dict | None = None) -> dict:
    """``adapt --method scratch``: the backbone's architecture (its saved model settings, then
    --config and --set) trained from random weights on ``region`` alone, on ``fraction`` of its
    users; written as a backbone directory, so ``evaluate --model`` reads it like the backbone.
    Training uses the pretraining defaults (``train.lr`` 2e-3), not the adapters' learning rate.
    """
    from regiontune.artifacts import BACKBONE_META, read_json
    from regiontune.training.pretrain import pretrain as run

    saved = read_json(backbone / BACKBONE_META, "backbone metadata (not a regiontune backbone?)")
    model = saved.get("config", {}).get("model")
    if not model:
        raise ValueError(f"{backbone}: the metadata records no model settings to copy")
    cfg = load_configs(config, set_, defaults={"model": model})
    data_cfg = data_config(cfg["data"], data, data_dir, file, columns, None,
                           **(data_options or {}))
    if not (data or file or config):
        data_cfg = backbone_data(backbone, data_cfg)
    data_cfg.regions = [region]
    if epochs:
        cfg["train"].epochs = epochs
    origin = {"method": SCRATCH, "region": region,
              "architecture_of": {"path": str(backbone.resolve()),
                                  "fingerprint": saved.get("fingerprint")}}
    meta = run(data_cfg, cfg["model"], cfg["train"], out, resume=resume, fraction=fraction,
               extra_meta={"scratch": origin}, desc=f"scratch {region}")
    metrics = meta.get("metrics", {})
    print_metrics(metrics)
    from regiontune.cli.compare import weights_size

    stats = meta.get("data", {}).get(region, {})
    params, size = weights_size(out)
    typer.echo(f"scratch model ({params:,} trainable parameters, "
               f"{size / 1024:.0f} KiB, {meta['train']['seconds']:.0f} s, "
               f"{stats.get('users', 0):,} training users of {region}) written to {out}; "
               f"evaluate it with: regiontune evaluate --model {out} --region {region}")
    return meta
