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
import json
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    create_model,
)

from regiontune.artifacts import ADAPTER_META
from regiontune.serving.recommender import (
    HUB_ID,
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
MAX_UNKNOWN_ECHO = 20  # unknown history items echoed back per answer (all are counted)
MAX_ERRORS = 20  # validation errors listed per answer (the rest are counted)


@dataclass(frozen=True)
class ServingLimits:
    """Per-request bounds, enforced before any work (defaults sized for one CPU process)."""

    max_body_bytes: int = 2 * 2**20  # 413 past this; a full batch of long histories fits
    max_history: int = 200  # items per history (the backbone reads at most max_len anyway)
    max_item_chars: int = 256  # characters per item id
    max_batch: int = 256  # requests per batch (scores: batch x catalogue floats)
    max_k: int = 1000  # items returned per request

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"serving limit {name} must be a positive integer, not "
                                 f"{value!r}")


# ---------------------------------------------------------------- strict JSON

class _BadJSON(ValueError):
    """JSON that parses in Python but that the API refuses (non-finite numbers, ...)."""


def _no_constant(name: str) -> Any:
    raise _BadJSON(f"{name} is not a JSON number: send finite numbers only")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJSON(f"number {_clip(text, 40)} overflows a 64-bit float: send finite "
                       "numbers only")
    return value


def _check_strings(value: Any) -> None:
    """Every string (keys too) must be encodable: a ``\\ud800`` escape alone is not text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, list):
            stack.extend(item)
            continue
        elif isinstance(item, dict):
            stack.extend(item.values())
            strings = list(item)
        else:
            continue
        for s in strings:
            if not s.isascii():
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError as err:
                    raise _BadJSON("strings must be valid Unicode: a lone surrogate escape "
                                   "(\\ud800-\\udfff without its pair) was sent") from err


def strict_json(body: bytes | str) -> Any:
    """Parse a request body as JSON the way the API accepts it.

    Refused (as :class:`json.JSONDecodeError`, which FastAPI answers with a 422): malformed
    JSON, ``NaN`` / ``Infinity`` / numbers that overflow a float (Python's parser takes them,
    JSON does not, and they cannot be sent back), integers past Python's digit limit, invalid
    UTF-8, nesting deep enough to exhaust the parser, lone surrogates.
    """
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
        _check_strings(value)
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as err:  # _BadJSON, digit limit, UnicodeDecodeError
        reason = str(err) if isinstance(err, ValueError) else "nested too deeply"
        raise json.JSONDecodeError(_clip(reason, 200), "", 0) from err
    return value


class _StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """A route whose JSON body is parsed by :func:`strict_json`."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def strict(request: Request):
            return await handler(_StrictJSONRequest(request.scope, request.receive))

        return strict


class BodyLimitMiddleware:
    """Pure ASGI middleware: a body over ``max_bytes`` is answered 413 before it is read in
    full (a ``Content-Length`` over the limit: before any of it is read); the body is
    otherwise read here and replayed to the app."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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


def _clip(text: Any, limit: int) -> str:
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def validation_errors(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic / FastAPI errors as sent back: location, message, type; the client's input
    is never echoed (it may be megabytes), long keys and messages are clipped."""
    out = []
    for err in errors[:MAX_ERRORS]:
        msg = str(err.get("msg", "invalid"))
        ctx = err.get("ctx") or {}
        if err.get("type") == "json_invalid" and ctx.get("error"):
            msg = f"{msg}: {ctx['error']}"
        loc = [part if isinstance(part, int) and not isinstance(part, bool) else
               _clip(str(part), 64) for part in err.get("loc", ())]
        out.append({"loc": loc, "msg": _clip(msg, 300), "type": str(err.get("type", "?"))})
    if len(errors) > MAX_ERRORS:
        out.append({"loc": [], "msg": f"... and {len(errors) - MAX_ERRORS} more errors",
                    "type": "too_many_errors"})
    return out


# ---------------------------------------------------------------- schema

