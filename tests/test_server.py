"""The HTTP API: answers, every bad-input case (4xx, server keeps serving), admin, metrics."""

from __future__ import annotations

import logging
import shutil

import pytest
from fastapi.testclient import TestClient

from regiontune.adapters.io import WEIGHTS
from regiontune.core.server import create_app
from regiontune.core.serving import Recommender

try:
    from test_serving import histories, make_adapter, perturbed_copy
except ImportError:  # pragma: no cover - imported as a package
    from tests.test_serving import histories, make_adapter, perturbed_copy

TOKEN = "s3cret-admin-token"


@pytest.fixture(scope="module")
def dirs(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """Adapter directories: lora (west) + its version B, bottleneck (delta), a corrupt one."""
    root = tmp_path_factory.mktemp("server_adapters")
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", root / "west", 1)
    make_adapter(tiny_backbone_dir, tiny_regions["delta"], "bottleneck", root / "delta", 2)
    perturbed_copy(root / "west", root / "west_b", 3)
    corrupt = shutil.copytree(root / "west", root / "corrupt")
    (corrupt / WEIGHTS).write_bytes(b"not a safetensors file")
    return {"west": root / "west", "west_b": root / "west_b", "delta": root / "delta",
            "corrupt": corrupt, "backbone": tiny_backbone_dir,
            "h_west": histories(tiny_regions["west"], 3),
            "h_delta": histories(tiny_regions["delta"], 2)}


def client_for(dirs, unknown_region: str = "backbone", **kw) -> TestClient:
    rec = Recommender.from_dirs(dirs["backbone"], [dirs["west"], dirs["delta"]],
                                unknown_region=unknown_region)
    return TestClient(create_app(rec, **kw))


@pytest.fixture
def client(dirs):
    return client_for(dirs, admin_token=TOKEN, max_history=50, max_k=100)


def good(client, dirs) -> dict:
    """A valid request; asserted to succeed after every bad one."""
    r = client.post("/v1/recommend", json={"region": "west", "history": dirs["h_west"][0],
                                           "k": 5})
    assert r.status_code == 200, r.text
    return r.json()


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
    assert r.json()["region"] == "west" and r.json()["path"] == str(dirs["west_b"])
    assert good(client, dirs) != before
    r = client.put("/v1/regions/fresh", json={"path": str(dirs["delta"])}, headers=auth)
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
    r = client.put("/v1/regions/west", json={"path": "/no/such/adapter"}, headers=auth)
    assert r.status_code == 422
    for region in ("a..b", "%2E%2E", "bad%20name", "x" * 65):
        r = client.put(f"/v1/regions/{region}", json={"path": str(dirs["west"])}, headers=auth)
        assert 400 <= r.status_code < 500, (region, r.status_code)
        assert 400 <= client.delete(f"/v1/regions/{region}", headers=auth).status_code < 500
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
