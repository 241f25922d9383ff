"""Per-region splits into training histories, validation cases and test cases.

* With timestamps, histories are sequences: leave-last-out (last item -> test, second last ->
  validation).
* Without timestamps (e.g. WSDM), histories are sets: a seeded random hold-out.
Validation drives early stopping; test is what gets reported.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from regiontune.data.loading import DataError


@dataclass
class EvalCase:
    """One held-out interaction: the model sees ``history`` and should rank ``target`` high."""

    user: str
    history: list[str]
    target: str
    candidates: list[str] | None = None  # None: full ranking over the region catalogue


@dataclass
class RegionData:
    """Everything one region contributes: training histories, validation and test cases."""

    region: str
    train: dict[str, list[str]]
    valid: list[EvalCase]
    test: list[EvalCase]
    catalogue: list[str]  # every item known in the region, sorted
    ordered: bool  # True when histories are time-ordered sequences
    protocol: str = "full-ranking"  # or "official-100", "sampled-99-uniform", ...
    extra: dict = field(default_factory=dict)

    def stats(self) -> dict:
        lengths = [len(h) for h in self.train.values()]
        return {"users": len(self.train), "items": len(self.catalogue),
                "train_interactions": int(sum(lengths)), "valid": len(self.valid),
                "test": len(self.test), "ordered": self.ordered}


def histories(frame: pd.DataFrame) -> dict[str, list[str]]:
    """user -> items, ordered by timestamp when the frame has one (stable for ties)."""
    if "timestamp" in frame.columns:
        frame = frame.sort_values(["user", "timestamp"], kind="stable")
    return {u: list(g) for u, g in frame.groupby("user", sort=True)["item"]}


def leave_last_out(region: str, frame: pd.DataFrame, min_history: int,
                   with_test: bool = True) -> RegionData:
    """Sequences: the last item of each user is the test target, the second last validation
    (without test cases: the last item is the validation target)."""
    train, valid, test = {}, [], []
    for user, items in histories(frame).items():
        if not with_test and len(items) >= min_history:
            train[user] = items[:-1]
            valid.append(EvalCase(user, items[:-1], items[-1]))
        elif with_test and len(items) >= min_history:
            train[user] = items[:-2]
            valid.append(EvalCase(user, items[:-2], items[-2]))
            test.append(EvalCase(user, items[:-1], items[-1]))
        else:
            train[user] = items
    return _finish(region, frame, train, valid, test, ordered=True)


def random_holdout(region: str, frame: pd.DataFrame, min_history: int, seed: int,
                   max_valid_users: int, with_test: bool = True) -> RegionData:
    """Sets: one random item per eligible user to test, another to validation (seeded)."""
    rng = random.Random(f"{seed}-{region}")
    hist = histories(frame)
    eligible = [u for u, items in hist.items() if len(items) >= min_history]
    valid_users = set(rng.sample(eligible, min(max_valid_users, len(eligible))))
    train, valid, test = {}, [], []
    for user, items in hist.items():
        items = list(items)
        rng.shuffle(items)
        if with_test and len(items) >= min_history:
            test.append(EvalCase(user, items[1:], items[0]))
            items = items[1:]
        if user in valid_users and len(items) >= 2:
            valid.append(EvalCase(user, items[1:], items[0]))
            items = items[1:]
        train[user] = items
    return _finish(region, frame, train, valid, test, ordered=False)


def sample_candidates(cases: list[EvalCase], pool: list[str], n_negatives: int,
                      histories: dict[str, list[str]], rng: random.Random,
                      strict: bool = True) -> None:
    """Give each case its positive plus ``n_negatives`` items drawn uniformly from ``pool``,
    none of them in the user's (whole) history; in place. Protocols that rank a held-out item
    among sampled negatives (the WSDM lists) are then mimicked by the hold-out that early
    stopping and tuning read."""
    pool_set = set(pool)
    for case in cases:
        seen = set(histories.get(case.user, ())) | set(case.history) | {case.target}
        available = len(pool_set) - len(seen & pool_set)
        wanted = n_negatives if strict else min(n_negatives, available)
        if available < wanted:
            raise DataError(f"region has {available} items outside user {case.user!r}'s "
                            f"history; {n_negatives} negatives cannot be drawn")
        negatives: list[str] = []
        while len(negatives) < wanted:
            item = pool[rng.randrange(len(pool))]
            if item not in seen:
                seen.add(item)
                negatives.append(item)
        case.candidates = [case.target] + negatives


PROTOCOLS = ("full-ranking", "sampled", "candidates")
NEGATIVES_FROM = ("uniform", "popularity")


def user_items(data: RegionData) -> dict[str, set[str]]:
    """Every item each user has in the region: training history and held-out cases."""
    out = {u: set(items) for u, items in data.train.items()}
    for case in (*data.valid, *data.test):
        out.setdefault(case.user, set()).update(case.history, [case.target])
    return out


def _draw(rng: np.random.Generator, pool: list[str], weights: np.ndarray, cumulative: np.ndarray,
          exclude: set[str], n: int) -> list[str]:
    """``n`` distinct items of ``pool`` outside ``exclude``, drawn one after another with
    probability proportional to ``weights`` among those left (draws with replacement, the
    excluded and repeated ones rejected; the exact draw over what is left if that stalls)."""
    chosen: list[str] = []
    taken = set(exclude)
    for _ in range(20):
        if len(chosen) == n:
            return chosen
        picks = np.searchsorted(cumulative, rng.random(2 * (n - len(chosen)) + 8) * cumulative[-1],
                                side="right")
        for index in picks:
            item = pool[min(int(index), len(pool) - 1)]
            if item not in taken:
                taken.add(item)
                chosen.append(item)
                if len(chosen) == n:
                    return chosen
    left = [i for i, item in enumerate(pool) if item not in taken and weights[i] > 0]
    p = weights[left] / weights[left].sum()
    extra = rng.choice(left, size=n - len(chosen), replace=False, p=p)
    return chosen + [pool[int(i)] for i in extra]


def sample_protocol(data: RegionData, negatives: int = 99, negatives_from: str = "uniform",
                    seed: int = 0) -> RegionData:
    """The sampled-candidate protocol on a region's validation and test cases (in place): each
    case ranks its target among ``negatives`` items of the region catalogue the user never had,
    drawn without replacement, uniformly or in proportion to the item's training count
    (``popularity``: items never trained on are never drawn). Seeded by ``seed`` and region."""
    if negatives_from not in NEGATIVES_FROM:
        raise DataError(f"negatives_from {negatives_from!r} unknown; use uniform or popularity")
    if negatives <= 0:
        raise DataError(f"negatives must be positive, got {negatives}")
    pool = list(data.catalogue)
    if negatives_from == "popularity":
        counts: dict[str, int] = {}
        for items in data.train.values():
            for item in items:
                counts[item] = counts.get(item, 0) + 1
        weights = np.array([counts.get(item, 0) for item in pool], dtype=np.float64)
    else:
        weights = np.ones(len(pool), dtype=np.float64)
    cumulative = np.cumsum(weights)
    drawable = {item for item, w in zip(pool, weights, strict=True) if w > 0}
    owned = user_items(data)
    for stream, cases in enumerate((data.valid, data.test)):
        rng = np.random.default_rng([seed, zlib.crc32(data.region.encode()), stream])
        for case in cases:
            exclude = owned.get(case.user, set()) | set(case.history) | {case.target}
            available = len(drawable) - len(exclude & drawable)
            if available < negatives:
                raise DataError(
                    f"region {data.region!r}: user {case.user!r} leaves {available} items to "
                    f"draw {negatives} negatives from ({negatives_from}); lower --negatives")
            case.candidates = [case.target, *_draw(rng, pool, weights, cumulative, exclude,
                                                   negatives)]
    data.protocol = f"sampled-{negatives}-{negatives_from}"
    return data


def _finish(region, frame, train, valid, test, ordered) -> RegionData:
    if not valid:
        raise DataError(
            f"region {region!r} has no user with enough interactions to hold one out "
            f"({frame['user'].nunique()} users, {len(frame)} rows); add data or lower min_history"
        )
    catalogue = sorted(frame["item"].unique())
    return RegionData(region, train, valid, test, catalogue, ordered)


def split_region(region: str, frame: pd.DataFrame, min_history: int = 3, seed: int = 0,
                 max_valid_users: int = 2000, with_test: bool = True) -> RegionData:
    """Pick the split a region's data calls for: by time where timestamps exist."""
    if "timestamp" in frame.columns:
        return leave_last_out(region, frame, min_history, with_test)
    return random_holdout(region, frame, min_history, seed, max_valid_users, with_test)


def subsample_users(data: RegionData, fraction: float, seed: int) -> RegionData:
    """Keep a seeded fraction of the training users (learning curves).

    Validation and test keep every user, with the full history as input: a smaller training
    set must not make the evaluation easier or different.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return data
    users = sorted(data.train)
    rng = random.Random(f"fraction-{seed}-{data.region}")
    keep = set(rng.sample(users, max(1, round(len(users) * fraction))))
    valid = [c for c in data.valid if c.user in keep] or data.valid[: max(1, len(keep))]
    return RegionData(data.region, {u: data.train[u] for u in users if u in keep}, valid,
                      data.test, data.catalogue, data.ordered, data.protocol, dict(data.extra))
