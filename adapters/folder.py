"""The adapter folder: one type, read in one place (training loads, serving and the hub use it).

PEFT's two files plus regiontune's metadata and card::

    adapter_config.json          the method's config (PEFT's own for PEFT methods)
    adapter_model.safetensors    its tensors, plus the item side under ``regiontune.item_side.*``
    region.json                  region metadata: method, catalogue, backbone fingerprint, ...
    README.md                    the model card
    <method extras>              e.g. AdaLoRA's ``lora_export/`` (a plain LoRA copy)

Reading refuses pickles, checks the backbone fingerprint before any weight is read, checks
that the method is registered, and refuses non-finite weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from regiontune.artifacts import (
    ADAPTER_META,
    ArtifactError,
    BackboneMismatchError,
    load_safetensors,
    read_json,
    refuse_pickles,
)

from .base import get_method

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


class RegionMismatchError(ArtifactError):
    """An adapter whose ``region.json`` names another region than the one asked for."""

    def __init__(self, trained_for: str, region: str) -> None:
        super().__init__(f"the adapter was trained for region {trained_for!r}, not {region!r}")
        self.trained_for, self.region = trained_for, region


@dataclass
class AdapterFolder:
    """A saved adapter: its metadata, and the config and tensors of the form to build.

    ``method`` is the registered method that builds it: the trained one (``meta["method"]``),
    or, read ``serving=True``, the form the trained method serves as (AdaLoRA: its LoRA
    export); ``source`` is the folder the config and tensors were read from.
    """

    path: Path
    meta: dict[str, Any]
    method: str
    source: Path
    config: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def trained_method(self) -> str:
        return str(self.meta["method"])

    @property
    def region(self) -> str | None:
        return self.meta.get("region")

    @classmethod
    def read(cls, directory: str | Path, backbone_fingerprint: str | None = None, *,
             serving: bool = False, weights: bool = True,
             region: str | None = None) -> AdapterFolder:
        """Validate and read ``directory``; ``weights=False`` reads the metadata only.

        With ``backbone_fingerprint``, an adapter of another backbone (or one that records
        none) is refused before any weight is read; with ``region``, so is an adapter whose
        metadata names another region (:class:`RegionMismatchError`).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: no such adapter directory")
        if not (directory / ADAPTER_META).is_file():  # before any walk: "/" is refused at once
            raise ArtifactError(f"{directory}: not an adapter directory (no {ADAPTER_META})")
        refuse_pickles(directory)
        meta = read_json(directory / ADAPTER_META, "region metadata (region.json)")
        recorded = meta.get("backbone_fingerprint")
        if backbone_fingerprint is not None:
            if not recorded:
                raise ArtifactError(f"{directory}: {ADAPTER_META} records no "
                                    "backbone_fingerprint, so it cannot be checked against "
                                    "the backbone")
            if recorded != backbone_fingerprint:
                raise BackboneMismatchError(str(recorded), backbone_fingerprint, str(directory))
        if region is not None and meta.get("region") not in (None, region):
            raise RegionMismatchError(str(meta["region"]), region)
        trained = get_method(str(meta.get("method", "?")))  # a clear error before any weight
        method, source = (trained.serving_form(directory) if serving
                          else (trained.name, directory))
        folder = cls(directory, meta, method, source)
        if weights:
            folder.config = read_json(source / CONFIG, "adapter config")
            folder.tensors = load_safetensors(source / WEIGHTS)
            bad = non_finite(folder.tensors)
            if bad:  # served, such weights give NaN scores and arbitrary items
                raise ArtifactError(
                    f"{source / WEIGHTS}: non-finite (NaN or infinite) values in {len(bad)} "
                    f"tensor(s), e.g. {bad[:3]}; the adapter is broken: retrain it (lower the "
                    "learning rate) or restore a good copy")
        return folder


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, sorted."""
    return sorted(k for k, t in tensors.items()
                  if t.is_floating_point() and not bool(torch.isfinite(t).all()))


def write_files(directory: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                dtype: torch.dtype) -> None:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (floats in ``dtype``)
    into ``directory``, refusing non-finite weights (they would be served as NaN scores)."""
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    bad = non_finite(tensors)
    if bad:
        raise ValueError(f"refusing to save an adapter with non-finite (NaN or infinite) "
                         f"weights in {len(bad)} tensor(s), e.g. {bad[:3]} (in {dtype}); "
                         "training diverged: lower the learning rate")
    save_file(tensors, str(directory / WEIGHTS), metadata={"format": "pt"})
    (directory / CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
