"""Hot-swap serving: mixed-region batches, consistency under concurrent replaces, failures."""


from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from regiontune.adapters import load_adapter
from regiontune.adapters.io import WEIGHTS
from regiontune.model.backbone import load_backbone
from regiontune.serving.errors import InvalidRequestError, UnknownRegionError
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import histories, make_adapter, perturbed_copy
from tests.serving.recommender_common import METHOD_REGIONS, as_dict, assert_matches, shared_names


def test_mixed_batch_equals_each_adapter_alone(rec, adapters):
    rows, regions, tasks = [], [], []
    for method in METHOD_REGIONS:
        _, task, data = adapters[method]
        for h in histories(data, 3):
            rows.append(h)
            regions.append(method)
            tasks.append(task)
    order = list(range(len(rows)))[::2] + list(range(len(rows)))[1::2]  # interleave regions
    rows, regions, tasks = ([x[i] for i in order] for x in (rows, regions, tasks))
    before = rec.stats()["forward_passes"]
    results = rec.recommend(rows, regions, k=10_000, exclude_seen=False)
    # lora + adalora (as LoRA) share one pass, bottleneck one, ia3 and full one each
    assert rec.stats()["forward_passes"] - before == 4
    for result, task, history, region in zip(results, tasks, rows, regions, strict=True):
        assert result["region"] == region and result["adapted"]
        assert_matches(result, task, history)


def test_routable_regions_share_one_pass_per_body(rec, adapters):
    h = histories(adapters["lora"][2], 2)
    before = rec.stats()["forward_passes"]
    rec.recommend(h * 3, ["lora", "adalora", "nowhere"] * 2, k=5)
    assert rec.stats()["forward_passes"] - before == 1  # backbone rows ride as __base__
    mixed = h + histories(adapters["bottleneck"][2], 2)
    rec.recommend(mixed, ["lora", "lora", "bottleneck", "bottleneck"], k=5)
    assert rec.stats()["forward_passes"] - before == 3
    # a causal row with no known item has nothing to encode: ranked by popularity, no pass
    [pop] = rec.recommend([["ghost"]], ["bottleneck"], k=5)
    assert rec.stats()["forward_passes"] - before == 3 and len(pop["items"]) == 5


def test_adalora_served_as_lora_and_nothing_trainable(rec):
    info = {r["region"]: r for r in rec.regions()}
    assert info["adalora"]["served_as"] == "lora" and info["adalora"]["method"] == "adalora"
    assert info["ia3"]["served_as"] == "ia3"
    assert all(r["fingerprint_ok"] and r["n_items"] > 0 and r["loaded_at"] for r in info.values())
    assert rec.trainable_parameters() == 0


def test_regions_cache_no_dense_item_table(rec):
    """Entries keep the low-rank item side only; base tables are the backbone's own tensors."""
    table = rec.backbone.item_emb.weight
    for entry in rec._snapshot.values():
        if entry.served_as != "full":  # a fully fine-tuned model brings its own table
            assert entry.base_embed.data_ptr() == table.data_ptr()
        held = {k for k, v in vars(entry).items() if isinstance(v, torch.Tensor)}
        assert held <= {"base_embed", "base_bias", "columns", "item_a", "item_b", "item_bias"}
        assert entry.columns.shape == (len(entry.vocab),)


