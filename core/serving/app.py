"""HTTP API over a :class:`~regiontune.serving.recommender.Recommender` (FastAPI).

Routes: ``POST /v1/recommend``, ``POST /v1/recommend/batch`` (one mixed-region pass),
``GET /v1/regions``, ``PUT``/``DELETE /v1/regions/{region}`` (admin: ``Authorization: Bearer``
when a token is configured), ``GET /healthz``, ``GET /metrics`` (Prometheus text format).

Every input gets an answer, bad input a 4xx with a message; the server keeps serving. Limits
(:class:`ServingLimits`: body bytes, history length, item id length, batch size, ``k``) are
checked before any work and published in the OpenAPI schema. One status per kind of error:

* 401: admin route without the right bearer token;
* 403: ``PUT`` of a local path outside the adapter roots (or with no roots configured);
* 404: no such route; no adapter loaded for the region (``DELETE``, or a recommendation when
  unknown regions are refused);
* 413: body larger than ``max_body_bytes`` (refused before it is read in full);
* 422: the request does not validate: malformed JSON, ``NaN`` / ``Infinity``, lone surrogates,
  wrong types, limits exceeded, bad region name; or the adapter cannot be loaded (corrupt,
  pickled, foreign backbone, non-finite weights, hub unreachable or past its deadline).
"""

# No ``from __future__ import annotations`` here: the request models are built per app (their
# limits are configurable) and FastAPI reads route annotations as objects.

import hmac
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from regiontune.artifacts import ADAPTER_META
from regiontune.serving.errors import UnknownRegionError, check_region
from regiontune.serving.fetch import HUB_ID
from regiontune.serving.http_errors import StrictJSONRoute, add_error_handlers, clip
from regiontune.serving.middleware import BodyLimitMiddleware, Metrics, MetricsMiddleware
from regiontune.serving.recommender import Recommender
from regiontune.serving.schemas import (
    MAX_UNKNOWN_ECHO,
    REGION_PATTERN,
    BatchResponse,
    LoadRequest,
    Recommendation,
    RegionInfo,
    ServingLimits,
    error_doc,
    request_models,
)

__all__ = ["ServingLimits", "adapter_dirs", "adapter_source", "create_app", "public_path",
           "serve"]
logger = logging.getLogger(__name__)
TOKEN_ENV = "REGIONTUNE_ADMIN_TOKEN"


