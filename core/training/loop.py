"""The one training loop: pretraining, region adaptation and full fine-tuning.

Shaped like accelerate's ``nlp_example.py``: ``Accelerator`` prepares model, optimizer and
scheduler; ``no_sync`` / ``backward`` / ``gather`` do the rest, so the same code runs on
CPU, one GPU, or several processes under ``accelerate launch`` / ``torchrun`` (DDP, gloo on
CPU). Every epoch ends with a validation NDCG@10 (early stopping keeps the best weights) and a
checkpoint (``save_state``) that ``resume=True`` continues from after a kill.

Each epoch reseeds every random source from ``(seed, epoch)``, so a resumed run walks exactly
the same path as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from regiontune.config import TrainConfig
from regiontune.model.batching import TrainCollator

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
STATE_FILE = "trainer_state.json"
LOG_FILE = "train_log.jsonl"
StepHook = Callable[[torch.nn.Module, int], None]  # called after optimizer.step, before zero_grad


@dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    epochs_run: int
    seconds: float
    stopped: str
    history: list[dict] = field(default_factory=list)


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """One accelerator per run; CPU when asked or when no CUDA device exists."""
    # Gradient accumulation is done by the loop itself (see _run_epoch), so that a window
    # never spans an epoch boundary and every checkpoint holds no half-accumulated gradient.
    return Accelerator(cpu=cfg.cpu)


def _optimizer(task: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms (decaying them only hurts); parameters whose
    name starts with a key of ``cfg.lr_scales`` train at that multiple of the learning rate."""
    named = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no trainable parameters")
    groups: dict[tuple[float, bool], list] = {}
    for name, param in named:
        scale = next((v for k, v in cfg.lr_scales.items() if name.startswith(k)), 1.0)
        groups.setdefault((scale, param.ndim >= 2), []).append(param)
    return torch.optim.AdamW([{"params": params, "lr": cfg.lr * scale,
                               "weight_decay": cfg.weight_decay if decay else 0.0}
                              for (scale, decay), params in groups.items()], lr=cfg.lr)


def _trainable_state(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}


