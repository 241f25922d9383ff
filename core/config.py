"""Configuration dataclasses: loadable from YAML, overridable from the command line.

Every artefact (backbone, adapter, benchmark result) stores the resolved configuration that
produced it, so a run can always be reproduced from its output directory alone.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


@dataclass
class DataConfig:
    """Where interactions come from and how each region is split."""

    recipe: str = "synthetic"  # synthetic | wsdm22-xmrec | ml-100k | files
    data_dir: str | None = None  # directory of a recipe's files
    files: list[str] = field(default_factory=list)  # recipe "files": paths (one per region allowed)
    columns: dict[str, str] = field(default_factory=dict)  # our name -> column name in the file
    regions: list[str] | None = None  # keep only these regions (None: all)
    duplicates: str = "keep"  # keep | drop | error (kept or dropped ones: a warning)
    sep: str | None = None  # text files' delimiter: tab, comma, semicolon, space; None: sniffed
    time_format: str | None = None  # strptime format of timestamps; None: epoch or ISO-8601
    # evaluation cases: full-ranking over the region catalogue, or "sampled": the target among
    # `negatives` items the user never had, drawn uniformly or by training popularity (seeded)
    protocol: str = "full-ranking"  # full-ranking | sampled | candidates
    negatives: int = 99
    negatives_from: str = "uniform"  # uniform | popularity
    # protocol "candidates" (set by this): a file of user,item,candidates rows that replace the
    # test cases (core/data/candidates.py); not for wsdm22-xmrec
    candidates: str | None = None
    seed: int = 0
    max_valid_users: int = 2000  # early-stopping users per region (random hold-out)
    min_history: int = 3  # users with fewer interactions are not held out
    official_valid: bool = True  # wsdm22-xmrec: report on the official 100-candidate validation
    synthetic_scale: float = 1.0  # synthetic recipe: multiplies every region's user count
    # item text (core/data/itemtext.py): a side file of item,text rows for the files recipe
    # (or a "text" column of the interaction files: --columns text=YOUR_COLUMN); ml-100k and
    # synthetic bring their own
    item_text: str | None = None


@dataclass
class ModelConfig:
    """The backbone's architecture; items are its tokens."""

    arch: str = "llama"  # gpt2 | llama | bert
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 256
    max_len: int = 50
    dropout: float = 0.2
    # histories without timestamps are sets: a causal backbone reads a user in this many
    # orders of the set and averages (4 beat 1 on the WSDM t1 hold-out by 0.002 NDCG@10 on
    # two seeds: benchmarks/results/set_models.md); 1 reads the canonical order only
    set_orders: int = 4
    # items as text: embedding = id row + a learned projection of the frozen encoder's text
    # vector (core/model/textenc.py); items with text and no interactions get the text part
    item_text: bool = False
    text_encoder: str | None = None  # a local sentence-transformers/BERT folder; None: MiniLM
    text_id_dropout: float = 0.0  # training: share of text items whose id row is dropped
    # training: weight of a second next-item loss over the text-only embeddings (chosen on the
    # ml-100k hold-out: docs/architecture.md, items as text); read only with item_text
    text_loss: float = 0.1
    # what the text-only target competes with in that loss: "text" (the other items' text-only
    # embeddings) or "warm" (their id+text rows, as a never-trained item does when served);
    # warm at 0.1 beat text at 1 on the hold-out (benchmarks/results/cold_text_choice.md)
    text_loss_negatives: str = "warm"


# Adapters train at 3e-3: on the WSDM t1 hold-out (new-region backbone, all data) LoRA scored
# 0.652 against 0.643 at 1e-3 (benchmarks/results/choices.md). 1e-3 was chosen before the data
# held both training files, when 5e-3 sank never-trained positives to NDCG 0.0 (a study since
# removed: git history, benchmarks/cold_items.py).
ADAPT_LR = 3e-3


