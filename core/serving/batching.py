"""Dynamic batching: concurrent ``recommend`` calls gathered into one mixed-region pass.

Each call is validated and holds its adapters (in-flight counting) in its own thread *before*
it joins the queue, so a bad request fails alone and never reaches a gathered batch. One
worker thread takes the oldest queued call and gathers more for up to ``wait_ms`` after it
arrived, or until ``max_rows`` rows are queued, or until no other call is on its way in
(every caller inside ``recommend`` has queued already: a lone client waits for nobody, and
when nothing is queued or running it runs its pass itself, :meth:`DynamicBatcher.solo`), then
runs the gathered calls as one pass; while that pass runs, the next batch gathers. Calls are
never split across passes; one larger than ``max_rows`` does not join (its caller runs it).
The queue is bounded (``max_queue_rows``): a caller finding it full waits for room.

If a gathered pass fails, each of its calls is run again alone, so only a faulty call sees
its error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class Job:
    """One caller's rows (already validated and holding their adapters) and its answer."""

    __slots__ = ("args", "done", "error", "queued_at", "result", "rows")

    def __init__(self, args: tuple, rows: int) -> None:
        self.args, self.rows = args, rows
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.queued_at = 0.0


class DynamicBatcher:
    """Gathers :class:`Job` s for ``run_many`` (one pass for many jobs: sets each job's result)
    and falls back on ``run_one`` (one job alone) when a gathered pass fails."""

    def __init__(self, run_many: Callable[[list[Job]], None], run_one: Callable[[Job], Any],
                 wait_ms: float, max_rows: int, max_queue_rows: int | None = None) -> None:
        if not wait_ms > 0 or max_rows < 1:
            raise ValueError(f"wait_ms must be > 0 and max_rows >= 1, not {wait_ms}, {max_rows}")
        self.run_many, self.run_one = run_many, run_one
        self.wait_s, self.max_rows = wait_ms / 1000.0, max_rows
        self.max_queue_rows = max(max_queue_rows or 8 * max_rows, max_rows)
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._queued_rows = 0
        self._arriving = 0  # callers inside recommend() that have not queued (or left) yet
        self._closed = False
        self._busy = False  # the worker is running a pass
        self._solo = False  # a lone caller is running its own pass
        self.batches = self.gathered_jobs = 0
        self._worker = threading.Thread(target=self._loop, name="regiontune-batcher",
                                        daemon=True)
        self._worker.start()

    # ------------------------------------------------------------ callers

    def arrive(self) -> None:
        """A caller is on its way in (validating): the worker may wait for it."""
        with self._cond:
            self._arriving += 1

    def leave(self) -> None:
        """A caller that arrived will not queue (refused, or runs alone)."""
        with self._cond:
            self._arriving -= 1
            self._cond.notify_all()

    def solo(self) -> bool:
        """True (and the caller leaves) when nothing is queued or running and nobody else is
        on the way in: the lone caller runs its pass itself, without a hand-over."""
        with self._cond:
            if self._queue or self._busy or self._solo or self._arriving != 1:
                return False
            self._arriving -= 1
            self._solo = True  # until solo_done(): the next callers queue
            self._cond.notify_all()
            return True

    def solo_done(self) -> None:
        with self._cond:
            self._solo = False

    def fits(self, rows: int) -> bool:
        return 0 < rows <= self.max_rows and not self._closed

    def submit(self, job: Job) -> Any:
        """Queue ``job`` (after :meth:`arrive`), wait for its answer; its own error raised."""
        with self._cond:
            self._arriving -= 1
            while self._queued_rows + job.rows > self.max_queue_rows and not self._closed:
                self._cond.wait()  # bounded: wait for room
            if self._closed:
                closed = True
            else:
                closed = False
                job.queued_at = time.monotonic()
                self._queue.append(job)
                self._queued_rows += job.rows
            self._cond.notify_all()
        if closed:
            return self.run_one(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Answer what is queued, then stop the worker; later calls run alone."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not threading.current_thread():
            self._worker.join(timeout=30)

    # ------------------------------------------------------------ the worker

    def _gather(self) -> list[Job] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].queued_at + self.wait_s
            while (self._queued_rows < self.max_rows and self._arriving > 0
                   and not self._closed):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch, rows = [], 0
            while self._queue and rows + self._queue[0].rows <= self.max_rows:
                job = self._queue.popleft()
                batch.append(job)
                rows += job.rows
            self._queued_rows -= rows
            self._busy = True
            self._cond.notify_all()  # room for callers waiting on a full queue
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            if batch is None:
                return
            self.batches += 1
            self.gathered_jobs += len(batch)
            try:
                if len(batch) == 1:
                    raise _Alone
                self.run_many(batch)
            except BaseException as err:  # noqa: BLE001 - each job answered alone instead
                if not isinstance(err, _Alone):
                    logger.warning("a gathered batch of %d calls failed (%s); answering each "
                                   "alone", len(batch), err)
                for job in batch:
                    try:
                        job.result = self.run_one(job)
                    except BaseException as one:  # noqa: BLE001 - handed to its caller
                        job.error = one
            finally:
                with self._cond:
                    self._busy = False
                for job in batch:
                    job.done.set()


class _Alone(Exception):
    """Internal: a batch of one call runs as that call."""
