"""Where a served adapter's files come from: a local directory as it is, or a hub id
``org/name[@revision]`` downloaded (in a worker thread, within a deadline) to a temporary
folder that is removed as soon as the adapter is in memory."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from regiontune.artifacts import ArtifactError

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_.-]+)?")
HUB_WORKERS = 2  # concurrent hub downloads; more wait (within their deadline)


class AdapterFetcher:
    """Local adapter directories and hub downloads for one recommender; thread safe.

    ``cache_dir``: where downloads go (``None``: a temporary folder made on first use and
    removed by :meth:`close`); ``deadline_s``: how long one download may take in all.
    """

    def __init__(self, backbone_dir: Path | None, cache_dir: str | Path | None = None,
                 deadline_s: float = 120.0) -> None:
        if not deadline_s > 0:
            raise ValueError(f"hub_deadline_s must be positive, not {deadline_s!r}")
        self.backbone_dir, self.deadline_s = backbone_dir, deadline_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._own_cache: Path | None = None  # made here (temporary): removed by close()
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def fetched(self, source: str | Path) -> Iterator[tuple[Path, bool]]:
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
        if self.cache_dir is None:
            self._own_cache = Path(tempfile.mkdtemp(prefix="regiontune-serving-"))
            self.cache_dir = self._own_cache
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return self.cache_dir

    def _download(self, source: str, folder: Path) -> Path:
        """Pull a hub id into ``folder`` in a worker thread; give up after ``deadline_s``
        (the worker, bounded by the hub client's timeouts, cleans up when it ends)."""

        from regiontune.hub import client as hub  # lazily: serving from disk never needs it
        repo_id, _, revision = source.partition("@")
        out = folder / repo_id.replace("/", "--") / (revision or "main")
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(HUB_WORKERS, thread_name_prefix="hub-pull")
            pool = self._pool
        future = pool.submit(hub.pull, repo_id, out, revision=revision or None,
                             backbone_dir=self.backbone_dir)
        try:
            return future.result(timeout=self.deadline_s)
        except FutureTimeout:
            if not future.cancel():  # still running: its files go when it ends
                future.add_done_callback(lambda _: shutil.rmtree(folder, ignore_errors=True))
            raise ArtifactError(f"pulling {source} from the hub did not finish within "
                                f"{self.deadline_s:g} s (hub_deadline_s): the hub is slow "
                                "or unreachable; retry later, or raise the deadline") from None
        except Exception as err:
            raise ArtifactError(f"{source} is no local directory, and pulling it as a hub id "
                                f"failed: {err}") from err

    def close(self) -> None:
        """Stop pending downloads and remove the temporary download folder (if made here).
        A later hub download starts afresh."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._own_cache is not None:
            shutil.rmtree(self._own_cache, ignore_errors=True)
            self._own_cache = self.cache_dir = None
