"""Adding a method is one folder and one registration line: a method defined here (the
worked example of docs/architecture.md) trains, saves, loads and is served with no change
anywhere else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from regiontune.adapters import METHODS, load_adapter, save_adapter
from regiontune.adapters.base import MethodDefaults, register
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.serving.recommender import Recommender
from regiontune.training.adapt import train_region
from tests.adapters.common import REGION, fresh_backbone
from tests.conftest import TINY_TRAIN


class ShiftBody(nn.Module):
    """The backbone plus one learned shift of its last hidden state."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.model = backbone
        self.shift = nn.Parameter(torch.zeros(backbone.config.hidden_size))

    def forward(self, **kwargs):
        out = self.model(**kwargs)
        out.last_hidden_state = out.last_hidden_state + self.shift
        return out


class ShiftMethod(MethodDefaults):
    name = "shift"

    def default_options(self, arch):
        return {}

    def attach(self, backbone, options, name, total_steps):
        return ShiftBody(backbone)

    def base_of(self, body):
        return body.model

    def weights(self, body, name):
        return {"shift": body.shift.detach().clone()}

    def adapter_config(self, body, name):
        return {"peft_type": "SHIFT", "method": "shift"}

    def load(self, backbone, config, tensors, name, body=None):
        body = ShiftBody(backbone)
        body.shift.data.copy_(tensors["shift"])
        body.shift.requires_grad_(False)
        return body


@pytest.fixture
def shift_method():
    register(ShiftMethod())
    yield METHODS["shift"]
    del METHODS["shift"]


def test_a_registered_method_trains_saves_loads_and_is_served(shift_method, tiny_backbone_dir,
                                                              island, tmp_path):
    backbone, vocab, meta = fresh_backbone(tiny_backbone_dir)
    task, stats = train_region(backbone, vocab, island,
                               AdaptConfig(method="shift", region=REGION, item_rank=2,
                                           start_as_candidate=False), TINY_TRAIN)
    assert stats["trainable_params"] > 0 and task.body.shift.abs().sum() > 0
    saved = save_adapter(task, "shift", REGION, {"region": REGION, "backbone_fingerprint":
                                                 meta["fingerprint"]}, tmp_path / REGION)
    assert saved["method"] == "shift" and saved["peft_loadable"] is False
    histories = [c.history for c in island.valid[:5]]
    expected = task_scores(task.eval(), histories, island.catalogue)
    loaded = load_adapter(tmp_path / REGION, *fresh_backbone(tiny_backbone_dir)[:2],
                          meta["fingerprint"])
    torch.testing.assert_close(task_scores(loaded, histories, island.catalogue), expected)
    rec = Recommender.from_dirs(tiny_backbone_dir, [tmp_path / REGION])
    try:
        [served] = [r for r in rec.regions() if r["region"] == REGION]
        assert served["method"] == served["served_as"] == "shift"
        answer = rec.recommend(histories[:1], [REGION], k=3)
        assert len(answer[0]["items"]) == 3
    finally:
        rec.close()
