"""The mixed-region forward: rows of many regions, each embedded with its own item side and
routed to its own adapter, in as few transformer passes as the adapters allow; then one
top-k over every row's own catalogue."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from regiontune.model.batching import read_users
from regiontune.serving.entries import ItemBatch, RegionEntry, SharedBody
from regiontune.serving.item_item import add_item_item_scores


def plan_groups(entries: list[RegionEntry]) -> list[tuple[SharedBody | RegionEntry, list[int]]]:
    """Rows per forward pass: one per shared body, one per own-body region.

    Un-adapted rows ride along in a shared body as ``__base__`` when there is one.
    """
    groups: dict[Any, list[int]] = defaultdict(list)
    base_rows = []
    for row, entry in enumerate(entries):
        if entry.shared is not None:
            groups[entry.shared].append(row)
        elif not entry.adapted:
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
                 causal: bool, ordered: bool, orders: int = 1, items: ItemBatch | None = None
                 ) -> tuple[torch.Tensor, int]:
    """User vectors ``[rows, hidden]`` and the number of transformer passes.

    Each row is embedded with its own region's item side (only the tokens it holds), then
    routed to its own adapter. Causal rows without any known item have nothing to encode:
    their vector is zero, so they are ranked by the region's item bias (popularity).
    ``items``: the :class:`ItemBatch` of ``entries`` when the caller has built it already.
    Unordered histories are read as evaluation reads them (``core.batching.read_users``:
    averaged over ``orders`` orders of the set), so served and evaluated scores agree.
    """
    live = [i for i, t in enumerate(tokens) if t or not causal]
    if live and items is None:
        items = ItemBatch(entries)
    hidden = entries[0].hidden if entries else 0
    users = torch.zeros(len(entries), hidden)
    passes = 0
    for group, rows in plan_groups([entries[i] for i in live]):
        rows = [live[r] for r in rows]
        reads = []

        def encode(ids: torch.Tensor, mask: torch.Tensor, rows=rows, group=group,
                   reads=reads) -> torch.Tensor:
            reads.append(1)
            embeds = items.embed(torch.tensor(rows), ids)
            if isinstance(group, SharedBody):
                out = group.encode(embeds, mask, [entries[r].name for r in rows])
            else:
                out = group.body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, -1]
            return out

        out = read_users(encode, [tokens[r] for r in rows], max_len, causal, ordered, orders)
        users[rows] = out.float()
        passes += len(reads)
    return users, passes


def top_k(entries: list[RegionEntry], users: torch.Tensor, histories: list[list[str]],
          k: int | Sequence[int], exclude_seen: bool | Sequence[bool],
          items: ItemBatch | None = None) -> list[tuple[list[str], list[float]]]:
    """Best ``k`` items of each row's own catalogue (seen items excluded when asked).

    ``k`` and ``exclude_seen`` are one value for every row or one per row (a gathered batch of
    calls: :mod:`regiontune.serving.batching`); rows are ranked to the largest ``k`` and cut.

    Scores of all rows go into one ``-inf``-padded matrix (:meth:`ItemBatch.scores`), so
    scoring, masking and ``topk`` run once per batch rather than once per region.
    """
    items = items if items is not None else ItemBatch(entries)
    width = items.width
    scores = items.scores(users)
    add_item_item_scores(scores, entries, histories)  # regions with an item-item part
    rows_k = [k] * len(entries) if isinstance(k, int) else list(k)
    exclude = ([exclude_seen] * len(entries) if isinstance(exclude_seen, bool)
               else list(exclude_seen))
    if any(exclude):
        seen = [(row, entry.vocab.index[i]) for row, (entry, history, flag)
                in enumerate(zip(entries, histories, exclude, strict=True)) if flag
                for i in history if i in entry.vocab.index]
        if seen:
            rows, cols = zip(*seen, strict=True)
            scores[list(rows), list(cols)] = float("-inf")
    values, index = scores.topk(min(max(rows_k, default=1), width), dim=1)
    out = []
    for entry, kk, vals, idx in zip(entries, rows_k, values.tolist(), index.tolist(),
                                    strict=True):
        keep = [(entry.vocab.items[i], v) for i, v in zip(idx[:kk], vals[:kk], strict=True)
                if v != float("-inf")]
        out.append(([i for i, _ in keep], [v for _, v in keep]))
    return out
