"""The ``regiontune`` command end to end on tiny synthetic data (CliRunner, in process)."""

from __future__ import annotations

import json
import re

import pytest
import torch
import typer.main
from safetensors.torch import load_file
from typer.testing import CliRunner

from regiontune.cli.main import app
from regiontune.config import ADAPT_LR, TrainConfig

runner = CliRunner()
TINY = ["--set", "model.hidden_size=16", "--set", "model.intermediate_size=32",
        "--set", "model.num_layers=1", "--set", "train.epochs=1",
        "--set", "train.progress=false", "--set", "data.synthetic_scale=0.05"]
RANKED = re.compile(r"^\s*(\d+)\. (\S+)\s+(-?[\d.]+)$", re.MULTILINE)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _ok(result) -> str:
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result.output


def _fails(result, *fragments: str) -> str:
    """Exit code 2, the fragments in the message, no traceback."""
    assert result.exit_code == 2, f"{result.exit_code}: {result.output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    return result.output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def backbone(workdir):
    out = workdir / "bb"
    result = invoke("pretrain", "--out", out, "--regions", "north,south", *TINY)
    text = _ok(result)
    assert "backbone written to" in text
    return out, text


@pytest.fixture(scope="module")
def adapter(workdir, backbone):
    out = workdir / "island"
    result = invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
                    "--method", "lora", "--epochs", "1", "--set", "train.progress=false")
    return out, _ok(result)


# ---------------------------------------------------------------------------------------------
# help


def _commands():
    group = typer.main.get_command(app)
    return sorted(group.commands.items())


@pytest.mark.parametrize("name", [name for name, _ in _commands()])
def test_help_mentions_every_option(name):
    command = dict(_commands())[name]
    text = _ok(invoke(name, "--help"))
    assert "Usage" in text
    for param in command.params:
        if param.param_type_name == "option":
            longest = max(param.opts, key=len)
            assert longest in text, f"{name} --help lacks {longest}"
    assert (command.help or "").split("\n")[0].strip()[:30] in " ".join(text.split())


def test_help_lists_commands():
    text = _ok(invoke("--help"))
    for name in ("pretrain", "adapt", "evaluate", "recommend", "serve", "push", "pull", "demo"):
        assert name in text


# ---------------------------------------------------------------------------------------------
# pretrain, adapt, evaluate, recommend


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
    _ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
               "--epochs", "1", "--weights-dtype", "float32", "--set", "train.progress=false"))
    assert json.loads((out / "region.json").read_text())["weights_dtype"] == "float32"
    _fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out",
                  workdir / "island-bad", "--weights-dtype", "float8"), "float8", "float16")
    assert not (workdir / "island-bad").exists()


def test_adapt_trains_at_adapter_lr_unless_told(workdir, backbone, adapter):
    # pretraining's default (TrainConfig.lr) is not the adapters' default
    saved = json.loads((adapter[0] / "region.json").read_text())["config"]["train"]
    assert saved["lr"] == ADAPT_LR != TrainConfig().lr
    out = workdir / "island-lr"
    _ok(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--out", out,
               "--epochs", "1", "--set", "train.progress=false", "--set", "train.lr=0.004"))
    assert json.loads((out / "region.json").read_text())["config"]["train"]["lr"] == 0.004


def test_evaluate_prints_table_and_writes_json(workdir, backbone, adapter):
    target = workdir / "eval.json"
    text = _ok(invoke("evaluate", "--model", backbone[0], "--adapter", adapter[0],
                      "--json", target))
    assert "NDCG@10" in text and re.search(r"^island\s+full-ranking\s+[\d.]+", text, re.M)
    results = json.loads(target.read_text())
    assert set(results) == {"island"}
    row = results["island"]
    assert 0 <= row["ndcg@10"] <= 1 and row["users"] > 0
    assert row["split"] == "test" and row["adapter"] == str(adapter[0])


def test_evaluate_backbone_only_valid_split(workdir, backbone):
    target = workdir / "eval-bb.json"
    text = _ok(invoke("evaluate", "--model", backbone[0], "--region", "north",
                      "--split", "valid", "-k", "5", "--json", target))
    assert "north" in text
    row = json.loads(target.read_text())["north"]
    assert row["split"] == "valid" and row["adapter"] is None and "ndcg@5" in row


