"""Artefact directories: atomic writes, metadata files, safetensors checks, fingerprints.

A backbone directory holds ``config.json``, ``model.safetensors``, ``items.json``,
``regiontune.json`` (metadata) and ``README.md``. An adapter directory holds
``adapter_config.json``, ``adapter_model.safetensors``, ``region.json`` and ``README.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

BACKBONE_META = "regiontune.json"
ADAPTER_META = "region.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class ArtifactError(ValueError):
    """A missing, corrupt or incompatible artefact; the message says which file and why."""


class BackboneMismatchError(ArtifactError):
    """An adapter made for another backbone."""

    def __init__(self, adapter_fp: str, backbone_fp: str, where: str = "") -> None:
        super().__init__(
            f"adapter{f' {where}' if where else ''} was trained on backbone {adapter_fp}, "
            f"but the loaded backbone is {backbone_fp}; load the backbone it was made for, "
            "or train a new adapter on this one"
        )
        self.adapter_fingerprint = adapter_fp
        self.backbone_fingerprint = backbone_fp


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Write a directory under a temporary name, then swap it in.

    A crash or kill before the end leaves the previous artefact intact (the temporary directory
    is removed or, after a hard kill, left as ``.name.tmp-*`` beside it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _share(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _share(directory: Path) -> None:
    """mkdtemp and some writers create private (0700/0600) entries: use the umask instead."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path, what: str = "file") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{path}: not valid JSON ({err})") from err


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a truncated or corrupt file is a clear error, never a crash."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: missing weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ArtifactError(f"{path}: corrupt or truncated safetensors file ({err})") from err


def refuse_pickles(directory: str | Path) -> None:
    """Only safetensors weights are accepted: refuse a directory holding pickle files."""
    found = [p.name for p in Path(directory).rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
    if found:
        raise ArtifactError(f"{directory}: holds pickle weight files {found}; regiontune only "
                            "loads safetensors (pickle files can run arbitrary code)")


def fingerprint(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    """Hash of the configuration and every weight: names an exact backbone."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode() + str(tuple(tensor.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return "sha256:" + digest.hexdigest()[:32]


def artifact_kind(directory: str | Path) -> str:
    """``backbone`` or ``adapter``, from the files a directory holds."""
    directory = Path(directory)
    if (directory / BACKBONE_META).is_file():
        return "backbone"
    if (directory / ADAPTER_META).is_file() or (directory / "adapter_config.json").is_file():
        return "adapter"
    raise ArtifactError(f"{directory}: neither a backbone ({BACKBONE_META}) nor an adapter "
                        f"({ADAPTER_META}) directory")