def create_app(recommender: Recommender, admin_token: str | None = None, max_history: int = 200,
               max_k: int = 1000, max_batch: int = 256, max_body_bytes: int = 2 * 2**20,
               max_item_chars: int = 256,
               adapter_roots: Sequence[str | Path] | None = None) -> FastAPI:
    """The FastAPI application serving ``recommender``.

    ``adapter_roots``: the directories an admin ``PUT`` may load local adapters from (a path
    relative to a root, or an absolute one inside a root; symbolic links resolved first);
    ``[]`` allows hub ids only. ``None`` (the library default, kept for in-process use) allows
    any local path and logs a warning; :func:`serve` always passes the roots.
    """
    limits = ServingLimits(max_body_bytes=max_body_bytes, max_history=max_history,
                           max_item_chars=max_item_chars, max_batch=max_batch, max_k=max_k)
    roots = None if adapter_roots is None else [Path(r).resolve() for r in adapter_roots]
    if roots is None:
        logger.warning("admin PUT may load adapters from any local path: pass adapter_roots "
                       "to restrict it")
    RecommendRequest, BatchRequest = request_models(limits)
    description = (f"{__doc__.splitlines()[0]}\n\nLimits: bodies of at most "
                   f"{limits.max_body_bytes} bytes (413 past that), histories of at most "
                   f"{limits.max_history} items of at most {limits.max_item_chars} characters, "
                   f"batches of at most {limits.max_batch} requests, k at most {limits.max_k}. "
                   "NaN and Infinity are not JSON and are refused (422).")
    app = FastAPI(title="regiontune", version="1", description=description)
    app.router.route_class = StrictJSONRoute
    add_error_handlers(app)
    app.state.limits = limits
    metrics = Metrics()
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too
    bearer = HTTPBearer(auto_error=False, description=f"the admin token (${TOKEN_ENV}); "
                        "required on admin routes when the server has one")
    too_large = error_doc(f"body larger than {limits.max_body_bytes} bytes")
    invalid = error_doc("invalid request: malformed JSON, NaN/Infinity, wrong type, a limit "
                        "exceeded, or a bad region name")
    unknown = error_doc("no adapter loaded for the region (when unknown regions are refused)")
    read_errors = {413: too_large, 422: invalid, 404: unknown}

    def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                             Depends(bearer)]) -> None:
        # a dependency: checked before the body is validated
        if admin_token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
            raise HTTPException(401, "admin route: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    def public(info: dict[str, Any]) -> dict[str, Any]:
        return {**info, "path": public_path(info["path"], roots)}

    @app.post("/v1/recommend", response_model=Recommendation, responses=read_errors)
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        """Top-k items of one region's catalogue for one history."""
        return answer(recommender, [body])[0]

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=read_errors)
    def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        """Several requests (any regions) answered together."""
        return {"results": answer(recommender, body.requests)}

    @app.get("/v1/regions", response_model=list[RegionInfo])
    def regions() -> list[dict[str, Any]]:
        """The loaded region adapters."""
        return [public(info) for info in recommender.regions()]

    admin = [Depends(require_admin)]
    RegionPath = Annotated[str, PathParam(pattern=REGION_PATTERN, max_length=64,
                                          description="region name")]
    unauthorised = error_doc("missing or wrong bearer token")

    @app.put("/v1/regions/{region}", response_model=RegionInfo, dependencies=admin,
             responses={401: unauthorised,
                        403: error_doc("local path outside the adapter roots"),
                        413: too_large,
                        422: error_doc("invalid request, or the adapter cannot be loaded (the "
                                       "old one keeps serving)")})
    def put_region(region: RegionPath, body: LoadRequest) -> dict[str, Any]:
        """Load or replace a region's adapter; on failure the old one keeps serving (422)."""
        check_region(region)  # 422 (add_error_handlers)
        source = adapter_source(body.path, roots)
        info = recommender.load(region, source)
        logger.info("admin: region %s now served from %s", region, body.path)
        return public(info)

    @app.delete("/v1/regions/{region}", dependencies=admin,
                responses={401: unauthorised, 404: error_doc("region not loaded"),
                           422: invalid})
    def delete_region(region: RegionPath) -> dict[str, str]:
        """Unload a region's adapter."""
        check_region(region)  # 422 (add_error_handlers)
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
        return PlainTextResponse(metrics.render(recommender.stats()),
                                 media_type="text/plain; version=0.0.4")

    return app


def answer(recommender: Recommender, requests: list) -> list[dict[str, Any]]:
    """Recommendations for validated requests, in their order, each cut to its own ``k``.

    ``exclude_seen`` may differ per request: grouped so that each call is one mixed pass.
    404 for a region without an adapter when the recommender refuses those."""
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
        for i, result in zip(rows, got, strict=True):
            kk, unknown_items = requests[i].k, result["unknown_items"]
            out[i] = {**result, "items": result["items"][:kk],
                      "scores": result["scores"][:kk],
                      "unknown_items": unknown_items[:MAX_UNKNOWN_ECHO],
                      "unknown_count": len(unknown_items)}
    return out


def adapter_source(text: str, roots: list[Path] | None) -> str | Path:
    """What a ``PUT`` body's ``path`` names: a local directory inside an adapter root (a
    resolved :class:`Path`) or a hub id (``str``). HTTPException 403 / 422 otherwise; decided
    from the path alone (no directory is walked)."""
    if "\x00" in text:
        raise HTTPException(422, "path holds a NUL character")
    if roots is None:  # unrestricted: the recommender tells directories from hub ids
        return text
    given = Path(text)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = False
    for candidate in candidates:
        try:
            real = candidate.resolve()
            if any(real.is_relative_to(root) for root in roots):
                inside = True
                if real.is_dir():
                    return real
        except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
            raise HTTPException(422, f"cannot resolve path {clip(text, 200)!r}: "
                                     f"{type(err).__name__}") from err
    if not given.is_absolute() and HUB_ID.fullmatch(text):
        return text
    if not inside:
        hint = ("start the server with --adapter-root DIR to allow local adapters" if not roots
                else "give a path relative to an adapter root, or a hub id ORG/NAME")
        raise HTTPException(403, f"path {clip(text, 200)!r} is outside the adapter roots: "
                                 f"{hint}")
    raise HTTPException(422, f"no adapter directory {clip(text, 200)!r} under the adapter "
                             "roots: check the name (GET /v1/regions shows the loaded ones)")


