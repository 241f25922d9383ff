"""The HTTP API: answers, every bad-input case (4xx, server keeps serving), admin, metrics."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from tests.serving.helpers import TOKEN, client_for, good, wait_ready


def test_recommend_and_batch(client, dirs):
    one = good(client, dirs)
    assert one["adapted"] and len(one["items"]) == 5 and one["region"] == "west"
    assert not set(one["items"]) & set(dirs["h_west"][0])
    reqs = [{"region": "delta", "history": dirs["h_delta"][0], "k": 3},
            {"region": "west", "history": dirs["h_west"][0], "k": 5},
            {"region": "atlantis", "history": dirs["h_west"][1] + ["ghost"], "k": 4},
            {"region": "west", "history": dirs["h_west"][0], "k": 100, "exclude_seen": False}]
    r = client.post("/v1/recommend/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["items"]) for x in results] == [3, 5, 4, 100]
    assert results[1]["items"] == one["items"]
    assert results[1]["scores"] == pytest.approx(one["scores"], abs=1e-5)
    assert results[2]["adapted"] is False and results[2]["unknown_items"] == ["ghost"]
    seen = set(dirs["h_west"][0])  # seen items come back, the rest keep their order
    assert [i for i in results[3]["items"] if i not in seen][:5] == one["items"]
    single = client.post("/v1/recommend", json=reqs[0]).json()
    assert single["items"] == results[0]["items"]


BAD_BODIES = [
    ("malformed json", b"{not json"),
    ("k zero", {"region": "west", "history": [], "k": 0}),
    ("k negative", {"region": "west", "history": [], "k": -3}),
    ("k too big", {"region": "west", "history": [], "k": 101}),
    ("k string", {"region": "west", "history": [], "k": "5"}),
    ("k float", {"region": "west", "history": [], "k": 2.5}),
    ("history too long", {"region": "west", "history": ["i1"] * 51, "k": 5}),
    ("history not a list", {"region": "west", "history": "i1,i2", "k": 5}),
    ("history of numbers", {"region": "west", "history": [1, 2], "k": 5}),
    ("region missing", {"history": [], "k": 5}),
    ("region not a string", {"region": 7, "history": [], "k": 5}),
    ("region with slash", {"region": "../etc", "history": [], "k": 5}),
    ("region with dots", {"region": "a..b", "history": [], "k": 5}),
    ("unexpected field", {"region": "west", "history": [], "k": 5, "admin": True}),
    ("not an object", [1, 2, 3]),
]


@pytest.mark.parametrize("name,body", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_input_is_4xx_and_server_keeps_serving(client, dirs, name, body):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} \
        if isinstance(body, bytes) else {"json": body}
    r = client.post("/v1/recommend", **kwargs)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert r.json()["detail"]
    batch = client.post("/v1/recommend/batch",
                        json={"requests": [body]} if not isinstance(body, bytes) else None,
                        content=body if isinstance(body, bytes) else None,
                        headers={"content-type": "application/json"})
    assert 400 <= batch.status_code < 500, (name, batch.status_code, batch.text)
    good(client, dirs)


def test_bad_batches(client, dirs):
    for body in ({"requests": []}, {"requests": "x"}, {}, {"requests": [None]}):
        r = client.post("/v1/recommend/batch", json=body)
        assert r.status_code == 422, r.text
    big = client_for(dirs, max_batch=2)
    req = {"region": "west", "history": [], "k": 1}
    assert big.post("/v1/recommend/batch", json={"requests": [req] * 3}).status_code == 422
    good(client, dirs)


def test_unknown_region_by_config(dirs):
    strict = client_for(dirs, unknown_region="error")
    r = strict.post("/v1/recommend", json={"region": "atlantis", "history": [], "k": 3})
    assert r.status_code == 404 and "atlantis" in r.json()["detail"]
    reqs = [{"region": "west", "history": [], "k": 3}, {"region": "atlantis", "k": 3}]
    assert strict.post("/v1/recommend/batch", json={"requests": reqs}).status_code == 404
    good(strict, dirs)


def test_admin_routes_need_the_token(client, dirs, caplog):
    caplog.set_level(logging.DEBUG)
    body = {"path": str(dirs["west_b"])}
    before = good(client, dirs)
    assert client.put("/v1/regions/west", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.put("/v1/regions/west", json=body, headers=wrong).status_code == 401
    assert client.delete("/v1/regions/west", headers=wrong).status_code == 401
    assert client.put("/v1/regions/west", json={"bad": 1}).status_code == 401  # auth first
    assert good(client, dirs) == before
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.put("/v1/regions/west", json=body, headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["region"] == "west" and r.json()["path"] == "west_b"  # root-relative
    assert good(client, dirs) != before
    r = client.put("/v1/regions/fresh", json={"path": str(dirs["delta"]),
                                              "allow_other_region": True}, headers=auth)
    assert r.status_code == 200 and r.json()["method"] == "bottleneck"
    assert {x["region"] for x in client.get("/v1/regions").json()} == {"west", "delta", "fresh"}
    assert client.delete("/v1/regions/fresh", headers=auth).status_code == 200
    assert client.delete("/v1/regions/fresh", headers=auth).status_code == 404
    assert TOKEN not in caplog.text


def test_admin_bad_input(client, dirs):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    before = good(client, dirs)
    r = client.put("/v1/regions/west", json={"path": str(dirs["corrupt"])}, headers=auth)
    assert r.status_code == 422 and "corrupt" in r.json()["detail"]
    r = client.put("/v1/regions/west", json={"path": "no-such-adapter"}, headers=auth)
    assert r.status_code == 422 and "no adapter directory" in r.json()["detail"]
    for region in ("a..b", "%2E%2E", "bad%20name", "x" * 65, "..."):
        r = client.put(f"/v1/regions/{region}", json={"path": str(dirs["west"])}, headers=auth)
        assert r.status_code == 422, (region, r.status_code)  # one status: as in a body
        assert client.delete(f"/v1/regions/{region}", headers=auth).status_code == 422
    for body in ({}, {"path": 3}, {"path": ""}, b"{"):
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        assert client.put("/v1/regions/west", headers=auth, **kw).status_code == 422
    assert good(client, dirs) == before  # the old adapter still serves


def test_open_admin_without_token(dirs):
    open_client = client_for(dirs)
    r = open_client.delete("/v1/regions/delta")
    assert r.status_code == 200 and r.json()["status"] == "unloaded"


def test_health_metrics_openapi(client, dirs):
    assert client.get("/healthz").json()["status"] == "ok"
    good(client, dirs)
    client.post("/v1/recommend", json={"region": "west", "k": 0})
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'regiontune_http_requests_total{method="POST",route="/v1/recommend",status="200"} 1' \
        in text
    assert 'route="/v1/recommend",status="422"} 1' in text
    assert 'route="unmatched",status="404"' in text and "/no/such/route" not in text
    assert 'regiontune_http_request_duration_seconds_bucket{route="/v1/recommend",le="+Inf"} 2' \
        in text
    assert "regiontune_adapters_loaded 2" in text
    assert "# TYPE regiontune_http_request_duration_seconds histogram" in text
    schema = client.get("/openapi.json").json()
    for path in ("/v1/recommend", "/v1/recommend/batch", "/v1/regions",
                 "/v1/regions/{region}", "/healthz", "/metrics"):
        assert path in schema["paths"]
    assert "RecommendRequest" in schema["components"]["schemas"]


# ---------------------------------------------------------------- issue 16: robustness


def test_serve_entry_point_defaults(dirs, monkeypatch):
    """serve(): duplicate region claims stop it; the app it runs refuses unknown regions,
    loads local adapters from its roots only, and applies the limits given."""
    import uvicorn

    from regiontune.serving.app import ServingLimits
    from regiontune.serving.errors import AdapterLoadError
    from regiontune.serving.server import serve

    with pytest.raises(AdapterLoadError, match="claim one region"):
        serve(dirs["backbone"], dirs["root"])  # west, west_b and corrupt all claim "west"
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append((app, kw)))
    monkeypatch.delenv("REGIONTUNE_ADMIN_TOKEN", raising=False)
    serve(dirs["backbone"], adapters=[("west", str(dirs["west"]))],
          adapter_roots=[dirs["root"]], limits=ServingLimits(max_k=4))
    [(app, kw)] = apps
    assert kw == {"host": "127.0.0.1", "port": 8000}
    with TestClient(app) as client:  # the lifespan loads --adapter sources in the background
        wait_ready(client)
        assert client.post("/v1/recommend", json={"region": "wset", "k": 3}).status_code == 404
        assert client.post("/v1/recommend", json={"region": "west", "k": 5}).status_code == 422
        assert client.post("/v1/recommend", json={"region": "west", "k": 4}).status_code == 200
        put = client.put("/v1/regions/d", json={"path": "delta", "allow_other_region": True})
        assert put.status_code == 200
        assert client.put("/v1/regions/d", json={"path": "/"}).status_code == 403


def test_middleware_passes_other_scopes_on():
    """Lifespan (and websocket) scopes go straight to the app: nothing read, nothing counted."""
    import asyncio

    from regiontune.serving.middleware import BodyLimitMiddleware, Metrics, MetricsMiddleware

    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    metrics = Metrics()
    for middleware in (BodyLimitMiddleware(app, max_bytes=1), MetricsMiddleware(app, metrics)):
        asyncio.run(middleware({"type": "lifespan"}, None, None))
    assert seen == ["lifespan", "lifespan"] and not metrics.requests
