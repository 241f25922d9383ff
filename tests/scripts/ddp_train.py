"""Two-process data-parallel training on CPU (gloo), driven by tests/test_train.py.

Run as ``ACCELERATE_USE_CPU=1 python -m torch.distributed.run --nproc_per_node 2
tests/scripts/ddp_train.py OUT``. Every rank builds the same tiny synthetic data and backbone
(fixed seed), trains it with :func:`regiontune.training.loop.fit` under ``Accelerator(cpu=True)``
and writes its final trainable weights to ``OUT/rank{N}.safetensors``; rank 0 also writes
``OUT/initial.safetensors`` and ``OUT/info.json``.
A run that raises writes ``error{N}.txt`` instead of weights, so the test shows the cause.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from regiontune.config import DataConfig, TrainConfig
from regiontune.data.recipes import load_regions
from regiontune.model.recmodel import build_backbone
from regiontune.model.task import BackboneTask
from regiontune.model.vocab import ItemVocab
from regiontune.training.loop import fit


def trainable(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone().contiguous() for n, p in task.named_parameters()
            if p.requires_grad}


def run(out: Path, accelerator: Accelerator, sequences: list[list[int]], vocab: ItemVocab
        ) -> None:
    torch.manual_seed(0)
    model = build_backbone(len(vocab), arch="llama", hidden_size=16, num_layers=1, num_heads=2,
                           intermediate_size=32, max_len=12, dropout=0.1)
    task = BackboneTask(model, vocab)
    initial = trainable(task)
    calls = []

    def evaluate() -> dict:  # improves every epoch: the final weights are the last epoch's
        calls.append(1)
        return {"ndcg@10": len(calls) / 10}

    cfg = TrainConfig(epochs=2, batch_size=8, lr=5e-3, patience=5, progress=False, cpu=True,
                      seed=2)
    rank = accelerator.process_index
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        result = fit(task, sequences, evaluate, cfg, out / "work", accelerator=accelerator)
    except RuntimeError:
        (out / f"error{rank}.txt").write_text(traceback.format_exc())
        return
    save_file(trainable(task), str(out / f"rank{rank}.safetensors"))
    if accelerator.is_main_process:
        save_file(initial, str(out / "initial.safetensors"))
        (out / "info.json").write_text(json.dumps({
            "num_processes": accelerator.num_processes, "epochs_run": result.epochs_run,
            "steps": result.history[-1]["step"], "sequences": len(sequences)}))
    accelerator.wait_for_everyone()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    region = load_regions(DataConfig(synthetic_scale=0.06, seed=1, regions=["east"]))["east"]
    vocab = ItemVocab(region.catalogue)
    sequences = [s for s in (vocab.encode(h) for h in region.train.values()) if len(s) >= 2]
    run(out, accelerator, sequences, vocab)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
