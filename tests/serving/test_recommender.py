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
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import load_backbone
from regiontune.serving.errors import AdapterLoadError, InvalidRequestError, UnknownRegionError
from regiontune.serving.recommender import Recommender
from tests.serving.helpers import histories, make_adapter, perturbed_copy

# method -> training region (small regions: fast); served under the method's name
METHOD_REGIONS = {"lora": "west", "bottleneck": "delta", "ia3": "alpine", "adalora": "island",
                  "full": "delta"}


@pytest.fixture(scope="module")
def adapters(tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """{method: (adapter dir, in-memory task, region data)} plus version B of the lora one."""
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for seed, (method, region) in enumerate(METHOD_REGIONS.items()):
        data = tiny_regions[region]
        task = make_adapter(tiny_backbone_dir, data, method, root / method, seed)
        out[method] = (root / method, task, data)
    out["lora_b"] = (perturbed_copy(root / "lora", root / "lora_b", 99), None,
                     tiny_regions["west"])
    return out


@pytest.fixture(scope="module")
def rec(tiny_backbone_dir, adapters):
    rec = Recommender.from_dirs(tiny_backbone_dir)
    for method in METHOD_REGIONS:
        rec.load(method, adapters[method][0])
    return rec


def as_dict(result: dict) -> dict[str, float]:
    return dict(zip(result["items"], result["scores"], strict=True))


def assert_matches(result: dict, task, history: list[str]) -> None:
    """``result`` (all items, seen kept) equals the task's own full ranking scores."""
    got = as_dict(result)
    catalogue = task.item_side.catalogue
    assert sorted(got) == sorted(catalogue)
    want = task_scores(task, [history], catalogue)[0]
    torch.testing.assert_close(torch.tensor([got[i] for i in catalogue]), want,
                               atol=1e-5, rtol=1e-5)


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
    assert _shared_names(rec)["bottleneck"] == {e["internal_name"] for e in rec.regions()}


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


def _shared_names(rec) -> dict[str, set[str]]:
    for body in rec._shared.values():  # the layers hold exactly the adapters on record
        assert body.held() == body.names
    return {m: set(b.names) for m, b in rec._shared.items()}


def test_failed_loads_keep_the_old_adapter(rec, adapters, tmp_path):
    lora_dir = adapters["lora"][0]
    h = histories(adapters["lora"][2], 3)
    want = rec.recommend(h, ["lora"] * 3, k=20)
    names = _shared_names(rec)
    corrupt = shutil.copytree(lora_dir, tmp_path / "corrupt")
    (corrupt / WEIGHTS).write_bytes((corrupt / WEIGHTS).read_bytes()[:200])
    foreign = shutil.copytree(lora_dir, tmp_path / "foreign")
    meta = json.loads((foreign / "region.json").read_text())
    (foreign / "region.json").write_text(json.dumps({**meta, "backbone_fingerprint": "sha:x"}))
    pickled = shutil.copytree(lora_dir, tmp_path / "pickled")
    torch.save({"x": torch.zeros(1)}, pickled / "evil.bin")
    missing = shutil.copytree(lora_dir, tmp_path / "missing")  # fails inside the shared body
    tensors = load_file(str(missing / WEIGHTS))
    drop = next(k for k in tensors if "lora_B" in k)
    save_file({k: v for k, v in tensors.items() if k != drop}, str(missing / WEIGHTS))
    cases = {corrupt: "corrupt", foreign: "sha:x", pickled: "pickle", missing: "lack",
             tmp_path / "nowhere": "no such"}
    for path, reason in cases.items():
        with pytest.raises(AdapterLoadError, match=reason):
            rec.load("lora", path)
        assert rec.recommend(h, ["lora"] * 3, k=20) == want
    assert _shared_names(rec) == names  # nothing half-added left behind
    assert rec.trainable_parameters() == 0


def test_hub_id_is_pulled_then_loaded(rec, adapters, monkeypatch, tmp_path):
    calls = []

    def fake_pull(repo_id, out, revision=None, backbone_dir=None, **kw):
        calls.append((repo_id, revision, backbone_dir))
        shutil.copytree(adapters["ia3"][0], out)
        return Path(out)

    monkeypatch.setattr("regiontune.hub.client.pull", fake_pull)
    info = rec.load("hubbed", "acme/ia3-adapter@v1")
    assert calls == [("acme/ia3-adapter", "v1", rec.backbone_dir)]
    assert info["method"] == "ia3" and info["path"] == "acme/ia3-adapter@v1"
    cache = rec.fetcher.cache_dir
    assert cache is not None and not any(cache.iterdir())  # in memory: the download is gone
    h = histories(adapters["ia3"][2], 1)
    assert rec.recommend(h, ["hubbed"])[0]["adapted"]
    rec.unload("hubbed")

    def failing_pull(repo_id, out, **kw):
        Path(out).mkdir(parents=True)
        (Path(out) / "partial.bin").write_bytes(b"x")  # half a download
        raise RuntimeError("hub unreachable")

    monkeypatch.setattr("regiontune.hub.client.pull", failing_pull)
    with pytest.raises(AdapterLoadError, match="no local directory.*hub unreachable"):
        rec.load("hubbed", "acme/missing")
    assert not any(cache.iterdir())  # cleaned on failure too
    rec.close()  # shutdown: the temporary cache folder goes
    assert not cache.exists()


def test_hub_deadline_outside_the_load_lock(tiny_backbone_dir, adapters, monkeypatch):
    """A hub that never answers: the load gives up at the deadline, other loads and unloads
    go on meanwhile, and the stuck download's folder is removed once it ends."""
    rec = Recommender.from_dirs(tiny_backbone_dir, [adapters["lora"][0]], hub_deadline_s=0.4)
    release, started, outs = threading.Event(), threading.Event(), []

    def stuck_pull(repo_id, out, **kw):
        outs.append(Path(out))
        Path(out).mkdir(parents=True)
        started.set()
        release.wait(10)
        Path(out).mkdir(parents=True, exist_ok=True)  # writes after the deadline
        (Path(out) / "late.bin").write_bytes(b"x")
        raise RuntimeError("finally failed")

    monkeypatch.setattr("regiontune.hub.client.pull", stuck_pull)
    errors = []

    def put() -> None:
        try:
            rec.load("slow", "acme/silent")
        except AdapterLoadError as err:
            errors.append(err)

    loader = threading.Thread(target=put)
    start = time.monotonic()
    loader.start()
    assert started.wait(5)
    rec.load("other", adapters["bottleneck"][0])  # not queued behind the download:
    rec.unload("other")
    assert loader.is_alive() and not errors  # done while the hub load still waits
    loader.join(5)
    assert time.monotonic() - start < 2.0
    assert len(errors) == 1 and "did not finish within 0.4 s" in str(errors[0])
    assert "slow" not in {r["region"] for r in rec.regions()}
    release.set()  # the worker writes on, then ends: its folder is removed then
    deadline = time.monotonic() + 5
    while outs[0].exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not outs[0].exists()
    rec.close()


def test_non_finite_weights_refused_at_load(rec, adapters, tmp_path):
    h = histories(adapters["lora"][2], 2)
    want = rec.recommend(h, ["lora"] * 2, k=10)
    for value in (float("nan"), float("inf")):
        bad = shutil.copytree(adapters["lora"][0], tmp_path / f"bad_{value}")
        tensors = load_file(str(bad / WEIGHTS))
        name = next(k for k in tensors if "lora_A" in k)
        tensors[name].view(-1)[0] = value
        save_file(tensors, str(bad / WEIGHTS))
        with pytest.raises(AdapterLoadError, match="non-finite.*lora_A"):
            rec.load("lora", bad)
        assert rec.recommend(h, ["lora"] * 2, k=10) == want


def test_not_an_adapter_directory_is_refused_without_a_walk(rec, tmp_path):
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "deep" / "er" / "evil.pkl").write_bytes(b"x")
    with pytest.raises(AdapterLoadError, match="not an adapter directory") as err:
        rec.load("lora", tmp_path)
    assert "evil.pkl" not in str(err.value)  # nothing of the tree is listed


