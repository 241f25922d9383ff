"""Region adapters (every method of the registry): what trains, what stays frozen, save/load,
region-new items, backbone checks, corrupt files, sizes, plain-PEFT loading, AdaLoRA rank
allocation and its LoRA export, mixed-region batches."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from regiontune.adapters import (
    METHODS,
    ItemSide,
    RegionTask,
    get_method,
    load_adapter,
    read_adapter,
    save_adapter,
)
from regiontune.adapters.io import CONFIG, LORA_EXPORT, WEIGHTS
from regiontune.adapters.item_side import PREFIX as ITEM_PREFIX
from regiontune.artifacts import ArtifactError, BackboneMismatchError, cards
from regiontune.config import AdaptConfig
from regiontune.data.loading import DataError
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import backbone_fingerprint, load_backbone
from regiontune.training.adapt import adapt, build_region_task, region_sequences, train_region
from regiontune.training.loop import fit
from tests.conftest import TINY_DATA, TINY_TRAIN

ALL = sorted(METHODS)
PEFT_METHODS = sorted(m for m in METHODS if METHODS[m].peft_loadable)
SMALL = ["adalora", "bottleneck", "ia3", "lora"]  # adapter file well below the backbone's
ADAPTER_PARAM = {"lora": "lora_", "adalora": "lora_", "ia3": "ia3_l", "bottleneck": ".bottleneck."}
ADAPTER_KEYS = ("lora_", "ia3_", ".bottleneck.", "ranknum")
REGION = "island"  # a small region with region-only items ("island-3") unknown to the backbone


def _fresh(backbone_dir):
    return load_backbone(backbone_dir)


def _histories(data) -> list[list[str]]:
    """The region's validation histories, plus one made of region-new items only."""
    new = [i for i in data.catalogue if i.startswith(f"{REGION}-")]
    return [c.history for c in data.valid] + [new[:2]]


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Seeded noise on every trainable parameter: a non-trivial adapter to save and load."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def _base_weights(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone weights inside a body, under the backbone's own names."""
    return {k.replace(".base_layer", ""): v for k, v in base.state_dict().items()
            if not any(a in k for a in ADAPTER_KEYS)}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def island(tiny_regions):
    return tiny_regions[REGION]


@pytest.fixture(scope="module", params=ALL)
def trained(request, tiny_backbone_dir, island):
    """One adapter per method trained with train_region; the backbone's Parameters recorded."""
    method = request.param
    backbone, vocab, meta = _fresh(tiny_backbone_dir)
    before = {n: (p, p.detach().clone()) for n, p in backbone.named_parameters()}
    task, stats = train_region(backbone, vocab, island, AdaptConfig(method=method, region=REGION),
                               TINY_TRAIN)
    return {"method": method, "task": task, "stats": stats, "backbone": backbone,
            "before": before, "vocab": vocab, "meta": meta}


@pytest.fixture(scope="module", params=ALL)
def saved(request, tiny_backbone_dir, island, tmp_path_factory):
    """A perturbed (non-trivial) adapter per method, saved once."""
    method = request.param
    backbone, vocab, meta = _fresh(tiny_backbone_dir)
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method=method, region=REGION), total_steps=50)
    _perturb(task, seed=1)
    directory = tmp_path_factory.mktemp(f"adapter-{method}") / REGION
    region_meta = save_adapter(task, method, REGION,
                               {"region": REGION, "backbone_fingerprint": meta["fingerprint"],
                                "backbone_path": str(tiny_backbone_dir)}, directory)
    return {"method": method, "task": task, "dir": directory, "meta": region_meta,
            "fingerprint": meta["fingerprint"]}


