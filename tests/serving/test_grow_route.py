"""``POST /v1/regions/{region}/items``: catalogue growth of a loaded adapter, hot-swapped."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient

from regiontune.artifacts import ADAPTER_META
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender
from tests.adapters.common import file_snapshot
from tests.serving.helpers import TOKEN, histories, make_adapter

READ = "read-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW = ["fresh-1", "fresh-2"]


@pytest.fixture(scope="module")
def trained(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    out = tmp_path_factory.mktemp("grow_route") / "west"
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", out, 1)
    return out


@pytest.fixture
def setup(trained, tiny_backbone_dir, tiny_regions, tmp_path):
    """A fresh copy of the adapter under an adapter root, and a client serving it."""
    root = tmp_path / "root"
    folder = shutil.copytree(trained, root / "west")
    outside = shutil.copytree(trained, tmp_path / "outside")
    rec = Recommender.from_dirs(tiny_backbone_dir, [folder], unknown_region="error")
    client = TestClient(create_app(rec, admin_token=TOKEN, read_token=READ, max_grow_items=3,
                                   max_grow_pairs=4, adapter_roots=[root]))
    data = tiny_regions["west"]
    return {"client": client, "rec": rec, "folder": folder, "outside": outside,
            "history": histories(data, 1)[0], "catalogue": data.catalogue}


def recommend(client, history, k=1000):
    r = client.post("/v1/recommend", json={"region": "west", "history": history, "k": k},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(zip(r.json()["items"], r.json()["scores"], strict=True))


def test_grow_in_memory_hot_swaps(setup):
    client, folder = setup["client"], setup["folder"]
    before_files = file_snapshot(folder)
    history = setup["history"]
    before = recommend(client, history)
    n = client.get("/v1/regions/west", headers=AUTH).json()["n_items"]
    cooc = [i for i in setup["catalogue"] if i not in history][:2]
    r = client.post("/v1/regions/west/items", headers=AUTH,
                    json={"items": [*NEW, cooc[0]], "pairs": [[NEW[0], c] for c in cooc]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["added"] == NEW and body["already_present"] == [cooc[0]]
    assert body["n_items"] == n + 2 and body["persisted"] is False
    assert body["embedding"] == {"cooccurrence": [NEW[0]], "mean": [NEW[1]]}
    assert body["path"] == "west" and body["cooccurrences"] == 2
    assert client.get("/v1/regions/west", headers=AUTH).json()["n_items"] == n + 2
    after = recommend(client, history)
    assert set(NEW) <= set(after)  # the new items are in the region's catalogue
    for item, score in before.items():  # old items: the same scores
        assert after[item] == pytest.approx(score, abs=1e-5)
    assert file_snapshot(folder) == before_files  # not persisted
    # again: everything already there
    r = client.post("/v1/regions/west/items", headers=AUTH, json={"items": NEW})
    assert r.status_code == 422 and "already in the catalogue" in r.text
    # and persisting now is refused: the folder no longer holds what is served
    r = client.post("/v1/regions/west/items", headers=AUTH,
                    json={"items": ["fresh-3"], "persist": True})
    assert r.status_code == 409 and "grown in memory" in r.text
    info = client.get("/v1/regions/west", headers=AUTH).json()
    assert info["n_items"] == n + 2
    # the old and the grown entry route to one adapter: it stays until the last goes
    bodies = [b for b in setup["rec"]._shared.values() if info["internal_name"] in b.names]
    assert len(bodies) == 1 and info["internal_name"] in bodies[0].held()
    assert client.delete("/v1/regions/west", headers=AUTH).status_code == 200
    assert info["internal_name"] not in bodies[0].held()


def test_grow_persisted_matches_a_reload(setup, tiny_backbone_dir):
    client, folder = setup["client"], setup["folder"]
    r = client.post("/v1/regions/west/items", headers=AUTH,
                    json={"items": NEW, "persist": True})
    assert r.status_code == 200, r.text
    assert r.json()["persisted"] is True
    meta = json.loads((folder / ADAPTER_META).read_text())
    assert meta["catalogue"][-2:] == NEW and meta["grown"][-1]["persisted"] is True
    served = recommend(client, setup["history"])
    fresh = Recommender.from_dirs(tiny_backbone_dir, [folder])
    reloaded = fresh.recommend([setup["history"]], ["west"], k=1000)[0]
    assert reloaded["items"] == list(served)
    assert reloaded["scores"] == pytest.approx(list(served.values()), abs=1e-6)


def test_grow_refusals(setup):
    client, rec = setup["client"], setup["rec"]
    url = "/v1/regions/west/items"
    n = rec.regions()[0]["n_items"]
    assert client.post(url, json={"items": NEW}).status_code == 401
    r = client.post(url, json={"items": NEW}, headers={"Authorization": f"Bearer {READ}"})
    assert r.status_code == 403
    for body in ({"items": []}, {"items": ["a", "b", "c", "d"]}, {"items": [""]},
                 {"items": ["  "]}, {"items": [1]}, {"items": "fresh-1"}, {},
                 {"items": NEW, "extra": 1}, {"items": NEW, "pairs": [["a"]]},
                 {"items": NEW, "pairs": [["a", "b"]] * 5}, {"items": NEW, "persist": "yes"},
                 {"items": ["x" * 300]}):
        r = client.post(url, json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.text)
    r = client.post("/v1/regions/nowhere/items", json={"items": NEW}, headers=AUTH)
    assert r.status_code == 404
    r = client.post("/v1/regions/bad..name/items", json={"items": NEW}, headers=AUTH)
    assert r.status_code == 422
    assert rec.regions()[0]["n_items"] == n  # nothing changed
    assert recommend(client, setup["history"], 5)


def test_persist_outside_the_roots_is_refused(setup, tiny_backbone_dir):
    rec = Recommender.from_dirs(tiny_backbone_dir, [setup["outside"]])
    root = setup["folder"].parent
    client = TestClient(create_app(rec, admin_token=TOKEN, adapter_roots=[root]))
    before = file_snapshot(setup["outside"])
    r = client.post("/v1/regions/west/items", headers=AUTH,
                    json={"items": NEW, "persist": True})
    assert r.status_code == 409 and "outside the adapter roots" in r.text
    assert file_snapshot(setup["outside"]) == before
    assert rec.regions()[0]["n_items"] == len(json.loads(
        (setup["outside"] / ADAPTER_META).read_text())["catalogue"])