def bottleneck_variant(src: Path, dst: Path, seed: int, **config) -> Path:
    """A copy of a bottleneck adapter with new bottleneck weights, shaped for ``config``."""
    shutil.copytree(src, dst)
    cfg = {**json.loads((dst / "adapter_config.json").read_text()), **config}
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(dst / WEIGHTS))
    hidden = tensors[next(k for k in tensors if k.endswith("up.bias"))].shape[0]
    width = max(1, hidden // cfg["reduction_factor"])
    shapes = {"down.weight": (width, hidden), "down.bias": (width,),
              "up.weight": (hidden, width), "up.bias": (hidden,)}
    gen = torch.Generator().manual_seed(seed)
    for key in list(tensors):
        part = key.split(".bottleneck.")[-1]
        if part in shapes:
            tensors[key] = 0.5 * torch.randn(shapes[part], generator=gen)
    save_file(tensors, str(dst / WEIGHTS), metadata={"format": "pt"})
    return dst


def test_bottleneck_regions_of_any_width_and_activation_share_a_pass(tiny_backbone_dir,
                                                                       adapters, tmp_path):
    src, _, data = adapters["bottleneck"]
    dirs = {"b_relu": src, "b_copy": perturbed_copy(src, tmp_path / "copy", 7),
            "b_gelu": bottleneck_variant(src, tmp_path / "gelu", 8, reduction_factor=4,
                                         non_linearity="gelu"),
            "b_tanh": bottleneck_variant(src, tmp_path / "tanh", 9, reduction_factor=8,
                                         non_linearity="tanh")}
    rec = Recommender.from_dirs(tiny_backbone_dir)
    for region, directory in dirs.items():
        rec.load(region, directory)
    fingerprint = rec.fingerprint
    tasks = {}
    for region, directory in dirs.items():
        backbone, vocab, _ = load_backbone(tiny_backbone_dir)  # the loader wraps its layers
        tasks[region] = load_adapter(directory, backbone, vocab, fingerprint)
    h = histories(data, 3)
    rows = [(region, h[i % 3]) for i in range(3) for region in dirs]
    before = rec.stats()["forward_passes"]
    results = rec.recommend([r[1] for r in rows], [r[0] for r in rows], k=10_000,
                            exclude_seen=False)
    assert rec.stats()["forward_passes"] - before == 1
    for (region, history), result in zip(rows, results, strict=True):
        assert_matches(result, tasks[region], history)
    # each alone (the single-adapter path) gives the same answers
    for (region, history), result in zip(rows, results, strict=True):
        [alone] = rec.recommend([history], [region], k=10_000, exclude_seen=False)
        assert alone["items"] == result["items"]
        torch.testing.assert_close(alone["scores"], result["scores"], atol=1e-5, rtol=1e-5)
    rec.unload("b_gelu")
    assert shared_names(rec)["bottleneck"] == {e["internal_name"] for e in rec.regions()}


def test_unknown_region_served_by_backbone(rec, tiny_backbone_dir, adapters):
    history = histories(adapters["lora"][2], 1)[0] + ["no-such-item"]
    [result] = rec.recommend([history], ["atlantis"], k=10_000, exclude_seen=False)
    assert result["adapted"] is False and result["region"] == "atlantis"
    assert result["unknown_items"] == ["no-such-item"]
    backbone, vocab, _ = load_backbone(tiny_backbone_dir)
    assert sorted(result["items"]) == sorted(vocab.items)  # the whole backbone vocabulary
    users = backbone.eval()(input_ids=torch.tensor([vocab.encode(history)]))
    table, bias = backbone.item_table()
    want = (users.last_hidden_state[0, -1] @ table.T + bias).detach()
    got = as_dict(result)
    torch.testing.assert_close(torch.tensor([got[i] for i in vocab.items]), want,
                               atol=1e-5, rtol=1e-5)


def test_unknown_region_error_mode(tiny_backbone_dir):
    rec = Recommender.from_dirs(tiny_backbone_dir, unknown_region="error")
    with pytest.raises(UnknownRegionError, match="atlantis"):
        rec.recommend([["x"]], ["atlantis"])
    with pytest.raises(ValueError, match="unknown_region"):
        Recommender.from_dirs(tiny_backbone_dir, unknown_region="guess")


def test_exclude_seen_and_unknown_items(rec, adapters):
    _, task, data = adapters["bottleneck"]
    history = histories(data, 1)[0] + ["ghost-1", "ghost-2"]
    n = len(task.item_side.catalogue)
    [seen_out] = rec.recommend([history], ["bottleneck"], k=n, exclude_seen=True)
    [seen_in] = rec.recommend([history], ["bottleneck"], k=n, exclude_seen=False)
    known = {i for i in history if i in task.vocab}
    assert not known & set(seen_out["items"]) and len(seen_out["items"]) == n - len(known)
    assert len(seen_in["items"]) == n and known <= set(seen_in["items"])
    assert seen_out["unknown_items"] == ["ghost-1", "ghost-2"]
    assert seen_out["scores"] == sorted(seen_out["scores"], reverse=True)
    [top] = rec.recommend([history], ["bottleneck"], k=3)
    assert top["items"] == seen_out["items"][:3]


def test_bad_calls(rec):
    with pytest.raises(InvalidRequestError):
        rec.recommend([["a"]], ["lora", "ia3"])
    for k in (0, -1, 1.5, True):
        with pytest.raises(InvalidRequestError):
            rec.recommend([["a"]], ["lora"], k=k)
    for name in ("../x", "a/b", "a..b", "", "..", "x" * 65):
        with pytest.raises(InvalidRequestError):
            rec.load(name, "/nowhere")





def test_unknown_region_on_the_backbone_warns_once(rec, caplog):
    caplog.set_level(logging.WARNING, logger="regiontune.serving.recommender")
    rec.recommend([["x"], ["y"]], ["wset", "wset"])
    rec.recommend([["x"]], ["wset"])
    warnings = [r for r in caplog.records if "wset" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert "un-adapted backbone" in warnings[0].getMessage()


def test_hot_replace_under_concurrent_requests(tiny_backbone_dir, adapters):
    rec = Recommender.from_dirs(tiny_backbone_dir)
    dir_a, dir_b = adapters["lora"][0], adapters["lora_b"][0]
    rec.load("bottleneck", adapters["bottleneck"][0])
    h = histories(adapters["lora"][2], 4)
    regions = ["swap", "other", "swap", "bottleneck"]
    rec.load("other", dir_a)  # a neighbour in the same shared LoRA body must not be disturbed
    rec.load("swap", dir_b)
    answer_b = rec.recommend(h, regions, k=15)
    rec.load("swap", dir_a)
    answer_a = rec.recommend(h, regions, k=15)
    assert answer_a != answer_b

    def same(got, want) -> bool:
        return all(g["items"] == w["items"] and torch.allclose(
            torch.tensor(g["scores"]), torch.tensor(w["scores"]), atol=1e-5)
            for g, w in zip(got, want, strict=True))

    errors, mismatches, served = [], [], [0]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                got = rec.recommend(h, regions, k=15)
                if not (same(got, answer_a) or same(got, answer_b)):
                    mismatches.append(got)
                served[0] += 1
            except Exception as err:  # noqa: BLE001 - every error is a failure here
                errors.append(err)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    swaps = 0
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        rec.replace("swap", dir_b if swaps % 2 == 0 else dir_a)
        swaps += 1
    stop.set()
    for t in threads:
        t.join()
    assert not errors and not mismatches
    assert served[0] > 10 and swaps > 5
    stats = rec.stats()
    assert stats["retired_pending"] == 0  # every replaced adapter was deleted
    assert len(shared_names(rec)["lora"]) == 2  # other + the current swap version
    assert rec.trainable_parameters() == 0


def test_unload(tiny_backbone_dir, adapters):
    rec = Recommender.from_dirs(tiny_backbone_dir,
                                [adapters["lora"][0], adapters["bottleneck"][0]])
    assert [r["region"] for r in rec.regions()] == ["delta", "west"]  # from region.json
    h = histories(adapters["lora"][2], 2)
    assert all(r["adapted"] for r in rec.recommend(h, ["west", "west"]))
    rec.unload("west")
    assert not any(r["adapted"] for r in rec.recommend(h, ["west", "west"]))
    assert shared_names(rec)["lora"] == set()
    assert [r["region"] for r in rec.regions()] == ["delta"]
    with pytest.raises(UnknownRegionError):
        rec.unload("west")
    with pytest.raises(UnknownRegionError):
        rec.replace("west", adapters["lora"][0])
    rec.load("west", adapters["lora"][0])
    assert all(r["adapted"] for r in rec.recommend(h, ["west", "delta"]))


def test_set_histories_are_served_as_evaluated_whatever_their_listed_order(tiny_regions,
                                                                           tmp_path):
    """An unordered backbone (data without timestamps): the server reads a history in the
    orders of its set, as evaluation does -- same scores for any listing of the set."""
    from regiontune.model.backbone import save_backbone
    from regiontune.model.recmodel import build_backbone
    from regiontune.model.vocab import ItemVocab

    data = tiny_regions["west"]
    torch.manual_seed(0)
    vocab = ItemVocab(sorted(data.catalogue))
    model = build_backbone(len(vocab), arch="llama", ordered=False, hidden_size=16,
                           num_layers=2, num_heads=2, intermediate_size=32, max_len=20)
    assert model.config.set_orders > 1
    save_backbone(model, vocab, {"regions": ["west"]}, tmp_path / "bb")
    task = make_adapter(tmp_path / "bb", data, "lora", tmp_path / "west", 3)
    rec = Recommender.from_dirs(tmp_path / "bb")
    rec.load("west", tmp_path / "west")
    history = sorted(max(data.train.values(), key=len))[:6]
    listings = [history, history[::-1], history[3:] + history[:3]]
    results = rec.recommend(listings, ["west"] * 3, k=10_000, exclude_seen=False)
    for result in results:
        assert_matches(result, task, history)
    assert rec.stats()["forward_passes"] == model.config.set_orders  # one batch, 4 reads


def test_errors_keep_their_import_path():
    """The errors live in regiontune.serving.errors and stay importable from the recommender."""
    from regiontune.serving import errors, recommender

    for name in ("AdapterLoadError", "InvalidRequestError", "UnknownRegionError",
                 "ServingError", "check_region"):
        assert getattr(recommender, name) is getattr(errors, name)
