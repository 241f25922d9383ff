"""The item-item part of a region adapter: top-k EASE neighbours blended in (issue 13)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from regiontune.adapters import load_adapter, save_adapter
from regiontune.adapters.folder import WEIGHTS
from regiontune.adapters.item_item import ItemItem, attach_item_item
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import evaluate_task, task_scores
from regiontune.training.adapt import build_region_task, train_region
from regiontune.training.item_item import ease_weights, fit_item_item
from tests.adapters.common import REGION, probe_histories
from tests.conftest import TINY_TRAIN

K = 3


def _task(tiny_backbone_dir, island, neighbours: int):
    from regiontune.model.backbone import load_backbone

    backbone, vocab, _ = load_backbone(tiny_backbone_dir)
    torch.manual_seed(0)
    return build_region_task(backbone, vocab, island.catalogue,
                             AdaptConfig(region=REGION, neighbours=neighbours, item_rank=2))


def _binary(histories, catalogue):
    index = {item: i for i, item in enumerate(catalogue)}
    x = torch.zeros(len(histories), len(catalogue))
    for row, history in enumerate(histories):
        x[row, sorted({index[i] for i in history if i in index})] = 1
    return x


def _top_k_dense(b: torch.Tensor, k: int) -> torch.Tensor:
    """B with all but each row's k largest entries zeroed, by sorting (not topk)."""
    out = torch.zeros_like(b)
    for i, row in enumerate(b):
        order = sorted(range(len(row)), key=lambda j: -float(row[j]))[:k]
        out[i, order] = row[order]
    return out


def test_part_adds_w_times_the_history_rows_of_top_k_ease(tiny_backbone_dir, island):
    histories = [h for h in probe_histories(island) if h][:20]
    plain = _task(tiny_backbone_dir, island, 0)
    assert plain.item_item is None
    base = task_scores(plain, histories, island.catalogue)
    task = _task(tiny_backbone_dir, island, K)
    task.load_state_dict(plain.state_dict(), strict=False)
    # attached, weight 0: exactly the adapter alone (bit for bit)
    assert torch.equal(task_scores(task, histories, island.catalogue), base)
    b, lam, _ = ease_weights(island.train, island.catalogue, island.valid)
    # distinct values (EASE's B has exact ties, e.g. its zero diagonal): one top k
    b = b.float() + 1e-4 * torch.randperm(b.numel(), generator=torch.Generator().manual_seed(0)
                                          ).reshape(b.shape) / b.numel()
    task.item_item.init_from(b)
    with torch.no_grad():
        task.item_item.weight.fill_(0.75)
    expected = base + 0.75 * _binary(histories, island.catalogue) @ _top_k_dense(b, K)
    got = task_scores(task, histories, island.catalogue)
    assert any(len(set(h)) < len(h) for h in histories)  # repeats count once, as in EASE
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, base, atol=1e-3)


