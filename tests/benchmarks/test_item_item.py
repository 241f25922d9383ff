"""The item-item study's variant forms keep what they say at the shipped size."""

import torch

from benchmarks.item_item import VARIANT_K, _top, _variant_forms


def _fixture(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    train_x = (torch.rand(80, 20, generator=g) < 0.3).float()
    b = torch.randn(20, 20, generator=g)
    b.fill_diagonal_(0)
    hold_x = (torch.rand(9, 20, generator=g) < 0.3).float()
    return b, train_x, hold_x, torch.ones(9, 20, dtype=torch.bool)


def test_top_keeps_each_rows_k_largest_weights():
    b = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, -1.0, 4.0],
                      [1.0, 1.5, 0.0, 0.5], [2.0, 0.1, 0.2, 0.0]])
    top = _top(b, 2)
    assert torch.equal(top != 0, torch.tensor([[False, True, False, True],
                                               [True, False, False, True],
                                               [True, True, False, False],
                                               [True, False, True, False]]))
    assert top[1, 0] == 5.0 and top[0, 3] == 2.0


def test_variant_forms_store_at_most_n_times_k_weights():
    b, train_x, hold_x, allowed = _fixture()
    forms = _variant_forms(b, train_x, hold_x, allowed)
    for k in VARIANT_K:
        assert {f"top{k}", f"global{k}", f"mix0.25-top{k}", f"lambda50-top{k}"} <= set(forms)
        for name, form in forms.items():
            if name.endswith(f"top{k}") or name == f"global{k}":
                assert int((form != 0).sum()) <= b.shape[0] * min(k, b.shape[0])


def test_global_form_keeps_the_largest_weights_wherever_they_fall():
    b, train_x, hold_x, allowed = _fixture(1)
    k = min(VARIANT_K)
    form = _variant_forms(b, train_x, hold_x, allowed)[f"global{k}"]
    kept, dropped = b[form != 0], b[(form == 0) & (b != 0)]
    assert kept.numel() == b.shape[0] * k
    assert kept.min() >= dropped.max()

