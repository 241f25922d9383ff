"""Refresh with context (``AdaptConfig.refresh_context``, ``adapt --init-from ...
--refresh-context``): a refresh trains on the new data's interactions, each user's earlier
items read ahead of them as context (with ``AdaptConfig.refresh_context_loss``, off by
default, trained on too).

At serving (and in ``benchmarks/refresh.py``'s next-period evaluation) the model reads a
user's whole history; a refresh trained on the new period alone never sees a history that
starts before it. With context, every training sequence is the user's earlier items followed
by the new ones, and the loss is taken only where the target is a new item
(``model/batching.py: ContextSequence``): about the same number of targets per epoch as
without, so the cost per epoch grows only with the longer inputs (capped at the model's
``max_len``). The refresh's early-stopping hold-out (and the test cases ``adapt`` reports)
read the same context ahead of their histories, as serving does. With
``refresh_context_loss`` (off by default) the earlier items in the window are targets too:
plain sequences, the same tokens read (a tie on the refreshes' hold-out over both refresh
protocols: ``benchmarks/results/refresh_shrink_choice.md``).

* Source: the histories of the data the parent adapter was trained on and, through its
  lineage, those of every ancestor (oldest first), each reloaded from the data configuration
  its region.json records (``training/replay.py: reload_parent_data``); whole histories
  (training items and the held-out ones), every user of the data (not the parent's
  ``--fraction`` only: serving reads every user's history). Files or ancestors that are
  gone are an error, never a silent skip; a merged adapter (``regiontune merge``: no data of
  its own region) adds nothing.
* Ordered data: the context is time-ordered and precedes the new items; only its last
  ``max_len`` items can reach the model (the rest is cut, as serving cuts long histories).
* Order-free data (sets): the context and the new items are each shuffled apart at every
  epoch (the context first); the targets are the new items only.
* A user of the new data without earlier items trains as without context; earlier users
  absent from the new data contribute nothing (their histories are context, never targets).
* The item-item part (``adapters/item_item.py``) is fitted on the earlier items and the new
  ones together (:func:`context_histories`): on the ml-100k chain that beat the new data
  alone on the refreshes' hold-out in every period (``benchmarks/results/refresh_parts.md``,
  ``all`` against ``new``).
"""

from __future__ import annotations

from dataclasses import replace

from regiontune.adapters.folder import AdapterFolder
from regiontune.data.loading import DataError
from regiontune.data.splits import EvalCase, RegionData
from regiontune.model.batching import ContextSequence
from regiontune.model.vocab import ItemVocab
from regiontune.training.replay import reload_parent_data

CONTEXT_HINT = ("pass --no-refresh-context (set adapt.refresh_context false) or put the "
                "parent's data back where it was")
MAX_GENERATIONS = 100  # a lineage longer than this is a loop, not a history


def full_histories(data: RegionData) -> dict[str, list[str]]:
    """Every user's whole history in ``data``: training items, then the validation and test
    targets (leave-last-out: exactly the time-ordered history; sets: the same items)."""
    out = {u: list(h) for u, h in data.train.items()}
    for case in [*data.valid, *data.test]:
        out.setdefault(case.user, []).append(case.target)
    return out


def lineage_folders(parent: AdapterFolder) -> list[AdapterFolder]:
    """The parent and its ancestors (metadata only), oldest first, followed through each
    region.json's ``lineage.parent.path`` (relative to the adapter that records it)."""
    chain = [parent]
    seen = {parent.path.resolve()}
    while (entry := (chain[-1].meta.get("lineage") or {}).get("parent")):
        path = (chain[-1].path / entry["path"]).resolve()
        if path in seen or len(chain) >= MAX_GENERATIONS:
            raise DataError(f"the lineage of {parent.path} loops or runs past "
                            f"{MAX_GENERATIONS} generations at {path}: {CONTEXT_HINT}")
        if not path.is_dir():
            raise DataError(f"the ancestor adapter {entry.get('name', path)} of {parent.path} "
                            f"is gone (expected at {path}): its data is part of the users' "
                            f"earlier items; {CONTEXT_HINT}")
        seen.add(path)
        chain.append(AdapterFolder.read(path))
    return chain[::-1]


def parent_context(parent: AdapterFolder) -> dict[str, list[str]]:
    """Each user's earlier items: the whole histories of the data the parent and its
    ancestors were trained on, oldest first (module docstring); a clear error when any of it
    is gone."""
    context: dict[str, list[str]] = {}
    for folder in lineage_folders(parent):
        if never_trained(folder):  # a merge of other regions' adapters: no user of its own
            continue
        data = reload_parent_data(folder, CONTEXT_HINT)
        for user, items in full_histories(data).items():
            context.setdefault(user, []).extend(items)
    return context


def never_trained(folder: AdapterFolder) -> bool:
    """An adapter built without data of its region (``regiontune merge``: other regions'
    adapters combined, no data configuration recorded): it adds no earlier items, so the first
    refresh of a merged adapter trains on its new data alone, without error."""
    return bool(folder.meta.get("merged_from")) and not (folder.meta.get("config") or {}).get(
        "data")


def context_cases(cases: list[EvalCase], context: dict[str, list[str]]) -> list[EvalCase]:
    """The cases with each user's earlier items ahead of the history, as serving reads it --
    never the case's own target (data that overlaps the parent's would otherwise show it)."""
    return [replace(c, history=[*(i for i in context[c.user] if i != c.target), *c.history])
            if context.get(c.user) else c for c in cases]


def context_histories(data: RegionData, context: dict[str, list[str]]
                      ) -> dict[str, list[str]]:
    """Every user's earlier items followed by their new training items: the data a refresh's
    item-item part is fitted on (all periods so far, as a retrained adapter's is). A user's
    held-out targets (hold-out and test cases of ``data``) are left out of their earlier
    items, so the part's weight, chosen on the hold-out, never sees its answer."""
    held = {}
    for case in [*data.valid, *data.test]:
        held.setdefault(case.user, set()).add(case.target)
    out = {}
    for user in [*context, *(u for u in data.train if u not in context)]:
        earlier = [i for i in context.get(user, ()) if i not in held.get(user, ())]
        items = [*earlier, *data.train.get(user, ())]
        if items:
            out[user] = items
    return out


def context_sequences(vocab: ItemVocab, train: dict[str, list[str]],
                      context: dict[str, list[str]], max_len: int, ordered: bool,
                      targets: bool = False) -> list[list[int]]:
    """Training sequences: each user's context tokens then the new ones
    (:class:`ContextSequence`); only sequences with a target (a new item that has an input
    before it). Ordered data keep only the context a ``max_len`` window can reach.
    ``targets`` (``AdaptConfig.refresh_context_loss``): the context items are targets too
    (plain sequences): the same tokens read, more of them trained on."""
    out: list[list[int]] = []
    for user, items in train.items():
        tokens = vocab.encode(items)
        before = vocab.encode(context.get(user, ()))
        if ordered:
            room = max(0, max_len + 1 - len(tokens))
            before = before[len(before) - room:] if room else []
        if not tokens or len(before) + len(tokens) < 2:
            continue
        out.append(ContextSequence(before + tokens, len(before))
                   if before and not targets else before + tokens)
    return out


def context_record(context: dict[str, list[str]], train: dict[str, list[str]]) -> dict:
    """What the metadata records: users of the new data with earlier items, and those items."""
    users = [u for u in train if context.get(u)]
    return {"users": len(users), "items": sum(len(context[u]) for u in users)}
