"""Adapters train and serve on CUDA, the item-item part included (skipped without a GPU).

The first device run of the WSDM suite found the part's weight chosen with the adapter's
scores on CUDA and the hold-out mask on the CPU (``blend_weight``): every adapter failed there.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from regiontune.adapters import METHODS
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.training.adapt import train_region
from tests.conftest import TINY_TRAIN

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_adapter_with_its_item_item_part_trains_and_scores_on_cuda(method, tiny_backbone,
                                                                   tiny_regions):
    backbone, vocab, _ = tiny_backbone
    data = tiny_regions["island"]
    task, stats = train_region(backbone, vocab, data,
                               AdaptConfig(method=method, region="island", neighbours=4),
                               replace(TINY_TRAIN, epochs=1, cpu=False))
    assert any(p.is_cuda for p in task.parameters())
    assert set(stats["item_item_holdout_ndcg@10"]) >= {"0.0", "1.0"}
    histories = [c.history for c in data.test[:8]]
    scores = task_scores(task, histories, data.catalogue)
    assert scores.shape == (len(histories), len(data.catalogue))
    assert torch.isfinite(scores).any(dim=1).all()
