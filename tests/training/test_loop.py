"""The one training loop: learning, early stopping, resume, logs, sampled softmax, accumulation,
and a two-process data-parallel run (gloo on CPU)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from regiontune.config import TrainConfig
from regiontune.evaluation.evaluate import evaluate_task
from regiontune.model.objective import item_loss
from regiontune.model.recmodel import build_backbone
from regiontune.model.task import BackboneTask
from regiontune.model.vocab import ItemVocab
from regiontune.training.loop import CHECKPOINT, LOG_FILE, fit

ROOT = Path(__file__).resolve().parents[2]
CFG = TrainConfig(epochs=4, batch_size=16, lr=5e-3, patience=10, progress=False, seed=3)
SIZES = dict(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_len=12,
             dropout=0.1)


class Crash(RuntimeError):
    """Stands in for a kill in the middle of an epoch."""


@pytest.fixture(scope="module")
def region(tiny_regions):
    return tiny_regions["north"]


def _task(region, arch: str = "llama", seed: int = 0, num_negatives: int = 0) -> BackboneTask:
    torch.manual_seed(seed)
    vocab = ItemVocab(region.catalogue)
    model = build_backbone(len(vocab), arch=arch, **SIZES)
    return BackboneTask(model, vocab, num_negatives)


def _sequences(task: BackboneTask, region) -> list[list[int]]:
    return [s for s in (task.vocab.encode(h) for h in region.train.values()) if len(s) >= 2]


def _weights(task) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in task.named_parameters() if p.requires_grad}


def _by_epoch(out: Path):
    """A validation metric that improves every epoch (counts logged epochs, so it survives a
    resume): the final weights are then the last epoch's, which makes resume checks strict."""
    def evaluate() -> dict:
        log = out / LOG_FILE
        done = len(log.read_text().splitlines()) if log.exists() else 0
        return {"ndcg@10": (done + 1) / 100}
    return evaluate


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_backbone_task_learns(region, tmp_path, arch):
    task = _task(region, arch)
    cfg = replace(CFG, epochs=5, lr=1e-2)
    result = fit(task, _sequences(task, region),
                 lambda: evaluate_task(task, region.catalogue, region.valid), cfg, tmp_path)
    losses = [r["loss"] for r in result.history]
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.05, losses
    assert result.epochs_run == 5 and result.stopped == "epochs"
    assert 1 <= result.best_epoch <= 5 and 0 <= result.best_metric <= 1


def test_early_stopping_restores_best_epoch(region, tmp_path):
    task = _task(region)
    metrics = iter([0.10, 0.30, 0.20, 0.25, 0.15, 0.40, 0.50, 0.60])
    snapshots = []

    def evaluate() -> dict:  # runs after each epoch's training: record that epoch's weights
        snapshots.append(_weights(task))
        return {"ndcg@10": next(metrics)}

    cfg = replace(CFG, epochs=8, patience=3)
    result = fit(task, _sequences(task, region), evaluate, cfg, tmp_path)
    # best at epoch 2; epochs 3, 4, 5 bring no gain -> stop after epoch 5
    assert result.stopped == "early stopping"
    assert result.epochs_run == 5 and len(snapshots) == 5 and len(result.history) == 5
    assert result.best_epoch == 2 and result.best_metric == pytest.approx(0.30)
    final = _weights(task)
    assert all(torch.equal(final[k], snapshots[1][k]) for k in final)
    assert not all(torch.equal(final[k], snapshots[-1][k]) for k in final)
    # the best weights are on disk too
    best = load_file(str(tmp_path / "best.safetensors"))
    assert best.keys() == final.keys() and all(torch.equal(best[k], final[k]) for k in best)