def _region(value: str) -> str:
    try:
        return check_region(value)
    except InvalidRequestError as err:
        raise ValueError(str(err)) from None


Region = Annotated[StrictStr, Field(pattern=REGION_PATTERN, description="region name: 1-64 "
                                    "letters, digits, '_', '-' or '.', without '..'"),
                   AfterValidator(_region)]


def request_models(limits: ServingLimits) -> tuple[type[BaseModel], type[BaseModel]]:
    """The request body models under ``limits`` (so that the OpenAPI schema states them)."""
    item = Annotated[StrictStr, StringConstraints(max_length=limits.max_item_chars)]
    one = create_model(
        "RecommendRequest", __config__=ConfigDict(extra="forbid"),
        __doc__="One user's request.",
        region=(Region, ...),
        history=(list[item], Field(default_factory=list, max_length=limits.max_history,
                                   description=f"item ids, oldest first (at most "
                                               f"{limits.max_history}, each at most "
                                               f"{limits.max_item_chars} characters)")),
        k=(StrictInt, Field(10, ge=1, le=limits.max_k, description="number of items to "
                                                                    "return")),
        exclude_seen=(StrictBool, Field(True, description="never recommend history items")))
    batch = create_model(
        "BatchRequest", __config__=ConfigDict(extra="forbid"),
        __doc__="Several users, possibly of several regions: served in as few forward passes "
                "as can be.",
        requests=(list[one], Field(min_length=1, max_length=limits.max_batch)))
    return one, batch


class Recommendation(BaseModel):
    region: str
    items: list[str]
    scores: list[float]
    adapted: bool = Field(description="false when the un-adapted backbone served the region")
    unknown_items: list[str] = Field(description=f"history items the region does not know "
                                                 f"(the first {MAX_UNKNOWN_ECHO})")
    unknown_count: int = Field(0, description="how many history items the region does not "
                                              "know")


class BatchResponse(BaseModel):
    results: list[Recommendation]


class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: StrictStr = Field(min_length=1, max_length=4096,
                            description="adapter directory (relative to an adapter root, or "
                                        "absolute inside one) or hub id ORG/NAME[@REVISION]")