# -- what trains ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL)
def test_only_adapter_and_item_side_are_trainable(tiny_backbone, island, method):
    backbone, vocab, _ = tiny_backbone
    original_params = list(backbone.parameters())  # PEFT adds its own to the same tree
    originals = {id(p) for p in original_params}
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method=method, region=REGION), total_steps=10)
    trainable = {n: p for n, p in task.named_parameters() if p.requires_grad}
    item_side = {n for n in trainable if n.startswith("item_side.")}
    assert item_side == {"item_side.lowrank_a", "item_side.lowrank_b", "item_side.bias"}
    rank = task.item_side.rank  # auto: the largest rank within the 5% size budget, >= 1
    assert 1 <= rank <= AdaptConfig().max_item_rank
    assert task.item_side.lowrank_a.shape == (len(island.catalogue), rank)
    others = {n: p for n, p in trainable.items() if n not in item_side}
    assert others, "the adapter has no trainable parameters"
    assert not any(p.requires_grad for p in original_params)
    if method == "full":  # a trainable copy; the shared backbone object stays frozen
        unused = task.body.encoder.get_input_embeddings().weight  # never used: stays frozen
        assert all(p.requires_grad for p in task.body.parameters() if p is not unused)
        assert not unused.requires_grad
        assert not {id(p) for p in task.body.parameters()} & originals
        assert task.body is not backbone
    else:
        assert all(ADAPTER_PARAM[method] in n for n in others), sorted(others)
        assert not {id(p) for p in others.values()} & originals
        # PEFT and our bottleneck keep the very same frozen Parameter objects in base_layer
        assert {id(p) for p in task.body.parameters()} >= originals


def test_backbone_is_bit_identical_after_training(trained, tiny_backbone_dir):
    task, backbone = trained["task"], trained["backbone"]
    assert trained["stats"]["epochs_run"] >= 1 and trained["stats"]["trainable_params"] > 0
    for name, (param, before) in trained["before"].items():
        assert torch.equal(param, before), name
        assert not param.requires_grad, name
    fresh, _, _ = _fresh(tiny_backbone_dir)
    expected = fresh.state_dict()
    if trained["method"] == "full":
        # the shared backbone is untouched (same fingerprint); its trained copy moved
        assert backbone_fingerprint(backbone) == trained["meta"]["fingerprint"]
        shared = {id(p) for p in backbone.parameters()}
        assert not shared & {id(p) for p in task.body.parameters()}  # a copy it trains
        copy = task.body.state_dict()
        moved = any(not torch.equal(copy[k], expected[k]) for k in expected)
        # training keeps the starting point when no epoch beats it on the hold-out
        assert moved == (trained["stats"]["best_epoch"] > 0)
    else:
        base = _base_weights(get_method(trained["method"]).base_of(task.body))
        assert base.keys() == expected.keys()
        changed = [k for k in expected if not torch.equal(base[k], expected[k])]
        assert not changed, changed


def test_region_new_items_score_and_learn(trained, tiny_backbone_dir, island):
    task, vocab = trained["task"], trained["vocab"]
    new = task.item_side.new_items
    assert new and all(i.startswith(f"{REGION}-") for i in new)
    assert not any(i in vocab for i in new)
    columns = [island.catalogue.index(i) for i in new]
    histories = _histories(island)
    after = task_scores(task, histories, island.catalogue)
    assert torch.isfinite(after).all()
    backbone, fresh_vocab, _ = _fresh(tiny_backbone_dir)
    untrained = build_region_task(backbone, fresh_vocab, island.catalogue,
                                  AdaptConfig(method=trained["method"], region=REGION))
    before = task_scores(untrained, histories, island.catalogue)
    assert torch.isfinite(before).all()
    assert torch.equal(before[:, columns], torch.zeros_like(before[:, columns]))  # no rows yet
    assert not torch.allclose(after[:, columns], before[:, columns])
    # a history made of new items only encodes too (their rows feed the input as well)
    assert not torch.allclose(after[-1], before[-1])


