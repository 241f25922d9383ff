"""Model cards (README.md) for backbones and region adapters, as ``huggingface_hub`` ModelCards.

The YAML front matter is what the Hub indexes: ``library_name``, ``license`` (Apache-2.0, the
project's, unless the metadata names another), ``base_model`` (an adapter's backbone repo id
when it was pulled from or pushed to the Hub; else omitted, the fingerprint is in the text),
``datasets`` (only when the data recipe is a Hub dataset id ``org/name``; the built-in recipes
are not), ``tags`` and the test metrics as ``model-index`` (task, data set and region, NDCG@k,
HR@k, MRR). No ``pipeline_tag``: the Hub has no pipeline for recommendation, and a wrong one
would offer a widget that cannot run. The text says what the artefact is, how well it does and
how to load it. Every key of the metadata may be missing: a card is still written, with the
known parts only. Cards never hold an absolute path (a machine's folders are not the reader's
business): a path in the metadata is shown by its last component.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# First line of the text of every generated card: `regiontune push` regenerates a README.md
# holding it and leaves a hand-written one (without it) alone.
CARD_MARKER = "<!-- regiontune:generated-card -->"

_ADAPTER_USAGE = """\
## How to use

With regiontune (the backbone is the frozen model the adapter was trained on):

```bash
regiontune recommend --model BACKBONE --adapter {dir} --region {region} --history ITEM,ITEM
```

```python
from regiontune.adapters import load_adapter
from regiontune.model.backbone import load_backbone
from regiontune.evaluation.evaluate import task_scores

backbone, vocab, meta = load_backbone("BACKBONE")
task = load_adapter("{dir}", backbone, vocab, meta["fingerprint"])  # checks the fingerprint
scores = task_scores(task, [["ITEM", "ITEM"]], task.vocab.items)
```
"""

_PEFT_USAGE = """
With plain PEFT (`{method}` is a PEFT method: `adapter_config.json` and
`adapter_model.safetensors` load as a standard PEFT adapter):

```python
from peft import PeftModel
from regiontune.model.backbone import load_backbone

backbone, vocab, meta = load_backbone("BACKBONE")
model = PeftModel.from_pretrained(backbone, "{dir}")
```

PEFT applies the transformer-side weights only. The item-side part (per-item regional biases,
the low-rank item-embedding delta and the rows of items new to this region, stored under
`regiontune.item_side.*`) is applied by regiontune, so use regiontune for recommendations.
"""

_BACKBONE_USAGE = """\
## How to use

Train one small adapter per region on top of this frozen backbone, or recommend directly:

```bash
regiontune recommend --model {dir} --region REGION --history ITEM,ITEM
```

