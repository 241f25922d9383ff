"""Item vocabulary: item id <-> token id (tokens 0 and 1 are PAD and MASK)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch

from regiontune.model.recmodel import N_SPECIAL

VOCAB_FILE = "items.json"


class ItemVocab:
    """An ordered item list; item ``items[i]`` is token ``i + N_SPECIAL``."""

    def __init__(self, items: Iterable[str]) -> None:
        self.items = list(items)
        self.index = {item: i for i, item in enumerate(self.items)}
        if len(self.index) != len(self.items):
            raise ValueError("item vocabulary holds duplicate items")

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: str) -> bool:
        return item in self.index

    def encode(self, items: Iterable[str]) -> list[int]:
        """Token ids of the known items, in order; unknown items are skipped."""
        return [self.index[i] + N_SPECIAL for i in items if i in self.index]

    def unknown(self, items: Iterable[str]) -> list[str]:
        return [i for i in items if i not in self.index]

    def columns(self, items: list[str]) -> torch.Tensor:
        """Output-table column of each item (-1 where the vocabulary lacks it)."""
        return torch.tensor([self.index.get(i, -1) for i in items], dtype=torch.long)

    def save(self, directory: str | Path) -> None:
        Path(directory, VOCAB_FILE).write_text(json.dumps({"items": self.items}) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ItemVocab:
        path = Path(directory, VOCAB_FILE)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing item vocabulary")
        return cls(json.loads(path.read_text())["items"])
