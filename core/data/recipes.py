"""Data recipes: ``synthetic`` (embedded default), ``wsdm22-xmrec``, ``ml-100k`` and ``files``.

Each recipe returns the regions' :class:`RegionData`, split and ready for training.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pandas as pd

from regiontune.config import DataConfig
from regiontune.data.candidates import candidate_split
from regiontune.data.loading import (
    DataError,
    LoadSummary,
    count_duplicates,
    handle_duplicates,
    load_file,
    load_files,
    normalize_sep,
    select_regions,
)
from regiontune.data.splits import (
    NEGATIVES_FROM,
    PROTOCOLS,
    EvalCase,
    RegionData,
    random_holdout,
    sample_candidates,
    sample_protocol,
    split_region,
)

logger = logging.getLogger(__name__)

# name -> (users, mean history length); big regions for pretraining, small ones for adapters
SYNTHETIC_REGIONS = {"north": (1600, 14), "south": (1400, 14), "east": (1200, 12),
                     "west": (900, 12), "island": (120, 10), "alpine": (90, 10), "delta": (150, 10)}
SYNTHETIC_TOPICS = 12
SYNTHETIC_SHARED_ITEMS = 400
SYNTHETIC_LOCAL_ITEMS = 30  # region-only items per region


def synthetic_frame(seed: int = 0, scale: float = 1.0,
                    topics_out: dict[str, int] | None = None) -> pd.DataFrame:
    """Generate interactions with shared structure and regional shifts (deterministic).

    Items belong to topics; users walk between topics (a Markov chain shared by all regions,
    which is what a backbone can learn from big regions). Each region shifts topic tastes and
    item popularity and has items of its own, which is what an adapter has to learn.
    ``topics_out``, when given, receives each item's topic (its item text is drawn from it).
    """
    rng = np.random.default_rng(seed)
    n_topics = SYNTHETIC_TOPICS
    shared_topic = rng.integers(0, n_topics, SYNTHETIC_SHARED_ITEMS)
    transition = rng.dirichlet(np.full(n_topics, 0.3), size=n_topics) * 0.5 + np.eye(n_topics) * 0.5
    rows = []
    for r_index, (region, (n_users, mean_len)) in enumerate(SYNTHETIC_REGIONS.items()):
        local_topic = rng.integers(0, n_topics, SYNTHETIC_LOCAL_ITEMS)
        items = [f"i{j}" for j in range(SYNTHETIC_SHARED_ITEMS)]
        items += [f"{region}-{j}" for j in range(SYNTHETIC_LOCAL_ITEMS)]
        topics = np.concatenate([shared_topic, local_topic])
        if topics_out is not None:
            topics_out.update(zip(items, (int(t) for t in topics), strict=True))
        taste = rng.dirichlet(np.full(n_topics, 0.5))
        # regional popularity: a Zipf law over a region-specific permutation, local items boosted
        popularity = 1.0 / (1 + rng.permutation(len(items))) ** 0.8
        popularity[SYNTHETIC_SHARED_ITEMS:] *= 4
        by_topic = [np.flatnonzero(topics == t) for t in range(n_topics)]
        for u in range(max(3, int(n_users * scale))):
            topic = rng.choice(n_topics, p=taste)
            length = max(3, int(rng.poisson(mean_len)))
            t0 = 1_600_000_000 + int(rng.integers(0, 10_000_000))
            for step in range(length):
                topic = rng.choice(n_topics, p=transition[topic]) if step else topic
                pool = by_topic[topic] if len(by_topic[topic]) else np.arange(len(items))
                weights = popularity[pool] / popularity[pool].sum()
                item = items[int(rng.choice(pool, p=weights))]
                rows.append((f"{region}-u{u}", item, region, float(t0 + step * 3600 + r_index)))
    return pd.DataFrame(rows, columns=["user", "item", "region", "timestamp"])


Loaded = tuple[dict[str, RegionData], LoadSummary]


def _deduplicate(frame: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, LoadSummary]:
    """The duplicates policy applied, and the summary of what is left."""
    count = count_duplicates(frame)
    frame = handle_duplicates(frame, cfg.duplicates)
    return frame, LoadSummary.of(frame, count, cfg.duplicates)


def _split_all(frame: pd.DataFrame, cfg: DataConfig) -> Loaded:
    frame, summary = _deduplicate(frame, cfg)
    if cfg.candidates:
        out, summary.extra["candidates"] = candidate_split(
            frame, cfg.candidates, cfg.min_history, cfg.seed, cfg.max_valid_users)
        return out, summary
    out = {}
    for region, part in frame.groupby("region", sort=True):
        out[str(region)] = split_region(str(region), part.reset_index(drop=True),
                                        cfg.min_history, cfg.seed, cfg.max_valid_users)
    return out, summary


def load_synthetic(cfg: DataConfig) -> Loaded:
    return _split_all(select_regions(synthetic_frame(cfg.seed, cfg.synthetic_scale),
                                     cfg.regions), cfg)


def _require_dir(cfg: DataConfig, recipe: str) -> Path:
    if not cfg.data_dir:
        raise DataError(f"recipe {recipe!r} reads files: pass --data-dir DIR (the directory "
                        f"holding the {recipe} files)")
    path = Path(cfg.data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"--data-dir {path} is not a directory")
    return path


def load_ml100k(cfg: DataConfig) -> Loaded:
    """MovieLens-100K; the region of a user is the first digit of the zip code ("intl" else)."""
    root = _require_dir(cfg, "ml-100k")
    inter = load_file(root / "ml-100k.inter", {"user": "user_id", "item": "item_id"}, region="all")
    # The user file is read with the zip code in the "item" slot: same validation, no new code.
    users = load_file(root / "ml-100k.user", {"user": "user_id", "item": "zip_code"},
                      region="all")
    zips = dict(zip(users["user"], users["item"], strict=True))
    region_of = {u: (f"zip{z[0]}" if z[:1].isdigit() else "intl") for u, z in zips.items()}
    missing = sorted(set(inter["user"]) - set(region_of))
    if missing:
        raise DataError(f"{root / 'ml-100k.user'}: no zip code for users {missing[:5]}")
    inter["region"] = inter["user"].map(region_of)
    return _split_all(select_regions(inter, cfg.regions), cfg)


# Training data of a market: the union of both files (deduplicated on user and item). The
# 5-core file is not a subset of train.tsv: in t1 it holds 1,624 interactions and 213 users
# the other lacks (s1 ships only its 5-core file).
WSDM_TRAIN_FILES = ("train.tsv", "train_5core.tsv")
WSDM_NEGATIVES = 99  # the official lists: the positive + 99 negatives
WSDM_COLUMNS = {"user": "userId", "item": "itemId", "rating": "rating"}


def _wsdm_candidates(root: Path, region: str, qrel: pd.DataFrame, data: RegionData,
                     full: dict[str, list[str]], seed: int) -> dict[str, list[str]]:
    """Official candidates where the run file exists; else positive + 99 seeded negatives."""
    run_file = root / region / "valid_run.tsv"
    if run_file.is_file():
        runs = {}
        for line_no, line in enumerate(run_file.read_text().splitlines(), start=1):
            user, _, items = line.partition("\t")
            if not items:
                raise DataError(f"{run_file}: row {line_no} has no candidate list")
            runs[user] = items.split(",")
        return runs
    rng = random.Random(f"wsdm-candidates-{seed}-{region}")
    # Negatives come from every item of the market the files show: its training items and
    # its validation positives. Drawn from training items alone, a positive that never occurs
    # in training would be the only such item in its list and give itself away to any model
    # that scores never-trained items apart (t1's official lists carry such items among
    # their negatives too: 9% of them).
    pool = sorted(set(data.catalogue) | set(qrel["item"]))
    cases = [EvalCase(u, [], t) for u, t in zip(qrel["user"], qrel["item"], strict=True)]
    sample_candidates(cases, pool, WSDM_NEGATIVES, full, rng)
    return {c.user: c.candidates for c in cases}


def wsdm_train_frame(root: Path, region: str) -> pd.DataFrame:
    """A market's training interactions: every training file it ships, (user, item) unique."""
    parts = [load_file(root / region / name, WSDM_COLUMNS, region=region)
             for name in WSDM_TRAIN_FILES if (root / region / name).is_file()]
    if not parts:
        raise DataError(f"{root / region}: no training file (expected one of "
                        f"{', '.join(WSDM_TRAIN_FILES)})")
    frame = pd.concat(parts, ignore_index=True)
    return frame.drop_duplicates(subset=["user", "item"], keep="first").reset_index(drop=True)


