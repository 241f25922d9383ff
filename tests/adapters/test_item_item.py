"""The optional item-item part of a region adapter (``AdaptConfig.cf_rank``, issue 13)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from regiontune.adapters import load_adapter, save_adapter
from regiontune.adapters.item_item import ItemItem, _truncated_svd
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.model.batching import read_users
from regiontune.model.recmodel import N_SPECIAL
from regiontune.training.adapt import build_region_task, ease_weights, train_region
from tests.adapters.common import REGION, probe_histories
from tests.conftest import TINY_TRAIN


def _task(tiny_backbone, island, cf_rank: int):
    backbone, vocab, _ = tiny_backbone
    torch.manual_seed(0)
    return build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(region=REGION, cf_rank=cf_rank))


def test_cf_rank_0_scores_are_bit_identical(tiny_backbone_dir, island):
    from regiontune.model.backbone import load_backbone

    histories = probe_histories(island)
    plain = _task(load_backbone(tiny_backbone_dir), island, 0)
    assert plain.item_item is None
    # the same adapter with the part attached but switched off by hand (P = 0): the
    # transformer part of the scores is computed exactly as without it
    scores = task_scores(plain, histories, island.catalogue)
    # the scoring as it was before the part existed: embed with the region table, read the
    # last position, dot with the table
    plain.eval()
    table, bias = plain.output_table()

    def encode(tokens, mask):
        specials = plain.backbone.item_emb.weight[:N_SPECIAL]
        embeddings = F.embedding(tokens, torch.cat([specials, table]))
        return plain.body(inputs_embeds=embeddings, attention_mask=mask).last_hidden_state[:, -1]

    with torch.no_grad():
        users = read_users(encode, [plain.vocab.encode(h) for h in histories], plain.max_len,
                           plain.causal, plain.ordered, plain.set_orders)
        before = (users @ table.T + bias)[:, plain.vocab.columns(island.catalogue)]
    assert torch.equal(scores, before)
    with_cf = _task(load_backbone(tiny_backbone_dir), island, 4)
    with_cf.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(task_scores(with_cf, histories, island.catalogue), scores)


def test_init_scores_are_transformer_plus_ease_svd(tiny_backbone_dir, island):
    from regiontune.model.backbone import load_backbone

    histories = [h for h in probe_histories(island) if h][:20]
    plain = _task(load_backbone(tiny_backbone_dir), island, 0)
    base = task_scores(plain, histories, island.catalogue)
    rank = 8
    task = _task(load_backbone(tiny_backbone_dir), island, rank)
    task.load_state_dict(plain.state_dict(), strict=False)
    b, lam, _ = ease_weights(island.train, island.catalogue, island.valid)
    task.item_item.init_from(b)
    # direct: sum over each history of the rank-r SVD of EASE's B
    u, s, vh = torch.linalg.svd(b.float())
    low = (u[:, :rank] * s[:rank]) @ vh[:rank]
    index = {item: i for i, item in enumerate(island.catalogue)}
    x = torch.zeros(len(histories), len(index))
    for row, history in enumerate(histories):
        x[row, sorted({index[i] for i in history})] = 1
    expected = base + x @ low
    got = task_scores(task, histories, island.catalogue)
    assert any(len(set(h)) < len(h) for h in histories)  # repeats count once, as in EASE
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)


def test_randomized_svd_matches_exact_on_a_large_matrix():
    gen = torch.Generator().manual_seed(0)
    n, rank = 2100, 16
    left, right = torch.randn(n, rank, generator=gen), torch.randn(rank, n, generator=gen)
    b = left @ right + 1e-3 * torch.randn(n, n, generator=gen)
    u, s, v = _truncated_svd(b, rank)
    assert torch.allclose((u * s) @ v.T, left @ right, atol=1e-2)


def test_cloze_user_part_sums_the_visible_items():
    part = ItemItem(3, 2)
    with torch.no_grad():
        part.p.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
    tokens = torch.tensor([[0, 2, 1, 4, 2]])  # PAD, item 0, MASK, item 2, item 0 again
    causal = part.users(tokens, causal=True)[0]
    assert causal.tolist() == [[0, 0], [1, 0], [1, 0], [2, 1], [2, 1]]
    cloze = part.users(tokens, causal=False)[0]
    assert cloze.tolist() == [[2, 1]] * 5


@pytest.fixture(scope="module")
def trained_cf(tiny_backbone_dir, island, tmp_path_factory):
    from regiontune.model.backbone import load_backbone

    backbone, vocab, meta = load_backbone(tiny_backbone_dir)
    cfg = AdaptConfig(region=REGION, cf_rank=4)
    task, stats = train_region(backbone, vocab, island, cfg, replace(TINY_TRAIN, epochs=1))
    out = tmp_path_factory.mktemp("cf") / "adapter"
    saved = save_adapter(task, "lora", REGION, {"region": REGION,
                                               "backbone_fingerprint": meta["fingerprint"]},
                         out, cfg.weights_dtype)
    return task, stats, saved, out


def test_trains_saves_and_loads_identically(trained_cf, tiny_backbone_dir, island):
    from regiontune.model.backbone import load_backbone

    task, stats, saved, out = trained_cf
    assert stats["cf_rank"] == 4 and stats["cf_lambda"] > 0
    assert saved["cf_rank"] == 4
    backbone, vocab, meta = load_backbone(tiny_backbone_dir)
    loaded = load_adapter(out, backbone, vocab, meta["fingerprint"])
    assert loaded.item_item is not None and loaded.item_item.rank == 4
    histories = probe_histories(island)
    assert torch.equal(task_scores(loaded, histories, island.catalogue),
                       task_scores(task, histories, island.catalogue))


def _rank_2_copy(src, dst):
    """The adapter cut to its first 2 item-item columns: another rank, a valid adapter."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    from regiontune.adapters.io import WEIGHTS

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / WEIGHTS))
    for k in ("p", "q"):
        key = f"regiontune.item_side.item_item.{k}"
        tensors[key] = tensors[key][:, :2].contiguous() * 1.5
    save_file(tensors, str(dst / WEIGHTS), metadata={"format": "pt"})
    meta = json.loads((dst / "region.json").read_text())
    (dst / "region.json").write_text(json.dumps({**meta, "cf_rank": 2}))
    return dst


