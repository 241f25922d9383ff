"""AdaLoRA (PEFT): LoRA whose rank is allocated during training by importance.

``update_and_allocate(step)`` runs after every optimizer step (a step hook of the training
loop). The saved adapter records the final rank pattern, and :func:`export_lora` turns it into
a plain LoRA adapter (per-module ranks) that mixed-region serving can route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import AdaLoraConfig, LoraConfig
from peft.tuners.adalora import AdaLoraLayer
from torch import nn

from ..base import Merged, get_method, register
from ..folder import CONFIG, AdapterFolder, write_files
from ..peft_common import PeftMethod, targets

LORA_EXPORT = "lora_export"  # the plain-LoRA copy, served in mixed-region batches


def adalora_defaults(arch: str) -> dict:
    return {"init_r": 12, "target_r": 6, "lora_alpha": 16, "lora_dropout": 0.05,
            "targets": "attention,mlp", "tinit_ratio": 0.1, "tfinal_ratio": 0.2, "deltaT": 5}


def adalora_config(options: dict, arch: str, total_steps: int) -> AdaLoraConfig:
    total = max(int(total_steps), 20)
    tinit = int(total * float(options["tinit_ratio"]))
    tfinal = int(total * float(options["tfinal_ratio"]))
    return AdaLoraConfig(init_r=int(options["init_r"]), target_r=int(options["target_r"]),
                         lora_alpha=float(options["lora_alpha"]),
                         lora_dropout=float(options["lora_dropout"]),
                         target_modules=targets(arch, options["targets"]), total_step=total,
                         tinit=tinit, tfinal=tfinal, deltaT=int(options["deltaT"]),
                         fan_in_fan_out=arch == "gpt2")


def _layers(body: nn.Module, name: str):
    for path, module in body.get_base_model().named_modules():
        if isinstance(module, AdaLoraLayer) and name in module.lora_E:
            yield path, module


def rank_pattern(body: nn.Module, name: str) -> dict[str, list[bool]]:
    """Kept singular values per module (non-zero entries of E), keyed as PEFT keys them."""
    return {f"{path}.lora_E.{name}": (m.lora_E[name].detach() != 0).view(-1).tolist()
            for path, m in _layers(body, name)}


class AdaLoraMethod(PeftMethod):
    def step_hooks(self, body: nn.Module) -> tuple:
        def allocate(task: nn.Module, step: int) -> None:
            body.base_model.update_and_allocate(step)
        return (allocate,)

    def weights(self, body: nn.Module, name: str) -> dict[str, torch.Tensor]:
        # the best epoch's weights may predate the last allocation: record what E really keeps
        body.peft_config[name].rank_pattern = rank_pattern(body, name)
        return super().weights(body, name)

    def save_extras(self, body: nn.Module, name: str, directory: Path, config: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor], dtype: torch.dtype
                    ) -> dict[str, Any]:
        """Ship the adapter also as plain LoRA (``lora_export/``) and record the kept ranks."""
        lora_config, tensors = export_lora(body, name)
        lora_config["base_model_name_or_path"] = config.get("base_model_name_or_path")
        (directory / LORA_EXPORT).mkdir()
        write_files(directory / LORA_EXPORT, lora_config, {**tensors, **extra_tensors}, dtype)
        return {"rank_pattern": {k: int(sum(v)) for k, v in config["rank_pattern"].items()}}

    def serving_form(self, directory: Path) -> tuple[str, Path]:
        if (directory / LORA_EXPORT / CONFIG).is_file():
            return "lora", directory / LORA_EXPORT
        return self.name, directory

    def merge(self, sources: list[AdapterFolder], weights: list[float]) -> Merged:
        """AdaLoRA adapters merge through their LoRA exports, into a LoRA adapter (the SVD
        form's masks and orthogonality do not survive a sum; the exports' deltas do)."""
        from ..merge import method_tensors

        exports = []
        for folder in sources:
            form, _ = self.serving_form(folder.path)
            if form == self.name:
                raise ValueError(f"{folder.path.name}: this AdaLoRA adapter ships no LoRA "
                                 f"export ({LORA_EXPORT}/), so it cannot be merged; retrain it "
                                 "with this version of regiontune")
            export = AdapterFolder.read(folder.path, serving=True)
            exports.append(AdapterFolder(folder.path, folder.meta, form, export.source,
                                         export.config, method_tensors(export.tensors)))
        return get_method(form).merge(exports, weights)


def export_lora(body: nn.Module, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An equivalent plain LoRA (``adapter_config`` dict, tensors) with per-module ranks."""
    cfg = body.peft_config[name]
    tensors, ranks = {}, {}
    for path, m in _layers(body, name):
        keep = m.lora_E[name].detach().view(-1) != 0
        if not keep.any():  # LoRA needs rank >= 1: one zero direction is the same as none
            keep[0] = True
        scale = m.scaling[name] / (m.ranknum[name].item() + 1e-5)
        a = (m.lora_A[name] * m.lora_E[name]).detach()[keep] * scale
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.contiguous()
        tensors[f"base_model.model.{path}.lora_B.weight"] = m.lora_B[name].detach()[:, keep]
        ranks[path] = int(keep.sum())
    lora = LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()),
                      target_modules=cfg.target_modules, lora_dropout=0.0,
                      fan_in_fan_out=cfg.fan_in_fan_out, rank_pattern=ranks,
                      alpha_pattern=dict(ranks))  # alpha == r: scaling 1, folded into A
    config = lora.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}, tensors


ADALORA = register(AdaLoraMethod("adalora", adalora_config, adalora_defaults))
