"""Shared pieces of the ``regiontune`` command: the Typer app, the ``command`` wrapper, options,
config plumbing."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click
import typer

from regiontune.config import (
    AdaptConfig,
    DataConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=(
    "Cross-region recommendation: pretrain one backbone on many regions, give each region a "
    "small adapter, serve them all from one process, publish them to a hub."))
logger = logging.getLogger("regiontune")

DATA_HELP = "Data recipe: synthetic (built in), wsdm22-xmrec, ml-100k, or files (see --file)."
SET_HELP = ("Override any setting, SECTION.KEY=VALUE, e.g. train.lr=1e-3 model.arch=gpt2 "
            "data.duplicates=drop (sections: data, model, train, adapt). Repeatable.")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "accelerate", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def load_configs(config: Path | None, sets: list[str],
                 defaults: dict[str, dict] | None = None) -> dict:
    """The command's ``defaults``, then sections from the YAML file, then CLI overrides."""
    raw = load_yaml(config) if config else {}
    classes = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
               "adapt": AdaptConfig}
    unknown = sorted(set(raw) - set(classes))
    if unknown:
        raise typer.BadParameter(f"unknown config sections {unknown}; use {sorted(classes)}")
    defaults = defaults or {}
    out = {name: from_dict(cls, {**defaults.get(name, {}), **(raw.get(name) or {})})
           for name, cls in classes.items()}
    for item in sets:
        section, _, rest = item.partition(".")
        if section not in out or not rest:
            raise typer.BadParameter(f"--set {item!r}: use SECTION.KEY=VALUE with SECTION in "
                                     f"{sorted(out)}")
        apply_overrides(out[section], [rest])
    return out


def data_config(cfg: DataConfig, data: str | None, data_dir: Path | None, files: list[str],
                columns: list[str], regions: str | None, sep: str | None = None,
                time_format: str | None = None, protocol: str | None = None,
                negatives: int | None = None, negatives_from: str | None = None,
                candidates: str | Path | None = None) -> DataConfig:
    """The data options of a command applied to ``cfg`` (those left unset keep its values)."""
    from regiontune.data.loading import column_mapping, normalize_sep

    if sep is not None:
        cfg.sep = normalize_sep(sep)
    if candidates is not None:
        if negatives is not None or negatives_from is not None:
            raise ValueError("--candidates FILE brings its own lists: drop --negatives and "
                             "--negatives-from")
        cfg.candidates = str(candidates)
        if protocol is None:
            protocol = "candidates"
    if time_format is not None:
        cfg.time_format = time_format
    if protocol is not None:
        cfg.protocol = protocol
    if negatives is not None:
        cfg.negatives = negatives
        if protocol is None:
            cfg.protocol = "sampled"
    if negatives_from is not None:
        cfg.negatives_from = negatives_from
    if data:
        cfg.recipe = data
    if data_dir:
        cfg.data_dir = str(data_dir)
    if files:
        cfg.files, cfg.recipe = list(files), "files"
    cfg.columns.update(column_mapping(columns))
    if regions:
        cfg.regions = [r.strip() for r in regions.split(",") if r.strip()]
    return cfg


def fail(err: Exception) -> None:
    """Known errors end with a message and exit code 2, never a traceback."""
    typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


KNOWN_ERRORS = (ValueError, FileNotFoundError, KeyError, RuntimeError)
# Click's and Typer's own exits and aborts are RuntimeErrors too: they pass through untouched.
_PASS_THROUGH = (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort)
F = TypeVar("F", bound=Callable[..., None])


