"""Bottleneck adapter configuration (saved as ``adapter_config.json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# The output projection of attention and of the FFN, per backbone family: the adapter sits
# right after them, before the residual sum (Houlsby et al. 2019; Pfeiffer: after FFN only).
PLACEMENTS = {
    "llama": {"attention": r"layers\.\d+\.self_attn\.o_proj$",
              "ffn": r"layers\.\d+\.mlp\.down_proj$"},
    "gpt2": {"attention": r"h\.\d+\.attn\.c_proj$", "ffn": r"h\.\d+\.mlp\.c_proj$"},
    "bert": {"attention": r"layer\.\d+\.attention\.output\.dense$",
             "ffn": r"layer\.\d+\.output\.dense$"},
}
ACTIVATIONS = ("relu", "gelu", "silu", "tanh")


@dataclass
class BottleneckConfig:
    reduction_factor: int = 16  # bottleneck width = hidden_size / reduction_factor
    non_linearity: str = "relu"
    placement: str = "houlsby"  # houlsby: after attention and FFN; pfeiffer: after FFN only
    dropout: float = 0.0
    peft_type: str = "BOTTLENECK"  # not a PEFT type: marks regiontune's own method
    method: str = "bottleneck"
    arch: str = "llama"

    def __post_init__(self) -> None:
        if self.placement not in ("houlsby", "pfeiffer"):
            raise ValueError(f"placement {self.placement!r}: use houlsby or pfeiffer")
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(f"non_linearity {self.non_linearity!r}: use one of {ACTIVATIONS}")
        if int(self.reduction_factor) < 1:
            raise ValueError("reduction_factor must be >= 1")

    def patterns(self) -> list[str]:
        spots = ["attention", "ffn"] if self.placement == "houlsby" else ["ffn"]
        return [PLACEMENTS[self.arch][s] for s in spots]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BottleneckConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