def public_path(path: str, roots: list[Path] | None) -> str:
    """A served adapter's source as shown to clients: relative to its adapter root, a hub id,
    or the folder's name; never an absolute server path."""
    local = Path(path)
    try:
        if not local.is_absolute() and not local.exists():
            return path  # a hub id
        real = local.resolve()
    except (OSError, RuntimeError):
        return local.name
    for root in roots or []:
        if real.is_relative_to(root):
            return real.relative_to(root).as_posix() or "."
    return real.name


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
          unknown_region: str = "error", adapters: list[tuple[str, str]] | None = None,
          adapter_roots: Sequence[str | Path] = (), limits: ServingLimits | None = None,
          hub_timeout_s: float = 10.0, hub_deadline_s: float = 120.0,
          batch_wait_ms: float = 2.0, max_loaded_adapters: int | None = None,
          adapter_memory_mb: float | None = None) -> None:
    """Load the backbone, every adapter under ``adapters_dir`` and each ``(region, source)``
    of ``adapters`` (a directory or a hub id ``org/name[@revision]``), then run uvicorn.

    Admin ``PUT`` loads local adapters only from ``adapters_dir`` and ``adapter_roots``.
    Unknown regions get a 404 unless ``unknown_region="backbone"``. Hub requests give up after
    ``hub_timeout_s`` without connecting or without a byte, a whole download after
    ``hub_deadline_s``. Without ``admin_token``, ``$REGIONTUNE_ADMIN_TOKEN`` is used (keeps it
    off command lines). Temporary download folders are removed on shutdown.
    ``batch_wait_ms``: dynamic batching of concurrent requests (0: off; rows per pass:
    ``limits.max_batch``). With ``max_loaded_adapters`` or ``adapter_memory_mb``, the adapter
    roots' regions load on first request (as many as fit are preloaded) and the least
    recently used are evicted past the budget.
    """
    import uvicorn

    from regiontune.hub.client import set_timeouts

    limits = limits or ServingLimits()
    admin_token = admin_token or os.environ.get(TOKEN_ENV) or None
    roots = [Path(r) for r in ([adapters_dir] if adapters_dir is not None else [])]
    roots += [Path(r) for r in adapter_roots]
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such adapter root directory")
    set_timeouts(hub_timeout_s, hub_timeout_s)
    lazy = max_loaded_adapters is not None or adapter_memory_mb is not None
    recommender = Recommender.from_dirs(backbone_dir, [] if lazy else adapter_dirs(adapters_dir),
                                        unknown_region=unknown_region,
                                        hub_deadline_s=hub_deadline_s,
                                        batch_wait_ms=batch_wait_ms, max_batch=limits.max_batch,
                                        max_loaded=max_loaded_adapters,
                                        adapter_memory_mb=adapter_memory_mb,
                                        lazy_roots=roots if lazy else ())
    try:
        for region, source in adapters or []:
            recommender.load(region, source)
        if lazy:
            recommender.preload()
        if admin_token is None and host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("admin routes are open to anyone who can reach %s:%s; set %s",
                           host, port, TOKEN_ENV)
        logger.info("serving %d regions on %s:%s (unknown regions: %s)",
                    len(recommender.regions()), host, port, unknown_region)
        app = create_app(recommender, admin_token=admin_token, adapter_roots=roots,
                         **limits.__dict__)
        uvicorn.run(app, host=host, port=port)
    finally:
        recommender.close()