class RegionInfo(BaseModel):
    region: str
    method: str
    served_as: str
    path: str = Field(description="relative to its adapter root, a hub id, or the folder's "
                                  "name: never an absolute server path")
    fingerprint_ok: bool
    n_items: int
    new_items: int
    internal_name: str
    tensor_bytes: int | None = Field(None, description="adapter weights + low-rank item side")
    loaded_at: str


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: str | list[ErrorItem]


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


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
    app.state.limits = limits
    metrics = Metrics()
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too
    bearer = HTTPBearer(auto_error=False, description=f"the admin token (${TOKEN_ENV}); "
                        "required on admin routes when the server has one")
    too_large = _error(f"body larger than {limits.max_body_bytes} bytes")
    invalid = _error("invalid request: malformed JSON, NaN/Infinity, wrong type, a limit "
                     "exceeded, or a bad region name")
    unknown = _error("no adapter loaded for the region (when unknown regions are refused)")
    read_errors = {413: too_large, 422: invalid, 404: unknown}

    def run(requests: list) -> list[dict[str, Any]]:
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
                raise HTTPException(404, f"{err}; this server refuses regions without an "
                                         "adapter (start it with --unknown-region backbone "
                                         "to serve them un-adapted)") from err
            except InvalidRequestError as err:
                raise HTTPException(422, str(err)) from err
            for i, result in zip(rows, got, strict=True):
                kk, unknown_items = requests[i].k, result["unknown_items"]
                out[i] = {**result, "items": result["items"][:kk],
                          "scores": result["scores"][:kk],
                          "unknown_items": unknown_items[:MAX_UNKNOWN_ECHO],
                          "unknown_count": len(unknown_items)}
        return out

    def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                             Depends(bearer)]) -> None:
        # a dependency: checked before the body is validated
        if admin_token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
            raise HTTPException(401, "admin route: send Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    def path_region(region: str) -> str:
        try:
            return check_region(region)
        except InvalidRequestError as err:
            raise HTTPException(422, str(err)) from err

    def public(info: dict[str, Any]) -> dict[str, Any]:
        return {**info, "path": public_path(info["path"], roots)}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(err.errors())}, status_code=422)

    @app.exception_handler(AdapterLoadError)
    async def _load_failed(request: Request, err: AdapterLoadError) -> JSONResponse:
        return JSONResponse({"detail": _clip(str(err), 2000)}, status_code=422)

    @app.post("/v1/recommend", response_model=Recommendation, responses=read_errors)
    def recommend(body: RecommendRequest) -> dict[str, Any]:
        """Top-k items of one region's catalogue for one history."""
        return run([body])[0]

    @app.post("/v1/recommend/batch", response_model=BatchResponse, responses=read_errors)
    def recommend_batch(body: BatchRequest) -> dict[str, Any]:
        """Several requests (any regions) answered together."""
        return {"results": run(body.requests)}

    @app.get("/v1/regions", response_model=list[RegionInfo])
    def regions() -> list[dict[str, Any]]:
        """The loaded region adapters."""
        return [public(info) for info in recommender.regions()]

    admin = [Depends(require_admin)]
    RegionPath = Annotated[str, PathParam(pattern=REGION_PATTERN, max_length=64,
                                          description="region name")]
    unauthorised = _error("missing or wrong bearer token")

    @app.put("/v1/regions/{region}", response_model=RegionInfo, dependencies=admin,
             responses={401: unauthorised, 403: _error("local path outside the adapter roots"),
                        413: too_large,
                        422: _error("invalid request, or the adapter cannot be loaded (the "
                                    "old one keeps serving)")})
    def put_region(region: RegionPath, body: LoadRequest) -> dict[str, Any]:
        """Load or replace a region's adapter; on failure the old one keeps serving (422)."""
        path_region(region)
        source = adapter_source(body.path, roots)
        info = recommender.load(region, source)
        logger.info("admin: region %s now served from %s", region, body.path)
        return public(info)

    @app.delete("/v1/regions/{region}", dependencies=admin,
                responses={401: unauthorised, 404: _error("region not loaded"),
                           422: invalid})
    def delete_region(region: RegionPath) -> dict[str, str]:
        """Unload a region's adapter."""
        path_region(region)
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
            raise HTTPException(422, f"cannot resolve path {_clip(text, 200)!r}: "
                                     f"{type(err).__name__}") from err
    if not given.is_absolute() and HUB_ID.fullmatch(text):
        return text
    if not inside:
        hint = ("start the server with --adapter-root DIR to allow local adapters" if not roots
                else "give a path relative to an adapter root, or a hub id ORG/NAME")
        raise HTTPException(403, f"path {_clip(text, 200)!r} is outside the adapter roots: "
                                 f"{hint}")
    raise HTTPException(422, f"no adapter directory {_clip(text, 200)!r} under the adapter "
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
          hub_timeout_s: float = 10.0, hub_deadline_s: float = 120.0) -> None:
    """Load the backbone, every adapter under ``adapters_dir`` and each ``(region, source)``
    of ``adapters`` (a directory or a hub id ``org/name[@revision]``), then run uvicorn.

    Admin ``PUT`` loads local adapters only from ``adapters_dir`` and ``adapter_roots``.
    Unknown regions get a 404 unless ``unknown_region="backbone"``. Hub requests give up after
    ``hub_timeout_s`` without connecting or without a byte, a whole download after
    ``hub_deadline_s``. Without ``admin_token``, ``$REGIONTUNE_ADMIN_TOKEN`` is used (keeps it
    off command lines). Temporary download folders are removed on shutdown.
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
    recommender = Recommender.from_dirs(backbone_dir, adapter_dirs(adapters_dir),
                                        unknown_region=unknown_region,
                                        hub_deadline_s=hub_deadline_s)
    try:
        for region, source in adapters or []:
            recommender.load(region, source)
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
