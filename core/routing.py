"""Serving internals: loaded region entries, shared adapter bodies, the mixed-region forward.

A *shared body* is one copy of the backbone's module tree (sharing every weight tensor with
the backbone) that holds the adapters of many regions: PEFT LoRA (AdaLoRA adapters join it
through their ``lora_export/`` LoRA copy) or our bottleneck model. Rows of different regions
go through it in one forward pass, routed with ``adapter_names=[...]``. IA3 and full
fine-tuning cannot route rows, so each such region gets its own body and its own sub-batch.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from regiontune.adapters import ItemSide, get_method
from regiontune.adapters.io import CONFIG, LORA_EXPORT, WEIGHTS
from regiontune.core.artifacts import (
    ADAPTER_META,
    ArtifactError,
    BackboneMismatchError,
    load_safetensors,
    read_json,
    refuse_pickles,
)
from regiontune.core.batching import inference_batch
from regiontune.core.model import N_SPECIAL, RecModel
from regiontune.core.vocab import ItemVocab

BASE = "__base__"  # PEFT's name for rows that take no adapter (our bottleneck skips it too)
SHARED_METHODS = ("lora", "bottleneck")  # methods whose rows mix in one forward pass
_VERSIONS = itertools.count(1)


def shared_clone(backbone: RecModel) -> RecModel:
    """A new module tree over the *same* weight tensors: PEFT can wrap its layers in place
    without touching the backbone, and no weight is copied."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(backbone.parameters(),
                                                              backbone.buffers())}
    return copy.deepcopy(backbone, memo)


