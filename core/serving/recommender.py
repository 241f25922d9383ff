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
* files are read (and hub ids downloaded, within ``hub_deadline_s``:
  :class:`~regiontune.serving.fetch.AdapterFetcher`) outside the load lock: only the swap
  takes it, so a slow download never holds up other loads or unloads.

Concurrent calls are gathered into one pass (``batch_wait_ms``, ``max_batch``:
:mod:`regiontune.serving.batching`), after each is validated and holds its adapters alone.
Many regions fit a memory budget (``max_loaded``, ``adapter_memory_mb``, ``lazy_roots``:
:mod:`regiontune.serving.budget`): lazy regions load on first request, the least recently
used are evicted past the budget; explicitly loaded regions are never evicted.

The HTTP layer answers each error of :mod:`regiontune.serving.errors` with its status.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from regiontune.adapters import METHODS
from regiontune.adapters.folder import RegionMismatchError
from regiontune.artifacts import ADAPTER_META, read_json
from regiontune.model.backbone import load_backbone
from regiontune.model.recmodel import RecModel
from regiontune.model.vocab import ItemVocab
from regiontune.serving.batching import DynamicBatcher, Job
from regiontune.serving.budget import AdapterBudget, entry_bytes, trim_heap
from regiontune.serving.entries import (
    ItemBatch,
    RegionEntry,
    SharedBody,
    backbone_entry,
    build_entry,
)
from regiontune.serving.errors import (
    AdapterLoadError,
    InvalidRequestError,
    PersistError,
    ServingError,
    UnknownRegionError,
    check_region,
)
from regiontune.serving.fetch import AdapterFetcher
from regiontune.serving.forward import top_k, user_vectors
from regiontune.serving.growth import CatalogueGrowth

# the errors are defined in regiontune.serving.errors; importable from here as before
__all__ = ["AdapterLoadError", "InvalidRequestError", "PersistError", "Recommender",
           "ServingError", "UnknownRegionError", "check_region", "trim_heap"]
logger = logging.getLogger(__name__)
UNKNOWN_REGION_MODES = ("backbone", "error")
MAX_WARNED_REGIONS = 1000  # unknown regions named in a warning (then: silence, not a leak)
DEFAULT_BATCH_WAIT_MS = 2.0
DEFAULT_MAX_BATCH = 256