```python
from regiontune.model.backbone import load_backbone

model, vocab, meta = load_backbone("{dir}")  # checks the weights against the fingerprint
```
"""


DEFAULT_LICENSE = "apache-2.0"  # the project's (pyproject.toml), as the Hub spells it
TASK_TYPE = "recommendation"
TASK_NAME = "Sequential recommendation (next item)"
HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
REPORTED_METRIC = re.compile(r"^(?:(?:ndcg|hr)@\d+|mrr)$")
METRIC_NAMES = {"ndcg": "NDCG", "hr": "HR", "mrr": "MRR"}
# an absolute path inside a string: after a start, a blank, a quote, '=' or '('
_EMBEDDED_PATH = re.compile(r"(^|[\s'\"=(])((?:/|~/|[A-Za-z]:[\\/])[^\s'\"),]*)")


def _last_part(path: str) -> str:
    name = re.split(r"[\\/]", path.rstrip("/\\"))[-1]
    return name or "."


def public(value: Any) -> Any:
    """``value`` with every absolute path (whole strings, or inside one) cut to its last
    component, in nested dicts and lists too (keys included)."""
    if isinstance(value, str):
        return _EMBEDDED_PATH.sub(lambda m: m.group(1) + _last_part(m.group(2)), value)
    if isinstance(value, dict):
        return {public(k): public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public(v) for v in value]
    return value


def _recipe(meta: dict[str, Any]) -> str | None:
    """The data recipe an artefact was trained on (adapter ``dataset``, or the config's)."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    for section in (meta, config.get("data"), meta.get("data")):
        if isinstance(section, dict):
            value = section.get("dataset" if section is meta else "recipe")
            if isinstance(value, str) and value:
                return value
    return None


def _license(meta: dict[str, Any]) -> str:
    value = meta.get("license")
    return value.strip().lower() if isinstance(value, str) and value.strip() else DEFAULT_LICENSE


def _metric_results(metrics: Any, recipe: str | None, region: str) -> list[EvalResult]:
    """``model-index`` entries of one region's reported metrics (finite numbers only)."""
    if not isinstance(metrics, dict):
        return []
    dataset = recipe or "unknown"
    out = []
    for name, value in metrics.items():
        if not (isinstance(name, str) and REPORTED_METRIC.match(name)):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            continue
        base, _, k = name.partition("@")
        out.append(EvalResult(task_type=TASK_TYPE, task_name=TASK_NAME, dataset_type=dataset,
                              dataset_name=f"{dataset} ({region})", dataset_config=region,
                              dataset_split="test", metric_type=name,
                              metric_name=METRIC_NAMES[base] + (f"@{k}" if k else ""),
                              metric_value=round(float(value), 6)))
    return out


def _card_data(meta: dict[str, Any], tags: list[str], model_name: str,
               results: list[EvalResult], **fields: Any) -> ModelCardData:
    recipe = _recipe(meta)
    datasets = [recipe] if recipe and HUB_DATASET_ID.match(recipe) else None
    return ModelCardData(library_name="regiontune", license=_license(meta), tags=tags,
                         datasets=datasets, model_name=model_name if results else None,
                         eval_results=results or None, **fields)


def _fmt(value: Any) -> str:
    """One table cell: floats to 4 decimals, ints with separators, pipes escaped."""
    if isinstance(value, bool) or value is None:
        text = str(value)
    elif isinstance(value, float):
        text = f"{value:.4f}"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _size(n_bytes: Any) -> str:
    if not isinstance(n_bytes, (int, float)) or isinstance(n_bytes, bool):
        return _fmt(n_bytes)
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # unreachable; keeps type checkers happy


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] = ("", "")) -> str:
    """A two-column markdown table of the rows whose value is known."""
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    lines += [f"| {key} | {_fmt(value)} |" for key, value in rows if value not in (None, "")]
    return "\n".join(lines) + "\n"


def _metrics_table(metrics: Any, protocol: Any) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return "No evaluation recorded.\n"
    lead = f"Protocol: {_fmt(protocol)}.\n\n" if protocol else ""
    return lead + _table([(name, value) for name, value in metrics.items()], ("Metric", "Value"))


def _card(data: ModelCardData, text: str) -> ModelCard:
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{CARD_MARKER}\n{text}")