def internal_name(region: str) -> str:
    """A unique adapter name per load (module keys may not hold '.'; never ``__base__``)."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', region)}_v{next(_VERSIONS)}"


def freeze(module: nn.Module) -> nn.Module:
    """Inference only: eval mode (no dropout) and nothing trainable."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class SharedBody:
    """One body holding many adapters of one routable method.

    PEFT registers per-call hooks on the shared layers and ``add_adapter``/``delete_adapter``
    mutate them, so forward passes and mutations of one body are serialised by ``lock``.
    """

    def __init__(self, method: str, backbone: RecModel) -> None:
        self.method, self.backbone = method, backbone
        self.lock = threading.Lock()
        self.module: nn.Module | None = None
        self.names: set[str] = set()

    def add(self, name: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Add adapter ``name``; on failure the body is left as it was."""
        method = get_method(self.method)
        with self.lock, torch.no_grad():
            base = self.backbone if self.module is not None else shared_clone(self.backbone)
            try:
                module = method.load(base, config, tensors, name, self.module)
            except BaseException:
                if self.module is not None:
                    self._delete(name)
                raise
            self.module = freeze(module)
            self.names.add(name)

    def remove(self, name: str) -> None:
        """Delete adapter ``name`` (only once no request can still route to it)."""
        with self.lock:
            if name not in self.names:
                return
            self.names.discard(name)
            if not self.names:  # the last one: drop the whole tree (PEFT wants >= 1 adapter)
                self.module = None
            else:
                self._delete(name)

    def _delete(self, name: str) -> None:
        if self.method == "bottleneck":
            for _, layer in self.module.layers():
                if name in layer.bottleneck:
                    del layer.bottleneck[name]
            self.module.configs.pop(name, None)
        elif name in self.module.peft_config:
            self.module.delete_adapter(name)

    def base(self) -> RecModel:
        return get_method(self.method).base_of(self.module)

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor, names: list[str]) -> torch.Tensor:
        with self.lock:
            return self.module(inputs_embeds=embeds, attention_mask=mask,
                               adapter_names=names).last_hidden_state[:, -1]


@dataclass(eq=False)  # identity semantics: entries are keys of the in-flight counts
class RegionEntry:
    """One loaded region (immutable once published): its body route and cached item table."""

    region: str
    method: str  # as trained
    served_as: str  # lora / bottleneck / ia3 / full / adalora / backbone
    path: str
    name: str  # internal adapter name, BASE for the un-adapted backbone
    vocab: ItemVocab  # the region's token space (its catalogue)
    embed: torch.Tensor  # [N_SPECIAL + n, hidden]: PAD, MASK, then the output table
    bias: torch.Tensor  # [n]
    shared: SharedBody | None = None
    body: nn.Module | None = None  # own body when not shared
    meta: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    fingerprint_ok: bool = True

    @property
    def table(self) -> torch.Tensor:
        """The output table ``[n, hidden]`` (tied: a view of the input embeddings, no copy)."""
        return self.embed[N_SPECIAL:]

    @property
    def adapted(self) -> bool:
        return self.served_as != "backbone"

    def release(self) -> None:
        """Free the adapter in its shared body (own bodies go with the last reference)."""
        if self.shared is not None:
            self.shared.remove(self.name)

    def info(self) -> dict[str, Any]:
        return {"region": self.region, "method": self.method, "served_as": self.served_as,
                "path": self.path, "fingerprint_ok": self.fingerprint_ok,
                "n_items": len(self.vocab), "new_items": self.meta.get("n_new_items", 0),
                "internal_name": self.name,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.loaded_at))}


@torch.inference_mode()
def _tables(base: RecModel, item_side: ItemSide | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings (specials + region table) and item bias, computed once per load."""
    table, bias = base.item_table()
    if item_side is None:  # the backbone's own table: share it rather than copy it
        return base.item_emb.weight.detach(), bias.detach()
    table, bias = item_side.table(table, bias)
    return torch.cat([base.item_emb.weight[:N_SPECIAL], table]), bias


def backbone_entry(backbone: RecModel, vocab: ItemVocab, path: str = "") -> RegionEntry:
    """Entry serving the un-adapted backbone over its whole vocabulary."""
    embed, bias = _tables(backbone, None)
    return RegionEntry("", "backbone", "backbone", path, BASE, vocab, embed, bias, body=backbone)


def read_region_files(directory: Path, backbone_fp: str
                      ) -> tuple[dict, str, dict, dict[str, torch.Tensor]]:
    """(region meta, method to serve as, adapter config, tensors); fingerprint checked first.

    AdaLoRA adapters are served as their exported plain LoRA when they ship one.
    """
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such adapter directory")
    refuse_pickles(directory)
    meta = read_json(directory / ADAPTER_META, "region metadata (region.json)")
    recorded = meta.get("backbone_fingerprint")
    if recorded != backbone_fp:
        raise BackboneMismatchError(str(recorded), backbone_fp, str(directory))
    method = str(meta.get("method", "?"))
    get_method(method)  # unknown method: a clear error before reading weights
    source, served = directory, method
    if method == "adalora" and (directory / LORA_EXPORT / CONFIG).is_file():
        source, served = directory / LORA_EXPORT, "lora"
    config = read_json(source / CONFIG, "adapter config")
    return meta, served, config, load_safetensors(source / WEIGHTS)


def build_entry(region: str, directory: Path, backbone: RecModel, vocab: ItemVocab,
                backbone_fp: str, shared: dict[str, SharedBody]) -> RegionEntry:
    """Load an adapter directory into a new entry (shared bodies get a new adapter)."""
    meta, served, config, tensors = read_region_files(directory, backbone_fp)
    item_side = ItemSide(meta["catalogue"], vocab, backbone.config.hidden_size,
                         int(meta.get("item_rank", 0)), bool(meta.get("item_bias", True)))
    item_side.load(tensors)
    name = internal_name(region)
    method = get_method(served)
    if served in shared:
        body = shared[served]
        body.add(name, config, tensors)
        try:
            base = body.base()
            embed, bias = _tables(base, item_side)
        except BaseException:
            body.remove(name)
            raise
        own = None
    else:
        with torch.no_grad():
            start = backbone if served == "full" else shared_clone(backbone)
            own = freeze(method.load(start, config, tensors, name, None))
        embed, bias = _tables(method.base_of(own), item_side)
    # the catalogue lives in the vocabulary: do not keep a second copy in the metadata
    small_meta = {k: v for k, v in meta.items() if k not in ("catalogue", "new_items")}
    small_meta["n_new_items"] = len(meta.get("new_items") or [])
    return RegionEntry(region, meta["method"], served, str(directory), name,
                       ItemVocab(item_side.catalogue), embed, bias,
                       shared=body if own is None else None, body=own, meta=small_meta,
                       fingerprint_ok=meta.get("backbone_fingerprint") == backbone_fp)


# ---------------------------------------------------------------- the mixed-region forward

def plan_groups(entries: list[RegionEntry]) -> list[tuple[SharedBody | RegionEntry, list[int]]]:
    """Rows per forward pass: one per shared body, one per own-body region.

    Un-adapted rows ride along in a shared body as ``__base__`` when there is one.
    """
    groups: dict[Any, list[int]] = defaultdict(list)
    base_rows = []
    for row, entry in enumerate(entries):
        if entry.shared is not None:
            groups[entry.shared].append(row)
        elif entry.served_as == "backbone":
            base_rows.append(row)
        else:
            groups[entry].append(row)
    if base_rows:
        host = next((g for g in groups if isinstance(g, SharedBody)), None)
        if host is None:
            groups[entries[base_rows[0]]] = base_rows
        else:
            groups[host] = sorted(groups[host] + base_rows)
    return list(groups.items())


def user_vectors(entries: list[RegionEntry], tokens: list[list[int]], max_len: int,
                 causal: bool, ordered: bool) -> tuple[torch.Tensor, int]:
    """User vectors ``[rows, hidden]`` and the number of transformer forward passes run.

    Each row is embedded with its own region's table, then routed to its own adapter.
    Causal rows without any known item have nothing to encode: their vector is zero, so
    they are ranked by the region's item bias (popularity).
    """
    hidden = entries[0].table.shape[1] if entries else 0
    users = torch.zeros(len(entries), hidden)
    passes = 0
    live = [i for i, t in enumerate(tokens) if t or not causal]
    for group, rows in plan_groups([entries[i] for i in live]):
        rows = [live[r] for r in rows]
        ids, mask = inference_batch([tokens[r] for r in rows], max_len, causal, ordered)
        embeds = torch.empty(*ids.shape, hidden)
        by_entry: dict[RegionEntry, list[int]] = defaultdict(list)
        for pos, r in enumerate(rows):
            by_entry[entries[r]].append(pos)
        for entry, pos in by_entry.items():
            embeds[pos] = F.embedding(ids[pos], entry.embed)
        if isinstance(group, SharedBody):
            out = group.encode(embeds, mask, [entries[r].name for r in rows])
        else:
            out = group.body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, -1]
        users[rows] = out.float()
        passes += 1
    return users, passes


def top_k(entry: RegionEntry, users: torch.Tensor, histories: list[list[str]], k: int,
          exclude_seen: bool) -> list[tuple[list[str], list[float]]]:
    """Best ``k`` catalogue items per row (seen items excluded when asked)."""
    scores = users @ entry.table.T + entry.bias
    if exclude_seen:
        for row, history in enumerate(histories):
            cols = entry.vocab.columns(history)
            scores[row, cols[cols >= 0]] = float("-inf")
    values, index = scores.topk(min(k, scores.shape[1]), dim=1)
    out = []
    for vals, idx in zip(values.tolist(), index.tolist(), strict=True):
        keep = [(entry.vocab.items[i], v) for i, v in zip(idx, vals, strict=True)
                if v != float("-inf")]
        out.append(([i for i, _ in keep], [v for _, v in keep]))
    return out
