"""How the HTTP API refuses input: strict JSON parsing (422 for what JSON does not allow),
validation errors as sent back (bounded, never echoing the input), and the exception handlers
that answer a recommender's errors with their status."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from regiontune.serving.errors import AdapterLoadError, InvalidRequestError

MAX_ERRORS = 20  # validation errors listed per answer (the rest are counted)


def clip(text: Any, limit: int) -> str:
    """``text`` (or its repr) cut to ``limit`` characters, saying how long it was."""
    text = text if isinstance(text, str) else repr(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# ---------------------------------------------------------------- strict JSON

class _BadJSON(ValueError):
    """JSON that parses in Python but that the API refuses (non-finite numbers, ...)."""


def _no_constant(name: str) -> Any:
    raise _BadJSON(f"{name} is not a JSON number: send finite numbers only")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadJSON(f"number {clip(text, 40)} overflows a 64-bit float: send finite "
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
        raise json.JSONDecodeError(clip(reason, 200), "", 0) from err
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


# ---------------------------------------------------------------- answers

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
               clip(str(part), 64) for part in err.get("loc", ())]
        out.append({"loc": loc, "msg": clip(msg, 300), "type": str(err.get("type", "?"))})
    if len(errors) > MAX_ERRORS:
        out.append({"loc": [], "msg": f"... and {len(errors) - MAX_ERRORS} more errors",
                    "type": "too_many_errors"})
    return out


def add_error_handlers(app: FastAPI) -> None:
    """422 for a request that does not validate (the errors listed), for a bad call the
    recommender refuses (:class:`InvalidRequestError`: a bad region name, ...) and for an
    adapter that cannot be loaded (its message, clipped)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(err.errors())}, status_code=422)

    @app.exception_handler(InvalidRequestError)
    async def _refused(request: Request, err: InvalidRequestError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(AdapterLoadError)
    async def _load_failed(request: Request, err: AdapterLoadError) -> JSONResponse:
        return JSONResponse({"detail": clip(str(err), 2000)}, status_code=422)
