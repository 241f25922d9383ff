"""Pure ASGI middleware of the HTTP API: the body-size limit (413 before a large body is read)
and request metrics (counts and latency per route template, as Prometheus text)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", "?"), route, status["code"],
                                 time.perf_counter() - started)