@pytest.mark.parametrize("unseen_as_negatives", [True, False])
def test_items_without_training_interactions_and_the_softmax(tiny_backbone_dir, island,
                                                              unseen_as_negatives):
    # items only a candidate list names (as on WSDM t1): no history holds them
    ghosts = ["ghost-1", "ghost-2"]
    data = replace(island, catalogue=sorted(island.catalogue + ghosts))
    backbone, vocab, _ = _fresh(tiny_backbone_dir)
    # the mechanics of training, not early stopping: the trained weights, whatever the hold-out
    cfg = AdaptConfig(method="lora", region=REGION, unseen_as_negatives=unseen_as_negatives,
                      calibrate_unseen=False, start_as_candidate=False)
    task, _ = train_region(backbone, vocab, data, cfg, TINY_TRAIN)
    side = task.item_side
    rows = [side.catalogue.index(g) for g in ghosts]
    trained_rows = [side.catalogue.index(i) for i in island.train[next(iter(island.train))]]
    assert side.bias[trained_rows].abs().sum() > 0  # the region's own items learn either way
    if unseen_as_negatives:  # every step pushes them down as negatives
        assert (side.bias[rows] < 0).all()
    else:  # the default: left out of the softmax, no gradient ever reached their rows
        assert torch.equal(side.bias[rows], torch.zeros(2))
        assert torch.equal(side.lowrank_a[rows], torch.zeros(2, side.rank))
    scores = task_scores(task, _histories(island), data.catalogue)
    assert torch.isfinite(scores).all()  # scoring covers the whole catalogue in both cases


def test_unknown_method_is_a_value_error_listing_methods(tiny_backbone, island, tmp_path):
    backbone, vocab, _ = tiny_backbone
    for call in (lambda: get_method("nope"),
                 lambda: build_region_task(backbone, vocab, island.catalogue,
                                           AdaptConfig(method="nope", region=REGION))):
        with pytest.raises(ValueError, match="nope") as err:
            call()
        assert all(m in str(err.value) for m in METHODS)
    with pytest.raises(ValueError, match="unknown adapter method") as err:
        adapt(tmp_path / "no-backbone", TINY_DATA, AdaptConfig(method="nope", region=REGION),
              TINY_TRAIN, tmp_path / "out")
    assert all(m in str(err.value) for m in METHODS)


def test_unknown_region_is_a_data_error_listing_regions(tiny_backbone_dir, tiny_regions,
                                                        tmp_path):
    with pytest.raises(DataError, match="atlantis") as err:
        adapt(tiny_backbone_dir, TINY_DATA, AdaptConfig(method="lora", region="atlantis"),
              TINY_TRAIN, tmp_path / "out")
    assert all(r in str(err.value) for r in tiny_regions)
    assert not (tmp_path / "out").exists()


# -- saving and loading -----------------------------------------------------------------------


def test_save_load_gives_identical_scores(saved, tiny_backbone_dir, island, request):
    directory = saved["dir"]
    assert {CONFIG, WEIGHTS, "region.json", "README.md"} <= {p.name for p in directory.iterdir()}
    meta = json.loads((directory / "region.json").read_text())
    assert meta["method"] == saved["method"] and meta["region"] == REGION
    assert meta["backbone_fingerprint"] == saved["fingerprint"]
    assert meta["new_items"] == saved["task"].item_side.new_items
    assert meta["catalogue"] == island.catalogue
    backbone, vocab, bmeta = _fresh(tiny_backbone_dir)
    loaded = load_adapter(directory, backbone, vocab, bmeta["fingerprint"])
    assert isinstance(loaded, RegionTask) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    histories = _histories(island)
    want = task_scores(saved["task"], histories, island.catalogue)
    got = task_scores(loaded, histories, island.catalogue)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # the perturbation matters: the loaded adapter differs from the bare backbone's scores
    bare = build_region_task(_fresh(tiny_backbone_dir)[0], vocab, island.catalogue,
                             AdaptConfig(method=saved["method"], region=REGION))
    assert not torch.allclose(task_scores(bare, histories, island.catalogue), got, atol=1e-3)


def test_other_backbone_is_a_mismatch_error(saved, tiny_backbone_dir):
    backbone, vocab, bmeta = _fresh(tiny_backbone_dir)
    with torch.no_grad():
        backbone.item_bias[5] += 1.0
    other = backbone_fingerprint(backbone)
    assert other != bmeta["fingerprint"]
    for fingerprint in (other, "sha256:0123456789abcdef"):
        with pytest.raises(BackboneMismatchError) as err:
            load_adapter(saved["dir"], backbone, vocab, fingerprint)
        assert saved["fingerprint"] in str(err.value) and fingerprint in str(err.value)
        assert err.value.adapter_fingerprint == saved["fingerprint"]
        assert err.value.backbone_fingerprint == fingerprint
        assert isinstance(err.value, ArtifactError)


