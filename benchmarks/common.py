"""What the benchmark scripts share: suites, results files, options and logging.

Every study (``python -m benchmarks.X``) reads a suite from ``benchmarks/suites/``, keeps its
records in a JSON file under ``benchmarks/results/`` -- rewritten atomically after each
finished job, so a killed run resumes from what it saved -- and takes the same kinds of
options. This module sits below the scripts: it imports none of them.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from regiontune.config import DataConfig, ModelConfig, TrainConfig, from_dict
from regiontune.data.recipes import load_regions
from regiontune.data.splits import RegionData

log = logging.getLogger("benchmarks")
SUITES = Path(__file__).parent / "suites"
RESULTS = Path(__file__).parent / "results"
TRAININGS = ("pretrain", "adapt", "scratch")  # the suite's training blocks


# ---------------------------------------------------------------- suites

def load_suite(name: str, quick: bool = False) -> dict[str, Any]:
    """A suite by name (``benchmarks/suites/NAME.yaml``) or path; ``quick``: its smoke
    version (the suite's ``quick:`` block laid over it, ``-quick`` added to its name)."""
    path = Path(name) if name.endswith(".yaml") else SUITES / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITES.glob("*.yaml"))
        raise SystemExit(f"unknown suite {name!r}; suites: {known}")
    suite = yaml.safe_load(path.read_text())
    if quick:  # the smoke version: same code paths, tiny data and models
        suite = _deep_update(suite, suite.pop("quick", {}))
        suite["suite"] = f"{suite['suite']}-quick"
    suite.pop("quick", None)
    return suite


