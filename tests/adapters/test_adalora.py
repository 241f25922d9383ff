"""AdaLoRA: rank allocation, its plain-LoRA export, loading through PEFT and regiontune."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from regiontune.adapters import (
    AdapterFolder,
    ItemSide,
    RegionTask,
    get_method,
    load_adapter,
    save_adapter,
)
from regiontune.adapters.adalora import LORA_EXPORT
from regiontune.adapters.folder import CONFIG, WEIGHTS
from regiontune.adapters.item_side import PREFIX as ITEM_PREFIX
from regiontune.config import AdaptConfig
from regiontune.evaluation.evaluate import task_scores
from regiontune.training.adapt import build_region_task, region_sequences
from regiontune.training.loop import fit
from tests.adapters.common import (
    REGION,
    fresh_backbone,
    probe_histories,
)
from tests.conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def adalora_trained(tiny_backbone_dir, island, tmp_path_factory):
    """AdaLoRA trained through its final allocation (best epoch = the last one)."""
    backbone, vocab, meta = fresh_backbone(tiny_backbone_dir)
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
    backbone2, vocab2, _ = fresh_backbone(tiny_backbone_dir)
    body = get_method("lora").load(backbone2, config, tensors, "export")
    item_side = ItemSide(meta["catalogue"], vocab2, backbone2.config.hidden_size,
                         meta["item_rank"], meta["item_bias"])
    item_side.load(tensors)
    lora = RegionTask(body, body.get_base_model(), item_side).eval()

    histories = probe_histories(island)
    want = task_scores(adalora_trained["task"], histories, island.catalogue)
    torch.testing.assert_close(task_scores(lora, histories, island.catalogue), want,
                               atol=1e-5, rtol=0)
    # plain PEFT reads the export too (as a LoRA with a per-module rank pattern)
    peft_model = PeftModel.from_pretrained(fresh_backbone(tiny_backbone_dir)[0], str(export)).eval()
    state = get_peft_model_state_dict(peft_model)
    assert all(torch.equal(state[k], tensors[k]) for k in state)


def test_adalora_adapter_reloads_through_plain_peft(adalora_trained, tiny_backbone_dir, island):
    """The saved AdaLoRA files (pruned ranks) score like the trained task (PEFT + item side)."""
    directory = adalora_trained["dir"]
    backbone, vocab, _ = fresh_backbone(tiny_backbone_dir)
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
    histories = probe_histories(island)
    torch.testing.assert_close(task_scores(task, histories, island.catalogue),
                               task_scores(adalora_trained["task"], histories, island.catalogue),
                               atol=1e-5, rtol=0)


def test_adalora_adapter_loads_with_load_adapter(adalora_trained, tiny_backbone_dir, island):
    backbone, vocab, bmeta = fresh_backbone(tiny_backbone_dir)
    loaded = load_adapter(adalora_trained["dir"], backbone, vocab, bmeta["fingerprint"])
    histories = probe_histories(island)
    torch.testing.assert_close(task_scores(loaded, histories, island.catalogue),
                               task_scores(adalora_trained["task"], histories, island.catalogue),
                               atol=1e-5, rtol=0)


# -- mixed-region batches ---------------------------------------------------------------------



def test_adalora_folder_is_served_as_its_lora_export(adalora_trained, tiny_backbone_dir):
    fingerprint = json.loads((adalora_trained["dir"] / "region.json").read_text())[
        "backbone_fingerprint"]
    served = AdapterFolder.read(adalora_trained["dir"], fingerprint, serving=True)
    assert (served.method, served.trained_method) == ("lora", "adalora")
    assert served.source == adalora_trained["dir"] / LORA_EXPORT
    assert served.config["peft_type"] == "LORA"
    trained = AdapterFolder.read(adalora_trained["dir"], fingerprint)
    assert trained.method == "adalora" and trained.config["peft_type"] == "ADALORA"
