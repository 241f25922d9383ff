"""Property-based fuzzing of the HTTP API (Hypothesis): generated bodies, path parameters and
headers for every route; no answer may be a 5xx, and every answer must match its schema. The
app has an admin and a read token: bearer headers are drawn too (mostly valid).

Bodies are drawn both shaped like the request models (each field valid or not, fields missing
or extra) and as arbitrary JSON, serialised with NaN / Infinity allowed, plus raw bytes. The
budget is bounded (``max_examples`` per route, a per-example ``deadline``): seconds in all.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender
from regiontune.serving.schemas import (
    BatchResponse,
    ErrorResponse,
    GrowResponse,
    ReadyResponse,
    Recommendation,
    RegionInfo,
)
from tests.serving.helpers import histories, make_adapter

TOKEN = "fuzz-admin-token"
READ = "fuzz-read-token"
READER = {"Authorization": f"Bearer {READ}"}
LIMITS = {"max_history": 30, "max_k": 50, "max_batch": 5, "max_item_chars": 24,
          "max_body_bytes": 8192}
FUZZ = settings(max_examples=100, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
MAX_ANSWER_BYTES = 64 * 1024  # nothing the client sent comes back unbounded


@pytest.fixture(scope="module")
def fuzz(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """(client, known items): one LoRA region 'west' under an adapter root; hub ids fail fast
    (no network); unknown regions refused."""
    root = tmp_path_factory.mktemp("fuzz_adapters")
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", root / "west", 5)
    rec = Recommender.from_dirs(tiny_backbone_dir, [root / "west"], unknown_region="error")
    with pytest.MonkeyPatch.context() as mp:
        def no_hub(*args, **kw):
            raise RuntimeError("no hub in the fuzz test")

        mp.setattr("regiontune.hub.client.pull", no_hub)
        app = create_app(rec, admin_token=TOKEN, adapter_roots=[root], read_token=READ,
                         cors_origins=["https://ui.example"], **LIMITS)
        items = sorted({i for h in histories(tiny_regions["west"], 6) for i in h})
        yield TestClient(app), items, app
    rec.close()


json_leaf = (st.none() | st.booleans() | st.integers(-10**6, 10**6)
             | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_any = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=10)
regions = st.sampled_from(["west", "wset", "", ".", "..", "a..b", "../etc", "x" * 65,
                           "west/../west", "WEST", " west"]) | st.text(max_size=70)
nasty_bodies = st.sampled_from([
    b"", b"{", b"null", b"[]", b"NaN", b'{"region": "west", "k": NaN}',
    b'{"region": "\\ud800", "k": 1}', b'{"region": "west", "history": ["\\udc00"]}',
    b"[" * 5000 + b"]" * 5000, b'{"k": ' + b"9" * 5000 + b"}", b"\xff\xfe\x00",
    b'{"requests": [{"region": "west", "k": Infinity}]}', b'{"path": "/\\u0000"}',
    b" " * 9000]) | st.binary(max_size=64)


def mostly(valid, other):
    """``valid`` four times in five, else ``other``: most requests get far, some fail."""
    return st.integers(0, 4).flatmap(lambda i: valid if i else other)


def fields(draw, spec: dict) -> dict:
    """Most of ``spec``'s fields (drawn), sometimes an extra one."""
    out = {k: draw(v) for k, v in spec.items() if draw(st.integers(0, 9))}
    if not draw(st.integers(0, 9)):
        out[draw(st.text(max_size=10))] = draw(json_leaf)
    return out


@st.composite
def recommend_bodies(draw, items: list[str]):
    item = mostly(st.sampled_from(items), st.text(max_size=30))
    spec = {"region": mostly(st.sampled_from(["west", "west", "west", "wset"]),
                             regions | json_leaf),
            "history": mostly(st.lists(item, max_size=12), st.lists(item, max_size=40)
                              | json_any),
            "k": mostly(st.integers(1, 50), st.integers(-3, 60) | json_leaf),
            "exclude_seen": mostly(st.booleans(), json_leaf)}
    return fields(draw, spec) if draw(st.integers(0, 9)) else draw(json_any)