def command(fn: F) -> F:
    """Wrap a command body (apply it under ``@app.command()``): set up logging from its
    ``verbose`` argument, then run it; a known error (``KNOWN_ERRORS``, the hub's errors
    included) ends with ``error: ...`` and exit code 2, never a traceback. ``functools.wraps``
    keeps the signature, annotations and docstring Typer builds the options and help from."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> None:
        setup_logging(signature.bind_partial(*args, **kwargs).arguments.get("verbose") is True)
        try:
            fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise
        except KNOWN_ERRORS as err:
            fail(err)

    return wrapper  # type: ignore[return-value]


ConfigOpt = typer.Option(None, "--config", "-c", help="YAML file with data/model/train/adapt "
                         "sections.", exists=True, dir_okay=False)
SetOpt = typer.Option([], "--set", help=SET_HELP)
DataOpt = typer.Option(None, "--data", help=DATA_HELP)
DataDirOpt = typer.Option(None, "--data-dir", help="Directory holding the recipe's files.")
FileOpt = typer.Option([], "--file", help="Interaction file (CSV/TSV/TXT/Parquet/JSONL), or "
                       "REGION=PATH for a file without a region column. Repeatable. Text "
                       "files: the delimiter is sniffed (see --sep); timestamps are epoch "
                       "seconds or ISO-8601 dates (see --time-format). Duplicate (region, user, "
                       "item) rows are kept and reported as a warning; --set "
                       "data.duplicates=drop keeps the first, =error refuses the data. A summary "
                       "of what was read (rows, users, items, regions, duplicates, time range) "
                       "is logged at every load.")
ColumnsOpt = typer.Option([], "--columns", help="Column mapping OURS=YOURS, e.g. user=userId. "
                          "Ours: user, item, region, timestamp, rating. Repeatable.")
SepOpt = typer.Option(None, "--sep", help="Delimiter of text files: tab (or \\t), comma "
                      "(,), semicolon (;), space (runs of blanks) or pipe (|). Default: sniffed "
                      "from the header and first rows.")
TimeFormatOpt = typer.Option(None, "--time-format", help="strptime format of the timestamp "
                             "column, e.g. %d/%m/%Y. Default: epoch seconds or ISO-8601 dates "
                             "(2016-07-03, 2016-07-03T12:00:00, 2016-07-03 12:00:00), UTC "
                             "unless they carry a zone.")
ProtocolOpt = typer.Option(None, "--protocol", help="Evaluation cases: full-ranking (default: "
                           "the target against the whole region catalogue) or sampled (the "
                           "target among --negatives items the user never had, seeded by "
                           "data.seed; see --negatives-from) or candidates (set by "
                           "--candidates). Not for wsdm22-xmrec (its lists are fixed).")
NegativesOpt = typer.Option(None, "--negatives", help="Negatives per case of the sampled "
                            "protocol (default 99; implies --protocol sampled).")
NegativesFromOpt = typer.Option(None, "--negatives-from", help="How the sampled protocol "
                                "draws negatives: uniform (default) or popularity (in "
                                "proportion to the item's training count).")
CandidatesOpt = typer.Option(None, "--candidates", help="Your own candidate lists (sets the "
                             "protocol candidates-N, N the median list size): a file "
                             "(delimiter sniffed), one row per test case, columns user, item "
                             "(the held-out positive), candidates (the other items, separated "
                             "by , or |; quote the list in a comma-separated file) and "
                             "optionally region (else the row applies to every region with "
                             "that user). The rows replace the test cases: history = the "
                             "user's interactions, the positive removed (from training too); "
                             "users without a row are not tested; unknown users are skipped "
                             "(counted); items the catalogue lacks are kept (never-trained). "
                             "Validation stays the internal hold-out, ranked among N-1 uniform "
                             "negatives.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Debug logging.")


def backbone_data(backbone: Path, cfg: DataConfig) -> DataConfig:
    """Without --data, use the data settings the backbone was pretrained with."""
    from regiontune.artifacts import BACKBONE_META, read_json

    saved = read_json(backbone / BACKBONE_META, "backbone metadata").get("config", {})
    if "data" not in saved:
        return cfg
    merged = from_dict(DataConfig, saved["data"])
    merged.regions = cfg.regions
    if cfg.candidates:  # --candidates given with the backbone's data
        merged.candidates, merged.protocol = cfg.candidates, "candidates"
    return merged


def print_metrics(metrics: dict, k: int = 10) -> None:
    """A table of per-region metrics (the keys ``ndcg@k``, ``hr@k``, ``mrr``)."""
    if not metrics:
        return
    typer.echo(f"{'region':<12} {'protocol':<21} {f'NDCG@{k}':>8} {f'HR@{k}':>7} {'MRR':>7} "
               f"{'users':>6}")
    for region, m in sorted(metrics.items()):
        typer.echo(f"{region:<12} {m.get('protocol', ''):<21} {m.get(f'ndcg@{k}', 0):>8.4f} "
                   f"{m.get(f'hr@{k}', 0):>7.4f} {m.get('mrr', 0):>7.4f} {m.get('users', 0):>6}")
