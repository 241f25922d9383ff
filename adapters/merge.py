"""Merging adapters: an adapter for a region with no data, from other regions' adapters.

``merge_adapters`` combines saved adapters of one backbone and one method with weights
(normalised to sum to 1) into a new adapter folder that loads and serves like any other:

* **The method's part** is combined by the method itself (``AdapterMethod.merge``, asked
  through the registry): LoRA sums the sources' deltas exactly (``adapters/lora/merge.py``),
  AdaLoRA merges its LoRA exports into a LoRA adapter, and the default -- IA3, bottleneck,
  full fine-tuning -- is the weighted average of the tensors (:func:`average_tensors`).
* **The item side** is merged here, item by item, on the merged catalogue (the union of the
  sources' catalogues, or one given: the target region's items). An item some sources hold
  gets the weighted average of those sources' rows, the weights renormalised over them: its
  bias, and its low-rank delta kept *exact* by concatenating the sources' ``A`` columns with
  the weights folded in (``B`` stacked), so the merged rank is the sum of the sources'
  (``item_rank=R`` projects it to rank ``R`` by a truncated SVD of the merged deltas instead).
  A source holds an item when the item is in its catalogue *and* its training moved the
  item's row: rows of items its data never showed are the initial ones plus the source's
  unseen-items offset (plus, for an item known by its text alone, the lift or text prior the
  source records), a score level fitted for that region's catalogue alone (WSDM s1's
  LoRA: +7.2 on 189 such items, which would float to the top of any other region's lists).
  An item no source holds keeps the backbone's row and bias when the backbone knows it.
  Otherwise (new to every source and to the backbone) it gets the lowest item bias any
  source gives (backbone bias + adapter bias, over the items the sources trained on) and, by
  default (``new_items="zero"``), a zero embedding: in a history it then adds nothing (the
  bare backbone skips items it does not know), as a candidate it is scored by that cautious
  bias alone. ``new_items="mean"`` gives it the backbone's mean item embedding instead (one
  more low-rank column whose ``B`` row is that mean). Measured on WSDM (new-region
  backbone, LoRA of s1, s2, s3 merged with equal weights onto the target's catalogue,
  ``benchmarks/results/merge.md``): NDCG@10 t1 0.475 with zero rows against 0.441 with the
  mean, t2 0.252 against 0.215 -- a history item read as "the average item" blurs the
  user -- so zero is the default. ``new_items="omit"`` leaves such items out of the merged
  catalogue instead: skipped when a history is read and never scored, exactly as the bare
  backbone treats items it does not know (``meta["merge"]["items_left_out"]`` counts them;
  ``regiontune grow`` adds them once they have interactions).

**The item-item part** (``adapters/item_item.py``: each item's top-k EASE neighbours and a
blend weight each source chose on its own hold-out) is merged as the weighted sum of the
sources' part scores (:func:`merge_item_item`): neighbours mapped onto the merged catalogue by
item id, blend weight the merge-weighted mean of the sources' (no target data needed);
``item_item="mean"`` renormalises each row over the sources holding its item, ``"omit"``
leaves the part out.

``weights="overlap"`` derives the weights from a given catalogue: each source's weight is the
share of that catalogue its own catalogue holds (``|source ∩ target| / |target|``), then
normalised. Sources of weight 0 are left out.

The merged folder records ``merged_from`` (region, normalised weight, folder name and a hash
of each source's weights file), the method, the catalogue and the backbone fingerprint.
Nothing is written unless every check passes (the folder is written atomically).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from regiontune.artifacts import ADAPTER_META, ArtifactError, atomic_dir, read_json, write_json
from regiontune.model.backbone import load_backbone
from regiontune.model.recmodel import RecModel
from regiontune.model.vocab import ItemVocab

from .base import Merged, get_method
from .folder import WEIGHTS, AdapterFolder, write_files
from .io import read_region_text, weights_dtype
from .item_side import PREFIX as ITEM_PREFIX
from .region_task import text_rows
from .text_growth import lifted_text_rows

logger = logging.getLogger(__name__)
# config entries that name where an adapter came from, not what it computes
PROVENANCE_KEYS = ("base_model_name_or_path", "revision", "inference_mode")
NEW_ITEMS = ("zero", "mean", "omit")  # items new to every source and to the backbone
# the sources' item-item parts: their weighted sum (exact up to the top-k), the same per row
# renormalised over the sources that hold the row's item, or left out
ITEM_ITEM = ("sum", "mean", "omit")
PART = ITEM_PREFIX + "item_item."
REGION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the names the server accepts


# ---------------------------------------------------------------- finding the sources

def find_adapters(root: str | Path) -> dict[str, list[Path]]:
    """Region -> the adapter folders directly under ``root`` that claim it (metadata only;
    a caller that needs one folder per region refuses a region claimed twice)."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"{root}: no such adapter root directory")
    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.iterdir() if (p / ADAPTER_META).is_file()):
        region = read_json(path / ADAPTER_META, "region metadata").get("region")
        if isinstance(region, str):
            found.setdefault(region, []).append(path)
    return found


