"""HTTP API over a :class:`~regiontune.core.serving.Recommender` (FastAPI).

Routes: ``POST /v1/recommend``, ``POST /v1/recommend/batch`` (one mixed-region pass),
``GET /v1/regions``, ``PUT``/``DELETE /v1/regions/{region}`` (admin: ``Authorization: Bearer``
when a token is configured), ``GET /healthz``, ``GET /metrics`` (Prometheus text format).
Bad input is a 4xx with a message; the server keeps serving.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from .artifacts import ADAPTER_META
from .serving import (
    AdapterLoadError,
    InvalidRequestError,
    Recommender,
    UnknownRegionError,
    check_region,
)

logger = logging.getLogger(__name__)
REGION_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOKEN_ENV = "REGIONTUNE_ADMIN_TOKEN"


# ---------------------------------------------------------------- schema

class RecommendRequest(BaseModel):
    """One user's request."""

    model_config = ConfigDict(extra="forbid")
    region: StrictStr = Field(pattern=REGION_PATTERN, description="region name")
    history: list[StrictStr] = Field(default_factory=list, description="item ids, oldest first")
    k: StrictInt = Field(10, description="number of items to return")
    exclude_seen: StrictBool = Field(True, description="never recommend history items")


class BatchRequest(BaseModel):
    """Several users, possibly of several regions: served in as few forward passes as can be."""

    model_config = ConfigDict(extra="forbid")
    requests: list[RecommendRequest] = Field(min_length=1)


class Recommendation(BaseModel):
    region: str
    items: list[str]
    scores: list[float]
    adapted: bool = Field(description="false when the un-adapted backbone served the region")
    unknown_items: list[str] = Field(description="history items the region does not know")


class BatchResponse(BaseModel):
    results: list[Recommendation]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr = Field(min_length=1, max_length=4096,
                            description="adapter directory or hub id ORG/NAME[@REVISION]")


class RegionInfo(BaseModel):
    region: str
    method: str
    served_as: str
    path: str
    fingerprint_ok: bool
    n_items: int
    new_items: int
    internal_name: str
    tensor_bytes: int | None = Field(None, description="adapter weights + low-rank item side")
    loaded_at: str


# ---------------------------------------------------------------- metrics

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

    def render(self, recommender: Recommender) -> str:
        stats = recommender.stats()
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


class MetricsMiddleware:
    """Pure ASGI middleware: labels by route *template* (never the raw, client-chosen path)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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


# ---------------------------------------------------------------- the app

def create_app(recommender: Recommender, admin_token: str | None = None, max_history: int = 200,
               max_k: int = 1000, max_batch: int = 1024) -> FastAPI:
    """The FastAPI application serving ``recommender``."""
    app = FastAPI(title="regiontune", version="1", description=__doc__.splitlines()[0])
    metrics = Metrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    def check(requests: list[RecommendRequest]) -> None:
        if len(requests) > max_batch:
            raise HTTPException(422, f"at most {max_batch} requests per batch")
        for i, r in enumerate(requests):
            where = f"request {i}: " if len(requests) > 1 else ""
            if not 1 <= r.k <= max_k:
                raise HTTPException(422, f"{where}k must be between 1 and {max_k}, not {r.k}")
            if len(r.history) > max_history:
                raise HTTPException(422, f"{where}history holds {len(r.history)} items; at "
                                         f"most {max_history} are accepted")
            region_or_400(r.region)

    def run(requests: list[RecommendRequest]) -> list[dict[str, Any]]:
        check(requests)
        # exclude_seen may differ per request: group so each call is one mixed pass
        out: list[dict[str, Any] | None] = [None] * len(requests)
        for flag in (True, False):
            rows = [i for i, r in enumerate(requests) if r.exclude_seen is flag]
            if not rows:
                continue
            k = max(requests[i].k for i in rows)
            try:
                got = recommender.recommend([requests[i].history for i in rows],
                                            [requests[i].region for i in rows], k, flag)
            except UnknownRegionError as err:
                raise HTTPException(404, str(err)) from err
            except InvalidRequestError as err:
                raise HTTPException(422, str(err)) from err
            for i, result in zip(rows, got, strict=True):
                kk = requests[i].k
                out[i] = {**result, "items": result["items"][:kk],
                          "scores": result["scores"][:kk]}
        return out

    def require_admin(authorization: Annotated[str | None, Header()] = None) -> None:
        # a dependency: checked before the body is even parsed
        if admin_token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 admin_token.encode()):
            raise HTTPException(401, "admin route: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(AdapterLoadError)
    async def _load_failed(request: Request, err: AdapterLoadError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.post("/v1/recommend", response_model=Recommendation)
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        """Top-k items of one region's catalogue for one history."""
        return run([body])[0]

    @app.post("/v1/recommend/batch", response_model=BatchResponse)
    def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        """Several requests (any regions) answered together."""
        return {"results": run(body.requests)}

    @app.get("/v1/regions", response_model=list[RegionInfo])
    def regions() -> list[dict[str, Any]]:
        """The loaded region adapters."""
        return recommender.regions()

    admin = [Depends(require_admin)]

    @app.put("/v1/regions/{region}", response_model=RegionInfo, dependencies=admin)
    def put_region(region: str, body: LoadRequest) -> dict[str, Any]:
        """Load or replace a region's adapter; on failure the old one keeps serving (422)."""
        region_or_400(region)
        info = recommender.load(region, body.path)
        logger.info("admin: region %s now served from %s", region, body.path)
        return info

    @app.delete("/v1/regions/{region}", dependencies=admin)
    def delete_region(region: str) -> dict[str, str]:
        """Unload a region's adapter."""
        region_or_400(region)
        try:
            recommender.unload(region)
        except UnknownRegionError as err:
            raise HTTPException(404, str(err)) from err
        return {"region": region, "status": "unloaded"}

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "regions": len(recommender.regions()),
                "backbone": recommender.fingerprint}

    @app.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(recommender),
                                 media_type="text/plain; version=0.0.4")

    return app


def region_or_400(region: str) -> str:
    try:
        return check_region(region)
    except InvalidRequestError as err:
        raise HTTPException(400, str(err)) from err


def adapter_dirs(adapters_dir: str | Path | None) -> list[Path]:
    """Every adapter directory (holding region.json) directly under ``adapters_dir``."""
    if adapters_dir is None:
        return []
    root = Path(adapters_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such adapters directory")
    return sorted(p for p in root.iterdir() if (p / ADAPTER_META).is_file())


def serve(backbone_dir: str | Path, adapters_dir: str | Path | None = None,
          host: str = "127.0.0.1", port: int = 8000, admin_token: str | None = None,
          unknown_region: str = "backbone",
          adapters: list[tuple[str, str]] | None = None) -> None:
    """Load the backbone, every adapter under ``adapters_dir`` and each ``(region, source)``
    of ``adapters`` (a directory or a hub id ``org/name[@revision]``), then run uvicorn.

    Without ``admin_token``, ``$REGIONTUNE_ADMIN_TOKEN`` is used (keeps it off command lines).
    """
    import uvicorn

    admin_token = admin_token or os.environ.get(TOKEN_ENV) or None
    recommender = Recommender.from_dirs(backbone_dir, adapter_dirs(adapters_dir),
                                        unknown_region=unknown_region)
    for region, source in adapters or []:
        recommender.load(region, source)
    if admin_token is None and host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("admin routes are open to anyone who can reach %s:%s; set %s",
                       host, port, TOKEN_ENV)
    logger.info("serving %d regions on %s:%s", len(recommender.regions()), host, port)
    uvicorn.run(create_app(recommender, admin_token=admin_token), host=host, port=port)