class Recommender(AdapterBudget, CatalogueGrowth):
    """One backbone plus region adapters; thread safe; see the module docstring."""

    def __init__(self, backbone: RecModel, vocab: ItemVocab, meta: dict[str, Any],
                 backbone_dir: str | Path | None = None, unknown_region: str = "backbone",
                 cache_dir: str | Path | None = None, hub_deadline_s: float = 120.0,
                 batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
                 max_batch: int = DEFAULT_MAX_BATCH, max_loaded: int | None = None,
                 adapter_memory_mb: float | None = None,
                 lazy_roots: Iterable[str | Path] = ()) -> None:
        """``batch_wait_ms``: how long a call may wait for others to share its pass (0: never
        gathered); ``max_batch``: rows per gathered pass. ``max_loaded`` / ``adapter_memory_mb``:
        the budget of loaded adapters (count / MiB of adapter tensors; None: unbounded);
        ``lazy_roots``: directories whose ``<region>/`` folders load on first request."""
        if unknown_region not in UNKNOWN_REGION_MODES:
            raise ValueError(f"unknown_region={unknown_region!r}: use one of "
                             f"{UNKNOWN_REGION_MODES}")
        self.backbone_dir = Path(backbone_dir) if backbone_dir is not None else None
        self.fetcher = AdapterFetcher(self.backbone_dir, cache_dir, hub_deadline_s)
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.backbone, self.vocab, self.meta = backbone.eval(), vocab, meta
        self.fingerprint = str(meta["fingerprint"])
        self.unknown_region = unknown_region
        self._warned: set[str] = set()
        cfg = backbone.config
        self._shape = (cfg.max_len, cfg.causal, cfg.ordered, cfg.set_orders)
        self._base = backbone_entry(backbone, vocab, str(backbone_dir or ""))
        self._shared = {name: SharedBody(m, backbone) for name, m in METHODS.items()
                        if m.mixed_batches}
        self._snapshot: dict[str, Any] = {}
        self._state_lock = threading.Lock()  # snapshot swaps and in-flight counts
        self._load_lock = threading.Lock()  # one load/replace/unload at a time
        self._in_flight: Counter = Counter()
        self._retired: list = []
        self._stats: Counter = Counter()
        self._init_budget(max_loaded, adapter_memory_mb, lazy_roots)
        if batch_wait_ms < 0 or max_batch < 1:
            raise ValueError(f"batch_wait_ms must be >= 0 and max_batch >= 1, not "
                             f"{batch_wait_ms!r}, {max_batch!r}")
        self.batch_wait_ms, self.max_batch = float(batch_wait_ms), int(max_batch)
        self._batcher = (DynamicBatcher(self._run_jobs, self._run_job, batch_wait_ms, max_batch)
                         if batch_wait_ms > 0 else None)

    @classmethod
    def from_dirs(cls, backbone_dir: str | Path, adapter_dirs: Iterable[str | Path] = (),
                  unknown_region: str = "backbone", cache_dir: str | Path | None = None,
                  hub_deadline_s: float = 120.0, **options: Any) -> Recommender:
        """Load a backbone directory and every adapter directory (region from region.json).
        ``options``: the constructor's batching and budget options.

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
        rec = cls(backbone, vocab, meta, backbone_dir, unknown_region, cache_dir, hub_deadline_s,
                  **options)
        for region, (directory,) in claims.items():
            rec.load(region, directory)
        return rec

    # ------------------------------------------------------------ adapter management

    def load(self, region: str, path_or_hub_id: str | Path,
             same_region: bool = False) -> dict[str, Any]:
        """Load (or replace) ``region``'s adapter from a directory or a hub id ``org/name``
        (never evicted: see :meth:`preload` and ``lazy_roots`` for evictable ones). With
        ``same_region``, an adapter whose ``region.json`` names another region is refused."""
        check_region(region)
        entry = self._build(region, path_or_hub_id, same_region)
        with self._load_lock:  # the swap alone
            if region not in self._snapshot:  # a new region: make room before publishing
                self._evict(keep=region, incoming=entry)
            old = self._swap(region, entry)
            self._evict(keep=region)
        trim_heap()
        logger.info("region %s: %s adapter %s (%s)", region, "replaced" if old else "loaded",
                    entry.name, entry.served_as)
        return entry.info()

    def _build(self, region: str, path_or_hub_id: str | Path,
               same_region: bool = False) -> RegionEntry:
        try:  # outside the load lock: reading, downloading, building take their time
            with self.fetcher.fetched(path_or_hub_id) as (directory, hub_id):
                entry = build_entry(region, directory, self.backbone, self.vocab,
                                    self.fingerprint, self._shared, same_region)
                if hub_id:  # the download folder goes away: name the source instead
                    entry.path = str(path_or_hub_id)
        except Exception as err:  # any failure: the old adapter keeps serving
            logger.warning("loading %s for region %s failed: %s", path_or_hub_id, region, err)
            hint = (f"; to serve it as {region!r} anyway, say so "
                    '("allow_other_region": true)' if isinstance(err, RegionMismatchError)
                    else "")
            raise AdapterLoadError(f"cannot load the adapter of region {region!r} from "
                                   f"{path_or_hub_id}: {err}{hint}") from err
        if entry.meta.get("region") not in (None, region):
            logger.debug("serving %s's adapter (%s) as region %s", entry.meta.get("region"),
                         entry.path, region)
        return entry

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

    def _swap(self, region: str, entry: RegionEntry | None, hold: int = 0,
              evictable: bool = False) -> RegionEntry | None:
        """Publish ``entry`` for ``region`` (None: unload); ``hold``: in-flight counts taken
        for requests waiting on this load, in the same step (eviction cannot pass between)."""
        with self._state_lock:
            snapshot = dict(self._snapshot)
            old = snapshot.pop(region, None)
            self._lru.pop(region, None)
            if entry is not None:
                snapshot[region] = entry
                self._bytes += entry_bytes(entry)
                if evictable:
                    self._lru[region] = None
                if hold:
                    self._in_flight[entry] += hold
            self._snapshot = snapshot  # requests that started before keep the old dict
            if old is not None:
                self._bytes -= entry_bytes(old)
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

    def close(self) -> None:
        """Stop pending hub downloads and remove the temporary download folder (if this
        recommender made it); answer gathered calls and stop gathering (later calls run
        alone). Serving from memory goes on; a later hub load starts afresh."""
        if self._batcher is not None:
            self._batcher.close()
        self.fetcher.close()

    def regions(self) -> list[dict[str, Any]]:
        """One dict per loaded region: region, method, path, fingerprint_ok, n_items, ..."""
        snapshot = self._snapshot
        return [snapshot[r].info() for r in sorted(snapshot)]

    def stats(self) -> dict[str, int]:
        """Counters: requests (rows), batches, forward passes, retired adapters pending,
        gathered calls, lazy loads, evictions, region hits and misses, adapter bytes."""
        with self._state_lock:
            return {"requests": 0, "batches": 0, "forward_passes": 0, "gathered_calls": 0,
                    "lazy_loads": 0, "lazy_load_us": 0, "evictions": 0, "region_hits": 0,
                    "region_misses": 0, **self._stats,
                    "adapters_loaded": len(self._snapshot), "adapter_bytes": self._bytes,
                    "retired_pending": len(self._retired)}

    # ------------------------------------------------------------ recommendation

    def recommend(self, histories: Sequence[Sequence[str]], regions: Sequence[str], k: int = 10,
                  exclude_seen: bool = True) -> list[dict[str, Any]]:
        """Top-``k`` items per row, each from its region's catalogue, in as few passes as
        possible. Rows: {region, items, scores, adapted, unknown_items}.

        Concurrent calls may share one pass (dynamic batching); each is validated, and its
        regions resolved (lazily loaded), on its own first, so its errors stay its own."""
        batcher = self._batcher
        if batcher is None or not batcher.fits(len(histories)):
            return self._recommend_call(histories, regions, k, exclude_seen, None)
        batcher.arrive()
        return self._recommend_call(histories, regions, k, exclude_seen, batcher)

    def _recommend_call(self, histories: Sequence[Sequence[str]], regions: Sequence[str],
                        k: int, exclude_seen: bool, batcher: DynamicBatcher | None
                        ) -> list[dict[str, Any]]:
        try:
            histories, regions = self._validate(histories, regions, k)
            entries = self._acquire(regions)
        except BaseException:
            if batcher is not None:
                batcher.leave()
            raise
        try:
            if batcher is None:
                return self._recommend(histories, regions, entries, k, exclude_seen)
            if batcher.solo():
                try:
                    return self._recommend(histories, regions, entries, k, exclude_seen)
                finally:
                    batcher.solo_done()
            return batcher.submit(Job((histories, regions, entries, k, exclude_seen),
                                      len(histories)))
        finally:
            self._release(entries)

    def _validate(self, histories: Sequence[Sequence[str]], regions: Sequence[str], k: int
                  ) -> tuple[list[list[str]], list[str]]:
        if len(histories) != len(regions):
            raise InvalidRequestError(f"{len(histories)} histories but {len(regions)} regions")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidRequestError(f"k must be a positive integer, not {k!r}")
        histories = [list(h) for h in histories]
        if any(not isinstance(i, str) for h in histories for i in h):
            raise InvalidRequestError("history items must be strings")
        return histories, list(regions)

    def _run_job(self, job: Job) -> list[dict[str, Any]]:
        return self._recommend(*job.args)

    def _run_jobs(self, jobs: list[Job]) -> None:
        """Gathered calls in one pass: rows concatenated, each call's ``k`` and
        ``exclude_seen`` per row, answers split back."""
        histories, regions, entries, ks, flags = [], [], [], [], []
        for job in jobs:
            h, r, e, k, flag = job.args
            histories += h
            regions += r
            entries += e
            ks += [k] * len(h)
            flags += [flag] * len(h)
        results = self._recommend(histories, regions, entries, ks, flags)
        with self._state_lock:
            self._stats.update(gathered_calls=len(jobs))
        start = 0
        for job in jobs:
            job.result = results[start:start + job.rows]
            start += job.rows

    def _acquire(self, regions: Sequence[str]) -> list[RegionEntry]:
        """Each region's entry, counted in flight (released by :meth:`_release`); regions
        under a lazy root load here; the rest: the backbone or UnknownRegionError."""
        with self._state_lock:
            snapshot = self._snapshot
            found = {r: snapshot.get(r) for r in dict.fromkeys(regions)}
            held = [e for e in found.values() if e is not None]
            for entry in held:
                self._in_flight[entry] += 1
            for r, e in found.items():
                if e is not None and r in self._lru:
                    self._lru.move_to_end(r)
            self._stats.update(region_hits=len(held))
        missing = sorted(r for r, e in found.items() if e is None)
        try:
            for region in missing:
                directory = self.lazy_dir(region)
                if directory is not None:
                    found[region] = entry = self._load_lazy(region, directory)
                    held.append(entry)
                    with self._state_lock:
                        self._stats.update(region_misses=1)
            missing = [r for r in missing if found[r] is None]
            with self._state_lock:
                if missing and self.unknown_region == "error":
                    shown = ", ".join(map(repr, missing[:10]))
                    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
                    raise UnknownRegionError(f"no adapter loaded for region(s) {shown}{more}")
                if missing and self._snapshot:
                    self._warn_unknown(missing)
                if missing:
                    self._in_flight[self._base] += 1
                    held.append(self._base)
        except BaseException:
            self._release(held)
            raise
        return [found[r] or self._base for r in regions]

    def _warn_unknown(self, missing: list[str]) -> None:
        """A WARNING the first time each unknown region is served by the bare backbone while
        adapters are loaded (a mistyped region would otherwise get plausible answers)."""
        new = [r for r in missing if r not in self._warned]
        if new and len(self._warned) < MAX_WARNED_REGIONS:
            self._warned.update(new)
            logger.warning("no adapter for region(s) %s: served by the un-adapted backbone "
                           "(unknown_region='backbone'); check the name if that is a typo",
                           ", ".join(map(repr, new[:10])))

    def _release(self, entries: list[RegionEntry]) -> None:
        if not entries:
            return
        with self._state_lock:
            for entry in set(entries):
                self._in_flight[entry] -= 1
                if not self._in_flight[entry]:
                    del self._in_flight[entry]
            pending = bool(self._retired)
        if pending:
            self._sweep()

    @torch.inference_mode()
    def _recommend(self, histories: list[list[str]], regions: Sequence[str],
                   entries: list[RegionEntry], k: int | list[int],
                   exclude_seen: bool | list[bool]) -> list[dict[str, Any]]:
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
