"""``regiontune merge``: an adapter for a region with no data, from other regions' adapters."""

from __future__ import annotations

from pathlib import Path

import typer

from regiontune.cli.common import VerboseOpt, app, command


def parse_sources(items: list[str]) -> list[tuple[str, float | None]]:
    """``REGION=WEIGHT`` or ``REGION`` (weight left to the rule) per ``--from``."""
    out = []
    for item in items:
        region, sep, weight = item.partition("=")
        region = region.strip()
        if not region:
            raise ValueError(f"--from {item!r}: use REGION=WEIGHT, e.g. --from s1=0.5")
        try:
            out.append((region, float(weight) if sep else None))
        except ValueError:
            raise ValueError(f"--from {item!r}: the weight {weight!r} is not a number") from None
    return out


def resolve(regions: list[str], roots: list[Path], dirs: list[Path]) -> list[Path]:
    """The adapter folder of each region, from ``--adapter-root`` and ``--adapter``."""
    from regiontune.adapters.merge import find_adapters
    from regiontune.artifacts import ADAPTER_META, read_json

    if not roots and not dirs:
        raise ValueError("say where the adapters are: --adapter-root ROOT or --adapter DIR")
    found: dict[str, set[Path]] = {}
    for root in roots:
        for region, claimants in find_adapters(root).items():
            found.setdefault(region, set()).update(p.resolve() for p in claimants)
    for directory in dirs:
        region = read_json(directory / ADAPTER_META, "region metadata (not an adapter?)"
                           ).get("region")
        if not isinstance(region, str):
            raise ValueError(f"{directory / ADAPTER_META} names no region")
        found.setdefault(region, set()).add(directory.resolve())
    unknown = [r for r in regions if r not in found]
    if unknown:
        raise ValueError(f"no adapter for region(s) {unknown}; found: "
                         f"{', '.join(sorted(found)) or 'none'}")
    clashes = {r: found[r] for r in regions if len(found[r]) > 1}
    if clashes:
        raise ValueError("several adapters claim one region: " + "; ".join(
            f"{r}: {', '.join(sorted(map(str, ps)))}" for r, ps in clashes.items())
            + "; name the one to use with --adapter DIR")
    return [next(iter(found[r])) for r in regions]


@app.command()
@command
def merge(out: Path = typer.Option(..., "--out", help="Directory for the merged adapter."),
          sources: list[str] = typer.Option(..., "--from", help="REGION=WEIGHT: a source "
                                            "region and its weight (weights are normalised "
                                            "to sum to 1; REGION alone: weight 1, or the "
                                            "--weights rule). Repeatable."),
          backbone: Path = typer.Option(..., "--backbone", help="Backbone directory (every "
                                        "source must be an adapter of it)."),
          adapter_root: list[Path] = typer.Option([], "--adapter-root", help="Directory "
                                                  "whose sub-directories are adapters, found "
                                                  "by the region in their region.json. "
                                                  "Repeatable."),
          adapter: list[Path] = typer.Option([], "--adapter", help="One adapter directory "
                                             "(its region from region.json). Repeatable."),
          region: str = typer.Option(None, "--region", help="Name of the new region "
                                     "(default: the --out directory's name)."),
          catalogue: Path = typer.Option(None, "--catalogue", help="File of the new region's "
                                         "items, one id per line (default: the union of the "
                                         "sources' catalogues)."),
          weights: str = typer.Option(None, "--weights", help="overlap: weight each source by "
                                      "the share of the --catalogue items its own catalogue "
                                      "holds."),
          item_rank: int = typer.Option(None, "--item-rank", min=1, help="Project the merged "
                                        "item deltas to this rank (truncated SVD; default: "
                                        "exact, the sum of the sources' ranks)."),
          new_items: str = typer.Option("zero", "--new-items", help="Embedding of items "
                                        "new to every source and to the backbone: zero (they "
                                        "add nothing to a history; scored by the lowest "
                                        "source bias), mean (the backbone's mean item "
                                        "embedding) or omit (left out of the catalogue: "
                                        "skipped in histories and never recommended, as the "
                                        "bare backbone treats them; `regiontune grow` adds "
                                        "them later)."),
          item_item: str = typer.Option("sum", "--item-item", help="The sources' item-item "
                                        "parts (EASE neighbours): sum (their scores' weighted "
                                        "sum, mapped by item id; blend weight the weighted mean "
                                        "of theirs), mean (each row renormalised over the "
                                        "sources holding its item) or omit."),
          weights_dtype: str = typer.Option("auto", "--weights-dtype", help="auto (float16 "
                                            "for adapters, float32 for full), float32, "
                                            "float16 or bfloat16."),
          verbose: bool = VerboseOpt) -> None:
    """Build an adapter for a region with no data as a weighted combination of other
    regions' adapters (one backbone, one method).

    LoRA: the exact weighted sum of the deltas (AdaLoRA: of its LoRA exports, saved as LoRA);
    IA3, bottleneck, full: the weighted average of the tensors. Item side: per item, the
    weighted average over the sources that hold it; items in none keep the backbone's row, or,
    new to the backbone too, get the lowest source bias (see --new-items). Item-item parts:
    the weighted sum of the sources' (see --item-item).
    """
    from regiontune.adapters.merge import merge_adapters, read_catalogue

    pairs = parse_sources(sources)
    names = [r for r, _ in pairs]
    given = [w for _, w in pairs]
    if weights is not None:
        if weights != "overlap":
            raise ValueError(f"--weights {weights!r}: the only rule is overlap")
        if any(w is not None for w in given):
            raise ValueError("give weights in --from or --weights overlap, not both")
        if catalogue is None:
            raise ValueError("--weights overlap needs --catalogue FILE (the new region's items)")
    items = read_catalogue(catalogue) if catalogue is not None else None
    paths = resolve(names, adapter_root, adapter)
    rule = "overlap" if weights else [1.0 if w is None else w for w in given]
    meta = merge_adapters(paths, rule, backbone, out, region=region, catalogue=items,
                          item_rank=item_rank, new_items=new_items, dtype=weights_dtype,
                          item_item=item_item)
    info = meta["merge"]
    typer.echo("sources: " + ", ".join(f"{m['region']} {m['weight']:.3f}"
                                       for m in meta["merged_from"]))
    typer.echo(f"catalogue: {len(meta['catalogue']):,} items ({info['items_in_sources']:,} in "
               f"a source, {info['items_backbone_only']:,} from the backbone alone, "
               f"{info['items_fallback']:,} new to all); item rank {meta['item_rank']} "
               f"({info['item_rank_mode']})")
    part = info.get("item_item") or {}
    typer.echo(f"item-item part: {meta.get('neighbours', 0)} neighbours an item" + (
        f", blend weight {part['blend_weight']:.3g} ({part['mode']})" if meta.get("neighbours")
        else f" ({part.get('note', 'none')})"))
    typer.echo(f"merged adapter ({meta['method']}, region {meta['region']}, "
               f"{meta['adapter_bytes'] / 1024:.0f} KiB) written to {out}")
