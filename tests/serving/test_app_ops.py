"""The operational surface of the HTTP API: readiness, per-region metrics, one region's info,
read-route tokens, CORS, the API docs served without a CDN, and their OpenAPI description."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from regiontune.serving.app import create_app, docs_assets
from regiontune.serving.recommender import Recommender
from regiontune.serving.schemas import ReadyResponse, RegionInfo
from tests.serving.helpers import TOKEN, wait_ready

READ = "r3ad-only-token"
ADMIN_AUTH = {"Authorization": f"Bearer {TOKEN}"}
READ_AUTH = {"Authorization": f"Bearer {READ}"}


def app_for(dirs, regions=("west", "delta"), **kw):  # noqa: F811 - dirs: the fixture
    rec = Recommender.from_dirs(dirs["backbone"], [dirs[r] for r in regions],
                                unknown_region=kw.pop("unknown_region", "backbone"))
    return create_app(rec, adapter_roots=[dirs["root"]], **kw)


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if labels else "") + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


# ---------------------------------------------------------------- readiness

def test_readyz_ready_when_everything_is_loaded(dirs):  # noqa: F811
    client = TestClient(app_for(dirs))
    r = client.get("/readyz")
    assert r.status_code == 200
    body = ReadyResponse.model_validate(r.json())
    assert body.status == "ready" and body.reason is None and body.regions == 2
    assert client.delete("/v1/regions/delta").status_code == 200  # deliberate: still ready
    assert client.get("/readyz").status_code == 200


def test_readyz_503_while_loading_and_for_failures(dirs):  # noqa: F811
    app = app_for(dirs, regions=("west",), admin_token=TOKEN,
                  preload=[("delta", str(dirs["delta"])), ("broken", str(dirs["corrupt"]))])
    before = TestClient(app)  # no lifespan run: nothing loaded yet
    r = before.get("/readyz")
    assert r.status_code == 503
    assert r.json()["pending"] == ["broken", "delta"] and "loading" in r.json()["reason"]
    with TestClient(app) as client:
        body = wait_ready(client)
        r = client.get("/readyz")
        assert r.status_code == 503, body
        body = ReadyResponse.model_validate(r.json())
        assert set(body.failed) == {"broken"} and "failed" in body.reason
        assert body.failed["broken"].startswith("cannot load the adapter from corrupt: ")
        assert str(dirs["root"]) not in r.text  # the reason names the folder, not its path
        delta = client.post("/v1/recommend", json={"region": "delta", "k": 3})
        assert delta.status_code == 200 and delta.json()["adapted"]  # the others serve
        text = client.get("/metrics").text
        assert metric(text, "regiontune_adapter_load_failures_total") == 1
        # an admin PUT that fixes the region makes the server ready
        fixed = client.put("/v1/regions/broken", json={"path": "west_b",
                                                       "allow_other_region": True},
                           headers=ADMIN_AUTH)
        assert fixed.status_code == 200, fixed.text
        assert client.get("/readyz").status_code == 200
        bad = client.put("/v1/regions/west", json={"path": "corrupt"}, headers=ADMIN_AUTH)
        assert bad.status_code == 422
        assert client.get("/readyz").status_code == 200  # the old adapter keeps serving
        text = client.get("/metrics").text
        assert metric(text, "regiontune_adapter_load_failures_total") == 2


# ---------------------------------------------------------------- metrics

def test_metrics_per_region_in_flight_and_batch_sizes(dirs):  # noqa: F811
    app = app_for(dirs, unknown_region="error")
    client = TestClient(app)
    h = dirs["h_west"]
    assert client.post("/v1/recommend", json={"region": "west", "history": h[0]}).is_success
    reqs = [{"region": "west", "history": h[1]}, {"region": "delta"},
            {"region": "west", "history": h[2]}]
    assert client.post("/v1/recommend/batch", json={"requests": reqs}).is_success
    assert client.post("/v1/recommend", json={"region": "atlantis"}).status_code == 404
    text = client.get("/metrics").text
    assert metric(text, "regiontune_region_requests_total", region="west") == 3
    assert metric(text, "regiontune_region_requests_total", region="delta") == 1
    assert metric(text, "regiontune_region_requests_total", region="other") == 1
    assert metric(text, "regiontune_region_errors_total", region="other", status=404) == 1
    assert "atlantis" not in text  # client-chosen names never become labels
    assert metric(text, "regiontune_http_requests_in_flight") == 1  # this very request
    assert "# TYPE regiontune_http_requests_in_flight gauge" in text
    assert "# TYPE regiontune_batch_rows histogram" in text
    assert metric(text, "regiontune_batch_rows_bucket", le=1) == 1
    assert metric(text, "regiontune_batch_rows_bucket", le=4) == 2
    assert metric(text, "regiontune_batch_rows_count") == 2  # the 404 ran no pass
    assert metric(text, "regiontune_batch_rows_sum") == 4
    app.state.metrics.observe_batch(300)  # what a batcher calls per gathered pass
    text = client.get("/metrics").text
    assert metric(text, "regiontune_batch_rows_bucket", le=256) == 2
    assert metric(text, "regiontune_batch_rows_bucket", le=512) == 3
    for line in text.splitlines():  # every sample line is "name{labels} number"
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? \S+", line), line


# ---------------------------------------------------------------- one region

def test_get_one_region(dirs):  # noqa: F811
    client = TestClient(app_for(dirs))
    listed = {x["region"]: x for x in client.get("/v1/regions").json()}
    r = client.get("/v1/regions/west")
    assert r.status_code == 200 and r.json() == listed["west"]
    RegionInfo.model_validate(r.json())
    assert r.json()["path"] == "west" and str(dirs["root"]) not in r.text
    missing = client.get("/v1/regions/atlantis")
    assert missing.status_code == 404 and "atlantis" in missing.json()["detail"]
    for bad in ("a..b", "%2E%2E", "x" * 65, "bad%20name"):
        assert client.get(f"/v1/regions/{bad}").status_code == 422, bad


# ---------------------------------------------------------------- read tokens

def test_read_token_guards_read_routes_only(dirs):  # noqa: F811
    client = TestClient(app_for(dirs, admin_token=TOKEN, read_token=READ))
    body = {"region": "west", "history": dirs["h_west"][0]}
    read_routes = [("POST", "/v1/recommend", body),
                   ("POST", "/v1/recommend/batch", {"requests": [body]}),
                   ("GET", "/v1/regions", None), ("GET", "/v1/regions/west", None),
                   ("GET", "/metrics", None)]
    for method, url, payload in read_routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"},
                        {"Authorization": f"Bearer {READ}x"}):
            r = client.request(method, url, json=payload, headers=headers)
            assert r.status_code == 401, (url, headers, r.status_code)
            assert r.headers["www-authenticate"] == "Bearer"
        for headers in (READ_AUTH, ADMIN_AUTH):  # the admin token opens read routes too
            r = client.request(method, url, json=payload, headers=headers)
            assert r.status_code == 200, (url, r.text)
    assert client.post("/v1/recommend", json={"bad": 1}).status_code == 401  # auth first
    for url in ("/healthz", "/readyz", "/openapi.json"):
        assert client.get(url).status_code == 200, url
    # the read token does not open admin routes: 403 (a valid token, not enough)
    r = client.delete("/v1/regions/delta", headers=READ_AUTH)
    assert r.status_code == 403 and "read token" in r.json()["detail"]
    assert client.put("/v1/regions/x", json={"path": "west"}, headers=READ_AUTH
                      ).status_code == 403
    assert client.delete("/v1/regions/delta").status_code == 401
    assert client.delete("/v1/regions/delta", headers=ADMIN_AUTH).status_code == 200


def test_openapi_documents_the_operational_surface(dirs):  # noqa: F811
    open_schema = TestClient(app_for(dirs, admin_token=TOKEN)).get("/openapi.json").json()
    assert set(open_schema["components"]["securitySchemes"]) == {"AdminToken"}
    schema = TestClient(app_for(dirs, admin_token=TOKEN, read_token=READ)
                        ).get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert set(schemes) == {"AdminToken", "ReadToken"}
    assert all(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    paths = schema["paths"]
    ready = paths["/readyz"]["get"]
    assert {"200", "503"} <= set(ready["responses"]) and "security" not in ready
    assert ready["responses"]["503"]["content"]["application/json"]["schema"]["$ref"] \
        .endswith("/ReadyResponse")
    assert "security" not in paths["/healthz"]["get"]
    one = paths["/v1/regions/{region}"]["get"]
    assert {"401", "404", "422"} <= set(one["responses"])
    assert one["security"] == [{"ReadToken": []}]
    for path, method in (("/v1/recommend", "post"), ("/v1/recommend/batch", "post"),
                         ("/v1/regions", "get"), ("/metrics", "get")):
        op = paths[path][method]
        assert op["security"] == [{"ReadToken": []}] and "401" in op["responses"], path
    for method in ("put", "delete"):
        op = paths["/v1/regions/{region}"][method]
        assert op["security"] == [{"AdminToken": []}]
        assert {"401", "403"} <= set(op["responses"])
    assert "/docs" not in paths and "/redoc" not in paths


# ---------------------------------------------------------------- CORS

def test_cors_off_by_default_and_configurable(dirs):  # noqa: F811
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    plain = TestClient(app_for(dirs))
    assert "access-control-allow-origin" not in plain.get("/healthz", headers=origin).headers
    assert plain.options("/v1/recommend", headers=preflight).status_code == 405
    client = TestClient(app_for(dirs, cors_origins=["https://app.example"]))
    r = client.options("/v1/recommend", headers=preflight)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = client.get("/v1/regions", headers=origin)
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    other = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in client.get("/v1/regions", headers=other).headers
    assert client.options("/v1/recommend", headers={**preflight, **other}).status_code == 400
    for bad in ("app.example", "https://app.example/path", "ftp://x"):
        with pytest.raises(ValueError, match="CORS origin"):
            app_for(dirs, cors_origins=[bad])


# ---------------------------------------------------------------- docs without a CDN

def test_docs_served_from_installed_assets(dirs):  # noqa: F811
    assert docs_assets() is not None, "fastapi-offline (a dependency) ships the assets"
    client = TestClient(app_for(dirs, read_token=READ))
    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
                         ("/redoc", ("redoc.standalone.js",))):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "http://" not in r.text and "https://" not in r.text  # nothing from outside
        assert "/openapi.json" in r.text
        for name in (*assets, "favicon.png"):
            assert f"/docs/assets/{name}" in r.text
            got = client.get(f"/docs/assets/{name}")
            assert got.status_code == 200 and len(got.content) > 1000, name
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith(
        "text/css")
    for bad in ("nope.js", "..%2F__init__.py", "%2E%2E"):
        assert client.get(f"/docs/assets/{bad}").status_code == 404, bad


def test_docs_disabled_without_assets(dirs, monkeypatch):  # noqa: F811
    monkeypatch.setattr("regiontune.serving.app.docs_assets", lambda: None)
    client = TestClient(app_for(dirs))
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200


# ---------------------------------------------------------------- the command line

def test_serve_command_passes_read_token_and_cors(dirs, monkeypatch):  # noqa: F811
    from regiontune.cli.main import app as cli

    calls = []
    monkeypatch.setattr("regiontune.serving.server.serve", lambda *a, **kw: calls.append(kw))
    monkeypatch.setenv("REGIONTUNE_READ_TOKEN", READ)
    args = ["serve", "--backbone", str(dirs["backbone"]), "--cors-origin",
            "https://a.example", "--cors-origin", "http://localhost:3000"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert calls[-1]["read_token"] == READ
    assert calls[-1]["cors_origins"] == ["https://a.example", "http://localhost:3000"]
    monkeypatch.delenv("REGIONTUNE_READ_TOKEN")
    assert CliRunner().invoke(cli, args[:3]).exit_code == 0
    assert calls[-1]["read_token"] is None and calls[-1]["cors_origins"] == []