def _deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def settings(suite: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """setting -> target -> the markets its backbone is pretrained on.

    ``settings:`` in the suite; a suite with only ``pretrain_regions:`` has one setting,
    ``new-region``, whose backbone is those regions for every target.
    """
    if "settings" in suite:
        out = {}
        for name, spec in suite["settings"].items():
            missing = [t for t in suite["targets"] if t not in spec]
            if missing:
                raise SystemExit(f"suite setting {name!r} names no pretraining markets for "
                                 f"target(s) {missing}")
            out[name] = {t: sorted(spec[t]) for t in suite["targets"]}
        return out
    return {"new-region": {t: sorted(suite["pretrain_regions"]) for t in suite["targets"]}}


def setting_model(suite: dict[str, Any], setting: str) -> dict[str, Any]:
    """The ``model:`` fields a setting's backbones override (``setting_model:`` in the suite,
    e.g. a wider backbone for the all-regions setting, whose pooled data is larger); empty
    where the setting uses the suite's model. Methods that never read a backbone (scratch,
    the baselines) keep the suite's model."""
    overrides = dict((suite.get("setting_model") or {}).get(setting) or {})
    unknown = sorted(set(overrides) - {f.name for f in fields(ModelConfig)})
    if unknown:
        raise SystemExit(f"suite setting_model {setting!r}: unknown model field(s) {unknown}; "
                         f"known: {sorted(f.name for f in fields(ModelConfig))}")
    return overrides


_SHORT = {"hidden_size": "h", "num_layers": "layers", "num_heads": "heads",
          "intermediate_size": "ff"}


def backbone_name(pretrain_regions: list[str], model: dict[str, Any] | None = None) -> str:
    """The cache folder of the backbone pretrained on these markets (with the setting's
    ``model`` overrides, if any, in the name: a wider backbone never reuses a narrow one)."""
    name = "backbone-" + "-".join(sorted(pretrain_regions))
    for key, value in sorted((model or {}).items()):
        name += f"-{_SHORT.get(key, key)}{value}"
    return name


def train_config(suite: dict[str, Any], name: str = "adapt", **overrides: Any) -> TrainConfig:
    """The suite's ``name`` training block (no progress bars), with ``overrides``."""
    return from_dict(TrainConfig, {"progress": False, **suite[name], **overrides})


def suite_configs(suite: dict[str, Any]) -> tuple[DataConfig, ModelConfig,
                                                  dict[str, TrainConfig]]:
    """The suite's data and model configs and its training configs by block name."""
    data = from_dict(DataConfig, suite["data"])
    model = from_dict(ModelConfig, suite["model"])
    return data, model, {name: train_config(suite, name) for name in TRAININGS}


def suite_regions(suite: dict[str, Any], regions: Iterable[str]) -> dict[str, RegionData]:
    """These regions of the suite's data set, loaded and split as the suite says."""
    return load_regions(replace(from_dict(DataConfig, suite["data"]), regions=list(regions)))


# ---------------------------------------------------------------- results files

def load_results(path: Path, **fresh: Any) -> dict[str, Any]:
    """The results saved at ``path``, or a new ``{**fresh, "records": []}``."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {**fresh, "records": []}


def write_results(results: dict, path: Path, indent: int = 1) -> None:
    """Save ``results`` as JSON. Atomic: the file is written beside ``path`` and renamed
    over it, so a kill mid-write never corrupts the results collected so far."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as tmp:
            tmp.write(json.dumps(results, indent=indent, default=str) + "\n")
        os.chmod(name, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # not 0600
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def append_record(results: dict, path: Path, record: dict) -> None:
    """Add one finished job's record and save at once (a study resumes from the file)."""
    results["records"].append(record)
    write_results(results, path)
    log.info("%s", record)


def record_key(record: dict, fields: Iterable[str]) -> tuple:
    """The record's values of ``fields`` (None where missing): what identifies a job."""
    return tuple(record.get(k) for k in fields)


def done_keys(records: Iterable[dict], fields: Iterable[str]) -> set[tuple]:
    """The keys of the jobs already recorded: a resumed study skips them."""
    fields = tuple(fields)
    return {record_key(r, fields) for r in records}


# ---------------------------------------------------------------- options

def names(text: str) -> list[str]:
    """A comma-separated option value as a list (empty items dropped)."""
    return [x for x in text.split(",") if x]


def integers(text: str) -> list[int]:
    return [int(x) for x in names(text)]


def floats(text: str) -> list[float]:
    return [float(x) for x in names(text)]


def study_command(module: str, argv: list[str] | None) -> str:
    """The command line a study ran with (``argv``, or the process's own), as its report
    records it: ``OMP_NUM_THREADS=1 python -m MODULE ARGS``."""
    return f"OMP_NUM_THREADS=1 python -m {module} " + " ".join(
        sys.argv[1:] if argv is None else argv)


def study_parser(doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """A study's command line, described by its module docstring's first line."""
    return argparse.ArgumentParser(description=(doc or "").split("\n")[0], **kwargs)


def add_grid_options(parser: argparse.ArgumentParser, regions: str, seeds: str | None = None,
                     fractions: str | None = None) -> None:
    """``--regions`` (and, given a default, ``--seeds`` and ``--fractions``): the points a
    study runs, each comma-separated and parsed into a list."""
    parser.add_argument("--regions", type=names, default=regions)
    if fractions is not None:
        parser.add_argument("--fractions", type=floats, default=fractions)
    if seeds is not None:
        parser.add_argument("--seeds", type=integers, default=seeds)


def add_backbone_option(parser: argparse.ArgumentParser) -> None:
    """``--backbone`` for the side benchmarks that reuse the wsdm suite's pretrained backbone."""
    parser.add_argument("--backbone", type=Path,
                        default=Path("runs/bench/wsdm") / backbone_name(["s1", "s2", "s3"]),
                        help="A wsdm suite backbone (python -m benchmarks.run wsdm makes them; "
                        "default: the new-region one of t1 and t2, pretrained on s1-s3).")


# ---------------------------------------------------------------- logging

def configure_logging(fmt: str = "%(asctime)s %(message)s") -> None:
    """Benchmark entry points: INFO lines with times on stdout, library chatter at WARNING."""
    logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stdout)
    for noisy in ("accelerate", "regiontune", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
