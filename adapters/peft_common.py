"""Shared plumbing for the methods PEFT provides (LoRA, AdaLoRA, IA3)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from regiontune.model.recmodel import RecModel

from .base import MethodDefaults
from .routing import RoutedForm

# Which sub-modules of each backbone family hold the attention and MLP projections.
ATTENTION = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj"], "gpt2": ["c_attn", "attn.c_proj"],
             "bert": ["query", "key", "value", "attention.output.dense"]}
MLP = {"llama": ["gate_proj", "up_proj", "down_proj"], "gpt2": ["c_fc", "mlp.c_proj"],
       "bert": ["intermediate.dense", r"layer.\d+.output.dense"]}


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence two warnings that fire on every adapter wrap or load and ask nothing of the
    user: transformers' deprecation of ``is_gradient_checkpointing`` (called by PEFT), and
    PEFT's note that AdaLoRA's saved ``rank_pattern`` keys (its own format) match no module
    name. Every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.* is deprecated",
                                category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*rank_pattern keys did not match",
                                category=RuntimeWarning)
        yield


def targets(arch: str, parts: str = "attention,mlp") -> list[str] | str:
    """Target modules as PEFT understands them (a regex where names are ambiguous)."""
    names = []
    for part in parts.split(","):
        names += {"attention": ATTENTION, "mlp": MLP}[part.strip()][arch]
    if arch == "bert":  # "output.dense" ends both the attention and the FFN output: use a regex
        return r".*\.(" + "|".join(n.replace(".", r"\.") for n in names) + ")$"
    return names


class PeftMethod(MethodDefaults):
    """A PEFT tuner behind the :class:`AdapterMethod` protocol."""

    peft_loadable = True

    def __init__(self, name: str, build: Callable[[dict[str, Any], str, int], PeftConfig],
                 defaults: Callable[[str], dict[str, Any]],
                 routed: RoutedForm | None = None) -> None:
        self.name, self._build, self._defaults = name, build, defaults
        self.routed = routed

    def default_options(self, arch: str) -> dict[str, Any]:
        return self._defaults(arch)

    def attach(self, backbone: RecModel, options: dict[str, Any], name: str,
               total_steps: int) -> nn.Module:
        config = self._build({**self._defaults(backbone.config.arch), **options},
                             backbone.config.arch, total_steps)
        with quiet_peft():
            return get_peft_model(backbone, config, adapter_name=name)

    def base_of(self, body: nn.Module) -> RecModel:
        return body.get_base_model()

    def weights(self, body: nn.Module, name: str) -> dict[str, torch.Tensor]:
        state = get_peft_model_state_dict(body, adapter_name=name)
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def adapter_config(self, body: nn.Module, name: str) -> dict[str, Any]:
        config = body.peft_config[name].to_dict()
        return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}

    def load(self, backbone: RecModel, config: dict[str, Any], tensors: dict[str, torch.Tensor],
             name: str, body: nn.Module | None = None) -> nn.Module:
        peft_config = PeftConfig.from_peft_type(**config)
        peft_config.inference_mode = True
        with quiet_peft():
            if body is None:
                body = PeftModel(backbone, peft_config, adapter_name=name)
            else:
                body.add_adapter(name, peft_config)
            result = set_peft_model_state_dict(body, tensors, adapter_name=name)
        # AdaLoRA's ranknum is deterministic and deliberately not saved by PEFT
        missing = [k for k in result.missing_keys
                   if (f".{name}." in k or k.endswith(name)) and ".ranknum." not in k]
        if missing:
            raise ValueError(f"adapter weights lack {len(missing)} tensors, e.g. {missing[:2]}")
        for p in body.parameters():  # loaded for inference: nothing trains by accident
            p.requires_grad_(False)
        return body
