"""Pure ASGI middleware of the HTTP API: the body-size limit (413 before a large body is read)
and request metrics (counts and latency per route template, requests in flight, per-region
rows and errors, adapter load failures, rows per recommend call; as Prometheus text)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
OTHER_REGION = "other"  # the label of regions without an adapter (labels stay bounded)
MAX_REGION_LABELS = 1000  # distinct region labels kept; later regions count as OTHER_REGION


class HTTPMiddleware:
    """Pure ASGI middleware that acts on HTTP requests (:meth:`handle`) and passes anything
    else (lifespan, websockets) straight on."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send) -> None:
        raise NotImplementedError


class BodyLimitMiddleware(HTTPMiddleware):
    """A body over ``max_bytes`` is answered 413 before it is read in full (a
    ``Content-Length`` over the limit: before any of it is read); the body is otherwise read
    here and replayed to the app."""

    def __init__(self, app, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def handle(self, scope, receive, send) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: pass that on
                pending = [message]
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                pending = [{"type": "http.request", "body": b"".join(chunks),
                            "more_body": False}]
                break

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes "
                                     "(the server's max_body_bytes): send less, e.g. split "
                                     "a batch"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class Metrics:
    """Requests by route and status, a latency histogram per route; Prometheus text out."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.in_flight = 0
        self.region_rows: dict[str, int] = {}
        self.region_errors: dict[tuple[str, int], int] = {}
        self.load_failures = 0
        self.batch_buckets = [0] * len(BATCH_BUCKETS)
        self.batch_sum = 0
        self.batch_count = 0

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1

    def leave(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def _label(self, region: str, known: set[str] | frozenset[str]) -> str:
        """``region`` if it has an adapter (and the label budget allows), else "other":
        client-chosen names never become labels."""
        if region not in known:
            return OTHER_REGION
        if region in self.region_rows or len(self.region_rows) < MAX_REGION_LABELS:
            return region
        return OTHER_REGION

    def observe_rows(self, regions: list[str], known: set[str] | frozenset[str],
                     status: int | None = None) -> None:
        """Recommendation rows asked of each region (``known``: the regions with an adapter);
        with an error ``status``, each row's region also counts one error."""
        with self.lock:
            for region in regions:
                label = self._label(region, known)
                self.region_rows[label] = self.region_rows.get(label, 0) + 1
                if status is not None:
                    key = (label, status)
                    self.region_errors[key] = self.region_errors.get(key, 0) + 1

    def observe_load_failure(self) -> None:
        """An adapter that could not be loaded (admin PUT or a load at start)."""
        with self.lock:
            self.load_failures += 1

    def observe_batch(self, rows: int) -> None:
        """Rows of one recommend call (one pass over the model; a batcher calls this once per
        batch it runs)."""
        with self.lock:
            for i, bound in enumerate(BATCH_BUCKETS):
                if rows <= bound:
                    self.batch_buckets[i] += 1
            self.batch_sum += rows
            self.batch_count += 1

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            key = (method, route, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            counts = self.buckets.setdefault(route, [0] * len(LATENCY_BUCKETS))
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self.sums[route] = self.sums.get(route, 0.0) + seconds
            self.counts[route] = self.counts.get(route, 0) + 1

    def render(self, stats: dict[str, Any]) -> str:
        """The HTTP metrics, then the recommender's counters ``stats``
        (:meth:`~regiontune.serving.recommender.Recommender.stats`)."""
        lines = ["# HELP regiontune_http_requests_total HTTP requests by route and status.",
                 "# TYPE regiontune_http_requests_total counter"]
        with self.lock:
            for (method, route, status), n in sorted(self.requests.items()):
                lines.append(f'regiontune_http_requests_total{{method="{method}",'
                             f'route="{route}",status="{status}"}} {n}')
            lines += ["# HELP regiontune_http_request_duration_seconds Request latency.",
                      "# TYPE regiontune_http_request_duration_seconds histogram"]
            for route in sorted(self.buckets):
                name = "regiontune_http_request_duration_seconds"
                for bound, n in zip(LATENCY_BUCKETS, self.buckets[route], strict=True):
                    lines.append(f'{name}_bucket{{route="{route}",le="{bound}"}} {n}')
                lines.append(f'{name}_bucket{{route="{route}",le="+Inf"}} {self.counts[route]}')
                lines.append(f'{name}_sum{{route="{route}"}} {self.sums[route]:.6f}')
                lines.append(f'{name}_count{{route="{route}"}} {self.counts[route]}')
            lines += ["# HELP regiontune_http_requests_in_flight HTTP requests being answered.",
                      "# TYPE regiontune_http_requests_in_flight gauge",
                      f"regiontune_http_requests_in_flight {self.in_flight}",
                      "# HELP regiontune_region_requests_total Recommendation rows asked of "
                      f"each region (regions without an adapter: {OTHER_REGION}).",
                      "# TYPE regiontune_region_requests_total counter"]
            lines += [f'regiontune_region_requests_total{{region="{region}"}} {n}'
                      for region, n in sorted(self.region_rows.items())]
            lines += ["# HELP regiontune_region_errors_total Recommendation rows answered with "
                      "an error, by region and status.",
                      "# TYPE regiontune_region_errors_total counter"]
            lines += [f'regiontune_region_errors_total{{region="{region}",status="{status}"}} '
                      f'{n}' for (region, status), n in sorted(self.region_errors.items())]
            lines += ["# HELP regiontune_adapter_load_failures_total Adapters that could not "
                      "be loaded.",
                      "# TYPE regiontune_adapter_load_failures_total counter",
                      f"regiontune_adapter_load_failures_total {self.load_failures}",
                      "# HELP regiontune_batch_rows Rows per recommend call.",
                      "# TYPE regiontune_batch_rows histogram"]
            lines += [f'regiontune_batch_rows_bucket{{le="{bound}"}} {n}'
                      for bound, n in zip(BATCH_BUCKETS, self.batch_buckets, strict=True)]
            lines += [f'regiontune_batch_rows_bucket{{le="+Inf"}} {self.batch_count}',
                      f"regiontune_batch_rows_sum {self.batch_sum}",
                      f"regiontune_batch_rows_count {self.batch_count}"]
        lines += ["# HELP regiontune_adapters_loaded Region adapters currently served.",
                  "# TYPE regiontune_adapters_loaded gauge",
                  f"regiontune_adapters_loaded {stats['adapters_loaded']}",
                  "# HELP regiontune_forward_passes_total Transformer forward passes run.",
                  "# TYPE regiontune_forward_passes_total counter",
                  f"regiontune_forward_passes_total {stats.get('forward_passes', 0)}",
                  "# HELP regiontune_recommendations_total Rows (users) served.",
                  "# TYPE regiontune_recommendations_total counter",
                  f"regiontune_recommendations_total {stats.get('requests', 0)}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware(HTTPMiddleware):
    """Counts every request into ``metrics``, labelled by route *template* (never the raw,
    client-chosen path)."""

    def __init__(self, app, metrics: Metrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope, receive, send) -> None:
        status = {"code": 500}
        started = time.perf_counter()

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.enter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.leave()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", "?"), route, status["code"],
                                 time.perf_counter() - started)