def test_two_folders_claiming_one_region_is_an_error(tiny_backbone_dir, adapters, tmp_path):
    twin = shutil.copytree(adapters["lora"][0], tmp_path / "twin")
    with pytest.raises(AdapterLoadError, match="claim one region.*'west'") as err:
        Recommender.from_dirs(tiny_backbone_dir, [adapters["lora"][0], twin])
    assert str(twin) in str(err.value)
    nameless = shutil.copytree(adapters["lora"][0], tmp_path / "nameless")
    meta = json.loads((nameless / "region.json").read_text())
    (nameless / "region.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                      if k != "region"}))
    with pytest.raises(AdapterLoadError, match="names no region"):
        Recommender.from_dirs(tiny_backbone_dir, [nameless])


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
    assert len(_shared_names(rec)["lora"]) == 2  # other + the current swap version
    assert rec.trainable_parameters() == 0


def test_unload(tiny_backbone_dir, adapters):
    rec = Recommender.from_dirs(tiny_backbone_dir,
                                [adapters["lora"][0], adapters["bottleneck"][0]])
    assert [r["region"] for r in rec.regions()] == ["delta", "west"]  # from region.json
    h = histories(adapters["lora"][2], 2)
    assert all(r["adapted"] for r in rec.recommend(h, ["west", "west"]))
    rec.unload("west")
    assert not any(r["adapted"] for r in rec.recommend(h, ["west", "west"]))
    assert _shared_names(rec)["lora"] == set()
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


def test_hub_deadline_must_be_positive(tiny_backbone_dir):
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="hub_deadline_s must be positive"):
            Recommender.from_dirs(tiny_backbone_dir, hub_deadline_s=bad)