def test_json_lines_log(region, tmp_path):
    task = _task(region)
    fit(task, _sequences(task, region),
        lambda: evaluate_task(task, region.catalogue, region.valid), replace(CFG, epochs=3),
        tmp_path)
    records = _records(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for r in records:
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert {"valid_ndcg@10", "valid_hr@10", "step", "seconds"} <= r.keys()
        assert 0 <= r["valid_ndcg@10"] <= 1
    assert records[-1]["step"] > records[0]["step"] > 0
    # a fresh (non-resumed) run in the same directory starts a new log
    fit(task, _sequences(task, region), _by_epoch(tmp_path), replace(CFG, epochs=1), tmp_path)
    assert [r["epoch"] for r in _records(tmp_path)] == [1]



def _odd_batch_size(n: int) -> int:
    """A batch size giving an odd number of batches per epoch (3 or more)."""
    return next(b for b in range(8, n) if math.ceil(n / b) % 2 and math.ceil(n / b) >= 3)


@pytest.mark.parametrize("grad_accum,crash_epoch", [
    (1, 3),
    pytest.param(2, 2, id="accum2-odd-batches"),
])
def test_resume_after_interruption_matches_uninterrupted_run(region, tmp_path, grad_accum,
                                                             crash_epoch):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    task_a = _task(region, seed=11)
    seqs = _sequences(task_a, region)
    cfg = replace(CFG, epochs=4, grad_accum=grad_accum)
    if grad_accum > 1:
        cfg = replace(cfg, batch_size=_odd_batch_size(len(seqs)))
    result_a = fit(task_a, seqs, _by_epoch(a_dir), cfg, a_dir)
    assert result_a.best_epoch == 4

    steps_before_crash = _records(a_dir)[crash_epoch - 2]["step"]

    def crash(model, step):  # at the first optimizer step of epoch ``crash_epoch``
        if step == steps_before_crash + 1:
            raise Crash("killed")

    task_b = _task(region, seed=11)
    with pytest.raises(Crash):
        fit(task_b, seqs, _by_epoch(b_dir), cfg, b_dir, step_hooks=(crash,))
    state = json.loads((b_dir / CHECKPOINT / "trainer_state.json").read_text())
    assert state["epoch"] == crash_epoch - 1
    assert len(_records(b_dir)) == crash_epoch - 1

    task_b = _task(region, seed=11)  # a new process: the same fresh model, then resume
    result_b = fit(task_b, seqs, _by_epoch(b_dir), cfg, b_dir, resume=True)
    assert result_b.epochs_run == 4 and result_b.best_epoch == 4
    assert [r["epoch"] for r in result_b.history] == list(range(crash_epoch, 5))

    wa, wb = _weights(task_a), _weights(task_b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"resumed run differs in {different}"
    la, lb = _records(a_dir), _records(b_dir)
    assert [r["epoch"] for r in lb] == [1, 2, 3, 4]
    assert [r["step"] for r in la] == [r["step"] for r in lb]
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], abs=1e-6)


def test_resume_of_a_finished_run_trains_no_more(region, tmp_path):
    task = _task(region, seed=5)
    seqs = _sequences(task, region)
    fit(task, seqs, _by_epoch(tmp_path), replace(CFG, epochs=2), tmp_path)
    done = _weights(task)
    again = _task(region, seed=5)
    result = fit(again, seqs, _by_epoch(tmp_path), replace(CFG, epochs=2), tmp_path,
                 resume=True)
    assert result.epochs_run == 2 and result.history == []
    assert all(torch.equal(done[k], v) for k, v in _weights(again).items())


def test_sampled_softmax(region, tmp_path):
    task = _task(region, num_negatives=8)
    result = fit(task, _sequences(task, region), _by_epoch(tmp_path), replace(CFG, epochs=2),
                 tmp_path)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    # the sampled loss is a softmax over 1 + 8 logits: far below a full softmax over the items
    assert result.history[0]["loss"] < math.log(len(region.catalogue))


def test_sampled_softmax_loss_masks_accidental_hits():
    torch.manual_seed(0)
    hidden, table, bias = torch.randn(2, 3, 4), torch.randn(5, 4), torch.zeros(5)
    targets = torch.tensor([[0, 2, 3], [4, 5, 6]])
    full = item_loss(hidden, targets, table, bias, 0)
    assert torch.isfinite(full)
    assert torch.equal(item_loss(hidden, targets, table, bias, 5), full)  # >= items: full
    sampled = item_loss(hidden, targets, table, bias, 3)
    assert torch.isfinite(sampled) and sampled >= 0


