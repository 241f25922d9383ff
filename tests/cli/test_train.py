"""``regiontune pretrain`` and ``regiontune adapt`` end to end on tiny synthetic data."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from regiontune.config import ADAPT_LR, TrainConfig
from tests.cli.helpers import TINY, fails, invoke, ok


def test_pretrain_writes_backbone(backbone):
    out, text = backbone
    for name in ("config.json", "model.safetensors", "items.json", "regiontune.json",
                 "README.md"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "regiontune.json").read_text())
    assert meta["regions"] == ["north", "south"]
    assert meta["config"]["model"]["hidden_size"] == 16
    assert meta["config"]["data"]["synthetic_scale"] == 0.05
    assert "north" in text and "NDCG@10" in text


def test_adapt_writes_adapter(adapter):
    out, text = adapter
    for name in ("adapter_config.json", "adapter_model.safetensors", "region.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "region.json").read_text())
    assert meta["region"] == "island"
    assert "adapter (lora" in text and "island" in text
    assert not list(out.glob("*.bin"))
    # adapters are saved in half precision by default (weights_dtype "auto")
    assert meta["weights_dtype"] == "float16" and meta["config"]["adapt"]["weights_dtype"] == "auto"
    tensors = load_file(out / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}


def test_adapt_weights_dtype_option(workdir, backbone):
    out = workdir / "island-f32"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
              "--epochs", "1", "--weights-dtype", "float32", "--set", "train.progress=false"))
    assert json.loads((out / "region.json").read_text())["weights_dtype"] == "float32"
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out",
                 workdir / "island-bad", "--weights-dtype", "float8"), "float8", "float16")
    assert not (workdir / "island-bad").exists()


def test_adapt_trains_at_adapter_lr_unless_told(workdir, backbone, adapter):
    # pretraining's default (TrainConfig.lr) is not the adapters' default
    saved = json.loads((adapter[0] / "region.json").read_text())["config"]["train"]
    assert saved["lr"] == ADAPT_LR != TrainConfig().lr
    out = workdir / "island-lr"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
              "--epochs", "1", "--set", "train.progress=false", "--set", "train.lr=0.004"))
    assert json.loads((out / "region.json").read_text())["config"]["train"]["lr"] == 0.004


def test_error_unknown_method(workdir, backbone):
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--method", "magic",
                 "--out", workdir / "x", "--epochs", "1"), "magic", "lora")
    assert not (workdir / "x").exists()


@pytest.mark.parametrize("bad", ["train.epochs", "epochs=1", "optim.lr=1", "train.epoch=1",
                                 "train.epochs=many"])
def test_error_bad_set(workdir, bad):
    text = fails(invoke("pretrain", "--out", workdir / "z", "--set", bad))
    assert "error" in text.lower()
    assert not (workdir / "z").exists()


def test_error_unknown_recipe(workdir):
    fails(invoke("pretrain", "--out", workdir / "z", "--data", "nope", *TINY), "nope")


def test_pretrain_fraction_trains_on_fewer_users(workdir, backbone):
    out = workdir / "bb-half"
    ok(invoke("pretrain", "--out", out, "--regions", "north,south", "--fraction", "0.5", *TINY))
    half = json.loads((out / "regiontune.json").read_text())
    full = json.loads((backbone[0] / "regiontune.json").read_text())
    assert half["train"]["fraction"] == 0.5
    for region in ("north", "south"):
        assert half["data"][region]["users"] < full["data"][region]["users"]
        assert half["data"][region]["test"] == full["data"][region]["test"]  # evaluation: all
    fails(invoke("pretrain", "--out", workdir / "bb-zero", "--fraction", "0", *TINY),
          "--fraction")


def test_adapt_neighbour_pool_option(workdir, backbone):
    out = workdir / "island-own"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
              "--epochs", "1", "--neighbour-pool", "0", "--set", "train.progress=false"))
    meta = json.loads((out / "region.json").read_text())
    assert meta["config"]["adapt"]["neighbour_pool"] == 0.0
    fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out",
                 workdir / "island-neg", "--epochs", "1", "--neighbour-pool", "-1"),
          "neighbour_pool must be >= 0")
    assert not (workdir / "island-neg").exists()