def test_a_catalogue_of_fewer_items_than_k_keeps_every_weight():
    part = ItemItem(2, 5)
    b = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    part.init_from(b)
    with torch.no_grad():
        part.weight.fill_(1.0)
    assert part.scores([[0], [1], [0, 1], [], [-1]]).tolist() == [
        [0.0, 2.0], [3.0, 0.0], [3.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="shape"):
        part.init_from(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="k >= 1"):
        ItemItem(4, 0)


def test_fit_keeps_the_part_only_where_the_hold_out_gains(tiny_backbone_dir, island):
    holdout = island.valid
    task = _task(tiny_backbone_dir, island, K)
    alone = evaluate_task(task, task.item_side.catalogue, holdout)["ndcg@10"]
    stats = fit_item_item(task, island, holdout)
    grid = {float(w): v for w, v in stats["item_item_holdout_ndcg@10"].items()}
    assert grid[0.0] == pytest.approx(alone, abs=1e-4)
    if task.item_item is None:  # dropped: no weight beat the adapter alone
        assert stats["neighbours"] == 0 and max(grid.values()) == grid[0.0]
    else:
        blended = evaluate_task(task, task.item_side.catalogue, holdout)["ndcg@10"]
        assert blended > alone  # what the hold-out chose, measured again from the task
        assert stats["item_item_weight"] == pytest.approx(float(task.item_item.weight))


def test_fit_without_hold_out_drops_the_part(tiny_backbone_dir, island):
    task = _task(tiny_backbone_dir, island, K)
    stats = fit_item_item(task, island, [])
    assert task.item_item is None and stats["neighbours"] == 0


def test_a_catalogue_past_the_limit_gets_no_part(tiny_backbone_dir, island, caplog):
    task = _task(tiny_backbone_dir, island, K)
    stats = fit_item_item(task, island, island.valid, max_catalogue=len(island.catalogue) - 1)
    assert task.item_item is None and stats["item_item"] == "catalogue too large"
    assert "max_neighbour_catalogue" in caplog.text


def test_untrained_adapter_gains_from_the_part(tiny_backbone_dir, tiny_regions):
    """An adapter whose transformer scores are noise: EASE's neighbours must win the
    hold-out, and the blend must then beat the adapter alone on it."""
    from regiontune.model.backbone import load_backbone

    data = tiny_regions["north"]  # a big region: EASE has something to learn
    backbone, vocab, _ = load_backbone(tiny_backbone_dir)
    torch.manual_seed(0)
    task = build_region_task(backbone, vocab, data.catalogue,
                             AdaptConfig(region="north", neighbours=8, item_rank=2))
    with torch.no_grad():  # scramble the item table's region part: noise scores
        task.item_side.bias.copy_(torch.randn_like(task.item_side.bias) * 5)
    stats = fit_item_item(task, data, data.valid)
    assert task.item_item is not None and stats["item_item_weight"] > 0
    grid = {float(w): v for w, v in stats["item_item_holdout_ndcg@10"].items()}
    assert max(grid.values()) > grid[0.0] + 0.05


@pytest.fixture(scope="module")
def with_part(tiny_backbone_dir, island, tmp_path_factory):
    """A trained adapter given a part by hand (weight 0.5, so it is kept), saved float16."""
    from regiontune.model.backbone import load_backbone

    backbone, vocab, meta = load_backbone(tiny_backbone_dir)
    cfg = AdaptConfig(region=REGION, neighbours=0, weights_dtype="float16")
    task, _ = train_region(backbone, vocab, island, cfg, replace(TINY_TRAIN, epochs=1))
    part = attach_item_item(task.item_side, K)
    b, _, _ = ease_weights(island.train, island.catalogue, island.valid)
    part.init_from(b)
    with torch.no_grad():
        part.strengths.copy_(part.strengths.half())
        part.weight.fill_(0.5)
    out = tmp_path_factory.mktemp("nb") / "adapter"
    saved = save_adapter(task, "lora", REGION, {"region": REGION,
                                               "backbone_fingerprint": meta["fingerprint"]},
                         out, "float16")
    return task.eval(), saved, out


def test_saved_part_loads_and_scores_identically(with_part, tiny_backbone_dir, island):
    from safetensors.torch import load_file

    from regiontune.model.backbone import load_backbone

    task, saved, out = with_part
    assert saved["neighbours"] == K
    tensors = load_file(str(out / WEIGHTS))
    index = tensors["regiontune.item_side.item_item.neighbours"]
    assert index.dtype == torch.int16 and index.shape == (len(island.catalogue), K)
    assert tensors["regiontune.item_side.item_item.strengths"].dtype == torch.float16
    backbone, vocab, meta = load_backbone(tiny_backbone_dir)
    loaded = load_adapter(out, backbone, vocab, meta["fingerprint"])
    assert loaded.item_item is not None and loaded.item_item.k == K
    histories = probe_histories(island)
    assert torch.equal(task_scores(loaded, histories, island.catalogue),
                       task_scores(task, histories, island.catalogue))


def test_adapters_of_the_old_low_rank_part_are_refused(with_part, tiny_backbone_dir, tmp_path):
    import shutil

    from regiontune.model.backbone import load_backbone

    _, _, out = with_part
    old = tmp_path / "old"
    shutil.copytree(out, old)
    meta = json.loads((old / "region.json").read_text())
    (old / "region.json").write_text(json.dumps({**meta, "cf_rank": 4}))
    backbone, vocab, bmeta = load_backbone(tiny_backbone_dir)
    with pytest.raises(ValueError, match="old.*cf_rank.*train the adapter again"):
        load_adapter(old, backbone, vocab, bmeta["fingerprint"])


@pytest.fixture(scope="module")
def served(with_part, tiny_backbone_dir, tiny_regions, tmp_path_factory):
    """A recommender serving the adapter with a part, a plain LoRA region and a bottleneck
    region; {region: (task loaded from its folder, histories)}."""
    from regiontune.model.backbone import load_backbone
    from regiontune.serving.recommender import Recommender
    from tests.serving.helpers import histories, make_adapter

    *_, out = with_part
    root = tmp_path_factory.mktemp("served_nb")
    make_adapter(tiny_backbone_dir, tiny_regions["west"], "lora", root / "west", 1)
    make_adapter(tiny_backbone_dir, tiny_regions["delta"], "bottleneck", root / "delta", 2)
    dirs = {REGION: out, "west": root / "west", "delta": root / "delta"}
    rec = Recommender.from_dirs(tiny_backbone_dir)
    tasks = {}
    for region, directory in dirs.items():
        rec.load(region, directory)
        backbone, vocab, meta = load_backbone(tiny_backbone_dir)  # its own: LoRA wraps it
        task = load_adapter(directory, backbone, vocab, meta["fingerprint"]).eval()
        # a long history too: the part reads the whole history, the transformer its window
        long = [sum(tiny_regions[region].train.values(), [])[:40]]
        tasks[region] = (task, histories(tiny_regions[region], 4) + long)
    return rec, tasks


def _assert_served_like_the_task(results, rows) -> None:
    for result, (task, history) in zip(results, rows, strict=True):
        catalogue = task.item_side.catalogue
        want = task_scores(task, [history], catalogue)[0]
        got = torch.tensor(result["scores"])
        torch.testing.assert_close(got, want.topk(10).values, atol=1e-5, rtol=1e-5)
        index = {item: i for i, item in enumerate(catalogue)}
        torch.testing.assert_close(got, want[[index[i] for i in result["items"]]],
                                   atol=1e-5, rtol=1e-5)


def test_served_scores_equal_the_task_alone_and_in_mixed_batches(served):
    rec, tasks = served
    assert rec._snapshot[REGION].neighbours == K
    task, hs = tasks[REGION]
    results = rec.recommend(hs, [REGION] * len(hs), k=10, exclude_seen=False)
    _assert_served_like_the_task(results, [(task, h) for h in hs])
    rows = [(region, t, h) for region, (t, hs) in tasks.items() for h in hs]
    rows = rows[::2] + rows[1::2]  # interleave regions
    results = rec.recommend([h for *_, h in rows], [r for r, *_ in rows], k=10,
                            exclude_seen=False)
    assert [r["region"] for r in results] == [r for r, *_ in rows]
    _assert_served_like_the_task(results, [(t, h) for _, t, h in rows])


def test_growth_keeps_old_scores_and_gives_new_items_no_neighbours(served, with_part,
                                                                   tiny_backbone_dir, tmp_path):
    from regiontune.adapters.grow import grow_catalogue
    from regiontune.model.backbone import load_backbone

    rec, tasks = served
    task, hs = tasks[REGION]
    before = rec.recommend(hs, [REGION] * len(hs), k=5, exclude_seen=False)
    rec.grow(REGION, ["brand-new-item"])
    entry = rec._snapshot[REGION]
    assert "brand-new-item" in entry.vocab.index and entry.neighbours == K
    assert entry.nb_value[entry.vocab.index["brand-new-item"]].abs().sum() == 0
    after = rec.recommend(hs, [REGION] * len(hs), k=5, exclude_seen=False)
    for old, new in zip(before, after, strict=True):
        kept = [s for i, s in zip(new["items"], new["scores"], strict=True)
                if i != "brand-new-item"]
        assert kept == old["scores"][:len(kept)]
    # on file: the grown folder loads, old items score exactly as before
    *_, out = with_part
    grow_catalogue(out, tiny_backbone_dir, ["brand-new-item"], out=tmp_path / "grown")
    backbone, vocab, meta = load_backbone(tiny_backbone_dir)
    grown = load_adapter(tmp_path / "grown", backbone, vocab, meta["fingerprint"])
    old_items = task.item_side.catalogue
    torch.testing.assert_close(task_scores(grown, hs, old_items), task_scores(task, hs, old_items))
