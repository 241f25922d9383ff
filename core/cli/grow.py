"""``regiontune grow``: new items added to a trained adapter's catalogue without retraining."""

from __future__ import annotations

from pathlib import Path

import typer

from regiontune.cli.common import ColumnsOpt, SepOpt, VerboseOpt, app, command


def read_interactions(path: Path, region: str | None, columns: list[str],
                      sep: str | None) -> dict[str, list[str]]:
    """user -> items of an interaction file (any format ``--file`` reads; a region column,
    when there is one, keeps the adapter's region's rows)."""
    from regiontune.data.loading import column_mapping, load_file

    frame = load_file(path, column_mapping(columns), region=region, sep=sep)
    if region is not None and len(frame):
        mine = frame[frame["region"] == region]
        if mine.empty:
            raise ValueError(f"{path}: no rows of region {region!r} (it holds "
                             f"{sorted(frame['region'].unique())[:10]})")
        frame = mine
    return {u: list(g) for u, g in frame.groupby("user", sort=True)["item"]}


@app.command()
@command
def grow(backbone: Path = typer.Option(..., "--backbone", help="Backbone directory the adapter "
                                       "was made on."),
         adapter: Path = typer.Option(..., "--adapter", help="Adapter directory to grow."),
         items: Path = typer.Option(..., "--items", help="File of the items to add, one id per "
                                    "line (ids the catalogue already holds are skipped)."),
         interactions: Path = typer.Option(None, "--interactions", help="Interaction file with "
                                           "user and item columns (CSV/TSV/Parquet/JSONL; a "
                                           "region column keeps the adapter's region): a new "
                                           "item starts as the mean of the rows of the "
                                           "catalogue items its users also hold. Without it "
                                           "(or without co-occurrences): the backbone's mean "
                                           "item embedding."),
         item_text: Path = typer.Option(None, "--item-text", help="Side file of item,text "
                                        "rows: with a text-aware backbone, a new item with "
                                        "text and no co-occurrence starts as the embedding "
                                        "of its text (encoded by the backbone's encoder)."),
         text_encoder: Path = typer.Option(None, "--text-encoder", help="The backbone's text "
                                           "encoder folder, when not where pretraining "
                                           "recorded it."),
         columns: list[str] = ColumnsOpt, sep: str = SepOpt,
         out: Path = typer.Option(None, "--out", help="Directory for the grown adapter."),
         in_place: bool = typer.Option(False, "--in-place", help="Rewrite --adapter itself "
                                       "(atomically) instead of writing --out."),
         verbose: bool = VerboseOpt) -> None:
    """Add items to an adapter's catalogue without retraining.

    Old rows, the method's weights and everything else stay bit-identical. An item the
    backbone knows keeps its backbone row; a new one gets the least-squares low-rank row of
    its co-occurring items' mean embedding (else, with a text-aware backbone and its text,
    the embedding of its text; else the backbone's mean item embedding); its bias is the
    adapter's calibrated unseen-items offset (see docs/architecture.md). The metadata records
    the growth under "grown".
    """
    from regiontune.adapters.grow import grow_catalogue
    from regiontune.adapters.merge import read_catalogue
    from regiontune.artifacts import ADAPTER_META, read_json

    if (out is None) == (not in_place):
        raise ValueError("say where the grown adapter goes: --out DIR, or --in-place (not "
                         "both)")
    if not (adapter / ADAPTER_META).is_file():
        raise ValueError(f"{adapter}: not an adapter directory (no {ADAPTER_META})")
    added = read_catalogue(items)
    region = read_json(adapter / ADAPTER_META, "region metadata").get("region")
    users = (read_interactions(interactions, region, columns, sep)
             if interactions is not None else None)
    texts = None
    if item_text is not None:
        from regiontune.data.itemtext import read_item_text
        from regiontune.data.loading import normalize_sep

        wanted = set(added)
        texts = {i: t for i, t in read_item_text(item_text, normalize_sep(sep)).items()
                 if i in wanted}
    meta = grow_catalogue(adapter, backbone, added, users, None if in_place else out,
                          texts=texts, text_encoder=text_encoder)
    record = meta["grown"][-1]
    skipped = len(added) - len(record["items"])
    typer.echo(f"added {len(record['items']):,} item(s)"
               + (f" ({skipped:,} already in the catalogue, skipped)" if skipped else "")
               + f"; catalogue now {len(meta['catalogue']):,} items")
    typer.echo("embedding: " + ", ".join(f"{k} {len(v):,}" for k, v in
                                         record["embedding"].items())
               + "; bias: " + ", ".join(f"{k} {len(v):,}" for k, v in record["bias"].items())
               + (f"; projection kept {record['projection_kept']:.0%} of the target norm"
                  if record["projection_kept"] is not None else ""))
    typer.echo(f"grown adapter written to {adapter if in_place else out}")