@pytest.fixture(scope="module")
def served_cf(trained_cf, tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """A recommender serving the cf adapter (rank 4), a rank-2 copy, a plain LoRA region and
    a bottleneck region; {region: (task loaded from its folder, histories)}."""
    from regiontune.model.backbone import load_backbone
    from regiontune.serving.recommender import Recommender
    from tests.serving.helpers import histories, make_adapter

    *_, out = trained_cf
    root = tmp_path_factory.mktemp("served_cf")
    dirs = {"cf": out, "cf2": _rank_2_copy(out, root / "cf2")}
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", root / "west", 1)
    make_adapter(tiny_backbone_dir, tiny_regions["delta"], "bottleneck", root / "delta", 2)
    dirs |= {"west": root / "west", "delta": root / "delta"}
    rec = Recommender.from_dirs(tiny_backbone_dir)
    data = {"cf": tiny_regions[REGION], "cf2": tiny_regions[REGION],
            "west": tiny_regions["west"], "delta": tiny_regions["delta"]}
    tasks = {}
    for region, directory in dirs.items():
        rec.load(region, directory)
        backbone, vocab, meta = load_backbone(tiny_backbone_dir)  # its own: LoRA wraps it
        task = load_adapter(directory, backbone, vocab, meta["fingerprint"]).eval()
        # long histories too: the item-item part reads the transformer's window only
        long = [sum(data[region].train.values(), [])[:40]]
        tasks[region] = (task, histories(data[region], 4) + long)
    return rec, tasks


def _assert_served_like_the_task(results, rows) -> None:
    for result, (task, history) in zip(results, rows, strict=True):
        catalogue = task.item_side.catalogue
        want = task_scores(task, [history], catalogue)[0]
        top = want.topk(10)
        got = torch.tensor(result["scores"])
        torch.testing.assert_close(got, top.values, atol=1e-5, rtol=1e-5)
        # the same items (up to the order of tied scores): each scores as the task scores it
        index = {item: i for i, item in enumerate(catalogue)}
        torch.testing.assert_close(got, want[[index[i] for i in result["items"]]],
                                   atol=1e-5, rtol=1e-5)


def test_served_cf_adapter_scores_as_its_task(served_cf):
    rec, tasks = served_cf
    entry = rec._snapshot["cf"]
    assert entry.cf_rank == 4 and rec._snapshot["cf2"].cf_rank == 2
    task, hs = tasks["cf"]
    assert task.item_item is not None
    results = rec.recommend(hs, ["cf"] * len(hs), k=10, exclude_seen=False)
    _assert_served_like_the_task(results, [(task, h) for h in hs])


def test_mixed_batch_of_cf_ranks_lora_and_bottleneck(served_cf):
    rec, tasks = served_cf
    rows = [(region, task, h) for region, (task, hs) in tasks.items() for h in hs]
    rows = rows[::2] + rows[1::2]  # interleave regions
    results = rec.recommend([h for *_, h in rows], [r for r, *_ in rows], k=10,
                            exclude_seen=False)
    assert [r["region"] for r in results] == [r for r, *_ in rows]
    _assert_served_like_the_task(results, [(t, h) for _, t, h in rows])
    # the part counts: without it the cf region ranks otherwise
    task, hs = tasks["cf"]
    cf = task.item_item
    saved = cf.weight.detach().clone()
    with torch.no_grad():
        cf.weight.zero_()
    try:
        plain = task_scores(task, hs, task.item_side.catalogue)
    finally:
        with torch.no_grad():
            cf.weight.copy_(saved)
    assert not torch.allclose(plain, task_scores(task, hs, task.item_side.catalogue))


def test_server_serves_a_put_cf_adapter(trained_cf, tiny_backbone_dir, served_cf):
    from fastapi.testclient import TestClient

    from regiontune.serving.app import create_app
    from regiontune.serving.recommender import Recommender

    *_, out = trained_cf
    _, tasks = served_cf
    task, hs = tasks["cf"]
    rec = Recommender.from_dirs(tiny_backbone_dir, [], unknown_region="backbone")
    client = TestClient(create_app(rec, admin_token="t"))
    r = client.put(f"/v1/regions/{REGION}", json={"path": str(out)},
                   headers={"Authorization": "Bearer t"})
    assert r.status_code == 200, r.text
    r = client.post("/v1/recommend", json={"region": REGION, "history": hs[1], "k": 10,
                                           "exclude_seen": False})
    assert r.status_code == 200, r.text
    _assert_served_like_the_task([r.json()], [(task, hs[1])])


def test_growth_refuses_cf_adapters(trained_cf, tiny_backbone_dir, served_cf, tmp_path):
    from regiontune.adapters.grow import grow_catalogue
    from regiontune.serving.errors import InvalidRequestError

    *_, out = trained_cf
    rec, _ = served_cf
    with pytest.raises(InvalidRequestError, match=r"item-item part \(cf_rank > 0\).*cannot "
                                                  "extend"):
        rec.grow("cf", ["brand-new-item"])
    assert rec._snapshot["cf"].cf_rank == 4 and "brand-new-item" not in rec._snapshot[
        "cf"].vocab.index
    with pytest.raises(ValueError, match="item_item.*cannot extend"):
        grow_catalogue(out, tiny_backbone_dir, ["brand-new-item"], out=tmp_path / "grown")
    assert not (tmp_path / "grown").exists()