def read_catalogue(path: str | Path) -> list[str]:
    """A catalogue file: one item id per line (blank lines skipped, repeats kept once)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such catalogue file")
    items = list(dict.fromkeys(line.strip() for line in path.read_text().splitlines()))
    items = [i for i in items if i]
    if not items:
        raise ValueError(f"{path}: the catalogue file lists no item (one item id per line)")
    return items


def overlap_weights(catalogues: Sequence[Sequence[str]], target: Sequence[str]) -> list[float]:
    """Each source's share of the ``target`` catalogue: ``|source ∩ target| / |target|``."""
    wanted = set(target)
    if not wanted:
        raise ValueError("overlap weights need a non-empty catalogue")
    return [len(wanted.intersection(c)) / len(wanted) for c in catalogues]


def normalise(weights: Sequence[float]) -> list[float]:
    weights = [float(w) for w in weights]
    if any(not torch.isfinite(torch.tensor(w)) or w < 0 for w in weights):
        raise ValueError(f"merge weights must be finite and non-negative, got {weights}")
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"merge weights must sum to a positive number, got {weights}")
    return [w / total for w in weights]


def weights_hash(folder: AdapterFolder) -> str:
    """The source's exact weights: a hash of its weights file."""
    digest = hashlib.sha256((folder.source / WEIGHTS).read_bytes())
    return "sha256:" + digest.hexdigest()[:32]


# ---------------------------------------------------------------- the method's part

def method_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A folder's tensors without the item side (merged apart)."""
    return {k: v for k, v in tensors.items() if not k.startswith(ITEM_PREFIX)}


def comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in PROVENANCE_KEYS}


def average_tensors(method: str, sources: list[AdapterFolder], weights: list[float]) -> Merged:
    """The weighted average of the sources' tensors (a model soup): one configuration, the
    same tensor names and shapes; integer tensors must be equal."""
    first = sources[0]
    config = comparable_config(first.config)
    for other in sources[1:]:
        theirs = comparable_config(other.config)
        differ = sorted(k for k in set(config) | set(theirs) if config.get(k) != theirs.get(k))
        if differ:
            raise ValueError(f"{method} adapters merge by averaging their tensors, which needs "
                             f"one configuration: {first.path.name} and {other.path.name} "
                             f"differ in {differ}")
        if set(other.tensors) != set(first.tensors):
            odd = sorted(set(other.tensors) ^ set(first.tensors))
            raise ValueError(f"{method} adapters {first.path.name} and {other.path.name} hold "
                             f"different tensors ({len(odd)}, e.g. {odd[:2]}); they cannot be "
                             "averaged")
    merged = {}
    for key, tensor in first.tensors.items():
        shapes = {tuple(s.tensors[key].shape) for s in sources}
        if len(shapes) > 1:
            raise ValueError(f"{method} adapters cannot be averaged: tensor {key} has shapes "
                             f"{sorted(shapes)} across the sources")
        if not tensor.is_floating_point():
            if any(not torch.equal(s.tensors[key], tensor) for s in sources):
                raise ValueError(f"{method} adapters differ in the integer tensor {key}")
            merged[key] = tensor.clone()
            continue
        merged[key] = sum(w * s.tensors[key].float() for s, w in zip(sources, weights,
                                                                      strict=True))
    return method, config, merged


# ---------------------------------------------------------------- the item side

