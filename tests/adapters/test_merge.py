"""Merging adapters (issue 17): the method's part by its rule, the item side per item, the
checks before anything is written, the metadata, and serving the result."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from regiontune.adapters import METHODS, AdapterFolder, get_method, load_adapter, save_adapter
from regiontune.adapters.base import MethodDefaults
from regiontune.adapters.folder import WEIGHTS
from regiontune.adapters.item_side import PREFIX as ITEM_PREFIX
from regiontune.adapters.merge import (
    find_adapters,
    merge_adapters,
    overlap_weights,
    read_catalogue,
    source_text,
    trained_rows,
)
from regiontune.artifacts import ArtifactError, BackboneMismatchError, read_json, write_json
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import load_backbone
from regiontune.serving.recommender import Recommender
from regiontune.training.adapt import build_region_task
from tests.adapters.common import ALL, perturb

SOURCES = ("west", "delta")  # regions the tiny backbone never saw; island: the target


def make(backbone_dir: Path, data, method: str, out: Path, seed: int, **cfg) -> Path:
    """A perturbed (non-trivial) adapter of ``data.region``, saved in float32."""
    backbone, vocab, meta = load_backbone(backbone_dir)
    task = build_region_task(backbone, vocab, data.catalogue,
                             AdaptConfig(method=method, region=data.region, **cfg),
                             total_steps=50)
    perturb(task, seed=seed)
    save_adapter(task, method, data.region, {"region": data.region,
                                             "backbone_fingerprint": meta["fingerprint"]},
                 out, "float32")
    return out


def renamed_copy(src: Path, dst: Path, region: str) -> Path:
    shutil.copytree(src, dst)
    meta = read_json(dst / "region.json")
    write_json(dst / "region.json", {**meta, "region": region})
    return dst


def load(directory: Path, backbone_dir: Path):
    backbone, vocab, meta = load_backbone(backbone_dir)
    return load_adapter(directory, backbone, vocab, meta["fingerprint"])


@pytest.fixture(scope="module")
def lora_pair(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """Two LoRA adapters of different ranks and alphas (west: r 4, delta: r 8)."""
    root = tmp_path_factory.mktemp("merge-lora")
    west = make(tiny_backbone_dir, tiny_regions["west"], "lora", root / "west", 1,
                options={"r": 4, "lora_alpha": 4}, item_rank=3)
    delta = make(tiny_backbone_dir, tiny_regions["delta"], "lora", root / "delta", 2,
                 item_rank=5)
    return root, west, delta


# -- the method's part --------------------------------------------------------------------------

def lora_deltas(task) -> dict[str, torch.Tensor]:
    name = next(iter(task.body.peft_config))
    return {path: m.get_delta_weight(name) for path, m in task.body.named_modules()
            if isinstance(m, LoraLayer) and name in m.lora_A}


def test_lora_merge_is_the_exact_weighted_sum_of_the_deltas(lora_pair, tiny_backbone_dir,
                                                             tmp_path):
    _, west, delta = lora_pair
    meta = merge_adapters([west, delta], [1.0, 3.0], tiny_backbone_dir, tmp_path / "m",
                          region="island", dtype="float32")
    assert meta["method"] == "lora"
    merged = lora_deltas(load(tmp_path / "m", tiny_backbone_dir))
    a, b = lora_deltas(load(west, tiny_backbone_dir)), lora_deltas(load(delta, tiny_backbone_dir))
    assert set(merged) == set(a) == set(b)
    for path, got in merged.items():
        torch.testing.assert_close(got, 0.25 * a[path] + 0.75 * b[path], atol=1e-6, rtol=1e-5)
    ranks = read_json(tmp_path / "m" / "adapter_config.json")["rank_pattern"]
    assert set(ranks.values()) == {4 + 8}  # ranks may differ: they add up


@pytest.mark.parametrize("method", ALL)
def test_merging_copies_of_one_adapter_gives_that_adapter(method, tiny_backbone_dir,
                                                          tiny_regions, tmp_path):
    """For every method: A merged with a renamed copy of A (any weights) scores as A."""
    data = tiny_regions["west"]
    src = make(tiny_backbone_dir, data, method, tmp_path / "a", 3)
    copy = renamed_copy(src, tmp_path / "b", "west2")
    meta = merge_adapters([src, copy], [0.3, 0.7], tiny_backbone_dir, tmp_path / "m",
                          dtype="float32")
    assert meta["catalogue"] == data.catalogue
    histories = [c.history for c in data.valid[:5]]
    want = task_scores(load(src, tiny_backbone_dir), histories, data.catalogue)
    got = task_scores(load(tmp_path / "m", tiny_backbone_dir), histories, data.catalogue)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", sorted(set(ALL) - {"lora", "adalora"}))
def test_default_rule_averages_the_tensors(method, tiny_backbone_dir, tiny_regions, tmp_path):
    a = make(tiny_backbone_dir, tiny_regions["west"], method, tmp_path / "a", 4)
    b = make(tiny_backbone_dir, tiny_regions["delta"], method, tmp_path / "b", 5)
    merge_adapters([a, b], [1, 3], tiny_backbone_dir, tmp_path / "m", dtype="float32")
    ta, tb, tm = (load_file(str(p / WEIGHTS)) for p in (a, b, tmp_path / "m"))
    body = [k for k in ta if not k.startswith(ITEM_PREFIX)]
    assert body and set(body) == {k for k in tm if not k.startswith(ITEM_PREFIX)}
    for key in body:
        torch.testing.assert_close(tm[key], 0.25 * ta[key] + 0.75 * tb[key])


def test_adalora_merges_into_a_lora_adapter(tiny_backbone_dir, tiny_regions, tmp_path):
    a = make(tiny_backbone_dir, tiny_regions["west"], "adalora", tmp_path / "a", 6)
    b = make(tiny_backbone_dir, tiny_regions["delta"], "adalora", tmp_path / "b", 7)
    meta = merge_adapters([a, b], [1, 1], tiny_backbone_dir, tmp_path / "m")
    assert meta["method"] == "lora" and meta["peft_loadable"]
    assert [m["method"] for m in meta["merged_from"]] == ["adalora", "adalora"]
    shutil.rmtree(a / "lora_export")
    with pytest.raises(ValueError, match="no LoRA export"):
        merge_adapters([a, b], [1, 1], tiny_backbone_dir, tmp_path / "n")
    assert not (tmp_path / "n").exists()


def test_every_method_has_a_merge_rule_and_the_default_is_the_average():
    assert all(callable(getattr(m, "merge", None)) for m in METHODS.values())
    assert get_method("ia3").merge.__func__ is MethodDefaults.merge


# -- the item side ------------------------------------------------------------------------------

def region_rows(task) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    table, bias = task.output_table()
    cat = task.item_side.catalogue
    return ({i: table[k].detach() for k, i in enumerate(cat)},
            {i: float(bias[k]) for k, i in enumerate(cat)})


@pytest.mark.parametrize("new_items", ["zero", "mean"])
def test_item_side_is_the_per_item_weighted_average(lora_pair, tiny_backbone_dir, tiny_regions,
                                                    tmp_path, new_items):
    _, west, delta = lora_pair
    target = tiny_regions["island"].catalogue
    meta = merge_adapters([west, delta], [1.0, 3.0], tiny_backbone_dir, tmp_path / "m",
                          catalogue=target, dtype="float32", new_items=new_items)
    assert meta["item_rank"] == 3 + 5 + (new_items == "mean")
    rows, bias = region_rows(load(tmp_path / "m", tiny_backbone_dir))
    w_rows, w_bias = region_rows(load(west, tiny_backbone_dir))
    d_rows, d_bias = region_rows(load(delta, tiny_backbone_dir))
    backbone, vocab, _ = load_backbone(tiny_backbone_dir)
    base_table, base_bias = (t.detach() for t in backbone.item_table())
    lowest = min(min(w_bias.values()), min(d_bias.values()))
    seen = {"both": 0, "one": 0, "backbone": 0, "fallback": 0}
    assert list(rows) == target
    for item in target:
        if item in w_rows and item in d_rows:
            want = 0.25 * w_rows[item] + 0.75 * d_rows[item]
            want_bias, kind = 0.25 * w_bias[item] + 0.75 * d_bias[item], "both"
        elif item in w_rows or item in d_rows:
            rows_, bias_ = (w_rows, w_bias) if item in w_rows else (d_rows, d_bias)
            want, want_bias, kind = rows_[item], bias_[item], "one"
        elif item in vocab:
            col = vocab.index[item]
            want, want_bias, kind = base_table[col], float(base_bias[col]), "backbone"
        else:
            want = base_table.mean(0) if new_items == "mean" else torch.zeros_like(want)
            want_bias, kind = lowest, "fallback"
        seen[kind] += 1
        torch.testing.assert_close(rows[item], want.detach(), atol=1e-5, rtol=1e-4)
        assert bias[item] == pytest.approx(want_bias, abs=1e-5)
    assert seen["fallback"] and seen["one"] + seen["both"]  # island has region-only items


def test_rows_a_source_never_trained_do_not_count(lora_pair, tiny_backbone_dir, tmp_path):
    """Items a source's data never showed keep their initial row plus the unseen-items
    offset, a level for that region alone: the source does not hold them."""
    _, west, delta = lora_pair
    edited = renamed_copy(delta, tmp_path / "delta2", "delta2")
    write_json(edited / "region.json", {**read_json(edited / "region.json"),
                                        "unseen_offset": 7.25})
    tensors = load_file(str(edited / WEIGHTS))
    tensors[ITEM_PREFIX + "lowrank_a"][:4] = 0
    tensors[ITEM_PREFIX + "bias"][:4] = 7.25
    save_file(tensors, str(edited / WEIGHTS), metadata={"format": "pt"})
    untrained = read_json(edited / "region.json")["catalogue"][:4]
    meta = merge_adapters([west, edited], [1, 1], tiny_backbone_dir, tmp_path / "m",
                          catalogue=untrained, dtype="float32")
    assert meta["merge"]["source_rows_untrained"] == 4
    rows, bias = region_rows(load(tmp_path / "m", tiny_backbone_dir))
    w_rows, w_bias = region_rows(load(west, tiny_backbone_dir))
    for item in untrained:  # west's row where west holds it, else never the +7.25 level
        assert bias[item] < 7
        if item in w_rows:
            assert bias[item] == pytest.approx(w_bias[item], abs=1e-5)


def test_item_rank_projects_the_merged_deltas(lora_pair, tiny_backbone_dir, tmp_path):
    _, west, delta = lora_pair
    exact = merge_adapters([west, delta], [1, 1], tiny_backbone_dir, tmp_path / "e",
                           dtype="float32")
    assert exact["item_rank"] == 3 + 5 and exact["merge"]["item_rank_mode"] == "exact"
    low = merge_adapters([west, delta], [1, 1], tiny_backbone_dir, tmp_path / "p",
                         item_rank=4, dtype="float32")
    assert low["item_rank"] == 4 and low["merge"]["item_rank_mode"] == "projected"
    e, p = (load_file(str(d / WEIGHTS)) for d in (tmp_path / "e", tmp_path / "p"))
    full = e[ITEM_PREFIX + "lowrank_a"] @ e[ITEM_PREFIX + "lowrank_b"]
    approx = p[ITEM_PREFIX + "lowrank_a"] @ p[ITEM_PREFIX + "lowrank_b"]
    best = torch.linalg.svdvals(full)[4:].square().sum().sqrt()  # Eckart-Young
    assert float((full - approx).norm()) == pytest.approx(float(best), rel=1e-3)


# -- weights, checks, metadata, serving ---------------------------------------------------------

def test_overlap_weights_rule(lora_pair, tiny_backbone_dir, tiny_regions, tmp_path):
    assert overlap_weights([["a", "b", "x"], ["a"], ["z"]], ["a", "b", "c", "d"]) == [
        0.5, 0.25, 0.0]
    _, west, delta = lora_pair
    target = tiny_regions["island"].catalogue
    meta = merge_adapters([west, delta], "overlap", tiny_backbone_dir, tmp_path / "m",
                          catalogue=target)
    raw = overlap_weights([tiny_regions[r].catalogue for r in SOURCES], target)
    assert [m["weight"] for m in meta["merged_from"]] == pytest.approx(
        [w / sum(raw) for w in raw])
    assert meta["merge"]["weights"] == "overlap" and meta["merge"]["catalogue"] == "given"


def test_metadata_records_the_sources(lora_pair, tiny_backbone_dir, tmp_path):
    _, west, delta = lora_pair
    meta = merge_adapters([west, delta], [2, 2], tiny_backbone_dir, tmp_path / "m",
                          region="newland")
    saved = read_json(tmp_path / "m" / "region.json")
    assert saved == {**meta, "new_items": meta["new_items"]}
    backbone_fp = load_backbone(tiny_backbone_dir)[2]["fingerprint"]
    assert saved["region"] == "newland" and saved["backbone_fingerprint"] == backbone_fp
    assert [(m["region"], m["weight"], m["path"]) for m in saved["merged_from"]] == [
        ("west", 0.5, "west"), ("delta", 0.5, "delta")]
    assert all(m["weights_fingerprint"].startswith("sha256:") for m in saved["merged_from"])
    assert len({m["weights_fingerprint"] for m in saved["merged_from"]}) == 2
    assert saved["merge"]["catalogue"] == "union" and saved["weights_dtype"] == "float16"
    assert (tmp_path / "m" / "README.md").is_file()
    AdapterFolder.read(tmp_path / "m", backbone_fp)  # the one reader accepts it


def test_merged_adapter_serves(lora_pair, tiny_backbone_dir, tiny_regions, tmp_path):
    _, west, delta = lora_pair
    data = tiny_regions["island"]
    merge_adapters([west, delta], [1, 1], tiny_backbone_dir, tmp_path / "island",
                   catalogue=data.catalogue)
    rec = Recommender.from_dirs(tiny_backbone_dir, [tmp_path / "island"])
    try:
        history = data.valid[0].history
        (result,) = rec.recommend([history], ["island"], k=len(data.catalogue),
                                  exclude_seen=False)
        task = load(tmp_path / "island", tiny_backbone_dir)
        want = task_scores(task, [history], data.catalogue)[0]
        got = dict(zip(result["items"], result["scores"], strict=True))
        torch.testing.assert_close(torch.tensor([got[i] for i in data.catalogue]), want,
                                   atol=1e-4, rtol=1e-4)
    finally:
        rec.close()


def test_bad_merges_are_clear_errors_and_write_nothing(lora_pair, tiny_backbone_dir,
                                                       tiny_regions, tmp_path,
                                                       tiny_backbone):
    _, west, delta = lora_pair
    out = tmp_path / "m"
    ia3 = make(tiny_backbone_dir, tiny_regions["alpine"], "ia3", tmp_path / "ia3", 8)
    with pytest.raises(ValueError, match="different methods"):
        merge_adapters([west, ia3], [1, 1], tiny_backbone_dir, out)
    for weights, message in (([0, 0], "sum to a positive"), ([1, -1], "non-negative"),
                             ([1], "2 adapters"), ([1, float("nan")], "finite")):
        with pytest.raises(ValueError, match=message):
            merge_adapters([west, delta], weights, tiny_backbone_dir, out)
    with pytest.raises(ValueError, match="--catalogue"):
        merge_adapters([west, delta], "overlap", tiny_backbone_dir, out)
    with pytest.raises(ValueError, match="all 0"):
        merge_adapters([west, delta], "overlap", tiny_backbone_dir, out, catalogue=["nope"])
    with pytest.raises(ValueError, match="named twice"):
        merge_adapters([west, renamed_copy(west, tmp_path / "w2", "west")], [1, 1],
                       tiny_backbone_dir, out)
    with pytest.raises(ValueError, match="new_items"):
        merge_adapters([west, delta], [1, 1], tiny_backbone_dir, out, new_items="median")
    with pytest.raises(ValueError, match="region name"):
        merge_adapters([west, delta], [1, 1], tiny_backbone_dir, out, region="a b/c")
    foreign = renamed_copy(delta, tmp_path / "foreign", "delta")
    write_json(foreign / "region.json", {**read_json(foreign / "region.json"),
                                         "backbone_fingerprint": "sha256:other"})
    with pytest.raises(BackboneMismatchError):
        merge_adapters([west, foreign], [1, 1], tiny_backbone_dir, out)
    with pytest.raises(ArtifactError):
        merge_adapters([west, tmp_path / "missing"], [1, 1], tiny_backbone_dir, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.tmp")]


def test_find_adapters_and_catalogue_file(lora_pair, tmp_path):
    root, west, delta = lora_pair
    assert find_adapters(root) == {"west": [west], "delta": [delta]}
    renamed_copy(west, tmp_path / "a", "x")
    renamed_copy(delta, tmp_path / "b", "x")
    assert find_adapters(tmp_path) == {"x": [tmp_path / "a", tmp_path / "b"]}
    with pytest.raises(ArtifactError, match="no such adapter root"):
        find_adapters(tmp_path / "nowhere")
    path = tmp_path / "cat.txt"
    path.write_text("i1\n\n i2 \ni1\n")
    assert read_catalogue(path) == ["i1", "i2"]
    path.write_text("\n")
    with pytest.raises(ValueError, match="lists no item"):
        read_catalogue(path)


def test_omitted_new_items_are_read_and_scored_as_the_backbone_does(lora_pair,
                                                                     tiny_backbone_dir,
                                                                     tiny_regions, tmp_path):
    """``new_items="omit"``: items new to every source and to the backbone leave the merged
    catalogue (skipped in histories, unscorable, as the bare backbone treats them); every
    other item keeps exactly the row it gets in the default merge."""
    _, west, delta = lora_pair
    target = tiny_regions["island"].catalogue
    merge_adapters([west, delta], [1, 3], tiny_backbone_dir, tmp_path / "z",
                          catalogue=target, dtype="float32")
    meta = merge_adapters([west, delta], [1, 3], tiny_backbone_dir, tmp_path / "o",
                          catalogue=target, dtype="float32", new_items="omit")
    _, vocab, _ = load_backbone(tiny_backbone_dir)
    known = set(read_json(west / "region.json")["catalogue"]) | set(
        read_json(delta / "region.json")["catalogue"]) | set(vocab.items)
    unknown = [i for i in target if i not in known]
    assert unknown and meta["merge"]["items_left_out"] == len(unknown)
    assert meta["catalogue"] == [i for i in target if i in known]
    assert meta["merge"]["fallback_bias"] is None and not meta["new_items"]
    rows, bias = region_rows(load(tmp_path / "o", tiny_backbone_dir))
    z_rows, z_bias = region_rows(load(tmp_path / "z", tiny_backbone_dir))
    for item in meta["catalogue"]:
        torch.testing.assert_close(rows[item], z_rows[item], atol=1e-5, rtol=1e-5)
        assert bias[item] == pytest.approx(z_bias[item], abs=1e-5)
    task = load(tmp_path / "o", tiny_backbone_dir)
    kept = meta["catalogue"][:3]
    with_new = task_scores(task, [[kept[0], unknown[0], kept[1]]], target)
    without = task_scores(task, [[kept[0], kept[1]]], target)
    torch.testing.assert_close(with_new, without)  # the unknown item is skipped when read
    columns = [target.index(i) for i in unknown]
    assert torch.isinf(with_new[0, columns]).all() and (with_new[0, columns] < 0).all()
    with pytest.raises(ValueError, match="nothing is left to serve"):
        merge_adapters([west, delta], [1, 1], tiny_backbone_dir, tmp_path / "none",
                       catalogue=["never-1", "never-2"], new_items="omit")
    assert not (tmp_path / "none").exists()


# -- the item-item part -------------------------------------------------------------------------

def with_part(backbone_dir: Path, data, out: Path, seed: int, blend: float, k: int = 3,
              filled: int = 1) -> Path:
    """A LoRA adapter whose item-item part gives each item ``filled`` random neighbours of
    ``k`` (the rest zero) and blend weight ``blend``."""
    backbone, vocab, meta = load_backbone(backbone_dir)
    task = build_region_task(backbone, vocab, data.catalogue,
                             AdaptConfig(method="lora", region=data.region, neighbours=k),
                             total_steps=50)
    perturb(task, seed=seed)
    part = task.item_item
    gen = torch.Generator().manual_seed(seed)
    n = len(data.catalogue)
    with torch.no_grad():
        part.neighbours.zero_()
        part.strengths.zero_()
        part.neighbours[:, :filled] = torch.randint(0, n, (n, filled), generator=gen).to(
            part.neighbours.dtype)
        part.strengths[:, :filled] = torch.rand(n, filled, generator=gen) + 0.5
        part.weight.fill_(blend)
    save_adapter(task, "lora", data.region, {"region": data.region,
                                             "backbone_fingerprint": meta["fingerprint"]},
                 out, "float32")
    return out


def part_scores(directory: Path, backbone_dir: Path, histories: list[list[str]],
                catalogue: list[str]) -> torch.Tensor:
    """The adapter's item-item scores ``[len(histories), len(catalogue)]`` by item id (0 for
    items it lacks; history items it lacks are skipped), blend weight included."""
    task = load(directory, backbone_dir)
    part = task.item_item
    if part is None:
        return torch.zeros(len(histories), len(catalogue))
    own = {item: i for i, item in enumerate(task.item_side.catalogue)}
    scores = part.scores([[own[i] for i in h if i in own] for h in histories])
    out = torch.zeros(len(histories), len(catalogue))
    for j, item in enumerate(catalogue):
        if item in own:
            out[:, j] = scores[:, own[item]]
    return out


@pytest.fixture(scope="module")
def part_pair(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-parts")
    return (with_part(tiny_backbone_dir, tiny_regions["west"], root / "west", 11, blend=0.5),
            with_part(tiny_backbone_dir, tiny_regions["delta"], root / "delta", 12, blend=2.0))


def test_item_item_parts_merge_into_the_weighted_sum_of_their_scores(part_pair, tiny_regions,
                                                                     tiny_backbone_dir,
                                                                     tmp_path):
    west, delta = part_pair
    meta = merge_adapters([west, delta], [1.0, 3.0], tiny_backbone_dir, tmp_path / "m",
                          dtype="float32")
    info = meta["merge"]["item_item"]
    assert meta["neighbours"] == 3 and info["pairs_cut"] == 0  # <= 2 neighbours a row
    assert info["blend_weight"] == pytest.approx(0.25 * 0.5 + 0.75 * 2.0)
    catalogue = meta["catalogue"]
    shared = sorted(set(tiny_regions["west"].catalogue) & set(tiny_regions["delta"].catalogue))
    assert shared  # rows both sources hold: their strengths add up
    histories = [c.history for c in tiny_regions["west"].valid[:4]]
    histories += [c.history for c in tiny_regions["delta"].valid[:4]] + [shared[:3]]
    got = part_scores(tmp_path / "m", tiny_backbone_dir, histories, catalogue)
    want = (0.25 * part_scores(west, tiny_backbone_dir, histories, catalogue)
            + 0.75 * part_scores(delta, tiny_backbone_dir, histories, catalogue))
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_item_item_mean_keeps_a_lone_sources_row_and_omit_drops_the_part(
        part_pair, tiny_regions, tiny_backbone_dir, tmp_path):
    west, delta = part_pair
    meta = merge_adapters([west, delta], [1.0, 3.0], tiny_backbone_dir, tmp_path / "m",
                          dtype="float32", item_item="mean")
    catalogue = meta["catalogue"]
    blend = meta["merge"]["item_item"]["blend_weight"]
    west_only = [i for i in tiny_regions["west"].catalogue
                 if i not in set(tiny_regions["delta"].catalogue)]
    assert west_only
    # a history of west-only items: west's own part, scaled to the merged blend weight
    got = part_scores(tmp_path / "m", tiny_backbone_dir, [west_only[:2]], catalogue)
    want = part_scores(west, tiny_backbone_dir, [west_only[:2]], catalogue) * (blend / 0.5)
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    omitted = merge_adapters([west, delta], [1.0, 3.0], tiny_backbone_dir, tmp_path / "o",
                             dtype="float32", item_item="omit")
    assert omitted["neighbours"] == 0 and load(tmp_path / "o", tiny_backbone_dir).item_item is None


def test_a_source_without_a_part_adds_nothing_to_the_merged_part(part_pair, lora_pair,
                                                                 tiny_backbone_dir, tmp_path):
    west, _ = part_pair
    _, _, delta_bare = lora_pair  # no item-item part
    meta = merge_adapters([west, delta_bare], [1.0, 1.0], tiny_backbone_dir, tmp_path / "m",
                          dtype="float32")
    assert meta["merge"]["item_item"]["blend_weight"] == pytest.approx(0.5 * 0.5)
    catalogue = meta["catalogue"]
    histories = [catalogue[:3], catalogue[-3:]]
    torch.testing.assert_close(part_scores(tmp_path / "m", tiny_backbone_dir, histories,
                                           catalogue),
                               0.5 * part_scores(west, tiny_backbone_dir, histories, catalogue),
                               atol=1e-5, rtol=1e-5)
    none = merge_adapters([delta_bare, renamed_copy(delta_bare, tmp_path / "d2", "d2")],
                          [1, 1], tiny_backbone_dir, tmp_path / "n", dtype="float32")
    assert none["neighbours"] == 0 and "no source" in none["merge"]["item_item"]["note"]
    with pytest.raises(ValueError, match="item_item"):
        merge_adapters([west], [1], tiny_backbone_dir, tmp_path / "x", item_item="max")
    assert not (tmp_path / "x").exists()


# -- never-trained items known by their text alone (lift and text prior) -----------------------

def lifted_rows_of(folder: Path, backbone_dir: Path, items: list[str]):
    """Which of ``items`` the source at ``folder`` counts as trained, and their saved bias."""
    backbone, vocab, bmeta = load_backbone(backbone_dir)
    read = AdapterFolder.read(folder, bmeta["fingerprint"])
    catalogue = read.meta["catalogue"]
    text = source_text(read, backbone, vocab.columns(catalogue) >= 0)
    trained = trained_rows(read, text)
    rows = [catalogue.index(i) for i in items]
    return trained, rows, read.tensors[ITEM_PREFIX + "bias"].float()


def test_lifted_text_only_items_do_not_count_as_trained(text_island, lifted_island, tmp_path):
    """A source's never-trained text-only items carry the offset plus its text prior (and
    lift): the merge reads that from the source's record and does not count them as held
    (the rows training moved still count)."""
    root, island, _ = text_island
    folder, cold, before = lifted_island
    trained, rows, bias = lifted_rows_of(folder, root / "bb", cold)
    offset = read_json(folder / "region.json")["unseen_offset"]
    assert (bias[rows] - offset).abs().min() > 0.01  # lifted off the offset
    assert not trained[rows].any()
    warm = [i for i in island.catalogue if i in {x for h in island.train.values() for x in h}]
    assert trained[[read_json(folder / "region.json")["catalogue"].index(i)
                    for i in warm]].all()
    meta = merge_adapters([folder], [1], root / "bb", tmp_path / "m", catalogue=cold + warm[:3],
                          dtype="float32")
    assert meta["merge"]["items_fallback"] == len(cold)  # held by no source
    merged = load(tmp_path / "m", root / "bb").item_side.bias.detach()
    fallback = meta["merge"]["fallback_bias"]
    assert torch.allclose(merged[:len(cold)], torch.full((len(cold),), fallback))


def test_items_lifted_without_a_prior_do_not_count_as_trained(text_island, lifted_island,
                                                              tmp_path):
    """The same with the lift alone (no text prior: ``text_lift`` added to the offset)."""
    root, _, _ = text_island
    folder, cold, before = lifted_island
    edited = tmp_path / "island-lift"
    shutil.copytree(folder, edited)
    meta = read_json(edited / "region.json")
    meta.pop("text_prior")
    write_json(edited / "region.json", {**meta, "text_lift": 0.7, "text_prior_scale": 0.0})
    tensors = {k: v for k, v in load_file(str(edited / WEIGHTS)).items()
               if "text_prior" not in k}
    rows = [meta["catalogue"].index(i) for i in cold]
    tensors[ITEM_PREFIX + "bias"][rows] = (before + 0.7).to(torch.float16)
    save_file(tensors, str(edited / WEIGHTS), metadata={"format": "pt"})
    trained, rows, _ = lifted_rows_of(edited, root / "bb", cold)
    assert not trained[rows].any()
    # a lift the record does not give is training's doing: counted
    write_json(edited / "region.json", {**meta, "text_lift": 0.2, "text_prior_scale": 0.0})
    trained, rows, _ = lifted_rows_of(edited, root / "bb", cold)
    assert trained[rows].all()