def _wsdm_region(root: Path, region: str, frame: pd.DataFrame, cfg: DataConfig) -> RegionData:
    qrel_path = root / region / "valid_qrel.tsv"
    if not (cfg.official_valid and qrel_path.is_file()):
        return random_holdout(region, frame, cfg.min_history, cfg.seed, cfg.max_valid_users)
    # The official validation users are the test set; early stopping uses a random hold-out
    # of other training interactions, so the reported figure is never tuned on.
    data = random_holdout(region, frame, cfg.min_history, cfg.seed, cfg.max_valid_users,
                          with_test=False)
    full = {u: list(g) for u, g in frame.groupby("user")["item"]}
    qrel = load_file(qrel_path, WSDM_COLUMNS, region=region)
    runs = _wsdm_candidates(root, region, qrel, data, full, cfg.seed)
    data.test = [EvalCase(u, full.get(u, []), t, runs.get(u))
                 for u, t in zip(qrel["user"], qrel["item"], strict=True) if u in runs]
    # The hold-out mimics the protocol: its positive among 99 negatives drawn as the test
    # lists draw theirs, so early stopping and every tuned hyper-parameter optimise what the
    # reported figure measures. The official lists (t1, s3) draw uniformly from a fixed pool:
    # the items that are some validation or test user's positive (t1: 1,385 items, each ~200
    # times; the same pool for valid_run and test_run) -- so the hold-out draws from its own
    # targets. Built lists (t2) draw uniformly from the market's items, and so does its hold-out.
    official = (root / region / "valid_run.tsv").is_file()
    pool = sorted({c.target for c in data.valid}) if official else sorted(data.catalogue)
    if len(pool) < 2 * WSDM_NEGATIVES:
        pool = sorted(data.catalogue)
    sample_candidates(data.valid, pool, WSDM_NEGATIVES, full,
                      random.Random(f"wsdm-holdout-{cfg.seed}-{region}"), strict=False)
    data.catalogue = sorted(set(data.catalogue) | {i for c in data.test for i in c.candidates})
    data.protocol = "official-100"
    return data