def adapter_card(meta: dict[str, Any]) -> ModelCard:
    """The card of a region adapter, from its ``region.json``."""
    meta = public(meta)
    region = str(meta.get("region") or "unknown")
    method = str(meta.get("method") or "adapter")
    tags = ["recommendation", "region-adapter", method, "regiontune"]
    machine = {"kind": "adapter", "region": region, "method": method,
               "backbone_fingerprint": meta.get("backbone_fingerprint")}
    repo = meta.get("backbone_repo")
    data = _card_data(meta, tags, f"regiontune {method} adapter ({region})",
                      _metric_results(meta.get("metrics"), _recipe(meta), region),
                      base_model=repo if isinstance(repo, str) and HUB_DATASET_ID.match(repo)
                      else None,
                      regiontune={k: v for k, v in machine.items() if v is not None})
    catalogue, new_items = meta.get("catalogue"), meta.get("new_items")
    items = f"{len(catalogue):,} items" if isinstance(catalogue, (list, dict)) else None
    if items and isinstance(new_items, (list, dict)):
        items += f" ({len(new_items):,} unknown to the backbone)"
    backbone = meta.get("backbone_repo") or "a regiontune backbone"
    seconds = meta.get("train_seconds")
    facts = [
        ("Region", f"`{region}`"), ("Method", f"`{method}`"), ("Data set", _recipe(meta)),
        ("Backbone", f"{backbone} (fingerprint `{meta.get('backbone_fingerprint', '?')}`)"),
        ("Trainable parameters", meta.get("trainable_params")),
        ("Adapter file size", _size(meta["adapter_bytes"]) if "adapter_bytes" in meta else None),
        ("Weights dtype", meta.get("weights_dtype")),
        ("Item-side rank", meta.get("item_rank")),
        ("Region catalogue", items),
        ("Item-item part", _item_item(meta)),
        ("Training time", f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else seconds),
    ]
    kind = f"A `{method}` adapter" if meta.get("method") else "An adapter"
    text = (f"# regiontune adapter: region `{region}`\n\n"
            f"{kind} that specialises a frozen regiontune recommendation backbone "
            f"to region **{region}**.\n\n{_table(facts)}\n## Evaluation\n\n"
            f"{_metrics_table(meta.get('metrics'), meta.get('protocol'))}\n"
            + _provenance(meta) + _ADAPTER_USAGE.format(dir="ADAPTER_DIR", region=region))
    if meta.get("peft_loadable"):
        text += _PEFT_USAGE.format(method=method, dir="ADAPTER_DIR")
    return _card(data, text)


def _item_item(meta: dict[str, Any]) -> str | None:
    """The item-item part in words: neighbours, blend weight, and what EASE was fitted on."""
    k, weight = meta.get("neighbours"), meta.get("item_item_weight")
    if not isinstance(k, int) or not k or not isinstance(weight, (int, float)):
        return None
    text = f"{k} EASE neighbours an item, blend weight {weight:.3g}"
    pool = meta.get("item_item_pool")
    if isinstance(pool, dict) and pool.get("histories"):
        text += (f"; fitted with {pool['histories']:,} histories of the backbone's other "
                 f"regions at weight {_fmt(pool.get('weight'))}")
    elif isinstance(pool, dict) and pool.get("unavailable"):
        text += "; fitted on the region's own histories (the backbone's data was not there)"
    return text


def _provenance(meta: dict[str, Any]) -> str:
    """Where the adapter came from, when it was not trained from nothing: the parent it was
    refreshed from (``lineage``) or the regions it was merged from (``merged_from``)."""
    out = ""
    lineage = meta.get("lineage")
    if isinstance(lineage, dict) and isinstance(lineage.get("parent"), dict):
        parent, period = lineage["parent"], lineage.get("data_period") or {}
        before, after = lineage.get("metrics_before") or {}, lineage.get("metrics_after") or {}
        rows = [("Refreshed from", f"`{parent.get('name', '?')}` (region "
                 f"`{parent.get('region', '?')}`, trained {parent.get('trained_at', '?')}, "
                 f"weights sha256 `{str(parent.get('weights_sha256', '?'))[:16]}`)"),
                ("Generation", lineage.get("generation")),
                ("New data", f"{lineage.get('interactions', '?')} interactions"
                 + (f", {period.get('start')} to {period.get('end')}" if period else "")),
                ("Items", f"{lineage.get('kept_items', '?')} kept, "
                 f"{lineage.get('new_items', '?')} new"),
                ("NDCG@10 on the new data", f"{_fmt(before.get('ndcg@10'))} before, "
                 f"{_fmt(after.get('ndcg@10'))} after")]
        context = lineage.get("context")
        if isinstance(context, dict):
            rows.append(("Context", f"{context.get('items', '?')} earlier items of "
                         f"{context.get('users', '?')} users read ahead of the new data"))
        share = lineage.get("new_share")
        if isinstance(share, (int, float)) and not isinstance(share, bool):
            rows.append(("New data's share", f"{share:.0%} of all data so far"))
        out += "## Lineage\n\n" + _table(rows) + "\n"
    grown = meta.get("grown")
    if isinstance(grown, list) and grown:
        rows = [(str(g.get("at", "?")), f"{len(g.get('items') or [])} item(s), "
                 f"{g.get('cooccurrences', 0)} co-occurrence(s)")
                for g in grown if isinstance(g, dict)]
        out += ("## Catalogue growth\n\nItems added after training, without retraining "
                "(rows from co-occurring items or the mean item):\n\n"
                + _table(rows, ("When", "Added")) + "\n")
    merged = meta.get("merged_from")
    if isinstance(merged, list) and merged:
        rows = [(f"`{m.get('region', '?')}`", f"{_fmt(m.get('weight'))} (`{m.get('path', '?')}`,"
                 f" {m.get('method', '?')})") for m in merged if isinstance(m, dict)]
        out += ("## Merged from\n\nBuilt without this region's data, as a weighted combination "
                "of other regions' adapters:\n\n" + _table(rows, ("Region", "Weight")) + "\n")
    return out


