"""A recommender serving many regions: one frozen backbone in memory, one adapter per region.

Requests of several regions are grouped so that one transformer forward pass serves all rows
whose adapters can be routed per row (LoRA, AdaLoRA via its LoRA export, bottleneck); IA3 and
full fine-tuning get one pass per region. Item tables stay low-rank: no region's dense item
table is cached; scores and input embeddings are computed from the backbone's table and each
region's factors per batch (:class:`~regiontune.serving.entries.ItemBatch`). Adapters are
loaded, replaced and unloaded while requests are served:

* the served state is an immutable snapshot ``{region: entry}``; a load builds the new entry
  (reads files, adds a uniquely named adapter to a shared body) and then swaps the snapshot
  under a short lock, so a request sees the old adapter or the new one;
* a request counts itself on the entries it uses; a replaced or unloaded adapter is deleted
  from its shared body only once no request uses it any more;
* a failed load raises :class:`AdapterLoadError` and leaves the serving adapter in place;
* files are read (and hub ids downloaded, within ``hub_deadline_s``) outside the load lock:
  only the swap takes it, so a slow download never holds up other loads or unloads.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import re
import shutil
import tempfile
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import torch

from regiontune.artifacts import ADAPTER_META, ArtifactError, read_json
from regiontune.model.backbone import load_backbone
from regiontune.model.batching import read_users
from regiontune.model.recmodel import RecModel
from regiontune.model.vocab import ItemVocab
from regiontune.serving.entries import (
    ItemBatch,
    RegionEntry,
    SharedBody,
    backbone_entry,
    build_entry,
)

logger = logging.getLogger(__name__)
REGION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_.-]+)?")
UNKNOWN_REGION_MODES = ("backbone", "error")
MAX_WARNED_REGIONS = 1000  # unknown regions named in a warning (then: silence, not a leak)
HUB_WORKERS = 2  # concurrent hub downloads; more wait (within their deadline)


class ServingError(Exception):
    """Base class of the errors a recommender raises on a bad call."""


class InvalidRequestError(ServingError, ValueError):
    """A malformed request (bad region name, k, lengths)."""


class UnknownRegionError(ServingError, LookupError):
    """No adapter is loaded for the region and the recommender refuses to guess."""


class AdapterLoadError(ServingError, ArtifactError):
    """An adapter could not be loaded; whatever served the region before still does."""


def check_region(region: Any) -> str:
    """A region name: letters, digits, ``_``, ``-``, ``.``; no ``..`` (names reach paths)."""
    if not isinstance(region, str) or not REGION_NAME.fullmatch(region) or ".." in region \
            or region.strip(".") == "":
        raise InvalidRequestError(f"invalid region name {region!r}: use 1-64 letters, digits, "
                                  "'_', '-' or '.', without '..'")
    return region


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to call
        return None


def trim_heap() -> None:
    """Hand freed heap pages back to the OS after a load or unload (glibc's ``malloc_trim``;
    a no-op elsewhere). Loads free memory: the adapter replaced, the file's tensors, the old
    copy of a grown adapter bank; glibc keeps most of it resident otherwise (measured with
    100 LoRA adapters: ~0.6x the adapter file size per adapter). ~0.5 ms."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Recommender:
    """One backbone plus region adapters; thread safe; see the module docstring."""

    def __init__(self, backbone: RecModel, vocab: ItemVocab, meta: dict[str, Any],
                 backbone_dir: str | Path | None = None, unknown_region: str = "backbone",
                 cache_dir: str | Path | None = None, hub_deadline_s: float = 120.0) -> None:
        if unknown_region not in UNKNOWN_REGION_MODES:
            raise ValueError(f"unknown_region={unknown_region!r}: use one of "
                             f"{UNKNOWN_REGION_MODES}")
        if not hub_deadline_s > 0:
            raise ValueError(f"hub_deadline_s must be positive, not {hub_deadline_s!r}")
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.backbone, self.vocab, self.meta = backbone.eval(), vocab, meta
        self.fingerprint = str(meta["fingerprint"])
        self.backbone_dir = Path(backbone_dir) if backbone_dir is not None else None
        self.unknown_region = unknown_region
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._own_cache: Path | None = None  # made here (temporary): removed by close()
        self.hub_deadline_s = hub_deadline_s
        self._hub_pool: ThreadPoolExecutor | None = None
        self._warned: set[str] = set()
        cfg = backbone.config
        self._shape = (cfg.max_len, cfg.causal, cfg.ordered, cfg.set_orders)
        self._base = backbone_entry(backbone, vocab, str(backbone_dir or ""))
        self._shared = {m: SharedBody(m, backbone) for m in ("lora", "bottleneck")}
        self._snapshot: dict[str, Any] = {}
        self._state_lock = threading.Lock()  # snapshot swaps and in-flight counts
        self._load_lock = threading.Lock()  # one load/replace/unload at a time
        self._in_flight: Counter = Counter()
        self._retired: list = []
        self._stats: Counter = Counter()

    @classmethod
    def from_dirs(cls, backbone_dir: str | Path, adapter_dirs: Iterable[str | Path] = (),
                  unknown_region: str = "backbone", cache_dir: str | Path | None = None,
                  hub_deadline_s: float = 120.0) -> Recommender:
        """Load a backbone directory and every adapter directory (region from region.json).

        Two directories claiming one region are an :class:`AdapterLoadError` (before anything
        is loaded): one would silently replace the other.
        """
        claims: dict[str, list[Path]] = defaultdict(list)
        for directory in map(Path, adapter_dirs):
            region = read_json(directory / ADAPTER_META, "region metadata").get("region")
            if not isinstance(region, str):
                raise AdapterLoadError(f"{directory / ADAPTER_META} names no region (\"region\" "
                                       f"is {region!r}); add it, or load the adapter under a "
                                       "name of your choice")
            claims[region].append(directory)
        clashes = {r: dirs for r, dirs in claims.items() if len(dirs) > 1}
        if clashes:
            listed = "; ".join(f"{r!r}: {', '.join(map(str, dirs))}"
                               for r, dirs in sorted(clashes.items()))
            raise AdapterLoadError(f"several adapter directories claim one region ({listed}): "
                                   "keep one per region, or serve the others under names of "
                                   "their own (--adapter NAME=DIR)")
        backbone, vocab, meta = load_backbone(backbone_dir)
        rec = cls(backbone, vocab, meta, backbone_dir, unknown_region, cache_dir, hub_deadline_s)
        for region, (directory,) in claims.items():
            rec.load(region, directory)
        return rec

    # ------------------------------------------------------------ adapter management

    def load(self, region: str, path_or_hub_id: str | Path) -> dict[str, Any]:
        """Load (or replace) ``region``'s adapter from a directory or a hub id ``org/name``."""
        check_region(region)
        try:  # outside the load lock: reading, downloading, building take their time
            with self._fetched(path_or_hub_id) as (directory, hub_id):
                entry = build_entry(region, directory, self.backbone, self.vocab,
                                    self.fingerprint, self._shared)
                if hub_id:  # the download folder goes away: name the source instead
                    entry.path = str(path_or_hub_id)
        except Exception as err:  # any failure: the old adapter keeps serving
            logger.warning("loading %s for region %s failed: %s", path_or_hub_id, region, err)
            raise AdapterLoadError(f"cannot load the adapter of region {region!r} from "
                                   f"{path_or_hub_id}: {err}") from err
        if entry.meta.get("region") not in (None, region):
            logger.debug("serving %s's adapter (%s) as region %s", entry.meta.get("region"),
                         entry.path, region)
        with self._load_lock:  # the swap alone
            old = self._swap(region, entry)
        trim_heap()
        logger.info("region %s: %s adapter %s (%s)", region, "replaced" if old else "loaded",
                    entry.name, entry.served_as)
        return entry.info()

    def replace(self, region: str, path_or_hub_id: str | Path) -> dict[str, Any]:
        """Replace the adapter of a loaded region (an error if the region is not loaded)."""
        if region not in self._snapshot:
            raise UnknownRegionError(f"region {region!r} is not loaded; use load()")
        return self.load(region, path_or_hub_id)

    def unload(self, region: str) -> None:
        """Stop serving ``region``'s adapter (requests in flight finish with it)."""
        with self._load_lock:
            if region not in self._snapshot:
                raise UnknownRegionError(f"region {region!r} is not loaded")
            self._swap(region, None)
        trim_heap()
        logger.info("region %s unloaded", region)

    def _swap(self, region: str, entry) -> Any:
        with self._state_lock:
            snapshot = dict(self._snapshot)
            old = snapshot.pop(region, None)
            if entry is not None:
                snapshot[region] = entry
            self._snapshot = snapshot  # requests that started before keep the old dict
            if old is not None:
                self._retired.append(old)
        self._sweep()
        return old

    def _sweep(self) -> None:
        """Delete retired adapters that no request uses any more."""
        with self._state_lock:
            dead = [e for e in self._retired if not self._in_flight[e]]
            self._retired = [e for e in self._retired if self._in_flight[e]]
        for entry in dead:
            entry.release()

    @contextlib.contextmanager
    def _fetched(self, source: str | Path) -> Iterator[tuple[Path, bool]]:
        """(directory, pulled from the hub): a local adapter directory as it is, or a hub id
        ``org/name[@revision]`` downloaded to a fresh temporary folder, removed on exit (the
        adapter is in memory by then)."""
        path = Path(source)
        if path.exists() or isinstance(source, Path) or not HUB_ID.fullmatch(str(source)):
            yield path, False
            return
        folder = Path(tempfile.mkdtemp(prefix="pull-", dir=self._cache_root()))
        try:
            yield self._download(str(source), folder), True
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _cache_root(self) -> Path:
        if self._cache_dir is None:
            self._own_cache = Path(tempfile.mkdtemp(prefix="regiontune-serving-"))
            self._cache_dir = self._own_cache
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        return self._cache_dir

    def _download(self, source: str, folder: Path) -> Path:
        """Pull a hub id into ``folder`` in a worker thread; give up after ``hub_deadline_s``
        (the worker, bounded by the hub client's timeouts, cleans up when it ends)."""

        from regiontune.hub import client as hub  # lazily: serving from disk never needs it
        repo_id, _, revision = source.partition("@")
        out = folder / repo_id.replace("/", "--") / (revision or "main")
        with self._state_lock:
            if self._hub_pool is None:
                self._hub_pool = ThreadPoolExecutor(HUB_WORKERS, thread_name_prefix="hub-pull")
            pool = self._hub_pool
        future = pool.submit(hub.pull, repo_id, out, revision=revision or None,
                             backbone_dir=self.backbone_dir)
        try:
            return future.result(timeout=self.hub_deadline_s)
        except FutureTimeout:
            if not future.cancel():  # still running: its files go when it ends
                future.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
            raise ArtifactError(f"pulling {source} from the hub did not finish within "
                                f"{self.hub_deadline_s:g} s (hub_deadline_s): the hub is slow "
                                "or unreachable; retry later, or raise the deadline") from None
        except Exception as err:
            raise ArtifactError(f"{source} is no local directory, and pulling it as a hub id "
                                f"failed: {err}") from err

    def close(self) -> None:
        """Stop pending hub downloads and remove the temporary download folder (if this
        recommender made it). Serving from memory goes on; a later hub load starts afresh."""
        with self._state_lock:
            pool, self._hub_pool = self._hub_pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._own_cache is not None:
            shutil.rmtree(self._own_cache, ignore_errors=True)
            self._own_cache = self._cache_dir = None

    def regions(self) -> list[dict[str, Any]]:
        """One dict per loaded region: region, method, path, fingerprint_ok, n_items, ..."""
        snapshot = self._snapshot
        return [snapshot[r].info() for r in sorted(snapshot)]

    def stats(self) -> dict[str, int]:
        """Counters: requests (rows), batches, forward passes, retired adapters pending."""
        with self._state_lock:
            return {"requests": 0, "batches": 0, "forward_passes": 0, **self._stats,
                    "adapters_loaded": len(self._snapshot),
                    "retired_pending": len(self._retired)}

    # ------------------------------------------------------------ recommendation

    def recommend(self, histories: Sequence[Sequence[str]], regions: Sequence[str], k: int = 10,
                  exclude_seen: bool = True) -> list[dict[str, Any]]:
        """Top-``k`` items per row, each from its region's catalogue, in as few passes as
        possible. Rows: {region, items, scores, adapted, unknown_items}."""
        if len(histories) != len(regions):
            raise InvalidRequestError(f"{len(histories)} histories but {len(regions)} regions")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, not {k!r}")
        histories = [list(h) for h in histories]
        if any(not isinstance(i, str) for h in histories for i in h):
            raise InvalidRequestError("history items must be strings")
        entries = self._acquire(regions)
        try:
            return self._recommend(histories, regions, entries, k, exclude_seen)
        finally:
            self._release(entries)

    def _acquire(self, regions: Sequence[str]) -> list:
        with self._state_lock:
            snapshot = self._snapshot
            entries = [snapshot.get(r) for r in regions]
            missing = sorted({r for r, e in zip(regions, entries, strict=True) if e is None})
            if missing and self.unknown_region == "error":
                shown = ", ".join(map(repr, missing[:10]))
                more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                raise UnknownRegionError(f"no adapter loaded for region(s) {shown}{more}")
            if missing and snapshot:
                self._warn_unknown(missing)
            entries = [e or self._base for e in entries]
            for entry in set(entries):
                self._in_flight[entry] += 1
        return entries

    def _warn_unknown(self, missing: list[str]) -> None:
        """A WARNING the first time each unknown region is served by the bare backbone while
        adapters are loaded (a mistyped region would otherwise get plausible answers)."""
        new = [r for r in missing if r not in self._warned]
        if new and len(self._warned) < MAX_WARNED_REGIONS:
            self._warned.update(new)
            logger.warning("no adapter for region(s) %s: served by the un-adapted backbone "
                           "(unknown_region='backbone'); check the name if that is a typo",
                           ", ".join(map(repr, new[:10])))

    def _release(self, entries: list) -> None:
        with self._state_lock:
            for entry in set(entries):
                self._in_flight[entry] -= 1
                if not self._in_flight[entry]:
                    del self._in_flight[entry]
            pending = bool(self._retired)
        if pending:
            self._sweep()

    @torch.inference_mode()
    def _recommend(self, histories: list[list[str]], regions: Sequence[str], entries: list,
                   k: int, exclude_seen: bool) -> list[dict[str, Any]]:
        if not entries:
            return []
        tokens = [e.vocab.encode(h) for e, h in zip(entries, histories, strict=True)]
        sides = ItemBatch(entries)  # the batch's item sides, gathered once for both steps
        users, passes = user_vectors(entries, tokens, *self._shape, items=sides)
        with self._state_lock:
            self._stats.update(requests=len(entries), batches=1, forward_passes=passes)
        ranked = top_k(entries, users, histories, k, exclude_seen, sides)
        return [{"region": region, "items": items, "scores": scores, "adapted": entry.adapted,
                 "unknown_items": entry.vocab.unknown(history)}
                for region, entry, history, (items, scores)
                in zip(regions, entries, histories, ranked, strict=True)]

    def trainable_parameters(self) -> int:
        """Trainable parameters anywhere in the served modules (always 0: a safety check)."""
        modules = [self.backbone] + [b.model for b in self._shared.values()]
        modules += [e.body for e in self._snapshot.values() if e.body is not None]
        return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


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
                 causal: bool, ordered: bool, orders: int = 1, items: ItemBatch | None = None
                 ) -> tuple[torch.Tensor, int]:
    """User vectors ``[rows, hidden]`` and the number of transformer forward passes run.

    Each row is embedded with its own region's item side (only the tokens it holds), then
    routed to its own adapter. Causal rows without any known item have nothing to encode:
    their vector is zero, so they are ranked by the region's item bias (popularity).
    ``items``: the :class:`ItemBatch` of ``entries`` when the caller has built it already.
    Unordered histories are read as evaluation reads them (``core.batching.read_users``:
    averaged over ``orders`` orders of the set), so served and evaluated scores agree.
    """
    hidden = entries[0].hidden if entries else 0
    users = torch.zeros(len(entries), hidden)
    passes = 0
    live = [i for i, t in enumerate(tokens) if t or not causal]
    if live and items is None:
        items = ItemBatch(entries)
    for group, rows in plan_groups([entries[i] for i in live]):
        rows = [live[r] for r in rows]
        reads = []

        def encode(ids: torch.Tensor, mask: torch.Tensor, rows=rows, group=group,
                   reads=reads) -> torch.Tensor:
            reads.append(1)
            embeds = items.embed(torch.tensor(rows), ids)
            if isinstance(group, SharedBody):
                return group.encode(embeds, mask, [entries[r].name for r in rows])
            return group.body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state[:, -1]

        out = read_users(encode, [tokens[r] for r in rows], max_len, causal, ordered, orders)
        users[rows] = out.float()
        passes += len(reads)
    return users, passes


def top_k(entries: list[RegionEntry], users: torch.Tensor, histories: list[list[str]], k: int,
          exclude_seen: bool, items: ItemBatch | None = None
          ) -> list[tuple[list[str], list[float]]]:
    """Best ``k`` items of each row's own catalogue (seen items excluded when asked).

    Scores of all rows go into one ``-inf``-padded matrix (:meth:`ItemBatch.scores`), so
    scoring, masking and ``topk`` run once per batch rather than once per region.
    """
    items = items if items is not None else ItemBatch(entries)
    width = items.width
    scores = items.scores(users)
    if exclude_seen:
        seen = [(row, entry.vocab.index[i]) for row, (entry, history)
                in enumerate(zip(entries, histories, strict=True))
                for i in history if i in entry.vocab.index]
        if seen:
            rows, cols = zip(*seen, strict=True)
            scores[list(rows), list(cols)] = float("-inf")
    values, index = scores.topk(min(k, width), dim=1)
    out = []
    for entry, vals, idx in zip(entries, values.tolist(), index.tolist(), strict=True):
        keep = [(entry.vocab.items[i], v) for i, v in zip(idx, vals, strict=True)
                if v != float("-inf")]
        out.append(([i for i, _ in keep], [v for _, v in keep]))
    return out
