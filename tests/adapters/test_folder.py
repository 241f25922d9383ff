"""The adapter folder, for every method: save/load round trip, backbone checks, corrupt files,
atomic saves, file sizes, plain-PEFT loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from regiontune.adapters import (
    METHODS,
    AdapterFolder,
    RegionTask,
    load_adapter,
    save_adapter,
)
from regiontune.adapters.folder import CONFIG, WEIGHTS
from regiontune.adapters.item_side import PREFIX as ITEM_PREFIX
from regiontune.artifacts import ArtifactError, BackboneMismatchError, cards
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import backbone_fingerprint
from regiontune.training.adapt import build_region_task
from tests.adapters.common import (
    ALL,
    PEFT_METHODS,
    REGION,
    SMALL,
    file_snapshot,
    fresh_backbone,
    perturb,
    probe_histories,
)


@pytest.fixture(scope="module", params=ALL)
def saved(request, tiny_backbone_dir, island, tmp_path_factory):
    """A perturbed (non-trivial) adapter per method, saved once."""
    method = request.param
    backbone, vocab, meta = fresh_backbone(tiny_backbone_dir)
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method=method, region=REGION), total_steps=50)
    perturb(task, seed=1)
    directory = tmp_path_factory.mktemp(f"adapter-{method}") / REGION
    region_meta = save_adapter(task, method, REGION,
                               {"region": REGION, "backbone_fingerprint": meta["fingerprint"],
                                "backbone_path": str(tiny_backbone_dir)}, directory)
    return {"method": method, "task": task, "dir": directory, "meta": region_meta,
            "fingerprint": meta["fingerprint"]}


# -- what trains ------------------------------------------------------------------------------


def test_save_load_gives_identical_scores(saved, tiny_backbone_dir, island, request):
    directory = saved["dir"]
    assert {CONFIG, WEIGHTS, "region.json", "README.md"} <= {p.name for p in directory.iterdir()}
    meta = json.loads((directory / "region.json").read_text())
    assert meta["method"] == saved["method"] and meta["region"] == REGION
    assert meta["backbone_fingerprint"] == saved["fingerprint"]
    assert meta["new_items"] == saved["task"].item_side.new_items
    assert meta["catalogue"] == island.catalogue
    backbone, vocab, bmeta = fresh_backbone(tiny_backbone_dir)
    loaded = load_adapter(directory, backbone, vocab, bmeta["fingerprint"])
    assert isinstance(loaded, RegionTask) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    histories = probe_histories(island)
    want = task_scores(saved["task"], histories, island.catalogue)
    got = task_scores(loaded, histories, island.catalogue)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # the perturbation matters: the loaded adapter differs from the bare backbone's scores
    bare = build_region_task(fresh_backbone(tiny_backbone_dir)[0], vocab, island.catalogue,
                             AdaptConfig(method=saved["method"], region=REGION))
    assert not torch.allclose(task_scores(bare, histories, island.catalogue), got, atol=1e-3)


def test_other_backbone_is_a_mismatch_error(saved, tiny_backbone_dir):
    backbone, vocab, bmeta = fresh_backbone(tiny_backbone_dir)
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
    backbone, vocab, bmeta = fresh_backbone(tiny_backbone_dir)
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
        AdapterFolder.read(copy, fp)
    fresh_copy()
    (copy / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ArtifactError, match="pickle"):
        AdapterFolder.read(copy, fp)


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_failed_save_keeps_existing_adapter(tiny_backbone, island, tmp_path, monkeypatch,
                                            method):
    backbone, vocab, bmeta = tiny_backbone
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method=method, region=REGION), total_steps=50)
    perturb(task, seed=2)
    meta = {"region": REGION, "backbone_fingerprint": bmeta["fingerprint"]}
    directory = tmp_path / "adapters" / REGION
    save_adapter(task, method, REGION, meta, directory)
    before = file_snapshot(directory)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the card")

    perturb(task, seed=3)
    monkeypatch.setattr(cards, "write_card", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_adapter(task, method, REGION, meta, directory)
    assert file_snapshot(directory) == before
    assert [p.name for p in directory.parent.iterdir()] == [REGION]  # no temp dir left
    tensors = AdapterFolder.read(directory, bmeta["fingerprint"]).tensors  # still valid
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
    backbone, _, _ = fresh_backbone(tiny_backbone_dir)
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




def test_folder_reads_metadata_alone_and_refuses_a_folder_without_fingerprint(saved, tmp_path):
    folder = AdapterFolder.read(saved["dir"], saved["fingerprint"], weights=False)
    assert folder.trained_method == saved["method"] and folder.region == REGION
    assert folder.tensors == {} and folder.config == {}
    copy = tmp_path / "copy"
    shutil.copytree(saved["dir"], copy)
    meta = json.loads((copy / "region.json").read_text())
    del meta["backbone_fingerprint"]
    (copy / "region.json").write_text(json.dumps(meta))
    AdapterFolder.read(copy)  # without a backbone to check against, it reads
    with pytest.raises(ArtifactError, match="records no backbone_fingerprint"):
        AdapterFolder.read(copy, saved["fingerprint"])


def test_folder_records_whether_plain_peft_loads_it(saved):
    assert saved["meta"]["peft_loadable"] is METHODS[saved["method"]].peft_loadable


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_non_finite_weights_are_refused_at_save_and_nothing_is_written(tiny_backbone, island,
                                                                       tmp_path, method):
    backbone, vocab, meta = tiny_backbone
    task = build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(method=method, region=REGION), total_steps=10)
    with torch.no_grad():
        next(p for n, p in task.body.named_parameters() if p.requires_grad).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        save_adapter(task, method, REGION, {"region": REGION,
                     "backbone_fingerprint": meta["fingerprint"]}, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_loading_an_adapter_emits_no_warning(saved, tiny_backbone_dir):
    import warnings

    backbone, vocab, meta = fresh_backbone(tiny_backbone_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_adapter(saved["dir"], backbone, vocab, meta["fingerprint"])
    assert [str(w.message) for w in caught] == []


def test_folder_read_for_another_region_is_refused_before_any_weight(saved):
    from regiontune.adapters.folder import RegionMismatchError

    with pytest.raises(RegionMismatchError, match=f"trained for region '{REGION}', not 'x'"):
        AdapterFolder.read(saved["dir"], saved["fingerprint"], region="x")
    assert AdapterFolder.read(saved["dir"], saved["fingerprint"], region=REGION).tensors
