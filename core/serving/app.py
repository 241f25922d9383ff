"""HTTP API over a :class:`~regiontune.serving.recommender.Recommender` (FastAPI).

Routes: ``POST /v1/recommend``, ``POST /v1/recommend/batch`` (one mixed-region pass),
``GET /v1/regions``, ``GET /v1/regions/{region}``, ``PUT``/``DELETE /v1/regions/{region}`` and
``POST /v1/regions/{region}/items`` (catalogue growth without retraining, hot-swapped; in
memory unless ``persist``) (admin: ``Authorization: Bearer`` when an admin token is
configured), ``GET /healthz``
(liveness), ``GET /readyz`` (readiness: 503 until the backbone and every configured adapter are
loaded), ``GET /metrics`` (Prometheus text format), ``/docs`` and ``/redoc`` (served from the
installed ``fastapi-offline`` assets, no CDN; absent without them), ``/openapi.json``.

Read routes (recommendations, regions, metrics) need ``Authorization: Bearer`` with the read
(or the admin) token when a read token is configured; health, readiness and the API docs stay
open. Cross-origin requests are allowed from the configured origins only (none by default).

Every input gets an answer, bad input a 4xx with a message; the server keeps serving. Limits
(:class:`ServingLimits`: body bytes, history length, item id length, batch size, ``k``) are
checked before any work and published in the OpenAPI schema. One status per kind of error:

* 401: a protected route without a valid bearer token;
* 403: the read token on an admin route; ``PUT`` of a local path outside the adapter roots (or
  with no roots configured);
* 404: no such route; no adapter loaded for the region (``GET``/``DELETE`` of a region, or a
  recommendation when unknown regions are refused);
* 409: a grow asked to ``persist`` to a folder it may not rewrite (a hub adapter, outside the
  adapter roots, or no longer the adapter served); nothing changed;
* 413: body larger than ``max_body_bytes`` (refused before it is read in full);
* 422: the request does not validate: malformed JSON, ``NaN`` / ``Infinity``, lone surrogates,
  wrong types, limits exceeded, bad region name; or the adapter cannot be loaded (corrupt,
  pickled, foreign backbone, non-finite weights, hub unreachable or past its deadline);
* 503: ``/readyz`` only: not ready (the answer says why).
"""

# No ``from __future__ import annotations`` here: the request models are built per app (their
# limits are configurable) and FastAPI reads route annotations as objects.

import logging
import threading
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse

from regiontune.serving.auth import token_dependencies
from regiontune.serving.docs import add_docs_routes, docs_assets
from regiontune.serving.errors import (
    AdapterLoadError,
    PersistError,
    TextEncodingError,
    UnknownRegionError,
    check_region,
)
from regiontune.serving.http_errors import StrictJSONRoute, add_error_handlers
from regiontune.serving.middleware import BodyLimitMiddleware, Metrics, MetricsMiddleware
from regiontune.serving.ops import Readiness
from regiontune.serving.recommender import Recommender
from regiontune.serving.roots import adapter_dirs, adapter_source, public_path
from regiontune.serving.schemas import (
    MAX_UNKNOWN_ECHO,
    REGION_PATTERN,
    BatchResponse,
    GrowResponse,
    LoadRequest,
    ReadyResponse,
    Recommendation,
    RegionInfo,
    ServingLimits,
    error_doc,
    grow_model,
    request_models,
)

__all__ = ["ServingLimits", "adapter_dirs", "adapter_source", "create_app", "docs_assets",
           "public_path"]  # the uvicorn entry point: regiontune.serving.server.serve
logger = logging.getLogger(__name__)


