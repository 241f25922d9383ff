"""Classic recommenders fitted on one region's training histories.

They keep the benchmarks and the demo honest: a method that cannot beat popularity, ItemKNN or
EASE on a region is not worth its parameters there. Every baseline follows one shape:
``fit(train, catalogue) -> self`` and ``score(histories) -> float32 [n, len(catalogue)]``.
They are evaluated with the same protocol as the models (``regiontune.evaluation.evaluate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np
import scipy.sparse as sp
import torch

from regiontune.data.splits import EvalCase, RegionData
from regiontune.evaluation.evaluate import evaluate_scorer

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What every baseline provides."""

    def fit(self, train: dict[str, list[str]], catalogue: list[str]) -> Scorer: ...

    def score(self, histories: list[list[str]]) -> np.ndarray: ...


def _binary_matrix(rows: Iterable[Sequence[str]], index: dict[str, int], n_items: int,
                   ) -> sp.csr_matrix:
    """Rows of item lists -> binary CSR [len(rows), n_items]; unknown items are dropped."""
    indptr, cols = [0], []
    for items in rows:
        cols.extend({index[i] for i in items if i in index})
        indptr.append(len(cols))
    data = np.ones(len(cols), dtype=np.float32)
    return sp.csr_matrix((data, np.asarray(cols, dtype=np.int64), np.asarray(indptr)),
                         shape=(len(indptr) - 1, n_items))


class _Base:
    """Catalogue bookkeeping shared by the baselines."""

    catalogue: list[str]
    index: dict[str, int]

    def _set_catalogue(self, catalogue: list[str]) -> None:
        self.catalogue = list(catalogue)
        self.index = {item: j for j, item in enumerate(self.catalogue)}

    def _train_matrix(self, train: dict[str, list[str]]) -> sp.csr_matrix:
        return _binary_matrix(train.values(), self.index, len(self.catalogue))

    def _history_matrix(self, histories: list[list[str]]) -> sp.csr_matrix:
        return _binary_matrix(histories, self.index, len(self.catalogue))

    def _counts(self, train: dict[str, list[str]]) -> np.ndarray:
        # Repeated interactions count: popularity is about traffic, not distinct users.
        counts = np.zeros(len(self.catalogue), dtype=np.float64)
        for items in train.values():
            for item in items:
                j = self.index.get(item)
                if j is not None:
                    counts[j] += 1
        return counts


