"""``/docs`` (Swagger UI) and ``/redoc`` from the installed ``fastapi-offline`` assets: no CDN;
without the assets neither route is served (``/openapi.json`` stays)."""

import importlib.util
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

__all__ = ["DOC_ASSETS", "add_docs_routes", "docs_assets"]

# Swagger UI and ReDoc files shipped by the fastapi-offline package: name -> media type
DOC_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
              "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}


def docs_assets() -> Path | None:
    """The folder holding :data:`DOC_ASSETS` (the installed ``fastapi-offline`` package's
    static files), or ``None``: then ``/docs`` and ``/redoc`` are not served."""
    try:
        spec = importlib.util.find_spec("fastapi_offline")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    static = Path(spec.origin).parent / "static"
    return static if all((static / name).is_file() for name in DOC_ASSETS) else None


def add_docs_routes(app: FastAPI, assets: Path) -> None:
    """Serve ``/docs``, ``/redoc`` and their files from ``assets`` (:func:`docs_assets`)."""

    def asset_url(request: Request, name: str) -> str:
        return f"{request.scope.get('root_path', '')}/docs/assets/{name}"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title="regiontune - Swagger UI",
            swagger_js_url=asset_url(request, "swagger-ui-bundle.js"),
            swagger_css_url=asset_url(request, "swagger-ui.css"),
            swagger_favicon_url=asset_url(request, "favicon.png"))

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title="regiontune - ReDoc", redoc_js_url=asset_url(request, "redoc.standalone.js"),
            redoc_favicon_url=asset_url(request, "favicon.png"), with_google_fonts=False)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def doc_asset(name: str) -> FileResponse:
        if name not in DOC_ASSETS:
            raise HTTPException(404, "no such documentation asset")
        return FileResponse(assets / name, media_type=DOC_ASSETS[name],
                            headers={"Cache-Control": "public, max-age=86400"})