def merge_item_side(sources: list[AdapterFolder], weights: list[float], catalogue: list[str],
                    backbone: RecModel, vocab: ItemVocab, item_rank: int | None = None,
                    new_items: str = "zero"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """The merged item side's tensors (``regiontune.item_side.*``), what was done, and the
    merged catalogue (``catalogue`` without the items no model knows when ``new_items`` is
    ``"omit"``)."""
    base_table, base_bias = (t.detach().float() for t in backbone.item_table())
    hidden = base_table.shape[1]
    n = len(catalogue)
    position = {item: i for i, item in enumerate(catalogue)}
    columns = vocab.columns(catalogue)
    known = columns >= 0

    a_blocks, b_blocks = [], []
    bias = torch.zeros(n)
    mass = torch.zeros(n)  # the summed weight of the sources holding each item
    lowest = None  # the lowest item bias any source gives (backbone + adapter)
    skipped = 0  # catalogue rows of the sources that never trained
    for folder, weight in zip(sources, weights, strict=True):
        t = folder.tensors
        cat = list(folder.meta["catalogue"])
        src_cols = vocab.columns(cat)
        src_bias = t.get(ITEM_PREFIX + "bias", torch.zeros(len(cat))).float()
        effective = src_bias + base_bias[src_cols.clamp(min=0)] * (src_cols >= 0)
        trained = trained_rows(folder, source_text(folder, backbone, src_cols >= 0))
        skipped += int((~trained).sum())
        if trained.any():
            low = effective[trained].min()
            lowest = low if lowest is None else torch.minimum(lowest, low)
        here = [(i, position[item]) for i, item in enumerate(cat)
                if item in position and trained[i]]
        if not here:
            a_blocks.append(None)
            b_blocks.append(None)
            continue
        src_idx = torch.tensor([i for i, _ in here])
        dst_idx = torch.tensor([j for _, j in here])
        mass[dst_idx] += weight
        bias[dst_idx] += weight * src_bias[src_idx]
        if ITEM_PREFIX + "lowrank_a" in t:
            a = torch.zeros(n, t[ITEM_PREFIX + "lowrank_a"].shape[1])
            a[dst_idx] = weight * t[ITEM_PREFIX + "lowrank_a"].float()[src_idx]
            a_blocks.append(a)
            b_blocks.append(t[ITEM_PREFIX + "lowrank_b"].float())
        else:
            a_blocks.append(None)
            b_blocks.append(None)
    held = mass > 0
    scale = torch.where(held, 1.0 / mass.clamp(min=1e-12), torch.zeros(n))
    bias = bias * scale  # renormalised over the sources holding the item
    a_parts = [a * scale[:, None] for a in a_blocks if a is not None]
    b_parts = [b for b in b_blocks if b is not None]
    fallback = ~held & ~known  # in no source, unknown to the backbone
    if new_items not in NEW_ITEMS:
        raise ValueError(f"new_items {new_items!r}: use one of {NEW_ITEMS}")
    left_out = []
    if new_items == "omit" and fallback.any():
        keep = ~fallback
        left_out = [i for i, f in zip(catalogue, fallback.tolist(), strict=True) if f]
        catalogue = [i for i, k in zip(catalogue, keep.tolist(), strict=True) if k]
        bias, a_parts = bias[keep], [a[keep] for a in a_parts]
    elif fallback.any():
        if new_items == "mean":
            a_parts.append(fallback.float()[:, None])
            b_parts.append(base_table.mean(dim=0)[None, :])
        bias[fallback] = float(lowest) if lowest is not None else 0.0
    a = torch.cat(a_parts, dim=1) if a_parts else torch.zeros(len(catalogue), 0)
    b = torch.cat(b_parts, dim=0) if b_parts else torch.zeros(0, hidden)
    exact_rank = a.shape[1]
    if item_rank is not None and item_rank < exact_rank:
        a, b = project(a, b, item_rank)
    tensors = {ITEM_PREFIX + "bias": bias}
    if a.shape[1]:
        tensors[ITEM_PREFIX + "lowrank_a"] = a.contiguous()
        tensors[ITEM_PREFIX + "lowrank_b"] = b.contiguous()
    info = {"items_in_sources": int(held.sum()), "items_backbone_only": int((~held & known).sum()),
            "items_fallback": int(fallback.sum()),
            "fallback_bias": (float(bias[fallback][0]) if fallback.any() and not left_out
                              else None), "items_left_out": len(left_out),
            "source_rows_untrained": skipped,
            "new_item_embedding": new_items, "item_rank_exact": exact_rank,
            "item_rank_mode": "exact" if a.shape[1] == exact_rank else "projected"}
    return tensors, info, catalogue


def source_text(folder: AdapterFolder, backbone: RecModel, known: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The text vectors of a source's region-new items (its own, else the backbone's cache)
    and which have one; None: an id-only backbone, or none has text."""
    own = read_region_text(folder.path, backbone) if getattr(
        backbone.config, "item_text", False) else None
    return text_rows(backbone, list(folder.meta["catalogue"]), known, own)


def trained_rows(folder: AdapterFolder,
                 text: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Which rows of a source's item side training moved: an item its region's data never
    showed keeps its initial row (``A`` row zero) and the unseen-items offset as its bias
    (``unseen_offset``, a level for that region's catalogue alone) -- plus, for a region-new
    item known by its text alone, the lift its adapter records (``text_lift``, or its saved
    text prior of the item's text: ``text_growth.lifted_text_rows``; ``text``: the source's
    text vectors and which rows have one, :func:`source_text`); such a row carries no
    knowledge of the item, so the source does not count as holding it."""
    t, n = folder.tensors, len(folder.meta["catalogue"])
    untrained = torch.ones(n, dtype=torch.bool)
    known = False
    if ITEM_PREFIX + "lowrank_a" in t:
        untrained &= (t[ITEM_PREFIX + "lowrank_a"] == 0).all(dim=1)
        known = True
    if ITEM_PREFIX + "bias" in t:
        offset = float(folder.meta.get("unseen_offset") or 0.0)
        tolerance = 1e-3 * max(1.0, abs(offset))  # the offset, rounded to the weights' dtype
        at_offset = (t[ITEM_PREFIX + "bias"].float() - offset).abs() <= tolerance
        if text is not None:
            lifted, _ = lifted_text_rows(folder.meta, t, *text)
            at_offset = torch.where(text[1].bool(), lifted, at_offset)
        untrained &= at_offset
        known = True
    return ~untrained if known else torch.ones(n, dtype=torch.bool)


def merge_item_item(sources: list[AdapterFolder], weights: list[float], catalogue: list[str],
                    mode: str = "sum") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The merged item-item part (``adapters/item_item.py``) over ``catalogue``: tensors
    (none when no source has a part, or ``mode`` is ``"omit"``) and what was done.

    Source ``s`` (merge weight ``w_s``, blend weight ``v_s``: 0 when it has no part) scores
    ``v_s * sum_i B_s[i, j]`` over a history's items ``i``. Mapped onto the merged catalogue
    by item id (rows and neighbours the catalogue lacks are dropped), the merged part is
    their weighted sum: blend weight ``V = sum_s w_s v_s`` (the merge-weighted mean of the
    sources' blend weights, chosen on their own hold-outs) and strengths
    ``sum_s (w_s v_s / V) B_s[i, j]`` (``"sum"``: exact but for the top-``k`` cut, ``k`` the
    largest of the sources'); ``"mean"`` renormalises each row over the sources holding its
    item (an item one source knows keeps that source's whole row, as the item side does)."""
    if mode not in ITEM_ITEM:
        raise ValueError(f"item_item {mode!r}: use one of {ITEM_ITEM}")
    ks = [int(f.meta.get("neighbours", 0) or 0) for f in sources]
    blends = [float(f.tensors[PART + "weight"]) if k > 0 and PART + "weight" in f.tensors
              else 0.0 for f, k in zip(sources, ks, strict=True)]
    total = sum(w * v for w, v in zip(weights, blends, strict=True))
    if mode == "omit" or not any(ks) or total <= 0:
        why = ("left out (--item-item omit)" if mode == "omit" else
               "no source has an item-item part of positive weight")
        return {}, {"neighbours": 0, "mode": mode, "note": why}
    n, k = len(catalogue), max(ks)
    position = {item: i for i, item in enumerate(catalogue)}
    rows, cols, vals = [], [], []
    held = torch.zeros(n)  # per merged row: the summed share of the sources holding it
    for folder, weight, blend, k_s in zip(sources, weights, blends, ks, strict=True):
        if k_s == 0 or weight * blend <= 0:
            continue
        share = weight * blend / total
        to_merged = torch.tensor([position.get(i, -1) for i in folder.meta["catalogue"]])
        neighbours = folder.tensors[PART + "neighbours"].long()
        strengths = folder.tensors[PART + "strengths"].float()
        src_rows = torch.arange(len(to_merged))[:, None].expand_as(neighbours)
        dst_rows, dst_cols = to_merged[src_rows], to_merged[neighbours]
        keep = (dst_rows >= 0) & (dst_cols >= 0) & (strengths != 0)
        rows.append(dst_rows[keep])
        cols.append(dst_cols[keep])
        vals.append(share * strengths[keep])
        held[to_merged[to_merged >= 0]] += share
    row, col, val = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    if mode == "mean":
        val = val / held[row].clamp(min=1e-12)
    # sum the sources' weights of each (row, neighbour) pair, then keep each row's top k
    key, inverse = torch.unique(row * n + col, return_inverse=True)
    summed = torch.zeros(len(key)).index_add_(0, inverse, val)
    row, col = key // n, key % n
    order = torch.argsort(summed, descending=True, stable=True)
    order = order[torch.argsort(row[order], stable=True)]  # by row, largest first in a row
    row, col, summed = row[order], col[order], summed[order]
    starts = torch.searchsorted(row, row, right=False)
    rank = torch.arange(len(row)) - starts
    top = rank < k
    index_dtype = torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32
    neighbours = torch.zeros(n, k, dtype=index_dtype)
    strengths = torch.zeros(n, k)
    neighbours[row[top], rank[top]] = col[top].to(index_dtype)
    strengths[row[top], rank[top]] = summed[top]
    info = {"neighbours": k, "mode": mode, "blend_weight": total,
            "source_blend_weights": [round(v, 6) for v in blends],
            "rows_with_neighbours": int((strengths != 0).any(dim=1).sum()),
            "pairs_cut": int((~top).sum())}
    return {PART + "neighbours": neighbours, PART + "strengths": strengths,
            PART + "weight": torch.tensor(total)}, info


def project(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` approximation of ``a @ b`` (truncated SVD), as new (a, b)."""
    if rank < 1:
        raise ValueError(f"item_rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(a @ b, full_matrices=False)
    return (u[:, :rank] * s[:rank]).contiguous(), vh[:rank].contiguous()


# ---------------------------------------------------------------- the whole merge

def merge_adapters(paths: Sequence[str | Path], weights: Sequence[float] | str,
                   backbone_dir: str | Path, out: str | Path, *, region: str | None = None,
                   catalogue: list[str] | None = None, item_rank: int | None = None,
                   new_items: str = "zero", dtype: str = "auto",
                   item_item: str = "sum") -> dict[str, Any]:
    """Merge the adapters in ``paths`` with ``weights`` (or ``"overlap"``, which needs
    ``catalogue``) into ``out``; returns the metadata written to ``region.json``.

    Checks, before anything is written: every source is an adapter of the backbone in
    ``backbone_dir`` (fingerprint), all share one method, regions are not repeated, weights
    are non-negative and sum to a positive number.
    """
    paths = [Path(p) for p in paths]
    if new_items not in NEW_ITEMS:
        raise ValueError(f"new_items {new_items!r}: use one of {NEW_ITEMS}")
    if item_item not in ITEM_ITEM:
        raise ValueError(f"item_item {item_item!r}: use one of {ITEM_ITEM}")
    if not paths:
        raise ValueError("name at least one adapter to merge")
    region = region or Path(out).name
    if not REGION_NAME.fullmatch(region):
        raise ValueError(f"region name {region!r}: use 1-64 letters, digits, '_', '.' or '-'")
    if catalogue is not None:
        catalogue = list(dict.fromkeys(catalogue))
        if not catalogue:
            raise ValueError("the given catalogue is empty")
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    fingerprint = bmeta["fingerprint"]
    folders = [AdapterFolder.read(p, fingerprint) for p in paths]
    methods = {f.trained_method for f in folders}
    if len(methods) > 1:
        listed = ", ".join(f"{f.path.name} ({f.trained_method})" for f in folders)
        raise ValueError(f"cannot merge adapters of different methods: {listed}; merge "
                         "adapters of one method")
    regions = [f.region for f in folders]
    repeated = sorted({str(r) for r in regions if regions.count(r) > 1})
    if repeated:
        raise ValueError(f"region(s) {repeated} named twice among the adapters to merge")
    if isinstance(weights, str):
        if weights != "overlap":
            raise ValueError(f"unknown weights rule {weights!r}; use overlap or numbers")
        if catalogue is None:
            raise ValueError("overlap weights need the target's catalogue (--catalogue FILE)")
        raw = overlap_weights([f.meta["catalogue"] for f in folders], catalogue)
        if not any(raw):
            raise ValueError("no source adapter's catalogue shares an item with the given "
                             "catalogue: overlap weights are all 0")
        rule = "overlap"
    else:
        if len(weights) != len(folders):
            raise ValueError(f"{len(weights)} weights for {len(folders)} adapters")
        raw, rule = list(weights), "given"
    normalised = normalise(raw)
    dropped = [f.path.name for f, w in zip(folders, normalised, strict=True) if w == 0]
    if dropped:
        logger.warning("left out of the merge (weight 0): %s", ", ".join(dropped))
    kept = [(f, w) for f, w in zip(folders, normalised, strict=True) if w > 0]
    folders, normalised = [f for f, _ in kept], [w for _, w in kept]

    method = get_method(folders[0].trained_method)
    body_sources = [replace(f, tensors=method_tensors(f.tensors)) for f in folders]
    saved_as, config, body = method.merge(body_sources, normalised)
    config = {**config, "base_model_name_or_path": str(Path(backbone_dir).resolve())}
    given = catalogue is not None
    if catalogue is None:
        catalogue = list(dict.fromkeys(i for f in folders for i in f.meta["catalogue"]))
    item_tensors, info, catalogue = merge_item_side(folders, normalised, catalogue, backbone,
                                                    vocab, item_rank, new_items)
    if not catalogue:
        raise ValueError("no item of the catalogue is known to a source adapter or to the "
                         "backbone: with --new-items omit nothing is left to serve")
    part_tensors, part_info = merge_item_item(folders, normalised, catalogue, item_item)
    item_tensors.update(part_tensors)
    torch_dtype = weights_dtype(dtype, saved_as)
    merged_from = [{"region": f.region, "weight": w, "method": f.trained_method,
                    "path": f.path.name, "weights_fingerprint": weights_hash(f)}
                   for f, w in zip(folders, normalised, strict=True)]
    datasets = {f.meta.get("dataset") for f in folders}
    rank = item_tensors[ITEM_PREFIX + "lowrank_a"].shape[1] if (
        ITEM_PREFIX + "lowrank_a" in item_tensors) else 0
    with atomic_dir(out) as tmp:
        write_files(tmp, config, {**body, **item_tensors}, torch_dtype)
        meta = {"region": region, "kind": "adapter", "method": saved_as,
                "peft_loadable": get_method(saved_as).peft_loadable,
                "weights_dtype": str(torch_dtype).removeprefix("torch."),
                "adapter_bytes": (tmp / WEIGHTS).stat().st_size,
                "catalogue": catalogue,
                "new_items": [i for i, c in zip(catalogue, vocab.columns(catalogue).tolist(),
                                                strict=True) if c < 0],
                "item_rank": rank, "item_bias": True,
                "neighbours": part_info["neighbours"],
                "backbone_fingerprint": fingerprint,
                "backbone_path": str(Path(backbone_dir).resolve()),
                "backbone_repo": bmeta.get("hub", {}).get("repo_id"),
                "dataset": datasets.pop() if len(datasets) == 1 else None,
                "merged_from": merged_from,
                "merge": {"weights": rule, "catalogue": "given" if given else "union", **info,
                          "item_item": part_info}}
        write_json(tmp / ADAPTER_META, meta)
        from regiontune.artifacts.cards import write_card  # at call time (tests replace it)

        write_card(tmp, meta, "adapter")
    logger.info("merged adapter written to %s", out)
    return meta

