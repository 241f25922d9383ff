"""Bearer tokens of the HTTP API: the admin token opens admin routes, the read token (or the
admin token) read routes; compared in constant time. No token configured: the routes are open.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependencies' annotations, which
# name the per-app bearer schemes, as objects.

import hmac
from typing import Annotated, Any

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

__all__ = ["READ_TOKEN_ENV", "TOKEN_ENV", "token_dependencies"]
TOKEN_ENV = "REGIONTUNE_ADMIN_TOKEN"
READ_TOKEN_ENV = "REGIONTUNE_READ_TOKEN"


def _same(given: str, token: str | None) -> bool:
    """``given`` equals ``token`` (constant-time; never with no token configured)."""
    return token is not None and hmac.compare_digest(given.encode(), token.encode())


def token_dependencies(admin_token: str | None, read_token: str | None
                       ) -> tuple[list[Any], list[Any]]:
    """The route dependencies ``(admin, reader)``: the admin routes' token check (a no-op
    without an admin token) and the read routes' (none without a read token). Checked before
    the body is validated; both bearer schemes appear in the OpenAPI schema."""
    bearer = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                        description=f"the admin token (${TOKEN_ENV}); required on admin "
                                    "routes when the server has one")
    read_bearer = HTTPBearer(auto_error=False, scheme_name="ReadToken",
                             description=f"the read token (${READ_TOKEN_ENV}; the admin token "
                                         "is accepted too); required on read routes when the "
                                         "server has one")

    def require_admin(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                             Depends(bearer)]) -> None:
        # a dependency: checked before the body is validated
        if admin_token is None:
            return
        given = credentials.credentials.strip() if credentials is not None else ""
        is_admin, is_reader = _same(given, admin_token), _same(given, read_token)
        if is_admin:
            return
        if is_reader:
            raise HTTPException(403, "admin route: the read token does not open it; send the "
                                     "admin token")
        raise HTTPException(401, "admin route: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})

    def require_reader(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                              Depends(read_bearer)]) -> None:
        given = credentials.credentials.strip() if credentials is not None else ""
        is_reader, is_admin = _same(given, read_token), _same(given, admin_token)
        if not (is_reader or is_admin):
            raise HTTPException(401, "read route: send Authorization: Bearer <read token>",
                                headers={"WWW-Authenticate": "Bearer"})

    reader = [Depends(require_reader)] if read_token is not None else []
    return [Depends(require_admin)], reader