@dataclass
class TrainConfig:
    """The one training loop's settings (pretraining, adaptation, full fine-tuning)."""

    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3  # pretraining and scratch; `regiontune adapt` defaults to ADAPT_LR
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    grad_accum: int = 1
    patience: int = 5  # epochs without validation NDCG@10 gain before stopping
    # an epoch repeats the data until it holds this many optimizer steps (small regions)
    min_epoch_steps: int = 0
    eval_every: int = 1  # epochs
    # one pass over the data is cut into this many epochs (each evaluated, patience counted in
    # them, checkpointed; the schedule spans `epochs` of them): finer early stopping. Set for
    # refreshes by AdaptConfig.refresh_evals_per_pass
    epoch_parts: int = 1
    num_negatives: int = 0  # 0: full softmax; >0: sampled softmax with this many negatives
    mask_prob: float = 0.2  # bert family: Cloze masking probability
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget; stops cleanly at an epoch end
    # learning-rate multipliers by parameter-name prefix, e.g. {"item_side.": 10}
    lr_scales: dict[str, float] = field(default_factory=dict)
    cpu: bool = False  # force CPU even where CUDA exists
    progress: bool = True  # progress bars, drawn only when stderr is a terminal


@dataclass
class AdaptConfig:
    """Per-region adaptation: method, its options, the item-side part, data fraction."""

    method: str = "lora"
    region: str = ""
    fraction: float = 1.0  # share of the region's training users (seeded)
    options: dict[str, Any] = field(default_factory=dict)  # method options (r, alpha, targets...)
    item_rank: int = -1  # rank of the item-embedding delta; 0 disables it; -1: auto (below)
    item_bias: bool = True
    # auto rank: the largest (at most max_item_rank) keeping the adapter's weights within
    # this share of the backbone's; the item table dominates a recommender's weights
    item_budget: float = 0.05
    # the cap: rank 32 beat 16 on WSDM t1 by the early-stopping hold-out (0.523 vs 0.506,
    # LoRA, float16, seed 0); past hidden/4 the rank buys little and costs training time
    max_item_rank: int = 32
    # Catalogue items with no training interaction in the region (new arrivals, items only a
    # candidate list names). False: left out of the training softmax, so training cannot push
    # them down below the level the backbone gives them; their item-side rows stay as
    # initialised. True: negatives at every step (they sink to the bottom).
    unseen_as_negatives: bool = False
    # after training, add one score offset to those items' bias, fitted by likelihood on the
    # early-stopping hold-out (core/unseen.py): their level is then the data's, not arbitrary.
    # Chosen over both alternatives on WSDM (docs/architecture.md; benchmarks/unseen_items.py)
    calibrate_unseen: bool = True
    # item text: the never-trained items scored by their text alone get, after that offset and
    # the item-item part, a bias lift and a scaled text prior (predicted popularity), the pair
    # that ranks the hold-out's such targets best while costing its other targets at most
    # this share of their NDCG@10 (core/training/unseen.py: lift_text_items); 0: none.
    # Likelihood calibration alone ranks them almost never into a top 10. 0.10: the largest
    # of 2% / 5% / 10% whose hold-out warm NDCG@10 stays within 2% of the id-only model's on
    # ml-100k, 3 seeds (benchmarks/results/cold_text.md); 0.02 keeps more of the warm gain
    text_lift_budget: float = 0.10
    # dtype of the saved adapter weights. "auto": float16 for adapters (half the file of
    # float32, so the auto item rank doubles within the same budget; measured on WSDM t2,
    # where the budget binds: benchmarks/results/rank_sweep.md), float32 for full
    # fine-tuning. Trained weights are rounded to it when training ends, so the saved
    # adapter scores exactly as the evaluated one.
    weights_dtype: str = "auto"
    # distillation from a target-only EASE teacher (core/distill.py): the teacher's share of
    # the training target; 0 turns it off. Training only: the saved adapter is unchanged.
    distill: float = 0.0
    # the starting point (the un-adapted backbone) competes with every epoch on the hold-out:
    # an adapter never ends below the backbone it adapts
    start_as_candidate: bool = True
    # the item-item part (adapters/item_item.py): each catalogue item's strongest EASE
    # neighbours, blended into the adapter's scores after training with a weight chosen on
    # the hold-out (0 drops it). -1: as many neighbours as the budget's share allows (below);
    # 0: off; k > 0: exactly k (the budget is then not checked).
    neighbours: int = -1
    # the auto count: this share of the item budget left after the adapter's own weights, at
    # most max_neighbours (the item rank gets the rest). On WSDM t1 the blend with the top 8
    # neighbours reached 0.695 and with 16 0.699 against 0.700 with EASE's whole B
    # (benchmarks/results/item_item.md), so a few dozen carry it
    neighbours_share: float = 0.5
    max_neighbours: int = 32
    # EASE inverts an [n, n] matrix: catalogues larger than this get no item-item part
    max_neighbour_catalogue: int = 20000
    # the item-item part's EASE also reads the backbone's other pretraining regions'
    # histories at this weight (X^T X + w * P^T P over the region's catalogue;
    # training/pool.py); 0: the region's own alone. Without that data (a backbone from a hub)
    # the part falls back to the region's own, with a warning. Chosen on the hold-out of
    # every WSDM target and setting (benchmarks/results/neighbour_pool.md)
    neighbour_pool: float = 0.5
    # refresh only (--init-from): this seeded share of the parent's training histories (its
    # users) is trained again with the new data, against forgetting; 0 turns it off. The
    # parent's data is reloaded from the configuration its region.json records
    # (training/replay.py).
    replay: float = 0.0
    # refresh only (--init-from): the refresh trains at this multiple of train.lr (its
    # optimizer and schedule restart from a trained adapter, not from the identity), and
    # stops early after refresh_patience epochs (hold-out evaluations: see
    # refresh_evals_per_pass) without a hold-out gain (None: train.patience).
    # Chosen on the refreshes' hold-out (benchmarks/results/refresh_choice.md, ml-100k, 5
    # seeds): lr multiples 0.5-0.1 lost (0.061-0.053 against 0.063); patience 6 against the
    # adapters' 3 won (0.067): a restarted schedule first dips below the parent. With context
    # (refresh_context, below; refresh_context_choice.md, 10 seeds, hold-out read as served)
    # multiple 2 won over 1 and 4 (0.0760 against 0.0744 and 0.0643)
    refresh_lr: float = 2.0
    refresh_patience: int | None = 6
    # refresh only: at most this many epochs (passes over the data; the cosine schedule spans
    # them; None: train.epochs). With context at multiple 2 (refresh_cap_choice.md, 10 seeds,
    # hold-out read as served) caps 6 and 5 lost (0.0669, 0.0654; 0.0631 at multiple 3)
    # against none (0.0760)
    refresh_epochs: int | None = None
    # refresh only: each user's earlier items (the parent's and its ancestors' data, reloaded
    # from the configurations their region.json files record) are read ahead of the new ones,
    # the loss taken on the new items alone unless refresh_context_loss (below; off by
    # default) makes them targets too (training/context.py); the hold-out
    # and test cases read them too. An error when that data is gone (false: the new data
    # alone). Chosen on the refreshes' hold-out, every history read as served
    # (benchmarks/results/refresh_context_choice.md, ml-100k, 10 seeds, 30 refreshes):
    # 0.0744 against 0.0718 without; at patience 3 with context 0.0709
    refresh_context: bool = True
    # refresh only, with context: the earlier items are training targets too (the loss on the
    # whole window the model reads, not on the new items alone); the tokens read are the same.
    # On the refreshes' hold-out read as served (benchmarks/results/refresh_shrink_choice.md,
    # ml-100k, 10 seeds, shrink 0.5) it won with equal periods (0.0783 against 0.0769) and
    # lost with small increments (0.0886 against 0.0894): over both chains' 60 refreshes a
    # tie (0.0834 against 0.0832), so off
    refresh_context_loss: bool = False
    # refresh only: the hold-out is evaluated this many times per pass over the new data
    # (train.epoch_parts; refresh_patience then counts these evaluations, refresh_epochs and
    # the cosine schedule still span passes). None: train.epoch_parts (1). Studied on the
    # refreshes' hold-out read as served (benchmarks/results/refresh_evals_choice.md, ml-100k,
    # 10 seeds, context, multiple 2): two a pass at patience 8 / 6 / 4 (4 / 3 / 2 passes of
    # data) 0.0749 / 0.0724 / 0.0665 against 0.0760 at one a pass, patience 6: kept at one
    refresh_evals_per_pass: int | None = None
    # refresh only: after the parent is scored on the hold-out as the first candidate, the
    # refresh trains from its trainable weights shrunk toward a fresh adapter's, w = s * parent
    # + (1 - s) * fresh, and the item side's per-item deltas and biases scaled by s ("shrink
    # and perturb", Ash & Adams 2020: a warm-started network generalises worse than a fresh
    # one). 1: the parent's weights exactly. Never worse than the parent on the hold-out: the
    # parent stays the candidate to beat. Chosen on the refreshes' hold-out read as served
    # (benchmarks/results/refresh_shrink_choice.md, ml-100k, 10 seeds, 30 refreshes): 0.5
    # 0.0769 against 0.0758 unshrunk (paired +0.0011 +- 0.0010, just past the 0.001 tie);
    # 0.25 tied 0.5 (0.0769)
    refresh_shrink: float = 0.5


