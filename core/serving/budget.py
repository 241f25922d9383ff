"""The adapter budget of a :class:`~regiontune.serving.recommender.Recommender`: lazy regions
loaded on first request, least recently used ones evicted, freed heap handed back.

Many regions fit a memory budget (``max_loaded`` adapters and/or ``adapter_memory_mb`` of
adapter tensors): regions whose folder ``<root>/<region>`` lies under one of ``lazy_roots``
are loaded on their first request and the least recently used of them are evicted past the
budget (an evicted adapter in use is deleted only when its last request ends, by the
recommender's in-flight counting). Explicitly loaded regions are never evicted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from regiontune.artifacts import ADAPTER_META
from regiontune.serving.entries import RegionEntry
from regiontune.serving.errors import InvalidRequestError, check_region

__all__ = ["AdapterBudget", "entry_bytes", "trim_heap"]
logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to call
        return None


def entry_bytes(entry: RegionEntry) -> int:
    """What a loaded region holds in memory (adapter tensors + its item side)."""
    return int(entry.meta.get("tensor_bytes") or 0)


def trim_heap() -> None:
    """Hand freed heap pages back to the OS after a load or unload (glibc's ``malloc_trim``;
    a no-op elsewhere). Loads free memory: the adapter replaced, the file's tensors, the old
    copy of a grown adapter bank; glibc keeps most of it resident otherwise (measured with
    100 LoRA adapters: ~0.6x the adapter file size per adapter). ~0.5 ms."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class AdapterBudget:
    """The budget half of the Recommender (a base class): eviction and lazy loads.

    It works on the recommender's served state: ``_snapshot`` (region -> entry), the
    ``_state_lock`` and ``_load_lock``, ``_in_flight`` counts, ``_stats``, and its ``_build``
    (read an adapter outside the locks) and ``_swap`` (publish an entry, keeping ``_lru`` and
    ``_bytes`` up to date)."""

    _snapshot: dict[str, Any]
    _state_lock: threading.Lock
    _load_lock: threading.Lock
    _in_flight: Any
    _stats: Any

    def _init_budget(self, max_loaded: int | None, adapter_memory_mb: float | None,
                     lazy_roots: Iterable[str | Path]) -> None:
        if max_loaded is not None and max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, not {max_loaded!r}")
        if adapter_memory_mb is not None and not adapter_memory_mb > 0:
            raise ValueError(f"adapter_memory_mb must be positive, not {adapter_memory_mb!r}")
        self.max_loaded = max_loaded
        self.memory_budget = None if adapter_memory_mb is None else int(adapter_memory_mb * 2**20)
        self.lazy_roots = [Path(r) for r in lazy_roots]
        self._lru: OrderedDict[str, None] = OrderedDict()  # evictable regions, oldest use first
        self._bytes = 0  # adapter tensor bytes of the loaded regions
        self._loading: dict[str, list] = {}  # region -> [Future, waiters]: one load per miss
        self._lazy_lock = threading.Lock()

    def _build(self, region: str, path_or_hub_id: str | Path) -> RegionEntry:
        raise NotImplementedError

    def _swap(self, region: str, entry: RegionEntry | None, hold: int = 0,
              evictable: bool = False) -> RegionEntry | None:
        raise NotImplementedError

    def _over_budget(self, count: int = 0, size: int = 0) -> bool:
        """The budget would not hold with ``count`` more regions of ``size`` more bytes."""
        return ((self.max_loaded is not None and len(self._snapshot) + count > self.max_loaded)
                or (self.memory_budget is not None
                    and self._bytes + size > self.memory_budget))

    def _evict(self, keep: str | None = None, incoming: RegionEntry | None = None) -> int:
        """Unload least recently used evictable regions until the budget holds -- with room
        for ``incoming`` (a new region about to be published) when given, so the number of
        loaded regions never passes the budget, not even for a moment (call under the load
        lock). Regions no request uses go first; one in use is retired, and deleted when its
        last request ends."""
        count, size = (1, entry_bytes(incoming)) if incoming is not None else (0, 0)
        evicted = 0
        while True:
            with self._state_lock:
                if not self._over_budget(count, size):
                    break
                order = [r for r in self._lru if r != keep]
                idle = [r for r in order if not self._in_flight[self._snapshot[r]]]
                victim = (idle or order or [None])[0]
            if victim is None:  # only pinned regions left: the budget cannot hold
                logger.warning("adapter budget exceeded by regions that cannot be evicted "
                               "(loaded explicitly): %d loaded, %.1f MiB", len(self._snapshot),
                               self._bytes / 2**20)
                break
            self._swap(victim, None)
            evicted += 1
        if evicted:
            with self._state_lock:
                self._stats.update(evictions=evicted)
            trim_heap()
        return evicted

    def lazy_dir(self, region: str) -> Path | None:
        """The folder ``<root>/<region>`` of the first lazy root holding one (or None)."""
        if not self.lazy_roots:
            return None
        try:
            check_region(region)
        except InvalidRequestError:
            return None
        for root in self.lazy_roots:
            if (root / region / ADAPTER_META).is_file():
                return root / region
        return None

    def preload(self, limit: int | None = None) -> int:
        """Load regions of the lazy roots (sorted) until the budget is full (or ``limit``);
        they stay evictable. The number loaded."""
        seen: set[str] = set()
        loaded = 0
        cap = self.max_loaded if limit is None else limit
        for root in self.lazy_roots:
            for folder in sorted(p for p in root.iterdir() if (p / ADAPTER_META).is_file()):
                if cap is not None and len(self._snapshot) >= cap:
                    return loaded
                if folder.name in seen or folder.name in self._snapshot:
                    continue
                seen.add(folder.name)
                entry = self._load_lazy(folder.name, folder, hold=False)
                loaded += entry is not None
                if self.memory_budget is not None and self._bytes >= self.memory_budget:
                    return loaded
        return loaded

    def _load_lazy(self, region: str, directory: Path, hold: bool = True
                   ) -> RegionEntry | None:
        """``region``'s entry, loaded from ``directory`` once however many requests miss it
        at the same time; with ``hold``, counted in flight for the caller (atomically with
        its publication, so an eviction cannot pass in between)."""
        with self._lazy_lock:
            with self._state_lock:
                entry = self._snapshot.get(region)
                if entry is not None:  # loaded meanwhile
                    if hold:
                        self._in_flight[entry] += 1
                    return entry
            record = self._loading.get(region)
            owner = record is None
            if owner:
                record = self._loading[region] = [Future(), 0]
            elif hold:
                record[1] += 1
        if not owner:
            return record[0].result()  # held for this caller by the owner's swap
        start = time.perf_counter()
        try:
            entry = self._build(region, directory)
        except BaseException as err:
            with self._lazy_lock:
                del self._loading[region]
            record[0].set_exception(err)
            raise
        with self._load_lock:
            self._evict(keep=region, incoming=entry)  # room first: the budget never passes
            with self._lazy_lock:
                del self._loading[region]
                self._swap(region, entry, hold=record[1] + int(hold), evictable=True)
            self._evict(keep=region)
        record[0].set_result(entry)
        with self._state_lock:
            self._stats.update(lazy_loads=1)
            self._stats["lazy_load_us"] += int((time.perf_counter() - start) * 1e6)
        trim_heap()
        logger.debug("region %s loaded on first use from %s", region, directory)
        return entry
