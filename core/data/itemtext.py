"""Item text: what each recipe knows about an item in words (optional input).

* ``synthetic``: generated from the item's taste cluster (topic): words of that topic, so a
  text encoder puts items of one cluster together -- tests check the mechanism with it.
* ``ml-100k``: title, release year and genres from ``ml-100k.item``.
* ``files``: a side file of ``item,text`` rows (``DataConfig.item_text``, ``--item-text``),
  or a ``text`` column of the interaction files (``--columns text=YOUR_COLUMN``).

Returns ``{item: text}``; items without text are absent (they keep their id embedding alone).
"""

from __future__ import annotations

import random
from pathlib import Path

from regiontune.config import DataConfig
from regiontune.data.loading import DataError, normalize_sep, read_table
from regiontune.data.recipes import synthetic_frame

# one theme per synthetic topic (SYNTHETIC_TOPICS = 12): plain words an English sentence
# encoder separates
SYNTHETIC_THEMES = (
    ("jazz", "saxophone", "trumpet", "blues", "swing", "concert"),
    ("football", "goal", "stadium", "striker", "league", "match"),
    ("cooking", "recipe", "kitchen", "pasta", "bread", "spices"),
    ("space", "rocket", "planet", "astronaut", "galaxy", "orbit"),
    ("garden", "flowers", "seeds", "roses", "soil", "tulips"),
    ("horror", "ghost", "haunted", "vampire", "nightmare", "zombie"),
    ("fashion", "dress", "shoes", "runway", "jacket", "style"),
    ("chess", "checkmate", "bishop", "opening", "grandmaster", "pawn"),
    ("surfing", "waves", "beach", "ocean", "surfboard", "tide"),
    ("medicine", "doctor", "hospital", "vaccine", "surgery", "nurse"),
    ("painting", "canvas", "portrait", "brush", "museum", "watercolor"),
    ("trains", "railway", "locomotive", "station", "carriage", "tracks"),
)


def synthetic_item_text(seed: int = 0, scale: float = 1.0) -> dict[str, str]:
    """Text of every synthetic item: three words of its topic's theme and a number."""
    topics: dict[str, int] = {}
    synthetic_frame(seed, scale, topics_out=topics)
    rng = random.Random(f"synthetic-text-{seed}")
    out = {}
    for item in sorted(topics):
        theme = SYNTHETIC_THEMES[topics[item] % len(SYNTHETIC_THEMES)]
        words = rng.sample(theme, 3)
        out[item] = f"{words[0]} {words[1]} and {words[2]}, number {rng.randrange(1000)}"
    return out


def synthetic_topics(seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Each synthetic item's topic (its taste cluster)."""
    topics: dict[str, int] = {}
    synthetic_frame(seed, scale, topics_out=topics)
    return topics


def ml100k_item_text(data_dir: str | Path) -> dict[str, str]:
    """"Title (year). Genres: a, b" from ``ml-100k.item`` (RecBole layout)."""
    path = Path(data_dir).expanduser() / "ml-100k.item"
    frame = read_table(path)
    for column in ("item_id", "movie_title"):
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r}; found {list(frame.columns)}")
    out = {}
    for row in frame.itertuples(index=False):
        row = row._asdict()
        title = str(row["movie_title"]).strip()
        year = str(row.get("release_year", "") or "").strip()
        genres = ", ".join(str(row.get("class", "") or "").split())
        text = f"{title} ({year})" if year else title
        if genres:
            text += f". Genres: {genres}"
        if title:
            out[str(row["item_id"]).strip()] = text
    return out


def read_item_text(path: str | Path, sep: str | None = None) -> dict[str, str]:
    """A side file of ``item,text`` rows (the first two columns where not so named)."""
    path = Path(path).expanduser()
    frame = read_table(path, sep)
    columns = [str(c) for c in frame.columns]
    if "item" in columns and "text" in columns:
        item_col, text_col = "item", "text"
    elif len(columns) >= 2:
        item_col, text_col = columns[0], columns[1]
    else:
        raise DataError(f"{path}: an item-text file needs two columns, item and text; found "
                        f"{columns} (is the delimiter right? pass --sep)")
    out: dict[str, str] = {}
    for row, (item, text) in enumerate(zip(frame[item_col], frame[text_col], strict=True), 1):
        item, text = str(item).strip(), str(text).strip()
        if not item:
            raise DataError(f"{path}: row {row}, column {item_col!r}: empty item id")
        if text:
            if item in out and out[item] != text:
                raise DataError(f"{path}: row {row}: item {item!r} has two different texts")
            out[item] = text
    if not out:
        raise DataError(f"{path}: no item has a text")
    return out


def files_item_text(cfg: DataConfig) -> dict[str, str]:
    """The files recipe: the side file, else a text column of the interaction files."""
    if cfg.item_text:
        return read_item_text(cfg.item_text, normalize_sep(cfg.sep))
    text_col = cfg.columns.get("text", "text")
    item_col = cfg.columns.get("item", "item")
    out: dict[str, str] = {}
    for spec in cfg.files:
        region, equals, path = spec.partition("=")
        if not equals or "/" in region or Path(spec).exists():
            path = spec
        frame = read_table(path, normalize_sep(cfg.sep))
        if text_col not in frame.columns:
            continue
        for item, text in zip(frame[item_col], frame[text_col], strict=True):
            if str(text).strip():
                out.setdefault(str(item).strip(), str(text).strip())
    return out


def load_item_text(cfg: DataConfig) -> dict[str, str]:
    """The item text the config's data provides; an error when it provides none."""
    out = data_item_text(cfg)
    if not out:
        raise DataError(f"recipe {cfg.recipe!r} gives no item text: pass a side file of item,"
                        "text rows (--item-text PATH, or --set data.item_text=PATH) or a text "
                        "column (--columns text=YOUR_COLUMN)")
    return out


def data_item_text(cfg: DataConfig) -> dict[str, str]:
    """The item text the config's data provides, ``{}`` when it has none (a side file that
    cannot be read or holds no text is still an error)."""
    if cfg.item_text and cfg.recipe != "files":
        out = read_item_text(cfg.item_text, normalize_sep(cfg.sep))  # a side file overrides
    elif cfg.recipe == "synthetic":
        out = synthetic_item_text(cfg.seed, cfg.synthetic_scale)
    elif cfg.recipe == "ml-100k":
        if not cfg.data_dir:
            raise DataError("recipe 'ml-100k' reads files: pass --data-dir DIR")
        out = ml100k_item_text(cfg.data_dir)
    elif cfg.recipe == "files":
        out = files_item_text(cfg)
    else:
        out = {}
    return out