def _region_metrics(metrics: Any) -> str:
    """``{region: {metric: value}}`` as one table, a row per region."""
    if not isinstance(metrics, dict) or not metrics:
        return "No evaluation recorded.\n"
    rows = {region: values for region, values in metrics.items() if isinstance(values, dict)}
    if not rows:
        return _table(list(metrics.items()), ("Metric", "Value"))
    names = list(dict.fromkeys(name for values in rows.values() for name in values))
    lines = ["| Region | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for region, values in rows.items():
        cells = [_fmt(values[name]) if name in values else "" for name in names]
        lines.append(f"| {_fmt(region)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _flat(section: Any) -> list[tuple[str, Any]]:
    """Scalar entries of a dict (nested dicts and long lists would not fit a table cell)."""
    if not isinstance(section, dict):
        return []
    return [(str(k), v) for k, v in section.items()
            if not isinstance(v, dict) and not (isinstance(v, (list, tuple)) and len(v) > 20)]


def backbone_card(meta: dict[str, Any]) -> ModelCard:
    """The card of a backbone, from its ``regiontune.json``."""
    meta = public(meta)
    regions = meta.get("regions") or []
    regions = [str(r) for r in regions] if isinstance(regions, (list, tuple)) else [str(regions)]
    tags = ["recommendation", "regiontune", "backbone"]
    metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    results = [result for region, values in metrics.items()
               for result in _metric_results(values, _recipe(meta), str(region))]
    data = _card_data(meta, tags, "regiontune backbone", results,
                      regiontune={"kind": "backbone", "fingerprint": meta.get("fingerprint"),
                                  "regions": regions})
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    model_cfg = config.get("model", config)
    text = (f"# regiontune backbone\n\nA sequential recommendation transformer pretrained on "
            f"{', '.join(f'`{r}`' for r in regions) or 'unknown regions'}; it stays frozen while "
            "small per-region adapters specialise it.\n\n"
            + _table([("Fingerprint", f"`{meta.get('fingerprint', '?')}`"),
                      ("Pretraining regions", ", ".join(regions) or None),
                      ("Items", meta.get("n_items"))] + _flat(meta.get("data")))
            + "\n## Model\n\n" + _table(_flat(model_cfg), ("Setting", "Value"))
            + ("\n## Data statistics\n\n" + _table(_flat(meta.get("stats")), ("Statistic", "Value"))
               if _flat(meta.get("stats")) else "")
            + "\n## Evaluation\n\n" + _region_metrics(meta.get("metrics")) + "\n"
            + _BACKBONE_USAGE.format(dir="BACKBONE_DIR"))
    return _card(data, text)


def write_card(directory: str | Path, meta: dict[str, Any], kind: str) -> Path:
    """Write ``README.md`` (the model card) of a ``kind`` ("adapter" or "backbone") directory."""
    if kind not in ("adapter", "backbone"):
        raise ValueError(f"unknown artefact kind {kind!r}: expected 'adapter' or 'backbone'")
    card = adapter_card(meta) if kind == "adapter" else backbone_card(meta)
    path = Path(directory) / "README.md"
    tmp = path.with_name(f".README.md.tmp-{os.getpid()}")
    card.save(tmp)
    os.replace(tmp, path)  # a reader never sees a half-written card
    return path