def epoch_passes(n_sequences: int, cfg: TrainConfig, world: int = 1) -> int:
    """How many passes over the data one epoch makes: enough for ``cfg.min_epoch_steps``
    optimizer steps. A small region (200 users: one batch) would otherwise get one step per
    epoch, and 30 epochs of one step each leave an adapter where it started."""
    steps = max(1, math.ceil(n_sequences // world / cfg.batch_size))
    return max(1, math.ceil(cfg.min_epoch_steps / steps))


def epoch_parts(cfg: TrainConfig) -> int:
    """How many epochs one pass over the data is cut into (``cfg.epoch_parts``): each part is
    an epoch of its own -- a hold-out evaluation, a patience count, a checkpoint."""
    parts = cfg.epoch_parts
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"epoch_parts must be a whole number >= 1, not {parts!r}")
    return parts


def epoch_steps(n_sequences: int, cfg: TrainConfig, world: int = 1) -> int:
    """Optimizer steps in one epoch (every pass of it included; with ``cfg.epoch_parts``, the
    most one part of a pass holds)."""
    steps = math.ceil(n_sequences // world / cfg.batch_size)
    return math.ceil(steps * epoch_passes(n_sequences, cfg, world) / epoch_parts(cfg))


def _epoch_loader(sequences: list[list[int]], cfg: TrainConfig, collator: TrainCollator,
                  epoch: int, accelerator: Accelerator) -> DataLoader:
    """This process's shard of a seeded permutation; every rank gets the same batch count.

    Histories are bucketed by length (sorted inside windows of 50 batches, then the batches
    shuffled): most histories are short, and padding every batch to the longest one would
    spend most of the compute on padding. With ``cfg.epoch_parts`` > 1 an epoch is one part
    of a pass: the pass's batches (seeded by the pass) cut into that many consecutive runs,
    so the parts of a pass read every history once between them.
    """
    parts = epoch_parts(cfg)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch // parts)
    world, rank = accelerator.num_processes, accelerator.process_index
    window = cfg.batch_size * 50
    batches = []
    for _ in range(epoch_passes(len(sequences), cfg, world)):
        order = torch.randperm(len(sequences), generator=generator).tolist()
        per_rank = len(order) // world
        mine = order[rank * per_rank:(rank + 1) * per_rank]
        for start in range(0, len(mine), window):
            chunk = sorted(mine[start:start + window], key=lambda i: len(sequences[i]))
            batches += [chunk[i:i + cfg.batch_size]
                        for i in range(0, len(chunk), cfg.batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    part = epoch % parts
    shuffled = shuffled[part * len(shuffled) // parts:(part + 1) * len(shuffled) // parts]
    collator.rng.seed(cfg.seed * 1000 + epoch * 10 + rank)
    return DataLoader([[sequences[i] for i in batches[b]] for b in shuffled], batch_size=None,
                      shuffle=False, collate_fn=collator)


def _save_checkpoint(accelerator: Accelerator, out: Path, state: dict) -> None:
    """save_state into a temporary directory, then swap it in: a kill never leaves half."""
    tmp, final = out / f"{CHECKPOINT}.tmp", out / CHECKPOINT
    accelerator.save_state(str(tmp), safe_serialization=True)
    # every rank writes its own random states into tmp: none may still be writing (or about
    # to recreate tmp) when the main process moves it
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        old = out / f"{CHECKPOINT}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class _Log:
    """JSON-lines log written by the main process only."""

    def __init__(self, path: Path | None, enabled: bool) -> None:
        self.path = path if enabled else None

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def fit(task: torch.nn.Module, sequences: list[list[int]], evaluate: Callable[[], dict],
        cfg: TrainConfig, out_dir: str | Path | None = None, resume: bool = False,
        step_hooks: tuple[StepHook, ...] = (), accelerator: Accelerator | None = None,
        desc: str = "train", eval_at_start: bool = False,
        on_start: Callable[[], None] | None = None) -> FitResult:
    """Train ``task`` on token ``sequences``; ``evaluate()`` returns validation metrics.

    At the end the task holds the weights of the best validation epoch. ``eval_at_start``:
    the starting weights are a candidate too (epoch 0) -- an adapter starts as the backbone,
    so training can never end below the un-adapted backbone on the hold-out. ``on_start``
    runs once before the first epoch of a fresh run (after that evaluation: the weights it
    scored stay the first candidate), never on a resumed one.
    """
    accelerator = accelerator or make_accelerator(cfg)
    out = Path(out_dir) if out_dir else None
    if out is not None and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    world = accelerator.num_processes
    steps_per_epoch = epoch_steps(len(sequences), cfg, world)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(sequences)} training histories are too few for {world} processes")
    optimizer = _optimizer(task, cfg)
    total = max(1, cfg.epochs * math.ceil(steps_per_epoch / cfg.grad_accum) * world)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(total * cfg.warmup_ratio), total)
    model, optimizer, scheduler = accelerator.prepare(task, optimizer, scheduler)
    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": 0, "bad_epochs": 0,
             "seconds": 0.0}
    log = _Log(out / LOG_FILE if out else None, accelerator.is_main_process)
    resuming = resume and out is not None and (out / CHECKPOINT).is_dir()
    if resuming:
        accelerator.load_state(str(out / CHECKPOINT))
        state = json.loads((out / CHECKPOINT / STATE_FILE).read_text())
        logger.info("resumed from %s at epoch %d", out / CHECKPOINT, state["epoch"])
    elif out is not None and accelerator.is_main_process:
        _clear_run(out)  # a fresh run must not inherit an older run's best weights or log
    accelerator.wait_for_everyone()
    best = (_load_best(out, task) if resuming else None) or _trainable_state(task)
    if eval_at_start and not resuming:
        state["best"] = evaluate().get("ndcg@10", 0.0)
        logger.info("%s epoch 0 (start): valid ndcg@10 %.4f", desc, state["best"])
        # on disk too: a run resumed before any epoch beats the start must still end with it
        _save_best(out, best, accelerator)
    if on_start is not None and not resuming:
        on_start()
    collator = TrainCollator(task.max_len, task.causal, task.ordered, cfg.mask_prob, cfg.seed)
    history: list[dict] = []
    stopped = "epochs"
    start = time.perf_counter() - state["seconds"]
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        set_seed(cfg.seed * 1000 + epoch)
        loader = _epoch_loader(sequences, cfg, collator, epoch, accelerator)
        loss = _run_epoch(model, optimizer, scheduler, loader, accelerator, cfg, state,
                          step_hooks, f"{desc} {epoch + 1}/{cfg.epochs}")
        metrics = evaluate() if (epoch + 1) % cfg.eval_every == 0 else {}
        state["epoch"] = epoch + 1
        state["seconds"] = time.perf_counter() - start
        record = {"epoch": epoch + 1, "step": state["step"], "loss": loss,
                  "seconds": round(state["seconds"], 2), **{f"valid_{k}": v
                                                            for k, v in metrics.items()}}
        history.append(record)
        log.write(record)
        logger.info("%s epoch %d: %s", desc, epoch + 1, record)
        stopped = _early_stop(metrics, state, cfg, task, best, out, accelerator)
        if out is not None:
            _save_checkpoint(accelerator, out, state)
        if stopped != "continue":
            break
        if cfg.max_minutes is not None and state["seconds"] > cfg.max_minutes * 60:
            stopped = "time budget"
            break
    stopped = "epochs" if stopped == "continue" else stopped
    task.load_state_dict(best, strict=False)
    return FitResult(state["best"], state["best_epoch"], state["epoch"], state["seconds"],
                     stopped, history)


def _run_epoch(model, optimizer, scheduler, loader, accelerator, cfg, state, step_hooks,
               desc) -> float:
    model.train()
    total, count, seen = 0.0, 0, 0
    tick = time.perf_counter()
    n_batches = len(loader)
    # disable=None: tqdm draws only on a terminal, so logs redirected to a file stay quiet
    bar = tqdm(loader, desc=desc, leave=False,
               disable=None if cfg.progress and accelerator.is_local_main_process else True)
    for index, batch in enumerate(bar):
        # accumulate over cfg.grad_accum batches; the last window of an epoch may be shorter
        window_start = index - index % cfg.grad_accum
        window = min(cfg.grad_accum, n_batches - window_start)
        sync = index == window_start + window - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            loss = model(batch.tokens.to(accelerator.device),
                         batch.mask.to(accelerator.device),
                         batch.targets.to(accelerator.device))
            accelerator.backward(loss / window)
        if sync:
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            for hook in step_hooks:
                hook(accelerator.unwrap_model(model), state["step"])
            optimizer.zero_grad()
        mean_loss = accelerator.gather(loss.detach()[None]).mean().item()
        total, count = total + mean_loss, count + 1
        seen += len(batch.tokens) * accelerator.num_processes
        bar.set_postfix(loss=f"{mean_loss:.3f}", seq_s=f"{seen / (time.perf_counter() - tick):.0f}")
    return total / max(count, 1)


def _early_stop(metrics, state, cfg, task, best, out, accelerator) -> str:
    """Keep the best weights (memory and disk); stop after ``patience`` epochs without gain."""
    if not metrics:
        return "continue"
    value = metrics.get("ndcg@10", 0.0)
    if value > state["best"]:
        state.update(best=value, best_epoch=state["epoch"], bad_epochs=0)
        best.update(_trainable_state(task))
        _save_best(out, best, accelerator)
        return "continue"
    state["bad_epochs"] += 1
    return "early stopping" if state["bad_epochs"] >= cfg.patience else "continue"


def _save_best(out: Path | None, best: dict[str, torch.Tensor], accelerator) -> None:
    """The best weights so far to ``out/best.safetensors`` (atomically), for a resumed run."""
    if out is not None and accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in best.items()}, str(out / "best.tmp"))
        os.replace(out / "best.tmp", out / "best.safetensors")


def _clear_run(out: Path) -> None:
    shutil.rmtree(out / CHECKPOINT, ignore_errors=True)
    for name in (LOG_FILE, "best.safetensors"):
        (out / name).unlink(missing_ok=True)


def _load_best(out: Path | None, task: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    if out is None or not (out / "best.safetensors").is_file():
        return None
    from safetensors.torch import load_file

    saved = load_file(str(out / "best.safetensors"))
    current = _trainable_state(task)
    return saved if saved.keys() == current.keys() else None
