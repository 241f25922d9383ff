"""Adapter roots: what an admin ``PUT`` may load (local folders inside the roots, or hub ids),
how served paths are shown to clients (never an absolute server path), the folders of a root."""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException

from regiontune.artifacts import ADAPTER_META
from regiontune.serving.fetch import HUB_ID
from regiontune.serving.http_errors import clip

__all__ = ["adapter_dirs", "adapter_source", "public_path"]


def adapter_source(text: str, roots: list[Path] | None) -> str | Path:
    """What a ``PUT`` body's ``path`` names: a local directory inside an adapter root (a
    resolved :class:`Path`) or a hub id (``str``). HTTPException 403 / 422 otherwise; decided
    from the path alone (no directory is walked)."""
    if "\x00" in text:
        raise HTTPException(422, "path holds a NUL character")
    if roots is None:  # unrestricted: the recommender tells directories from hub ids
        return text
    given = Path(text)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    inside = False
    for candidate in candidates:
        try:
            real = candidate.resolve()
            if any(real.is_relative_to(root) for root in roots):
                inside = True
                if real.is_dir():
                    return real
        except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
            raise HTTPException(422, f"cannot resolve path {clip(text, 200)!r}: "
                                     f"{type(err).__name__}") from err
    if not given.is_absolute() and HUB_ID.fullmatch(text):
        return text
    if not inside:
        hint = ("start the server with --adapter-root DIR to allow local adapters" if not roots
                else "give a path relative to an adapter root, or a hub id ORG/NAME")
        raise HTTPException(403, f"path {clip(text, 200)!r} is outside the adapter roots: "
                                 f"{hint}")
    raise HTTPException(422, f"no adapter directory {clip(text, 200)!r} under the adapter "
                             "roots: check the name (GET /v1/regions shows the loaded ones)")


def public_path(path: str, roots: list[Path] | None) -> str:
    """A served adapter's source as shown to clients: relative to its adapter root, a hub id,
    or the folder's name; never an absolute server path."""
    local = Path(path)
    try:
        if not local.is_absolute() and not local.exists():
            return path  # a hub id
        real = local.resolve()
    except (OSError, RuntimeError):
        return local.name
    for root in roots or []:
        if real.is_relative_to(root):
            return real.relative_to(root).as_posix() or "."
    return real.name


def adapter_dirs(adapters_dir: str | Path | None) -> list[Path]:
    """Every adapter directory (holding region.json) directly under ``adapters_dir``."""
    if adapters_dir is None:
        return []
    root = Path(adapters_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such adapters directory")
    return sorted(p for p in root.iterdir() if (p / ADAPTER_META).is_file())
