"""Configuration: YAML sections, unknown keys, command-line overrides with type coercion."""

from __future__ import annotations

import pytest
import typer

from regiontune.cli.common import load_configs
from regiontune.config import (
    AdaptConfig,
    DataConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)

YAML = """\
data:
  recipe: ml-100k
  data_dir: /somewhere
  regions: [zip1, zip2]
  columns: {user: uid}
model:
  arch: gpt2
  hidden_size: 32
train:
  lr: 0.001
  epochs: 4
  progress: false
  max_minutes: 2.5
adapt:
  method: ia3
  options: {r: 4}
"""


def test_load_yaml_sections(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    raw = load_yaml(path)
    assert set(raw) == {"data", "model", "train", "adapt"}
    cfg = load_configs(path, [])
    assert cfg["data"] == DataConfig(recipe="ml-100k", data_dir="/somewhere",
                                     regions=["zip1", "zip2"], columns={"user": "uid"})
    assert cfg["model"] == ModelConfig(arch="gpt2", hidden_size=32)
    assert cfg["train"] == TrainConfig(lr=0.001, epochs=4, progress=False, max_minutes=2.5)
    assert cfg["adapt"] == AdaptConfig(method="ia3", options={"r": 4})


def test_missing_sections_take_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_layers: 3\n")
    cfg = load_configs(path, [])
    assert cfg["model"].num_layers == 3
    assert cfg["data"] == DataConfig() and cfg["train"] == TrainConfig()
    assert load_configs(None, [])["adapt"] == AdaptConfig()


def test_empty_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("")
    assert load_yaml(path) == {}


def test_yaml_must_be_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        load_yaml(path)


def test_missing_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")


def test_unknown_key_errors(tmp_path):
    with pytest.raises(ValueError) as err:
        from_dict(TrainConfig, {"lr": 0.1, "learning_rate": 0.1})
    msg = str(err.value)
    assert "learning_rate" in msg and "TrainConfig" in msg and "'lr'" in msg
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hiden_size: 3\n")
    with pytest.raises(ValueError, match="hiden_size"):
        load_configs(path, [])


def test_unknown_section_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1\n")
    with pytest.raises(typer.BadParameter, match="optim"):
        load_configs(path, [])


def test_yaml_exponent_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-3\n")
    assert load_configs(path, [])["train"].lr == 0.001


# ---------------------------------------------------------------------------------------------
# overrides


def test_override_types():
    train = apply_overrides(TrainConfig(), ["epochs=7", "lr=1e-4", "progress=false",
                                           "cpu=yes", "max_minutes=1.5"])
    assert train.epochs == 7 and isinstance(train.epochs, int)
    assert train.lr == pytest.approx(1e-4) and isinstance(train.lr, float)
    assert train.progress is False and train.cpu is True
    assert train.max_minutes == 1.5
    assert apply_overrides(TrainConfig(max_minutes=3.0), ["max_minutes=none"]).max_minutes is None


@pytest.mark.parametrize("text,value", [("true", True), ("1", True), ("on", True),
                                        ("True", True), ("false", False), ("0", False),
                                        ("off", False), ("no", False)])
def test_override_bool(text, value):
    assert apply_overrides(TrainConfig(), [f"progress={text}"]).progress is value


def test_override_bool_typo_fails():
    with pytest.raises(ValueError):
        apply_overrides(TrainConfig(), ["progress=ture"])


def test_override_list_none_dict():
    data = apply_overrides(DataConfig(), ["regions=a,b,c", "data_dir=null",
                                          'columns={"user": "uid"}', "min-history=5"])
    assert data.regions == ["a", "b", "c"]
    assert data.data_dir is None
    assert data.columns == {"user": "uid"}
    assert data.min_history == 5
    assert apply_overrides(DataConfig(regions=["a"]), ["regions=None"]).regions is None
    assert apply_overrides(DataConfig(), ["recipe=ml-100k"]).recipe == "ml-100k"
    assert apply_overrides(AdaptConfig(), ['options={"r": 16}']).options == {"r": 16}


def test_override_value_with_equals():
    assert apply_overrides(DataConfig(), ["data_dir=/a=b"]).data_dir == "/a=b"


def test_override_bad_int():
    with pytest.raises(ValueError):
        apply_overrides(TrainConfig(), ["epochs=many"])


def test_unknown_override_key_lists_known():
    with pytest.raises(ValueError) as err:
        apply_overrides(TrainConfig(), ["learning_rate=1"])
    msg = str(err.value)
    assert "'learning_rate'" in msg and "TrainConfig" in msg
    assert "lr" in msg and "epochs" in msg and "batch_size" in msg


def test_override_without_equals():
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(TrainConfig(), ["epochs"])


def test_cli_sets_on_top_of_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    cfg = load_configs(path, ["train.epochs=9", "data.regions=zip3", "model.dropout=0",
                              "adapt.item_rank=0"])
    assert cfg["train"].epochs == 9 and cfg["train"].lr == 0.001
    assert cfg["data"].regions == ["zip3"]
    assert cfg["model"].dropout == 0.0 and cfg["model"].arch == "gpt2"
    assert cfg["adapt"].item_rank == 0


@pytest.mark.parametrize("bad", ["epochs=3", "optim.lr=1", "train.", "train"])
def test_cli_set_needs_section(bad):
    with pytest.raises(typer.BadParameter, match="SECTION.KEY=VALUE"):
        load_configs(None, [bad])


def test_cli_set_unknown_key_lists_known():
    with pytest.raises(ValueError, match="known: .*epochs"):
        load_configs(None, ["train.epoch=3"])


def test_to_dict_sections():
    out = to_dict(DataConfig(), TrainConfig(epochs=2))
    assert set(out) == {"data", "train"}
    assert out["train"]["epochs"] == 2
    assert from_dict(TrainConfig, out["train"]) == TrainConfig(epochs=2)
