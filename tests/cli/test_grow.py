"""``regiontune grow``: items added to an adapter's catalogue from the command line."""

from __future__ import annotations

import json
import shutil

from regiontune.artifacts import ADAPTER_META
from tests.cli.helpers import fails, invoke, ok


def _catalogue(folder) -> list[str]:
    return json.loads((folder / ADAPTER_META).read_text())["catalogue"]


def test_grow_to_out_with_interactions(backbone, adapter, tmp_path):
    items = tmp_path / "items.txt"
    old = _catalogue(adapter[0])
    items.write_text(f"fresh-1\n\nfresh-2\n{old[0]}\n")
    rows = tmp_path / "clicks.csv"
    rows.write_text("user,item\n" + "".join(f"u{i},{item}\n" for i in range(2)
                                           for item in (old[1], old[2], "fresh-1")))
    out = tmp_path / "grown"
    text = ok(invoke("grow", "--backbone", backbone[0], "--adapter", adapter[0], "--items", items,
                     "--interactions", rows, "--out", out))
    assert "added 2 item(s) (1 already in the catalogue, skipped)" in text
    assert "cooccurrence 1, mean 1" in text and "grown adapter written to" in text
    meta = json.loads((out / ADAPTER_META).read_text())
    assert meta["catalogue"] == old + ["fresh-1", "fresh-2"]
    assert meta["grown"][0]["embedding"] == {"cooccurrence": ["fresh-1"], "mean": ["fresh-2"]}
    assert _catalogue(adapter[0]) == old  # the source is untouched
    # the grown adapter recommends its new items
    text = ok(invoke("recommend", "--model", backbone[0], "--adapter", out, "--region",
                     "island", "--history", f"{old[1]},{old[2]}", "-k", str(len(old) + 2)))
    assert "fresh-1" in text


def test_grow_in_place(backbone, adapter, tmp_path):
    folder = shutil.copytree(adapter[0], tmp_path / "island")
    items = tmp_path / "items.txt"
    items.write_text("fresh-3\n")
    ok(invoke("grow", "--backbone", backbone[0], "--adapter", folder, "--items", items,
              "--in-place"))
    assert _catalogue(folder)[-1] == "fresh-3"


def test_grow_errors(backbone, adapter, tmp_path):
    items = tmp_path / "items.txt"
    items.write_text("fresh-1\n")
    base = ["grow", "--backbone", backbone[0], "--items", items]
    fails(invoke(*base, "--adapter", adapter[0]), "--out DIR, or --in-place")
    fails(invoke(*base, "--adapter", adapter[0], "--out", tmp_path / "o", "--in-place"),
          "not both")
    fails(invoke(*base, "--adapter", tmp_path / "nope", "--out", tmp_path / "o"),
          "not an adapter directory")
    present = tmp_path / "present.txt"
    present.write_text("\n".join(_catalogue(adapter[0])[:2]) + "\n")
    fails(invoke("grow", "--backbone", backbone[0], "--items", present, "--adapter", adapter[0],
                 "--out", tmp_path / "o"), "already in the catalogue")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    fails(invoke("grow", "--backbone", backbone[0], "--items", empty, "--adapter", adapter[0],
                 "--out", tmp_path / "o"), "lists no item")
    rows = tmp_path / "rows.csv"
    rows.write_text("customer,product\na,b\n")
    fails(invoke(*base, "--adapter", adapter[0], "--out", tmp_path / "o", "--interactions", rows),
          "missing column 'user'")
    assert not (tmp_path / "o").exists()