def test_corrupt_adapter_files_are_artifact_errors(saved, tiny_backbone_dir, tmp_path):
    backbone, vocab, bmeta = _fresh(tiny_backbone_dir)
    fp = bmeta["fingerprint"]
    copy = tmp_path / "copy"

    def fresh_copy() -> Path:
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(saved["dir"], copy)
        return copy

    data = (saved["dir"] / WEIGHTS).read_bytes()
    fresh_copy()
    (copy / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        load_adapter(copy, backbone, vocab, fp)
    fresh_copy()
    (copy / WEIGHTS).write_bytes(b"")
    with pytest.raises(ArtifactError, match=WEIGHTS):
        load_adapter(copy, backbone, vocab, fp)
    fresh_copy()  # a valid file that lacks the adapter's tensors
    tensors = load_file(str(copy / WEIGHTS))
    save_file({k: v for k, v in tensors.items() if k.startswith(ITEM_PREFIX)},
              str(copy / WEIGHTS))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_adapter(copy, backbone, vocab, fp)
    fresh_copy()
    (copy / WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_adapter(copy, backbone, vocab, fp)
    fresh_copy()
    (copy / "region.json").write_text("{oops")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_adapter(copy, fp)
    fresh_copy()
    (copy / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ArtifactError, match="pickle"):
        read_adapter(copy, fp)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_failed_save_keeps_existing_adapter(tiny_backbone, island, tmp_path, monkeypatch,
                                            method):
    backbone, vocab, bmeta = tiny_backbone
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method=method, region=REGION), total_steps=50)
    _perturb(task, seed=2)
    meta = {"region": REGION, "backbone_fingerprint": bmeta["fingerprint"]}
    directory = tmp_path / "adapters" / REGION
    save_adapter(task, method, REGION, meta, directory)
    before = _snapshot(directory)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the card")

    _perturb(task, seed=3)
    monkeypatch.setattr(cards, "write_card", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_adapter(task, method, REGION, meta, directory)
    assert _snapshot(directory) == before
    assert [p.name for p in directory.parent.iterdir()] == [REGION]  # no temp dir left
    _, _, tensors = read_adapter(directory, bmeta["fingerprint"])  # still a valid adapter
    assert tensors.keys() == load_file(str(directory / WEIGHTS)).keys()


def test_adapter_file_size(saved, tiny_backbone_dir):
    adapter = (saved["dir"] / WEIGHTS).stat().st_size
    backbone = (tiny_backbone_dir / "model.safetensors").stat().st_size
    assert saved["meta"]["adapter_bytes"] == adapter
    if saved["method"] in SMALL:
        assert adapter < 0.5 * backbone, (adapter, backbone)
    else:  # full fine-tuning: its "adapter" is a whole model
        assert saved["method"] == "full" and adapter > 0.9 * backbone


def test_peft_methods_are_the_three_peft_tuners():
    assert PEFT_METHODS == ["adalora", "ia3", "lora"]


def test_plain_peft_loads_peft_adapters(saved, tiny_backbone_dir):
    if saved["method"] not in PEFT_METHODS:
        pytest.skip("not a PEFT method")
    backbone, _, _ = _fresh(tiny_backbone_dir)
    model = PeftModel.from_pretrained(backbone, str(saved["dir"]))
    model.eval()
    file = load_file(str(saved["dir"] / WEIGHTS))
    expected = {k: v for k, v in file.items() if not k.startswith(ITEM_PREFIX)}
    state = get_peft_model_state_dict(model)
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    # and the transformer part computes what the regiontune body computes
    torch.manual_seed(0)
    embeds = torch.randn(3, 5, backbone.config.hidden_size)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    body = saved["task"].body.eval()
    with torch.no_grad():
        want = body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        got = model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# -- AdaLoRA ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adalora_trained(tiny_backbone_dir, island, tmp_path_factory):
    """AdaLoRA trained through its final allocation (best epoch = the last one)."""
    backbone, vocab, meta = _fresh(tiny_backbone_dir)
    cfg = replace(TINY_TRAIN, batch_size=2, epochs=6, patience=10)
    n_seq = sum(1 for h in island.train.values() if len(h) >= 2)
    total = cfg.epochs * -(-n_seq // cfg.batch_size)
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method="adalora", region=REGION), total_steps=total)
    calls = []

    def improving() -> dict:
        calls.append(1)
        return {"ndcg@10": len(calls) / 100}

    method = get_method("adalora")
    fit(task, region_sequences(task, island), improving, cfg,
        step_hooks=method.step_hooks(task.body))
    directory = tmp_path_factory.mktemp("adalora") / REGION
    region_meta = save_adapter(task, "adalora", REGION,
                               {"region": REGION, "backbone_fingerprint": meta["fingerprint"]},
                               directory)
    return {"task": task, "dir": directory, "meta": region_meta, "total": total}