def _coerce(value: str, target_type: Any) -> Any:
    """Parse a CLI override string into the type of the field it sets."""
    text = str(target_type)
    if value.lower() in ("none", "null") and "None" in text:
        return None
    if "bool" in text:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{value!r} is not a boolean; use true or false")
    if "int" in text and "float" not in text:
        return int(value)
    if "float" in text:
        return float(value)
    if "list" in text:
        return [v for v in value.split(",") if v]
    if "dict" in text:
        return json.loads(value)
    return value


def apply_overrides(obj: T, overrides: list[str] | None) -> T:
    """Apply ``key=value`` strings (e.g. ``lr=1e-3``) to a dataclass, with type coercion."""
    known = {f.name: f for f in fields(obj)}  # type: ignore[arg-type]
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in known:
            raise ValueError(
                f"unknown setting {key!r} for {type(obj).__name__}; known: {', '.join(known)}"
            )
        try:
            setattr(obj, key, _coerce(value.strip(), known[key].type))
        except ValueError as err:
            raise ValueError(f"setting {key!r}: {err}") from err
    return obj


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Build a dataclass from a dict, refusing unknown keys (typos should not pass silently)."""
    data = dict(data or {})
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown keys for {cls.__name__}: {unknown}; known: {sorted(names)}")
    # YAML reads "1e-3" (no dot) as a string: coerce scalars to the field's declared type
    types = {f.name: str(f.type) for f in fields(cls)}  # type: ignore[arg-type]
    for key, value in data.items():
        if isinstance(value, str) and any(t in types[key] for t in ("int", "float", "bool")):
            try:
                data[key] = _coerce(value, types[key])
            except ValueError as err:
                raise ValueError(f"{cls.__name__}.{key}: {err}") from err
    return cls(**data)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into sections ``data``, ``model``, ``train``, ``adapt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections")
    return loaded


def to_dict(*configs: Any) -> dict[str, Any]:
    """Resolved configuration as a plain dict, keyed by section name."""
    out: dict[str, Any] = {}
    for cfg in configs:
        name = type(cfg).__name__.replace("Config", "").lower()
        out[name] = asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return out