def load_wsdm(cfg: DataConfig) -> Loaded:
    root = _require_dir(cfg, "wsdm22-xmrec")
    known = sorted(p.name for p in root.iterdir() if (p / "valid_qrel.tsv").is_file()
                   and any((p / f).is_file() for f in WSDM_TRAIN_FILES))
    regions = cfg.regions or known
    unknown = [r for r in regions if r not in known]
    if unknown:
        raise DataError(f"unknown region(s) {unknown} in {root}; markets found: {known}")
    frame, summary = _deduplicate(
        pd.concat([wsdm_train_frame(root, r) for r in regions], ignore_index=True), cfg)
    return {r: _wsdm_region(root, r, frame[frame["region"] == r].reset_index(drop=True), cfg)
            for r in regions}, summary


def load_user_files(cfg: DataConfig) -> Loaded:
    frame = load_files(cfg.files, cfg.columns, normalize_sep(cfg.sep), cfg.time_format)
    return _split_all(select_regions(frame, cfg.regions), cfg)


RECIPES = {"synthetic": load_synthetic, "wsdm22-xmrec": load_wsdm, "ml-100k": load_ml100k,
           "files": load_user_files}


# recipes whose evaluation protocol is fixed by the data set
FIXED_PROTOCOL = {"wsdm22-xmrec": "its official 100-candidate lists"}


def _check_protocol(cfg: DataConfig) -> None:
    if cfg.protocol not in PROTOCOLS:
        raise DataError(f"protocol {cfg.protocol!r} unknown; use {', '.join(PROTOCOLS)}")
    if cfg.candidates and cfg.protocol == "full-ranking":
        cfg.protocol = "candidates"  # a candidates file sets its protocol
    if cfg.protocol == "candidates" and not cfg.candidates:
        raise DataError("protocol 'candidates' reads your lists: pass --candidates FILE")
    if cfg.candidates and cfg.protocol != "candidates":
        raise DataError(f"--candidates FILE sets the protocol (its lists); drop --protocol "
                        f"{cfg.protocol}")
    if cfg.candidates and cfg.recipe in FIXED_PROTOCOL:
        raise DataError(f"recipe {cfg.recipe!r} has a fixed protocol "
                        f"({FIXED_PROTOCOL[cfg.recipe]}); drop --candidates")
    if cfg.protocol == "sampled" and cfg.recipe in FIXED_PROTOCOL:
        raise DataError(f"recipe {cfg.recipe!r} has a fixed protocol "
                        f"({FIXED_PROTOCOL[cfg.recipe]}); drop --protocol sampled")
    if cfg.negatives_from not in NEGATIVES_FROM:
        raise DataError(f"negatives_from {cfg.negatives_from!r} unknown; use "
                        f"{' or '.join(NEGATIVES_FROM)}")
    if cfg.protocol == "sampled" and cfg.negatives <= 0:
        raise DataError(f"--negatives must be positive, got {cfg.negatives}")


def load_data(cfg: DataConfig) -> Loaded:
    """Load, validate and split the data a config names; with the load's summary (logged)."""
    if cfg.recipe not in RECIPES:
        raise DataError(f"unknown data recipe {cfg.recipe!r}; choose one of {sorted(RECIPES)}")
    _check_protocol(cfg)
    normalize_sep(cfg.sep)  # an unknown --sep fails whatever the recipe
    regions, summary = RECIPES[cfg.recipe](cfg)
    logger.info("data (%s): %s", cfg.recipe, summary.line())
    for name, data in regions.items():
        if cfg.protocol == "sampled":
            sample_protocol(data, cfg.negatives, cfg.negatives_from, cfg.seed)
        logger.debug("region %s: %s", name, data.stats())
    return regions, summary


def load_regions(cfg: DataConfig) -> dict[str, RegionData]:
    """Load, validate and split the data a config names."""
    return load_data(cfg)[0]