def test_adalora_allocates_ranks(adalora_trained):
    task = adalora_trained["task"]
    config = task.body.peft_config[REGION]
    assert config.total_step == adalora_trained["total"] >= 20
    e_values = [m.lora_E[REGION] for m in task.body.modules()
                if hasattr(m, "lora_E") and REGION in m.lora_E]
    assert e_values
    zeros = sum(int((e == 0).sum()) for e in e_values)
    assert zeros > 0, "no singular value was pruned"
    ranks = adalora_trained["meta"]["rank_pattern"]
    assert len(ranks) == len(e_values)
    assert all(0 <= r <= config.init_r for r in ranks.values())
    assert min(ranks.values()) < config.init_r
    assert sum(ranks.values()) <= config.target_r * len(ranks)
    saved_config = json.loads((adalora_trained["dir"] / CONFIG).read_text())
    assert {k: sum(v) for k, v in saved_config["rank_pattern"].items()} == ranks


def test_adalora_lora_export_scores_like_adalora(adalora_trained, tiny_backbone_dir, island):
    directory = adalora_trained["dir"]
    export = directory / LORA_EXPORT
    config = json.loads((export / CONFIG).read_text())
    tensors = load_file(str(export / WEIGHTS))
    assert config["peft_type"] == "LORA"
    ranks = adalora_trained["meta"]["rank_pattern"]
    assert sorted(config["rank_pattern"].values()) == sorted(max(1, r) for r in ranks.values())
    assert any(k.startswith(ITEM_PREFIX) for k in tensors)

    meta = json.loads((directory / "region.json").read_text())
    backbone2, vocab2, _ = _fresh(tiny_backbone_dir)
    body = get_method("lora").load(backbone2, config, tensors, "export")
    item_side = ItemSide(meta["catalogue"], vocab2, backbone2.config.hidden_size,
                         meta["item_rank"], meta["item_bias"])
    item_side.load(tensors)
    lora = RegionTask(body, body.get_base_model(), item_side).eval()

    histories = _histories(island)
    want = task_scores(adalora_trained["task"], histories, island.catalogue)
    torch.testing.assert_close(task_scores(lora, histories, island.catalogue), want,
                               atol=1e-5, rtol=0)
    # plain PEFT reads the export too (as a LoRA with a per-module rank pattern)
    peft_model = PeftModel.from_pretrained(_fresh(tiny_backbone_dir)[0], str(export)).eval()
    state = get_peft_model_state_dict(peft_model)
    assert all(torch.equal(state[k], tensors[k]) for k in state)


def test_adalora_adapter_reloads_through_plain_peft(adalora_trained, tiny_backbone_dir, island):
    """The saved AdaLoRA files (pruned ranks) score like the trained task (PEFT + item side)."""
    directory = adalora_trained["dir"]
    backbone, vocab, _ = _fresh(tiny_backbone_dir)
    body = PeftModel.from_pretrained(backbone, str(directory), adapter_name=REGION).eval()
    tensors = load_file(str(directory / WEIGHTS))
    ranks = adalora_trained["meta"]["rank_pattern"]
    a_rows = {k: v.shape[0] for k, v in tensors.items() if ".lora_A." in k or k.endswith("lora_A")}
    assert sorted(a_rows.values()) == sorted(ranks.values())  # saved at the allocated ranks
    meta = json.loads((directory / "region.json").read_text())
    item_side = ItemSide(meta["catalogue"], vocab, backbone.config.hidden_size,
                         meta["item_rank"], meta["item_bias"])
    item_side.load(tensors)
    task = RegionTask(body, body.get_base_model(), item_side).eval()
    histories = _histories(island)
    torch.testing.assert_close(task_scores(task, histories, island.catalogue),
                               task_scores(adalora_trained["task"], histories, island.catalogue),
                               atol=1e-5, rtol=0)


