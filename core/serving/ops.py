"""Readiness of the HTTP API (``GET /readyz``): the configured adapters against those loaded."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["Readiness"]


class Readiness:
    """What ``/readyz`` answers: the configured adapters (those loaded at start, those loading
    in the background, and what admin routes load or unload since) against those loaded."""

    def __init__(self, expected: Sequence[str], pending: Sequence[str]) -> None:
        self.lock = threading.Lock()
        self.expected = set(expected) | set(pending)
        self.pending = set(pending)
        self.failed: dict[str, str] = {}

    def loaded(self, region: str) -> None:
        with self.lock:
            self.expected.add(region)
            self.pending.discard(region)
            self.failed.pop(region, None)

    def failed_to_load(self, region: str, reason: str) -> None:
        with self.lock:
            self.pending.discard(region)
            self.failed[region] = reason

    def dropped(self, region: str) -> None:
        with self.lock:
            self.expected.discard(region)
            self.pending.discard(region)
            self.failed.pop(region, None)

    def answer(self, loaded: set[str], fingerprint: str,
               loadable: Any = None) -> dict[str, Any]:
        """``loadable(region)``: whether a region not in memory loads on its first request
        (evicted from an adapter budget: not missing)."""
        with self.lock:
            pending, failed = sorted(self.pending), dict(sorted(self.failed.items()))
            missing = sorted(self.expected - loaded - self.pending - set(self.failed))
        missing = [r for r in missing if loadable is None or not loadable(r)]
        reasons = ([f"{len(pending)} adapter(s) still loading"] if pending else []) + \
                  ([f"{len(failed)} adapter(s) failed to load"] if failed else []) + \
                  ([f"{len(missing)} configured adapter(s) not loaded"] if missing else [])
        return {"status": "not ready" if reasons else "ready",
                "reason": "; ".join(reasons) or None, "backbone": fingerprint,
                "regions": len(loaded), "pending": pending, "failed": failed,
                "missing": missing}
