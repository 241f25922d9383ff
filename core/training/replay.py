"""Replay for refreshes (``adapt --init-from PARENT --replay FRACTION``): against forgetting,
a seeded share of the parent's training histories is trained again with the new data.

* Source: the parent's own training data, reloaded from the resolved data configuration its
  region.json records (``config.data``: recipe, files or data directory, columns, separator
  ...), its region, then the parent's own ``--fraction`` of users (its seed): exactly the
  histories the parent trained on. Files that are gone are an error (never a silent skip).
  The candidates file and the item-text file are not needed (training histories only).
* What: training histories only (whole users); never the parent's validation or test cases.
  A parent that was itself refreshed with replay contributes its own data only.
* How many: ``round(FRACTION * users)``, drawn with the refresh's seed; 0 turns replay off.
* Items: the refreshed catalogue holds every item of the parent's catalogue, so a replayed
  history normally keeps every item; any item the refreshed catalogue lacks is dropped from
  the history (never added to the catalogue): the served catalogue stays the parent's plus
  the new data's.
* Replayed users are keyed apart from the new data's (``REPLAY_PREFIX``): a user present in
  both periods contributes both histories.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from regiontune.adapters.folder import AdapterFolder
from regiontune.config import DataConfig, TrainConfig, from_dict
from regiontune.data.loading import DataError
from regiontune.data.recipes import load_regions
from regiontune.data.splits import RegionData, subsample_users

REPLAY_PREFIX = "\0replay:"
GONE_HINT = "pass --replay 0 (no replay) or put the parent's data back where it was"


def check_replay(fraction: float, init_from: str | Path | None) -> None:
    """A replay fraction in [0, 1], and only for a refresh."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"--replay must be in [0, 1] (a share of the parent's training "
                         f"users), not {fraction}")
    if fraction > 0 and init_from is None:
        raise ValueError("--replay replays the parent adapter's training data: it needs "
                         "--init-from PARENT_DIR")


def refresh_train_config(train_cfg: TrainConfig, refresh_lr: float,
                         refresh_patience: int | None = None,
                         refresh_epochs: int | None = None,
                         refresh_evals_per_pass: int | None = None) -> TrainConfig:
    """The training settings of a refresh: the learning rate scaled by ``refresh_lr``, the
    early-stopping patience ``refresh_patience`` (in hold-out evaluations), the epoch cap
    ``refresh_epochs`` (in passes over the data) and ``refresh_evals_per_pass`` hold-out
    evaluations per pass (``TrainConfig.epoch_parts``; the cap and the cosine schedule still
    span the same passes) -- None: ``train_cfg``'s; ``AdaptConfig.refresh_lr`` /
    ``refresh_patience`` / ``refresh_epochs`` / ``refresh_evals_per_pass``. The refresh
    restarts its optimizer and schedule on an adapter that is already trained, not on the
    identity."""
    if not (math.isfinite(refresh_lr) and refresh_lr > 0):
        raise ValueError(f"refresh_lr must be a positive number (a multiple of train.lr for "
                         f"refreshes), not {refresh_lr}")
    for name, value, none in (("refresh_patience", refresh_patience, "the training patience"),
                              ("refresh_epochs", refresh_epochs, "train.epochs"),
                              ("refresh_evals_per_pass", refresh_evals_per_pass,
                               "train.epoch_parts")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            unit = {"refresh_patience": "of evaluations", "refresh_epochs": "of epochs"}.get(
                name, "")
            raise ValueError(f"{name} must be a whole number {unit} >= 1 (or none: {none}), "
                             f"not {value!r}".replace("  ", " "))
    patience = train_cfg.patience if refresh_patience is None else refresh_patience
    parts = train_cfg.epoch_parts if refresh_evals_per_pass is None else refresh_evals_per_pass
    passes = (math.ceil(train_cfg.epochs / train_cfg.epoch_parts) if refresh_epochs is None
              else refresh_epochs)
    epochs = (train_cfg.epochs if refresh_epochs is None and parts == train_cfg.epoch_parts
              else passes * parts)
    return replace(train_cfg, lr=train_cfg.lr * refresh_lr, patience=patience, epochs=epochs,
                   epoch_parts=parts)


def data_paths(cfg: DataConfig) -> list[Path]:
    """The files and folder a data configuration reads (none for generated data)."""
    return [Path(p).expanduser() for p in [*cfg.files, *([cfg.data_dir] if cfg.data_dir
                                                           else [])]]


def histories_config(data: dict[str, Any], regions: list[str]) -> DataConfig:
    """A recorded data configuration (``config.data`` of a region.json or a backbone's
    regiontune.json) set to reload ``regions``' training histories only: evaluation-side files
    (candidate lists, item text) are not needed."""
    cfg = from_dict(DataConfig, copy.deepcopy(data))
    cfg.regions = list(regions)
    cfg.candidates, cfg.item_text = None, None
    if cfg.protocol == "candidates":
        cfg.protocol = "full-ranking"
    return cfg


def reload_parent_data(parent: AdapterFolder, hint: str = GONE_HINT) -> RegionData:
    """The parent adapter's region data (every user, before its ``--fraction``), reloaded from
    the data configuration its metadata records; a clear error (ending with ``hint``) when
    that data is gone."""
    config = parent.meta.get("config") or {}
    if not config.get("data"):
        raise DataError(f"the parent adapter at {parent.path} records no data configuration "
                        f"(config.data in its region.json) to reload: {hint}")
    region = (config.get("adapt") or {}).get("region") or parent.region
    cfg = histories_config(config["data"], [region])
    for path in data_paths(cfg):
        if not path.exists():
            raise DataError(f"the parent's training data at {path} is gone: {hint}")
    try:
        regions = load_regions(cfg)
    except (DataError, OSError) as err:
        raise DataError(f"the parent's training data ({cfg.recipe}: "
                        f"{', '.join(map(str, data_paths(cfg))) or 'generated'}) cannot be "
                        f"reloaded ({err}): {hint}") from err
    if region not in regions:
        raise DataError(f"the parent's training data no longer holds its region {region!r}: "
                        f"{hint}")
    return regions[region]


def parent_training_histories(parent: AdapterFolder) -> dict[str, list[str]]:
    """The training histories the parent adapter was trained on (module docstring), from the
    data configuration its metadata records; a clear error when that data is gone."""
    data = reload_parent_data(parent)
    config = parent.meta.get("config") or {}
    adapt = config.get("adapt") or {}
    seed = int((config.get("train") or {}).get("seed", 0))
    fraction = float(adapt.get("fraction", 1.0))
    return dict(subsample_users(data, fraction, seed).train)


def sample_replay(histories: dict[str, list[str]], fraction: float, seed: int,
                  catalogue: list[str] | None = None) -> dict[str, list[str]]:
    """``round(fraction * len(histories))`` of them (seeded), keyed apart from the new data's
    users (``REPLAY_PREFIX``); with ``catalogue``, items outside it are dropped."""
    users = sorted(histories)
    n = round(len(users) * fraction)
    chosen = sorted(random.Random(f"replay-{seed}").sample(users, n)) if n else []
    known = set(catalogue) if catalogue is not None else None
    return {f"{REPLAY_PREFIX}{u}": [i for i in histories[u] if known is None or i in known]
            for u in chosen}


def replay_record(fraction: float, replayed: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the lineage records: None without replay."""
    if not fraction:
        return None
    return {"fraction": fraction, "users": len(replayed or {})}