def test_adalora_adapter_loads_with_load_adapter(adalora_trained, tiny_backbone_dir, island):
    backbone, vocab, bmeta = _fresh(tiny_backbone_dir)
    loaded = load_adapter(adalora_trained["dir"], backbone, vocab, bmeta["fingerprint"])
    histories = _histories(island)
    torch.testing.assert_close(task_scores(loaded, histories, island.catalogue),
                               task_scores(adalora_trained["task"], histories, island.catalogue),
                               atol=1e-5, rtol=0)


# -- mixed-region batches ---------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].mixed_batches))
def test_mixed_batch_routing_matches_each_adapter_alone(tiny_backbone, method):
    assert method in ("lora", "bottleneck")
    backbone, _, _ = tiny_backbone
    impl = get_method(method)
    body = impl.attach(backbone, {}, "north", 10)
    _perturb(body, seed=4, scale=0.3)
    tensors_b = {k: v + 0.3 * torch.randn(v.shape, generator=torch.Generator().manual_seed(5))
                 for k, v in impl.weights(body, "north").items()}
    body = impl.load(backbone, impl.adapter_config(body, "north"), tensors_b, "south", body)
    body.eval()
    torch.manual_seed(0)
    embeds = torch.randn(5, 6, backbone.config.hidden_size)
    mask = torch.ones(5, 6, dtype=torch.long)
    mask[1, :3] = 0
    mask[3, :5] = 0

    def run(name: str | None) -> torch.Tensor:
        if method == "lora" and name is None:
            with body.disable_adapter():
                return body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        body.set_adapter(name)
        return body(inputs_embeds=embeds, attention_mask=mask).last_hidden_state

    with torch.no_grad():
        alone = {"north": run("north"), "south": run("south"), "__base__": run(None)}
        names = ["north", "south", "__base__", "south", "north"]
        mixed = body(inputs_embeds=embeds, attention_mask=mask,
                     adapter_names=names).last_hidden_state
    assert not torch.allclose(alone["north"], alone["south"], atol=1e-4)
    assert not torch.allclose(alone["north"], alone["__base__"], atol=1e-4)
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], alone[name][row], atol=1e-5, rtol=1e-5)


def load_backbone_copy(tiny_backbone):
    import copy

    return copy.deepcopy(tiny_backbone[0])


def test_auto_item_rank_keeps_the_adapter_within_budget(tiny_backbone, island):
    """Bigger catalogues get a smaller item rank; an explicit rank is used as given."""
    from regiontune.training.adapt import auto_item_rank

    backbone, vocab, _ = tiny_backbone
    cfg = AdaptConfig(method="lora", region=REGION, item_budget=0.25)
    total = sum(p.numel() for p in backbone.parameters())  # before PEFT adds its own
    small = build_region_task(backbone, vocab, island.catalogue, cfg, total_steps=10)
    adapter = sum(p.numel() for p in small.parameters() if p.requires_grad)
    if small.item_side.rank < cfg.max_item_rank:  # the budget, not the cap, set the rank
        # in bytes: the adapter is saved in float16 (weights_dtype auto), the backbone float32
        assert 2 * adapter <= 0.25 * 4 * total
    big = auto_item_rank(backbone, small.body, 10 * len(island.catalogue), cfg)
    assert big < small.item_side.rank or big == 1
    fixed = AdaptConfig(method="ia3", region=REGION, item_rank=3)
    task = build_region_task(load_backbone_copy(tiny_backbone), vocab, island.catalogue, fixed)
    assert task.item_side.rank == 3


