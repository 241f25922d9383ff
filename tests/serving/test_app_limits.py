"""The HTTP API under hostile input: non-finite numbers, limits, OpenAPI, PUT paths confined
to the adapter roots, broken adapters, silent hubs."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient

from regiontune.adapters.io import WEIGHTS
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import TOKEN, client_for, good

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
    from regiontune.serving.server import serve

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


def test_put_of_an_adapter_trained_for_another_region_needs_consent(client, dirs):
    r = client.put("/v1/regions/elsewhere", json={"path": "west"}, headers=AUTH)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "trained for region 'west', not 'elsewhere'" in detail
    assert "allow_other_region" in detail and "/" + "tmp" not in detail
    assert client.get("/v1/regions/elsewhere", headers=AUTH).status_code == 404  # nothing loaded
    r = client.put("/v1/regions/elsewhere", json={"path": "west", "allow_other_region": True},
                   headers=AUTH)
    assert r.status_code == 200, r.text
    good(client, dirs)