def valid_bodies(items: list[str]):
    return st.fixed_dictionaries({"region": st.just("west"),
                                  "history": st.lists(st.sampled_from(items), max_size=10),
                                  "k": st.integers(1, 50)},
                                 optional={"exclude_seen": st.booleans()})


@st.composite
def payloads(draw, body_strategy):
    """(raw bytes, content type): a body as JSON (NaN allowed), or raw bytes."""
    if draw(st.integers(0, 9)):
        content = json.dumps(draw(body_strategy), allow_nan=True).encode()
    else:
        content = draw(nasty_bodies)
    ctype = draw(mostly(st.just("application/json"),
                        st.sampled_from(["text/plain", "", "application/x+json"])))
    return content, ctype


auth_headers = st.sampled_from([{"Authorization": f"Bearer {TOKEN}"}] * 3 + [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"},
    {"Authorization": f"bearer  {TOKEN} "}, {"Authorization": "Bearer"}, READER])
read_headers = st.sampled_from([READER] * 6 + [
    {"Authorization": f"Bearer {TOKEN}"}, {}, {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {READ} x"}, {"Authorization": "Bearer"},
    {"Authorization": "Basic abc"}, {"Origin": "https://ui.example", **READER},
    {"Origin": "https://evil.example", **READER}])
path_regions = regions.map(lambda r: quote(r, safe="")) | st.sampled_from(
    ["%2E%2E", "%00", "%FF", "a%2Fb", "west%20", "%ED%A0%80"])


def check(response, ok_model) -> None:
    """No 5xx; 2xx bodies match the route's model, 4xx bodies the error model; bounded."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    event(f"status {response.status_code}")  # --hypothesis-show-statistics: the mix
    assert len(response.content) <= MAX_ANSWER_BYTES, len(response.content)
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if response.status_code < 300 and ok_model is not None:
            ok_model.model_validate(body)
        elif response.status_code >= 400:
            ErrorResponse.model_validate(body)


def send(client, method: str, url: str, payload, headers=None):
    content, ctype = payload
    headers = {**(headers or {}), **({"content-type": ctype} if ctype else {})}
    return client.request(method, url, content=content, headers=headers)


@FUZZ
@given(data=st.data())
def test_fuzz_recommend(fuzz, data):
    client, items, _ = fuzz
    payload = data.draw(payloads(recommend_bodies(items)))
    check(send(client, "POST", "/v1/recommend", payload, data.draw(read_headers)),
          Recommendation)


@FUZZ
@given(data=st.data())
def test_fuzz_recommend_batch(fuzz, data):
    client, items, _ = fuzz
    one = st.integers(0, 9).flatmap(lambda i: valid_bodies(items) if i
                                    else recommend_bodies(items))
    batch = mostly(st.builds(lambda rs: {"requests": rs}, st.lists(one, max_size=6)),
                   json_any)
    check(send(client, "POST", "/v1/recommend/batch", data.draw(payloads(batch)),
               data.draw(read_headers)), BatchResponse)


@FUZZ
@given(data=st.data())
def test_fuzz_admin_routes(fuzz, data):
    client, _, _ = fuzz
    region = data.draw(path_regions)
    headers = data.draw(auth_headers)
    paths = st.sampled_from(["west", "/", "..", "../west", "/etc", "acme/model",
                             "acme/model@v1", "west/", "./west", "x" * 5000]) | st.text(
        max_size=40)
    body = st.builds(lambda p: {"path": p}, paths | json_leaf) | json_any
    if data.draw(st.booleans()):
        check(send(client, "PUT", f"/v1/regions/{region}", data.draw(payloads(body)),
                   headers), RegionInfo)
    else:
        check(client.delete(f"/v1/regions/{region}", headers=headers), None)
    # west back as it was (a DELETE or PUT above may have changed it): a reload, checked
    restore = client.put("/v1/regions/west", json={"path": "west"},
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert restore.status_code == 200, restore.text
    check(client.post("/v1/recommend", json={"region": "west", "k": 3}, headers=READER),
          Recommendation)


@FUZZ
@given(data=st.data())
def test_fuzz_grow_route(fuzz, data):
    client, items, _ = fuzz
    region = data.draw(mostly(st.just("west"), path_regions))
    item = mostly(st.text(min_size=1, max_size=12).map(lambda t: f"new-{t}"),
                  st.sampled_from(items) | st.text(max_size=30) | json_leaf)
    spec = {"items": mostly(st.lists(item, min_size=1, max_size=4),
                            st.lists(item, max_size=8) | json_any),
            "pairs": mostly(st.lists(st.tuples(item, st.sampled_from(items)), max_size=4),
                            json_any),
            "persist": mostly(st.just(False), st.booleans() | json_leaf)}
    body = st.composite(lambda draw: fields(draw, spec))() | json_any
    check(send(client, "POST", f"/v1/regions/{region}/items", data.draw(payloads(body)),
               data.draw(auth_headers)), GrowResponse)
    check(client.post("/v1/recommend", json={"region": "west", "k": 3}, headers=READER),
          Recommendation)


@FUZZ
@given(data=st.data())
def test_fuzz_read_routes(fuzz, data):
    client, _, _ = fuzz
    url = data.draw(st.sampled_from(["/v1/regions", "/healthz", "/readyz", "/metrics",
                                     "/openapi.json", "/docs", "/redoc"]))
    method = data.draw(st.sampled_from(["GET"] * 4 + ["POST", "PUT", "DELETE", "HEAD",
                                                      "OPTIONS"]))
    headers = data.draw(read_headers)
    payload = data.draw(payloads(json_any))
    response = send(client, method, url, payload, headers)
    assert response.status_code < 500, response.text[:300]
    if len(payload[0]) > LIMITS["max_body_bytes"]:  # refused before any route reads it
        if method == "GET":
            assert response.status_code == 413, (url, response.status_code)
        return
    authorised = headers.get("Authorization") in (READER["Authorization"], f"Bearer {TOKEN}")
    if method == "GET" and url == "/v1/regions" and authorised:
        assert response.status_code == 200
        for info in response.json():
            RegionInfo.model_validate(info)
            assert not info["path"].startswith("/")
    if method == "GET" and url in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"):
        assert response.status_code == 200, (url, response.text[:300])  # open routes
    if method == "GET" and url == "/readyz":
        assert ReadyResponse.model_validate(response.json()).status == "ready"


@FUZZ
@given(data=st.data())
def test_fuzz_region_info(fuzz, data):
    client, _, _ = fuzz
    # "", "." and ".." make the URL /v1/regions/ (the client drops dot segments): the list
    region = data.draw(st.sampled_from(["west"] * 3)
                       | path_regions.filter(lambda r: r not in ("", ".", "..")))
    method = data.draw(st.sampled_from(["GET"] * 6 + ["POST", "OPTIONS", "HEAD"]))
    response = client.request(method, f"/v1/regions/{region}", headers=data.draw(read_headers))
    if method != "GET":  # no body (HEAD), or not this route's model (405, CORS preflight)
        assert response.status_code < 500 and response.status_code != 200, method
        return
    check(response, RegionInfo)
    if response.status_code == 200:
        assert response.json()["region"] == "west" and not response.json()["path"].startswith(
            "/")


@FUZZ
@given(data=st.data())
def test_fuzz_doc_assets(fuzz, data):
    client, _, _ = fuzz
    name = data.draw(st.sampled_from(["swagger-ui-bundle.js", "swagger-ui.css",
                                      "redoc.standalone.js", "favicon.png", "..", "%2E%2E",
                                      "..%2Fcore.py", "%00", "a%2Fb"])
                     | path_regions)
    response = client.get(f"/docs/assets/{name}")
    assert response.status_code in (200, 404), (name, response.status_code)
    if response.status_code == 404:
        ErrorResponse.model_validate(response.json())


def test_every_route_is_fuzzed(fuzz):
    """A new route must be added to the fuzz tests above."""
    _, _, app = fuzz
    fuzzed = {("POST", "/v1/recommend"), ("POST", "/v1/recommend/batch"),
              ("PUT", "/v1/regions/{region}"), ("DELETE", "/v1/regions/{region}"),
              ("POST", "/v1/regions/{region}/items"),
              ("GET", "/v1/regions"), ("GET", "/healthz"), ("GET", "/metrics"),
              ("GET", "/v1/regions/{region}"), ("GET", "/readyz"), ("GET", "/docs"),
              ("GET", "/redoc"), ("GET", "/docs/assets/{name}")}
    routes = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    assert routes == fuzzed