def test_evaluate_table_follows_k(workdir, backbone):
    target = workdir / "eval-k5.json"
    text = _ok(invoke("evaluate", "--model", backbone[0], "--region", "south", "-k", "5",
                      "--json", target))
    row = json.loads(target.read_text())["south"]
    assert "NDCG@5" in text and "HR@5" in text
    line = next(x for x in text.splitlines() if x.startswith("south"))
    assert f"{row['ndcg@5']:.4f}" in line and f"{row['hr@5']:.4f}" in line


def test_error_bad_split(workdir, backbone):
    _fails(invoke("evaluate", "--model", backbone[0], "--region", "south", "--split", "bogus",
                  "--json", workdir / "x.json"), "bogus")


def _items(backbone_dir) -> list[str]:
    return json.loads((backbone_dir / "items.json").read_text())["items"]


def test_recommend_top_k(backbone):
    history = _items(backbone[0])[:2]
    text = _ok(invoke("recommend", "--model", backbone[0], "--region", "island",
                      "--history", ",".join(history), "-k", "5"))
    ranked = RANKED.findall(text)
    assert [int(r[0]) for r in ranked] == [1, 2, 3, 4, 5]
    assert not {r[1] for r in ranked} & set(history)  # seen items are not recommended
    scores = [float(r[2]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert "backbone" in text and "unknown" not in text


def test_recommend_lists_unknown_items(backbone):
    real = _items(backbone[0])[0]
    text = _ok(invoke("recommend", "--model", backbone[0], "--region", "island",
                      "--history", f"{real},no-such-item", "-k", "5"))
    assert "ignored unknown items: no-such-item" in text
    assert len(RANKED.findall(text)) == 5


def test_recommend_with_adapter(backbone, adapter):
    catalogue = json.loads((adapter[0] / "region.json").read_text())["catalogue"]
    text = _ok(invoke("recommend", "--model", backbone[0], "--adapter", adapter[0],
                      "--region", "island", "--history", ",".join(catalogue[:2]), "-k", "5"))
    assert "served by the adapter" in text
    ranked = RANKED.findall(text)
    assert len(ranked) == 5
    assert {r[1] for r in ranked} <= set(catalogue) - set(catalogue[:2])


# ---------------------------------------------------------------------------------------------
# errors: exit code 2, a message, no traceback


def test_error_unknown_region(workdir, backbone):
    _fails(invoke("adapt", "--backbone", backbone[0], "--region", "atlantis",
                  "--out", workdir / "x", "--epochs", "1"), "atlantis", "island")
    _fails(invoke("evaluate", "--model", backbone[0], "--region", "atlantis",
                  "--json", workdir / "x.json"), "atlantis")
    _fails(invoke("pretrain", "--out", workdir / "y", "--regions", "atlantis", *TINY),
           "atlantis")


def test_error_unknown_method(workdir, backbone):
    _fails(invoke("adapt", "--backbone", backbone[0], "--region", "island", "--method", "magic",
                  "--out", workdir / "x", "--epochs", "1"), "magic", "lora")
    assert not (workdir / "x").exists()


def test_error_missing_backbone(workdir):
    missing = workdir / "no-such-backbone"
    _fails(invoke("adapt", "--backbone", missing, "--region", "island", "--out", workdir / "x"),
           str(missing))
    _fails(invoke("evaluate", "--model", missing), str(missing))
    _fails(invoke("recommend", "--model", missing, "--region", "island", "--history", "i1"),
           str(missing))


@pytest.mark.parametrize("bad", ["train.epochs", "epochs=1", "optim.lr=1", "train.epoch=1",
                                 "train.epochs=many"])
def test_error_bad_set(workdir, bad):
    text = _fails(invoke("pretrain", "--out", workdir / "z", "--set", bad))
    assert "error" in text.lower()
    assert not (workdir / "z").exists()


def test_error_k_zero(backbone):
    _fails(invoke("recommend", "--model", backbone[0], "--region", "island",
                  "--history", "i1", "-k", "0"), "-k must be positive")


def test_error_unknown_recipe(workdir):
    _fails(invoke("pretrain", "--out", workdir / "z", "--data", "nope", *TINY), "nope")