# -- half-precision adapter files ---------------------------------------------------------------


@pytest.mark.parametrize("method", SMALL)
def test_float16_adapter_is_half_the_file_and_scores_as_trained(tiny_backbone_dir, island,
                                                               tmp_path, method):
    """Trained weights are rounded to float16 when training ends: saved == evaluated."""
    sizes, tasks = {}, {}
    for dtype in ("float32", "float16"):
        backbone, vocab, meta = _fresh(tiny_backbone_dir)
        cfg = AdaptConfig(method=method, region=REGION, item_rank=4, weights_dtype=dtype)
        task, _ = train_region(backbone, vocab, island, cfg, TINY_TRAIN)
        saved = save_adapter(task, method, REGION, {"region": REGION, "backbone_fingerprint":
                                                    meta["fingerprint"]}, tmp_path / dtype,
                             dtype)
        assert saved["weights_dtype"] == dtype
        assert f"| Weights dtype | {dtype} |" in (tmp_path / dtype / "README.md").read_text()
        sizes[dtype], tasks[dtype] = saved["adapter_bytes"], task
    assert sizes["float16"] < sizes["float32"]  # tensors halve; the JSON header does not
    tensors = {d: load_file(tmp_path / d / WEIGHTS) for d in sizes}
    assert {t.dtype for t in tensors["float16"].values()} == {torch.float16}
    assert 2 * sum(t.nbytes for t in tensors["float16"].values()) == sum(
        t.nbytes for t in tensors["float32"].values())
    backbone, vocab, meta = _fresh(tiny_backbone_dir)
    loaded = load_adapter(tmp_path / "float16", backbone, vocab, meta["fingerprint"])
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    histories = _histories(island)
    want = task_scores(tasks["float16"], histories, island.catalogue)
    torch.testing.assert_close(task_scores(loaded, histories, island.catalogue), want,
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", SMALL)
def test_auto_item_rank_keeps_the_saved_file_within_budget(tiny_backbone, island, tmp_path,
                                                           method):
    """The file, JSON header included, fits the budget (a share of the backbone's tensor bytes)."""
    backbone, vocab, meta = tiny_backbone
    backbone_bytes = 4 * sum(p.numel() for p in backbone.parameters())  # float32, before PEFT
    cfg = AdaptConfig(method=method, region=REGION, item_budget=0.3, max_item_rank=10_000)
    task = build_region_task(backbone, vocab, island.catalogue, cfg, total_steps=10)
    assert task.item_side.rank > 1  # the budget, not the floor, set it
    saved = save_adapter(task, method, REGION, {"region": REGION, "backbone_fingerprint":
                                                meta["fingerprint"]}, tmp_path / "a", "float16")
    assert saved["adapter_bytes"] == (tmp_path / "a" / WEIGHTS).stat().st_size
    assert saved["adapter_bytes"] <= 0.3 * backbone_bytes


def test_float16_doubles_the_auto_item_rank_budget(tiny_backbone, island):
    from regiontune.training.adapt import auto_item_rank

    backbone, vocab, _ = tiny_backbone
    ranks = {}
    for dtype in ("float32", "bfloat16"):
        cfg = AdaptConfig(method="lora", region=REGION, item_budget=0.05, max_item_rank=10_000,
                          weights_dtype=dtype)
        ranks[dtype] = auto_item_rank(backbone, None, len(island.catalogue), cfg)
    # (2 * budget - n) // (n + h) against (budget - n) // (n + h): about twice, never less
    assert ranks["bfloat16"] >= 2 * ranks["float32"]


def test_weights_dtype_errors_come_before_training(tiny_backbone, island):
    backbone, vocab, _ = tiny_backbone
    with pytest.raises(ValueError, match="float8.*bfloat16"):
        train_region(backbone, vocab, island,
                     AdaptConfig(method="lora", region=REGION, weights_dtype="float8"), TINY_TRAIN)
    with pytest.raises(ValueError, match="full fine-tuning saves the whole model in float32"):
        train_region(backbone, vocab, island,
                     AdaptConfig(method="full", region=REGION, weights_dtype="float16"),
                     TINY_TRAIN)
