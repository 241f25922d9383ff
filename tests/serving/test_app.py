"""The HTTP API: answers, every bad-input case (4xx, server keeps serving), admin, metrics."""

from __future__ import annotations

import logging
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient

from regiontune.adapters.io import WEIGHTS
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import histories, make_adapter, perturbed_copy

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
            "corrupt": corrupt, "backbone": tiny_backbone_dir, "root": root,
            "h_west": histories(tiny_regions["west"], 3),
            "h_delta": histories(tiny_regions["delta"], 2)}


def client_for(dirs, unknown_region: str = "backbone", **kw) -> TestClient:
    rec = Recommender.from_dirs(dirs["backbone"], [dirs["west"], dirs["delta"]],
                                unknown_region=unknown_region)
    return TestClient(create_app(rec, **kw))


@pytest.fixture
def client(dirs):
    return client_for(dirs, admin_token=TOKEN, max_history=50, max_k=100,
                      adapter_roots=[dirs["root"]])


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
    assert r.json()["region"] == "west" and r.json()["path"] == "west_b"  # root-relative
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

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NON_FINITE = [b'{"region": "west", "history": [], "k": NaN}',
              b'{"region": "west", "history": [], "k": Infinity}',
              b'{"region": "west", "history": [], "k": -Infinity}',
              b'{"region": "west", "history": [], "k": 1e999}',
              b'{"region": "west", "history": ["i1", NaN], "k": 3}',
              b'{"region": "west", "history": [], "k": 3, "exclude_seen": NaN}',
              b'{"requests": [{"region": "west", "k": NaN}]}',
              b'{"region": "\\ud800", "history": [], "k": 3}',
              b'{"region": "west", "history": ["\\udfff"], "k": 3}',
              b"[" * 100_000 + b"]" * 100_000,
              b'{"region": "west", "k": ' + b"9" * 5000 + b"}",
              b'{"region": "west", "history": ["\xff\xfe"], "k": 3}']


@pytest.mark.parametrize("body", NON_FINITE, ids=range(len(NON_FINITE)))
def test_unparseable_json_is_422_everywhere(dirs, body):
    client = client_for(dirs, admin_token=TOKEN, adapter_roots=[dirs["root"]])
    json_type = {"content-type": "application/json"}
    for method, url, headers in (("POST", "/v1/recommend", {}),
                                 ("POST", "/v1/recommend/batch", {}),
                                 ("PUT", "/v1/regions/west", AUTH)):
        r = client.request(method, url, content=body, headers={**json_type, **headers})
        assert r.status_code == 422, (url, r.status_code, r.text[:300])
        [error] = r.json()["detail"]
        assert error["type"] == "json_invalid" and len(r.content) < 1000
    good(client, dirs)


def test_non_finite_message_says_what_to_do(client):
    r = client.post("/v1/recommend", content=b'{"region": "west", "k": NaN}',
                    headers={"content-type": "application/json"})
    assert "NaN is not a JSON number: send finite numbers only" in r.json()["detail"][0]["msg"]