def create_app(recommender: Recommender, admin_token: str | None = None, max_history: int = 200,
               max_k: int = 1000, max_batch: int = 256, max_body_bytes: int = 2 * 2**20,
               max_item_chars: int = 256, max_grow_items: int = 1000,
               max_grow_pairs: int = 20000, max_item_text_chars: int = 2000,
               adapter_roots: Sequence[str | Path] | None = None,
               read_token: str | None = None, cors_origins: Sequence[str] = (),
               preload: Sequence[tuple[str, str | Path]] = ()) -> FastAPI:
    """The FastAPI application serving ``recommender``.

    ``adapter_roots``: the directories an admin ``PUT`` may load local adapters from (a path
    relative to a root, or an absolute one inside a root; symbolic links resolved first);
    ``[]`` allows hub ids only. ``None`` (the library default, kept for in-process use) allows
    any local path and logs a warning; :func:`serve` always passes the roots.

    ``read_token``: when given, read routes need it (or the admin token) as a bearer token.
    ``cors_origins``: origins allowed cross-origin requests (``http(s)://host[:port]`` or
    ``*``). ``preload``: ``(region, source)`` adapters loaded in the background once the app
    starts (its lifespan); ``/readyz`` answers 503 until they are loaded, and names those that
    failed (the others keep serving). The regions loaded when the app is made, and the preload
    ones, are the configured adapters; admin ``PUT``/``DELETE`` add and remove regions.
    """
    for origin in cors_origins:
        if origin != "*" and not (origin.startswith(("http://", "https://"))
                                  and "/" not in origin.split("://", 1)[1]):
            raise ValueError(f"CORS origin {origin!r}: give scheme://host[:port] (no path), "
                             "or *")
    limits = ServingLimits(max_body_bytes=max_body_bytes, max_history=max_history,
                           max_item_chars=max_item_chars, max_batch=max_batch, max_k=max_k,
                           max_grow_items=max_grow_items, max_grow_pairs=max_grow_pairs,
                           max_item_text_chars=max_item_text_chars)
    roots = None if adapter_roots is None else [Path(r).resolve() for r in adapter_roots]
    if roots is None:
        logger.warning("admin PUT may load adapters from any local path: pass adapter_roots "
                       "to restrict it")
    RecommendRequest, BatchRequest = request_models(limits)
    GrowRequest = grow_model(limits)
    description = (f"{__doc__.splitlines()[0]}\n\nLimits: bodies of at most "
                   f"{limits.max_body_bytes} bytes (413 past that), histories of at most "
                   f"{limits.max_history} items of at most {limits.max_item_chars} characters, "
                   f"batches of at most {limits.max_batch} requests, k at most {limits.max_k}. "
                   "NaN and Infinity are not JSON and are refused (422).")
    metrics = Metrics()
    readiness = Readiness([info["region"] for info in recommender.regions()],
                          [region for region, _ in preload])
    labels = set(readiness.expected)  # regions that may be metric labels (grows on loads)

    def load_configured() -> None:
        for region, source in preload:
            try:
                recommender.load(region, source)
            except Exception as err:  # noqa: BLE001 - any failure: reported, others go on
                metrics.observe_load_failure()
                cause = err.__cause__ or err
                readiness.failed_to_load(region, f"cannot load the adapter from "
                                         f"{public_path(str(source), roots)}: "
                                         f"{type(cause).__name__}")
                logger.error("region %s: %s", region, err)
            else:
                labels.add(region)
                readiness.loaded(region)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if preload:
            threading.Thread(target=load_configured, name="regiontune-preload",
                             daemon=True).start()
        yield

    assets = docs_assets()
    app = FastAPI(title="regiontune", version="1", description=description, docs_url=None,
                  redoc_url=None, lifespan=lifespan)
    app.router.route_class = StrictJSONRoute
    add_error_handlers(app)
    app.state.limits = limits
    app.state.metrics = metrics  # Metrics.observe_batch: for a batcher to report its batches
    app.state.readiness = readiness
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too
    admin, reader = token_dependencies(admin_token, read_token)
    too_large = error_doc(f"body larger than {limits.max_body_bytes} bytes")
    invalid = error_doc("invalid request: malformed JSON, NaN/Infinity, wrong type, a limit "
                        "exceeded, or a bad region name")
    unknown = error_doc("no adapter loaded for the region (when unknown regions are refused)")
    unauthorised = error_doc("missing or wrong bearer token")
    read_auth = {401: error_doc("missing or wrong bearer token (read or admin token)")} \
        if read_token is not None else {}
    read_errors = {413: too_large, 422: invalid, 404: unknown, **read_auth}

    def public(info: dict[str, Any]) -> dict[str, Any]:
        return {**info, "path": public_path(info["path"], roots)}

    def answer_counted(requests: list) -> list[dict[str, Any]]:
        rows = [r.region for r in requests]
        try:
            out = answer(recommender, requests, metrics.observe_batch)
        except HTTPException as err:
            metrics.observe_rows(rows, labels, err.status_code)
            raise
        except Exception:
            metrics.observe_rows(rows, labels, 500)
            raise
        metrics.observe_rows(rows, labels)
        return out

    @app.post("/v1/recommend", response_model=Recommendation, responses=read_errors,
              dependencies=reader)
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        """Top-k items of one region's catalogue for one history."""
        return answer_counted([body])[0]

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=read_errors,
              dependencies=reader)
    def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        """Several requests (any regions) answered together."""
        return {"results": answer_counted(body.requests)}

    @app.get("/v1/regions", response_model=list[RegionInfo], responses=read_auth,
             dependencies=reader)
    def regions() -> list[dict[str, Any]]:
        """The loaded region adapters."""
        return [public(info) for info in recommender.regions()]

    RegionPath = Annotated[str, PathParam(pattern=REGION_PATTERN, max_length=64,
                                          description="region name")]

    @app.get("/v1/regions/{region}", response_model=RegionInfo, dependencies=reader,
             responses={404: error_doc("no adapter loaded for the region"),
                        422: error_doc("bad region name"), **read_auth})
    def region_info(region: RegionPath) -> dict[str, Any]:
        """One loaded region adapter (paths relative to their adapter root, or hub ids)."""
        check_region(region)  # 422 (add_error_handlers)
        for info in recommender.regions():
            if info["region"] == region:
                return public(info)
        raise HTTPException(404, f"region {region!r} is not loaded (GET /v1/regions lists "
                                 "the loaded ones)")

    @app.put("/v1/regions/{region}", response_model=RegionInfo, dependencies=admin,
             responses={401: unauthorised,
                        403: error_doc("the read token, or a local path outside the adapter "
                                       "roots"),
                        413: too_large,
                        422: error_doc("invalid request, or the adapter cannot be loaded (the "
                                       "old one keeps serving)")})
    def put_region(region: RegionPath, body: LoadRequest) -> dict[str, Any]:
        """Load or replace a region's adapter; on failure the old one keeps serving (422)."""
        check_region(region)  # 422 (add_error_handlers)
        source = adapter_source(body.path, roots)
        try:
            info = recommender.load(region, source, same_region=not body.allow_other_region)
        except AdapterLoadError as err:
            metrics.observe_load_failure()
            # the client named body.path: the answer never shows where it lies on this host
            raise AdapterLoadError(str(err).replace(str(source), body.path)) from None
        labels.add(region)
        readiness.loaded(region)
        logger.info("admin: region %s now served from %s", region, body.path)
        return public(info)

    @app.delete("/v1/regions/{region}", dependencies=admin,
                responses={401: unauthorised, 403: error_doc("the read token"),
                           404: error_doc("region not loaded"), 422: invalid})
    def delete_region(region: RegionPath) -> dict[str, str]:
        """Unload a region's adapter."""
        check_region(region)  # 422 (add_error_handlers)
        try:
            recommender.unload(region)
        except UnknownRegionError as err:
            raise HTTPException(404, str(err)) from err
        readiness.dropped(region)
        return {"region": region, "status": "unloaded"}

    @app.post("/v1/regions/{region}/items", response_model=GrowResponse, dependencies=admin,
              responses={401: unauthorised, 403: error_doc("the read token"),
                         404: error_doc("region not loaded"),
                         409: error_doc("persist asked but the adapter's folder cannot be "
                                        "rewritten (a hub adapter, outside the adapter roots, "
                                        "or no longer the adapter served): nothing changed"),
                         413: too_large,
                         503: error_doc("texts sent, but the server's text encoder is "
                                        "missing"),
                         422: error_doc("invalid request: no items, too many, blank ids, "
                                        "every item already in the catalogue, ...")})
    def grow_region(region: RegionPath, body: GrowRequest) -> dict[str, Any]:
        """Add items to a loaded region's catalogue without retraining, and hot-swap the
        grown adapter in (old items keep their rows; requests in flight finish with the old
        one). In memory only unless ``persist`` (see the body's fields)."""
        check_region(region)  # 422 (add_error_handlers)
        loaded = {info["region"]: info for info in recommender.regions()}
        if region not in loaded:
            raise HTTPException(404, f"region {region!r} is not loaded (GET /v1/regions lists "
                                     "the loaded ones)")
        target = persist_target(loaded[region]["path"]) if body.persist else None
        try:
            out = recommender.grow(region, body.items, [list(p) for p in body.pairs], target,
                                   texts=body.texts)
        except UnknownRegionError as err:  # unloaded meanwhile
            raise HTTPException(404, str(err)) from err
        except TextEncodingError as err:
            raise HTTPException(503, str(err)) from err
        except PersistError as err:
            raise HTTPException(409, str(err)) from err
        logger.info("admin: region %s grown by %d item(s)%s", region, len(out["added"]),
                    " (persisted)" if out["persisted"] else "")
        return {**out, "path": public_path(out["path"], roots)}

    def persist_target(path: str) -> Path:
        """The served adapter's folder, when a grow may rewrite it: a local directory inside
        the adapter roots (any local directory when the app has no roots: library use)."""
        local = Path(path)
        if not local.is_dir():
            raise HTTPException(409, "cannot persist: this adapter was not loaded from a local "
                                     "folder (a hub id); grow without persist, or load it "
                                     "from an adapter root")
        real = local.resolve()
        if roots is not None and not any(real.is_relative_to(root) for root in roots):
            raise HTTPException(409, "cannot persist: the adapter's folder is outside the "
                                     "adapter roots")
        return real

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers (never needs a token)."""
        return {"status": "ok", "regions": len(recommender.regions()),
                "backbone": recommender.fingerprint}

    @app.get("/readyz", response_model=ReadyResponse,
             responses={503: {"model": ReadyResponse, "description": "not ready: the answer "
                              "says why (adapters loading, failed or missing)"}})
    def readyz() -> JSONResponse:
        """Readiness: 200 when the backbone and every configured adapter are loaded, else
        503 (never needs a token)."""
        loaded = {info["region"] for info in recommender.regions()}
        body = readiness.answer(loaded, recommender.fingerprint,
                                lambda region: recommender.lazy_dir(region) is not None)
        return JSONResponse(body, status_code=200 if body["status"] == "ready" else 503)

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=reader,
             responses=read_auth)
    def prometheus() -> PlainTextResponse:
        """Prometheus text format: HTTP requests, latency, requests in flight, rows and errors
        per region, adapter load failures, rows per recommend call, recommender counters."""
        return PlainTextResponse(metrics.render(recommender.stats()),
                                 media_type="text/plain; version=0.0.4")

    if assets is not None:
        add_docs_routes(app, assets)

    return app


def answer(recommender: Recommender, requests: list,
           observe_batch: Any = None) -> list[dict[str, Any]]:
    """Recommendations for validated requests, in their order, each cut to its own ``k``.

    ``exclude_seen`` may differ per request: grouped so that each call is one mixed pass
    (``observe_batch(rows)`` is called with the rows of each that ran). 404 for a region without an
    adapter when the recommender refuses those."""
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
            raise HTTPException(404, f"{err}; this server refuses regions without an "
                                     "adapter (start it with --unknown-region backbone "
                                     "to serve them un-adapted)") from err
        if observe_batch is not None:
            observe_batch(len(rows))
        for i, result in zip(rows, got, strict=True):
            kk, unknown_items = requests[i].k, result["unknown_items"]
            out[i] = {**result, "items": result["items"][:kk],
                      "scores": result["scores"][:kk],
                      "unknown_items": unknown_items[:MAX_UNKNOWN_ECHO],
                      "unknown_count": len(unknown_items)}
    return out