def test_gradient_accumulation(region, tmp_path):
    task = _task(region)
    before = _weights(task)
    seqs = _sequences(task, region)
    cfg = replace(CFG, epochs=2, grad_accum=2)
    result = fit(task, seqs, _by_epoch(tmp_path), cfg, tmp_path)
    batches = math.ceil(len(seqs) / cfg.batch_size)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    # one optimizer step per two batches
    assert result.history[-1]["step"] == (2 * batches) // 2
    after = _weights(task)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_no_trainable_parameters_is_an_error(region):
    task = _task(region)
    for p in task.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        fit(task, _sequences(task, region), lambda: {}, CFG)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]



@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_every_trainable_parameter_gets_a_gradient(region, arch):
    """DDP requires it: a trainable parameter without gradient breaks data-parallel runs."""
    task = _task(region, arch)
    seqs = _sequences(task, region)[:8]
    from regiontune.model.batching import TrainCollator

    batch = TrainCollator(task.max_len, task.causal, task.ordered)(seqs)
    task(batch.tokens, batch.mask, batch.targets).backward()
    no_grad = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """One two-process run of tests/scripts/ddp_train.py."""
    out = tmp_path_factory.mktemp("ddp") / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "tests" / "scripts" / "ddp_train.py"), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _check_ddp(out: Path) -> None:
    errors = sorted(out.glob("error*.txt"))
    assert not errors, errors[0].read_text()[-1500:]
    ranks = [load_file(str(out / f"rank{n}.safetensors")) for n in (0, 1)]
    initial = load_file(str(out / "initial.safetensors"))
    info = json.loads((out / "info.json").read_text())
    assert info["num_processes"] == 2 and info["epochs_run"] == 2
    # each rank trains on its half: ceil(half / batch) steps per epoch, two epochs
    assert info["steps"] == 2 * math.ceil(info["sequences"] // 2 / 8)
    assert ranks[0].keys() == ranks[1].keys() == initial.keys() and ranks[0]
    unequal = [k for k in ranks[0] if not torch.equal(ranks[0][k], ranks[1][k])]
    assert not unequal, f"ranks disagree on {unequal}"
    assert any(not torch.equal(ranks[0][k], initial[k]) for k in initial)


@pytest.mark.slow
def test_two_process_data_parallel(ddp_run):
    _check_ddp(ddp_run)


def test_lr_scales_give_parameter_groups_their_own_rate():
    from regiontune.training.loop import _optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    cfg = TrainConfig(lr=0.01, weight_decay=0.1, lr_scales={"1.": 10.0})
    groups = _optimizer(model, cfg).param_groups
    by_lr = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert by_lr == {(0.01, 0.1): 9, (0.01, 0.0): 3, (0.1, 0.1): 6, (0.1, 0.0): 2}


def test_small_data_epochs_repeat_the_data_up_to_min_epoch_steps(region):
    task = _task(region)
    sequences = _sequences(task, region)[:40]  # 40 histories, batch 16: 3 steps a pass
    plain = fit(task, sequences, lambda: {"ndcg@10": 0.0},
                replace(CFG, epochs=2, patience=10))
    assert [h["step"] for h in plain.history] == [3, 6]
    task = _task(region)
    longer = fit(task, sequences, lambda: {"ndcg@10": 0.0},
                 replace(CFG, epochs=2, patience=10, min_epoch_steps=8))
    assert [h["step"] for h in longer.history] == [9, 18]  # 3 passes of 3 steps an epoch
    # data big enough for the minimum: unchanged
    task = _task(region)
    same = fit(task, sequences, lambda: {"ndcg@10": 0.0},
               replace(CFG, epochs=1, patience=10, min_epoch_steps=3))
    assert [h["step"] for h in same.history] == [3]


def test_epoch_parts_cut_each_pass_into_evaluated_epochs(region):
    """``epoch_parts``: a pass over the data is cut into that many epochs, each evaluated (so
    the patience counts them); the parts of a pass read every history once between them, and
    the batches are the one-part run's, in the same order."""
    from regiontune.model.batching import TrainCollator
    from regiontune.training.loop import _epoch_loader, make_accelerator

    task = _task(region)
    sequences = _sequences(task, region)[:40]  # 40 histories, batch 16: 3 steps a pass
    calls = []
    whole = fit(task, sequences, lambda: calls.append(1) or {"ndcg@10": 0.0},
                replace(CFG, epochs=2, patience=10))
    assert [h["step"] for h in whole.history] == [3, 6] and len(calls) == 2
    task, calls = _task(region), []
    cut = fit(task, sequences, lambda: calls.append(1) or {"ndcg@10": 0.0},
              replace(CFG, epochs=4, patience=10, epoch_parts=2))
    # two passes of 3 steps, evaluated twice each: after 1, 3, 4 and 6 steps
    assert [h["step"] for h in cut.history] == [1, 3, 4, 6] and len(calls) == 4
    # patience counts the parts: 2 evaluations without gain stop after one pass
    task = _task(region)
    values = iter([0.5, 0.4, 0.3, 0.9])
    stopped = fit(task, sequences, lambda: {"ndcg@10": next(values)},
                  replace(CFG, epochs=4, patience=2, epoch_parts=2))
    assert stopped.epochs_run == 3 and stopped.best_epoch == 1
    # the parts of a pass: the whole pass's batches, in order, every history once
    accelerator = make_accelerator(CFG)

    def batches(cfg, epoch):
        collator = TrainCollator(task.max_len, task.causal, task.ordered, 0.0, cfg.seed)
        return [b.tokens.tolist() for b in _epoch_loader(sequences, cfg, collator, epoch,
                                                          accelerator)]
    one = batches(CFG, 1)
    two = replace(CFG, epoch_parts=2)
    assert batches(two, 2) + batches(two, 3) == one
    with pytest.raises(ValueError, match="epoch_parts must be a whole number"):
        fit(_task(region), sequences, lambda: {}, replace(CFG, epoch_parts=0))


def test_eval_at_start_keeps_the_starting_weights_when_training_only_hurts(region):
    task = _task(region)
    start = _weights(task)
    metrics = iter([0.50, 0.40, 0.45, 0.30])  # epoch 0 (start), then epochs 1-3

    result = fit(task, _sequences(task, region), lambda: {"ndcg@10": next(metrics)},
                 replace(CFG, epochs=3, patience=5), eval_at_start=True)
    assert result.best_epoch == 0 and result.best_metric == pytest.approx(0.50)
    assert result.epochs_run == 3
    assert all(torch.equal(v, start[k]) for k, v in _weights(task).items())


def test_on_start_moves_the_weights_after_the_start_is_scored(region, tmp_path):
    """``on_start`` runs after the start's evaluation: the scored weights stay the candidate
    (restored when no epoch beats them), and training starts from the moved ones."""
    task = _task(region)
    start = _weights(task)
    seen = []

    def zero_out():
        seen.append(1)
        with torch.no_grad():
            for p in task.parameters():
                if p.requires_grad:
                    p.zero_()

    def evaluate():
        # the start is scored before on_start moved it; later epochs see moved weights
        weights = _weights(task)
        moved = not all(torch.equal(v, start[k]) for k, v in weights.items())
        return {"ndcg@10": 0.3 if moved else 0.5}

    result = fit(task, _sequences(task, region), evaluate, replace(CFG, epochs=2, patience=5),
                 out_dir=tmp_path, eval_at_start=True, on_start=zero_out)
    assert seen == [1] and result.best_epoch == 0 and result.best_metric == 0.5
    assert all(torch.equal(v, start[k]) for k, v in _weights(task).items())
    # a resumed run continues from its checkpoint: on_start is not run again, and with no
    # epoch better than the start it still ends with the start's weights (kept on disk)
    again = fit(task, _sequences(task, region), evaluate, replace(CFG, epochs=3, patience=5),
                out_dir=tmp_path, resume=True, eval_at_start=True, on_start=zero_out)
    assert seen == [1] and again.epochs_run == 3 and again.best_epoch == 0
    assert all(torch.equal(v, start[k]) for k, v in _weights(task).items())