def test_keep_alive_connection_survives_bad_input_over_http(dirs):
    """A real server on loopback: NaN, a body over the limit, then a good request, all on one
    client; every answer a 4xx or 200 within a second, none a reset connection."""
    import socket

    import httpx
    import uvicorn

    rec = Recommender.from_dirs(dirs["backbone"], [dirs["west"]])
    app = create_app(rec, max_body_bytes=4096, adapter_roots=[dirs["root"]])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        body = {"region": "west", "history": dirs["h_west"][0], "k": 3}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            for _ in range(2):
                start = time.monotonic()
                r = http.post("/v1/recommend", content=b'{"region": "west", "k": NaN}',
                              headers={"content-type": "application/json"})
                assert r.status_code == 422 and time.monotonic() - start < 1
                assert http.post("/v1/recommend", json=body).status_code == 200
            big = b'{"region": "west", "history": ["' + b"x" * 50_000_000 + b'"]}'
            start = time.monotonic()
            r = http.post("/v1/recommend", content=big,
                          headers={"content-type": "application/json"})
            assert r.status_code == 413 and "4096 bytes" in r.json()["detail"]
            assert time.monotonic() - start < 1

            def chunks():  # no Content-Length: counted as it streams
                for _ in range(100):
                    yield b" " * 1000

            r = http.post("/v1/recommend", content=chunks(),
                          headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert http.post("/v1/recommend", json=body).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


def test_limits_are_enforced_and_nothing_is_echoed(dirs):
    client = client_for(dirs, max_history=100, max_item_chars=32, max_body_bytes=2**20,
                        max_batch=3, max_k=7)
    long_id = "x" * 900_000
    for body in ({"region": "west", "history": [long_id], "k": 3},
                 {"region": "west", "history": ["a"] * 101, "k": 3},
                 {"region": "west", "k": 8},
                 {"region": "west", "k": 3, long_id[:50_000]: 1},
                 {"region": long_id, "k": 3}):
        r = client.post("/v1/recommend", json=body)
        assert r.status_code == 422 and len(r.content) < 2000, (r.status_code, len(r.content))
    one = {"region": "west", "history": [], "k": 3}
    r = client.post("/v1/recommend/batch", json={"requests": [one] * 4})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "requests"]
    r = client.post("/v1/recommend/batch", json={"requests": [{"k": 0}] * 3})
    assert r.status_code == 422 and len(r.json()["detail"]) == 6  # region missing, k, x3
    r = client.post("/v1/recommend", content=b"{" + b" " * 2**20 + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    ghosts = [f"ghost-{i:03d}" for i in range(60)]
    r = client.post("/v1/recommend", json={"region": "west", "history": ghosts, "k": 3})
    assert r.status_code == 200
    assert r.json()["unknown_items"] == ghosts[:20] and r.json()["unknown_count"] == 60
    good(client, dirs)


def test_openapi_states_limits_security_and_errors(dirs):
    client = client_for(dirs, admin_token=TOKEN, max_history=50, max_k=100, max_batch=9,
                        max_item_chars=40, max_body_bytes=12345)
    schema = client.get("/openapi.json").json()
    parts = schema["components"]["schemas"]
    req = parts["RecommendRequest"]["properties"]
    assert req["history"]["maxItems"] == 50 and req["history"]["items"]["maxLength"] == 40
    assert req["k"]["maximum"] == 100 and req["k"]["minimum"] == 1
    assert req["region"]["pattern"] == "^[A-Za-z0-9_.-]{1,64}$"
    assert parts["BatchRequest"]["properties"]["requests"]["maxItems"] == 9
    assert "12345 bytes" in schema["info"]["description"]
    [scheme] = schema["components"]["securitySchemes"].values()
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    paths = schema["paths"]
    for method in ("put", "delete"):
        op = paths["/v1/regions/{region}"][method]
        assert op["security"] and {"401", "422"} <= set(op["responses"])
    assert "403" in paths["/v1/regions/{region}"]["put"]["responses"]
    for path in ("/v1/recommend", "/v1/recommend/batch"):
        responses = paths[path]["post"]["responses"]
        assert {"404", "413", "422"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse")
    assert "security" not in paths["/v1/recommend"]["post"]


def test_put_paths_restricted_to_adapter_roots(client, dirs, tmp_path):
    before = good(client, dirs)
    outside = shutil.copytree(dirs["west_b"], tmp_path / "outside")
    link = dirs["root"] / "sneaky"
    link.symlink_to(outside, target_is_directory=True)
    try:
        for path, status in (("/", 403), (str(outside), 403), ("../" * 12 + "etc", 403),
                             ("sneaky", 403), (str(link), 403), ("/etc/passwd", 403),
                             ("missing", 422), ("a\x00b", 422), ("x" * 4000, 422)):
            start = time.monotonic()
            r = client.put("/v1/regions/west", json={"path": path}, headers=AUTH)
            assert r.status_code == status, (path[:40], r.status_code, r.text[:300])
            assert time.monotonic() - start < 1
            assert ".pkl" not in r.text and "passwd" not in r.text.replace(path, "")
        assert good(client, dirs) == before
        r = client.put("/v1/regions/west", json={"path": "west_b"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["path"] == "west_b"
        r = client.put("/v1/regions/west", json={"path": str(dirs["west"])}, headers=AUTH)
        assert r.status_code == 200 and r.json()["path"] == "west"
    finally:
        link.unlink()


def test_no_roots_means_hub_ids_only(dirs, monkeypatch):
    client = client_for(dirs, admin_token=TOKEN, adapter_roots=[])
    r = client.put("/v1/regions/west", json={"path": str(dirs["west_b"])}, headers=AUTH)
    assert r.status_code == 403 and "--adapter-root" in r.json()["detail"]
    calls = []

    def fake_pull(repo_id, out, revision=None, **kw):
        calls.append(repo_id)
        shutil.copytree(dirs["west_b"], out)
        return out

    monkeypatch.setattr("regiontune.hub.client.pull", fake_pull)
    r = client.put("/v1/regions/west", json={"path": "acme/west@v2"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["path"] == "acme/west@v2"
    assert calls == ["acme/west"]


def test_unrestricted_app_still_refuses_slash_at_once(dirs):
    client = client_for(dirs)  # adapter_roots=None: any local path (library default)
    start = time.monotonic()
    r = client.put("/v1/regions/west", json={"path": "/"})
    assert r.status_code == 422 and "not an adapter directory" in r.json()["detail"]
    assert time.monotonic() - start < 1


def test_nan_adapter_refused_over_http(client, dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    before = good(client, dirs)
    bad = shutil.copytree(dirs["west_b"], dirs["root"] / "nan_weights")
    try:
        tensors = load_file(str(bad / WEIGHTS))
        tensors = {k: v * float("nan") for k, v in tensors.items()}
        save_file(tensors, str(bad / WEIGHTS))
        r = client.put("/v1/regions/west", json={"path": "nan_weights"}, headers=AUTH)
        assert r.status_code == 422 and "non-finite" in r.json()["detail"]
        assert good(client, dirs) == before
    finally:
        shutil.rmtree(bad)


def test_read_routes_show_no_absolute_paths(dirs):
    rec = Recommender.from_dirs(dirs["backbone"], [dirs["west"], dirs["delta"]])
    for roots in ([dirs["root"]], None):
        client = TestClient(create_app(rec, adapter_roots=roots))
        paths = {x["region"]: x["path"] for x in client.get("/v1/regions").json()}
        assert paths == {"west": "west", "delta": "delta"}
        for route in ("/v1/regions", "/healthz", "/metrics", "/openapi.json"):
            assert str(dirs["root"]) not in client.get(route).text


def test_unknown_region_404_says_how_to_allow_it(dirs):
    strict = client_for(dirs, unknown_region="error")
    r = strict.post("/v1/recommend", json={"region": "wset", "history": [], "k": 3})
    assert r.status_code == 404
    assert "'wset'" in r.json()["detail"] and "--unknown-region backbone" in r.json()["detail"]


def test_serve_refuses_unknown_regions_by_default():
    import inspect

    from regiontune.cli.serve import serve as cli_serve
    from regiontune.serving.app import serve

    assert inspect.signature(serve).parameters["unknown_region"].default == "error"
    assert inspect.signature(cli_serve).parameters["unknown_region"].default.default == "error"


def test_silent_hub_answered_within_a_second(dirs, monkeypatch):
    """A hub that accepts the connection and never answers: with the serve defaults' client
    timeouts lowered, the PUT is a 422 within a second; nothing is left behind."""
    import socket

    from regiontune.hub.client import set_timeouts

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never reads nor answers
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    rec = Recommender.from_dirs(dirs["backbone"], [dirs["west"]], hub_deadline_s=0.8)
    client = TestClient(create_app(rec, admin_token=TOKEN, adapter_roots=[]))
    set_timeouts(0.3)
    try:
        start = time.monotonic()
        r = client.put("/v1/regions/west", json={"path": "acme/silent"}, headers=AUTH)
        assert r.status_code == 422 and time.monotonic() - start < 1.0, r.text
        assert "hub" in r.json()["detail"]
        good(client, dirs)
    finally:
        set_timeouts(None)
        silent.close()
        cache = rec.fetcher.cache_dir
        rec.close()
    assert cache is None or not cache.exists()


def test_hub_timeouts_bound_every_request(tmp_path, monkeypatch):
    """set_timeouts caps the calls huggingface_hub makes without a timeout of its own."""
    import socket

    from regiontune.hub.client import HubError, pull, set_timeouts

    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    errors: list[Exception] = []

    def attempt() -> None:
        try:
            pull("acme/silent", tmp_path / "out",
                 endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}")
        except Exception as err:  # noqa: BLE001 - recorded and checked below
            errors.append(err)

    set_timeouts(0.3)
    try:
        start = time.monotonic()
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(5)
        assert not worker.is_alive(), "a silent hub held the pull past every timeout"
        assert time.monotonic() - start < 2
        [err] = errors
        assert isinstance(err, HubError) and "cannot reach the hub" in str(err)
        with pytest.raises(ValueError, match="positive"):
            set_timeouts(0)
    finally:
        set_timeouts(None)
        silent.close()
    assert not (tmp_path / "out").exists()


def test_serve_entry_point_defaults(dirs, monkeypatch):
    """serve(): duplicate region claims stop it; the app it runs refuses unknown regions,
    loads local adapters from its roots only, and applies the limits given."""
    import uvicorn

    from regiontune.serving.app import ServingLimits, serve
    from regiontune.serving.errors import AdapterLoadError

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
        assert client.put("/v1/regions/d", json={"path": "delta"}).status_code == 200
        assert client.put("/v1/regions/d", json={"path": "/"}).status_code == 403


def wait_ready(client, seconds: float = 60.0) -> dict:
    """/readyz once nothing is pending any more (its last answer)."""
    deadline = time.monotonic() + seconds
    while True:
        body = client.get("/readyz").json()
        if not body["pending"] or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


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
