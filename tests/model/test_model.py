"""The backbone model (three families), its artefact directory, fingerprint and atomic save."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from regiontune.artifacts import ArtifactError, cards
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.backbone import WEIGHTS, backbone_fingerprint, load_backbone, save_backbone
from regiontune.model.batching import inference_batch, set_orders
from regiontune.model.recmodel import ARCHS, MASK, N_SPECIAL, RecConfig, RecModel, build_backbone
from regiontune.model.task import BackboneTask
from regiontune.model.vocab import ItemVocab

SIZES = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_len=10,
             dropout=0.1)
ITEMS = [f"item{i}" for i in range(20)]
HISTORIES = [["item1", "item2", "item3"], ["item4"], ["item5", "item6", "item7", "item8", "item9"]]


def _model(arch: str, ordered: bool = True, seed: int = 0, **sizes) -> RecModel:
    torch.manual_seed(seed)
    return build_backbone(len(ITEMS), arch=arch, ordered=ordered, **{**SIZES, **sizes}).eval()


def _snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


# -- building and forward ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_family_builds_and_forward_shapes(arch):
    model = _model(arch)
    assert isinstance(model.config, RecConfig) and model.config.arch == arch
    assert model.config.causal == (arch != "bert")
    from transformers import AutoModel

    assert type(AutoModel.from_config(model.config)) is RecModel  # registered with the Auto API
    tokens = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])
    mask = (tokens != 0).long()
    hidden = model(input_ids=tokens, attention_mask=mask).last_hidden_state
    assert hidden.shape == (2, 4, SIZES["hidden_size"])
    assert torch.isfinite(hidden).all()
    table, bias = model.item_table()
    assert table.shape == (len(ITEMS), SIZES["hidden_size"]) and bias.shape == (len(ITEMS),)
    # the output table is tied to the input embedding (the same storage, minus the specials)
    assert table.data_ptr() == model.item_emb.weight[N_SPECIAL:].data_ptr()

    task = BackboneTask(model, ItemVocab(ITEMS))
    loss = task(tokens, mask, torch.tensor([[0, 0, 4, 5], [6, 7, 8, 9]]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert task.user_vectors(tokens, mask).shape == (2, SIZES["hidden_size"])
    scores = task_scores(task, HISTORIES, ITEMS + ["not-an-item"])
    assert scores.shape == (3, len(ITEMS) + 1)
    assert torch.isfinite(scores[:, :-1]).all() and torch.isinf(scores[:, -1]).all()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown backbone architecture"):
        RecConfig(arch="rnn")
    with pytest.raises(ValueError, match="divisible"):
        RecConfig(hidden_size=10, num_heads=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padding_does_not_change_the_user_vector(arch):
    model = _model(arch)
    task = BackboneTask(model, ItemVocab(ITEMS))
    history = task.vocab.encode(HISTORIES[0])
    alone = task.user_vectors(*inference_batch([history], 10, task.causal))
    padded = task.user_vectors(*inference_batch([history, list(range(2, 10))], 10, task.causal))
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)


def _perm_vectors(model: RecModel, rows: list[list[int]]) -> torch.Tensor:
    task = BackboneTask(model, ItemVocab(ITEMS))
    with torch.no_grad():
        return task.user_vectors(*inference_batch(rows, 10, task.causal))


def test_unordered_bert_is_permutation_invariant():
    history = [3, 4, 5, 6, 7, 8]
    perms = [history, history[::-1], [6, 3, 8, 4, 7, 5]]
    vectors = _perm_vectors(_model("bert", ordered=False, num_layers=2), perms)
    torch.testing.assert_close(vectors[1], vectors[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vectors[2], vectors[0], atol=1e-5, rtol=1e-5)
    # ... while an ordered model does see the order
    ordered = _perm_vectors(_model("bert", ordered=True, num_layers=2), perms)
    assert not torch.allclose(ordered[1], ordered[0], atol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_unordered_causal_one_layer_ignores_order_of_earlier_items(arch):
    """One causal layer, all positions 0: the last position attends to a *set*."""
    rows = [[3, 4, 5, 6, 7, 8], [7, 5, 3, 6, 4, 8]]  # same set, same last item
    vectors = _perm_vectors(_model(arch, ordered=False, num_layers=1), rows)
    torch.testing.assert_close(vectors[1], vectors[0], atol=1e-5, rtol=1e-5)


@pytest.mark.xfail(strict=True, reason=(
    "documented limitation (core/model.py): ordered=False zeroes the position ids and "
    "training shuffles every epoch, but the causal families keep their causal mask, so a "
    "deep gpt2/llama encoder is not exactly permutation invariant; the bert family is. "
    "Scoring is: it reads sets in orders that depend on the set alone (test below)"))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_unordered_causal_is_permutation_invariant(arch):
    history = [3, 4, 5, 6, 7, 8]
    rows = [history, history[::-1], [6, 3, 8, 4, 7, 5]]
    vectors = _perm_vectors(_model(arch, ordered=False, num_layers=2), rows)
    torch.testing.assert_close(vectors[1], vectors[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vectors[2], vectors[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_scores_of_a_set_history_do_not_depend_on_its_listed_order(arch):
    items = ITEMS[:6]
    task = BackboneTask(_model(arch, ordered=False, num_layers=2), ItemVocab(ITEMS)).eval()
    perms = [items, items[::-1], [items[i] for i in (3, 0, 5, 1, 4, 2)]]
    scores = task_scores(task, perms, ITEMS)
    torch.testing.assert_close(scores[1], scores[0])
    torch.testing.assert_close(scores[2], scores[0])
    # averaged over orders: the mean of the single-order reads of the set's orders
    encoded = [task.vocab.encode(items)]
    reads = []
    for rows in set_orders(encoded, task.set_orders):
        with torch.no_grad():
            reads.append(task.user_vectors(*inference_batch(rows, 10, True)))
    assert task.set_orders > 1 and not torch.allclose(reads[0], reads[1])
    table, bias = task.output_table()
    mean = torch.stack(reads).mean(0)
    torch.testing.assert_close(scores[0], (mean @ table.T + bias)[0].detach())
    # an ordered model reads the order it is given
    ordered = BackboneTask(_model(arch, ordered=True, num_layers=2), ItemVocab(ITEMS))
    listed = task_scores(ordered, perms[:2], ITEMS)
    assert not torch.allclose(listed[0], listed[1])


def test_bert_inference_appends_mask():
    tokens, mask = inference_batch([[3, 4]], 10, causal=False)
    assert tokens[0, -1].item() == MASK and mask[0].tolist() == [1, 1, 1]


# -- artefact directory ----------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    model = _model("llama")
    vocab = ItemVocab(ITEMS)
    directory = tmp_path / "bb"
    meta = save_backbone(model, vocab, {"regions": ["r1"]}, directory)
    return model, vocab, meta, directory


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(tmp_path, arch):
    model, vocab = _model(arch, seed=3), ItemVocab(ITEMS)
    meta = save_backbone(model, vocab, {"regions": ["r1"]}, tmp_path / "bb")
    assert {"config.json", WEIGHTS, "items.json", "regiontune.json", "README.md"} <= {
        p.name for p in (tmp_path / "bb").iterdir()}
    loaded, loaded_vocab, loaded_meta = load_backbone(tmp_path / "bb")
    assert loaded_vocab.items == ITEMS
    assert loaded_meta["fingerprint"] == meta["fingerprint"] == backbone_fingerprint(loaded)
    assert backbone_fingerprint(loaded) == backbone_fingerprint(model)
    assert loaded_meta["regions"] == ["r1"]
    assert not loaded.training
    before = task_scores(BackboneTask(model, vocab), HISTORIES, ITEMS)
    after = task_scores(BackboneTask(loaded, loaded_vocab), HISTORIES, ITEMS)
    assert torch.equal(before, after)


def test_fingerprint_changes_with_one_weight():
    model = _model("llama")
    fp = backbone_fingerprint(model)
    assert fp.startswith("sha256:") and fp == backbone_fingerprint(model)
    with torch.no_grad():
        model.encoder.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert backbone_fingerprint(model) != fp
    # the architecture config is part of it too
    other = _model("llama", ordered=False)
    assert backbone_fingerprint(other) != backbone_fingerprint(_model("llama"))


def test_modified_weights_are_detected(saved):
    _, _, meta, directory = saved
    state = load_file(str(directory / WEIGHTS))
    name = sorted(state)[0]
    state[name] = state[name] + 0.5
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt"})
    with pytest.raises(ArtifactError, match="fingerprint") as err:
        load_backbone(directory)
    assert meta["fingerprint"] in str(err.value)


def test_truncated_weights_are_an_artifact_error(saved):
    directory = saved[3]
    data = (directory / WEIGHTS).read_bytes()
    (directory / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        load_backbone(directory)


def test_garbage_weights_are_an_artifact_error(saved):
    directory = saved[3]
    (directory / WEIGHTS).write_bytes(b"\x00\x01 not safetensors")
    with pytest.raises(ArtifactError, match=WEIGHTS):
        load_backbone(directory)


@pytest.mark.parametrize("name", ["config.json", WEIGHTS, "regiontune.json"])
def test_missing_file_is_an_artifact_error(saved, name):
    directory = saved[3]
    (directory / name).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        load_backbone(directory)


def test_invalid_json_config_is_an_artifact_error(saved):
    directory = saved[3]
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load_backbone(directory)


def test_missing_directory_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="no such backbone directory"):
        load_backbone(tmp_path / "nope")


@pytest.mark.parametrize("name", ["pytorch_model.bin", "evil.pkl", "sub/extra.pt"])
def test_pickle_files_are_refused(saved, name):
    directory = saved[3]
    path = directory / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"\x80\x04K\x01.")  # a valid pickle of the int 1
    with pytest.raises(ArtifactError, match="pickle"):
        load_backbone(directory)


def test_vocab_config_mismatch_is_an_artifact_error(saved):
    directory = saved[3]
    (directory / "items.json").write_text(json.dumps({"items": ITEMS[:-1]}))
    with pytest.raises(ArtifactError, match="items"):
        load_backbone(directory)


def _raise(*args, **kwargs):
    raise RuntimeError("simulated crash during save")


@pytest.mark.parametrize("where", ["card", "vocab"])
def test_crash_during_save_keeps_previous_copy(saved, monkeypatch, where):
    model, vocab, meta, directory = saved
    before = _snapshot(directory)
    if where == "card":  # save_backbone imports write_card from cards at call time
        monkeypatch.setattr(cards, "write_card", _raise)
    else:
        monkeypatch.setattr(ItemVocab, "save", _raise)
    changed = _model("llama", seed=7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_backbone(changed, vocab, {"regions": ["r2"]}, directory)
    assert _snapshot(directory) == before
    assert sorted(p.name for p in directory.parent.iterdir()) == ["bb"]  # no temp dir left
    _, _, loaded_meta = load_backbone(directory)
    assert loaded_meta["fingerprint"] == meta["fingerprint"]


def test_crash_during_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(cards, "write_card", _raise)
    with pytest.raises(RuntimeError):
        save_backbone(_model("llama"), ItemVocab(ITEMS), {}, tmp_path / "bb")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_the_copy(saved):
    _, vocab, meta, directory = saved
    new_meta = save_backbone(_model("llama", seed=9), vocab, {"regions": ["r2"]}, directory)
    assert new_meta["fingerprint"] != meta["fingerprint"]
    assert load_backbone(directory)[2]["fingerprint"] == new_meta["fingerprint"]
    assert sorted(p.name for p in directory.parent.iterdir()) == ["bb"]
    shutil.rmtree(directory)