class Popularity(_Base):
    """Scores every item by its number of training interactions, whatever the history."""

    def fit(self, train: dict[str, list[str]], catalogue: list[str]) -> Popularity:
        self._set_catalogue(catalogue)
        self.counts = self._counts(train).astype(np.float32)
        return self

    def score(self, histories: list[list[str]]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class ItemKNN(_Base):
    """Item-item cosine similarity on the binary user-item matrix, top-k neighbours per item."""

    def __init__(self, k_neighbors: int = 100) -> None:
        self.k_neighbors = k_neighbors

    def fit(self, train: dict[str, list[str]], catalogue: list[str]) -> ItemKNN:
        self._set_catalogue(catalogue)
        x = self._train_matrix(train)
        co = (x.T @ x).tocsr()  # float32: halves memory on dense co-occurrence matrices
        norms = np.sqrt(co.diagonal())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        sim = (sp.diags(inv) @ co @ sp.diags(inv)).tocsr()
        sim = (sim - sp.diags(sim.diagonal())).tocsr()  # an item is not its own neighbour
        self.sim = _top_k_rows(sim, self.k_neighbors).astype(np.float32)
        counts = self._counts(train)
        top = counts.max() if counts.size else 0.0
        # Tiny tie-breaker: items with no similarity to the history still rank by popularity.
        self.tie_break = (1e-6 * counts / top if top > 0 else counts).astype(np.float32)
        return self

    def score(self, histories: list[list[str]]) -> np.ndarray:
        scores = (self._history_matrix(histories) @ self.sim).toarray()
        return (scores + self.tie_break).astype(np.float32)


def _top_k_rows(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest entries of every row (row i = neighbours of item i)."""
    matrix.eliminate_zeros()
    indptr, cols, vals = [0], [], []
    for i in range(matrix.shape[0]):
        start, end = matrix.indptr[i], matrix.indptr[i + 1]
        data, idx = matrix.data[start:end], matrix.indices[start:end]
        if len(data) > k:
            keep = np.argpartition(-data, k - 1)[:k] if k > 0 else np.empty(0, dtype=int)
            data, idx = data[keep], idx[keep]
        cols.append(idx)
        vals.append(data)
        indptr.append(indptr[-1] + len(data))
    return sp.csr_matrix((_concat(vals, np.float32), _concat(cols, np.int64),
                          np.asarray(indptr)), shape=matrix.shape)


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype=dtype)


class EASE(_Base):
    """Steck (2019): B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, diag(B) = 0."""

    def __init__(self, lam: float = 250.0) -> None:
        self.lam = lam

    def fit(self, train: dict[str, list[str]], catalogue: list[str]) -> EASE:
        self._set_catalogue(catalogue)
        return self._fit_gram(_gram(self._train_matrix(train)))

    def _fit_gram(self, gram: torch.Tensor) -> EASE:
        """Closed form from a precomputed Gram matrix (shared across lambdas when tuning)."""
        a = gram.clone()
        a.diagonal().add_(self.lam)
        # Plain LU inverse: lambda > 0 keeps the SPD matrix well conditioned, and on CPU it is
        # ~2x faster than torch.cholesky_inverse.
        p = torch.linalg.inv(a)
        del a
        # In place (column j divided by -P_jj) to avoid one more dense copy.
        p.div_(-torch.diagonal(p).clone())
        p.diagonal().zero_()
        self.b = p.numpy()
        return self

    def score(self, histories: list[list[str]]) -> np.ndarray:
        return np.asarray(self._history_matrix(histories) @ self.b, dtype=np.float32)


def _gram(x: sp.csr_matrix) -> torch.Tensor:
    """Dense float32 X^T X (10k items -> 400 MB)."""
    return torch.from_numpy((x.T @ x).toarray().astype(np.float32))


def tune_ease(train: dict[str, list[str]], catalogue: list[str], valid_cases: list[EvalCase],
              lambdas: Sequence[float] = (10, 50, 100, 200, 500, 1000, 2500),
              pool: Sequence[Sequence[str]] = (), pool_weight: float = 0.0,
              ) -> tuple[EASE, float, dict[float, float]]:
    """Fit EASE for each lambda, keep the one with the best validation NDCG@10.

    The Gram matrix is computed once; on equal NDCG the earlier lambda in ``lambdas`` wins.
    ``pool``: more histories (other regions'; items outside ``catalogue`` ignored) whose Gram
    matrix joins the region's at ``pool_weight`` (``X^T X + w * P^T P``): the co-occurrence of
    the catalogue's items elsewhere.
    """
    if not lambdas:
        raise ValueError("tune_ease needs at least one lambda")
    if pool_weight < 0:
        raise ValueError(f"pool_weight must be >= 0, got {pool_weight}")
    probe = EASE()
    probe._set_catalogue(catalogue)
    gram = _gram(probe._train_matrix(train))
    if pool and pool_weight > 0:
        gram.add_(_gram(probe._history_matrix(list(pool))), alpha=pool_weight)
    best, best_lam, results = None, None, {}
    for lam in lambdas:
        model = EASE(lam)
        model.catalogue, model.index = probe.catalogue, probe.index
        model._fit_gram(gram)
        ndcg = evaluate_scorer(model.score, catalogue, valid_cases)["ndcg@10"]
        results[lam] = ndcg
        log.debug("EASE lambda=%s valid ndcg@10=%.4f", lam, ndcg)
        if best is None or ndcg > results[best_lam]:
            best, best_lam = model, lam
        else:
            del model  # keep only one dense B alive besides the best
    log.info("EASE: lambda %s chosen on the hold-out (ndcg@10 %.4f)", best_lam, results[best_lam])
    return best, best_lam, results


def holdout_key(train: dict[str, list[str]], catalogue: Sequence[str],
                holdout: list[EvalCase]) -> str:
    """A digest of (training histories, catalogue, hold-out cases): what a tuned fit depends on."""
    text = json.dumps([list(catalogue), sorted(train.items()),
                       [(c.user, c.target, c.history) for c in holdout]])
    return hashlib.sha256(text.encode()).hexdigest()


_TUNED_EASE: dict[str, tuple[EASE, float, dict[float, float]]] = {}  # the last fit only


def tuned_ease(train: dict[str, list[str]], catalogue: list[str], holdout: list[EvalCase],
               pool: Sequence[Sequence[str]] = (), pool_weight: float = 0.0,
               ) -> tuple[EASE, float, dict[float, float]]:
    """:func:`tune_ease` with its default lambdas, keeping the last fit: the distillation
    teacher, the adapters' item-item part and every method trained on the same data (a
    benchmark's adapters) read one fit instead of tuning EASE again."""
    key = holdout_key(train, catalogue, holdout)
    if pool and pool_weight > 0:
        key += hashlib.sha256(json.dumps([pool_weight, [list(h) for h in pool]]).encode()
                              ).hexdigest()
    if key not in _TUNED_EASE:
        _TUNED_EASE.clear()  # one dense B at a time
        _TUNED_EASE[key] = tune_ease(train, catalogue, holdout, pool=pool,
                                     pool_weight=pool_weight)
    return _TUNED_EASE[key]


def tune_itemknn(train: dict[str, list[str]], catalogue: list[str], valid_cases: list[EvalCase],
                 neighbours: Sequence[int] = (20, 50, 100, 200, 500, 1000),
                 ) -> tuple[ItemKNN, int, dict[int, float]]:
    """Fit ItemKNN for each neighbourhood size, keep the best on the hold-out (the first on
    equal NDCG)."""
    if not neighbours:
        raise ValueError("tune_itemknn needs at least one neighbourhood size")
    best, best_k, results = None, None, {}
    for k in neighbours:
        model = ItemKNN(k).fit(train, catalogue)
        results[k] = evaluate_scorer(model.score, catalogue, valid_cases)["ndcg@10"]
        log.debug("ItemKNN k=%d valid ndcg@10=%.4f", k, results[k])
        if best is None or results[k] > results[best_k]:
            best, best_k = model, k
    log.info("ItemKNN: %d neighbours chosen on the hold-out (ndcg@10 %.4f)", best_k,
             results[best_k])
    return best, best_k, results


BASELINES: dict[str, Callable[[], Scorer]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
}


def fit_baseline(name: str, region_data: RegionData) -> tuple[Scorer, dict]:
    """Fit baseline ``name`` on a region's training histories; EASE's lambda and ItemKNN's
    neighbourhood size are tuned on the region's hold-out (``valid``), never on its test."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    if name == "ease":
        model, lam, _ = tune_ease(region_data.train, region_data.catalogue, region_data.valid)
        return model, {"lambda": lam}
    if name == "itemknn":
        model, k, _ = tune_itemknn(region_data.train, region_data.catalogue, region_data.valid)
        return model, {"k_neighbors": k}
    return BASELINES[name]().fit(region_data.train, region_data.catalogue), {}


__all__ = ["BASELINES", "EASE", "ItemKNN", "Popularity", "Scorer", "evaluate_scorer",
           "fit_baseline", "tune_ease", "tune_itemknn"]
