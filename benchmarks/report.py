"""Turn a benchmark results JSON into a Markdown report and PNG plots.

``python -m benchmarks.report benchmarks/results/wsdm.json`` writes ``wsdm.md`` and
``wsdm_*.png`` next to the JSON. Quality suites (records with ``ndcg@10``) get headline,
learning-curve and relative-to-full tables; other suites (serving, cost) get one generic table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from benchmarks.markdown import MISSING, table  # noqa: E402
from benchmarks.verdict import verdict_section  # noqa: E402

log = logging.getLogger(__name__)

METRICS = ("ndcg@10", "hr@10", "mrr", "trainable_params", "total_params", "adapter_bytes",
           "backbone_bytes", "train_seconds", "peak_rss_mb")
CURVE_METHODS_HINT = ("scratch", "full", "lora")  # plotted first when present
MARKERS = "osD^v<>pP*hX"


def _fraction(record: dict) -> float:
    # Baselines may omit data_fraction: they always see all the training data.
    value = record.get("data_fraction")
    return 1.0 if value is None else float(value)


def _is_full(fraction: float) -> bool:
    return math.isclose(fraction, 1.0)


def _group(record: dict) -> str | None:
    """What the report's sections are per: the region, within its setting where it has one
    (``t1 · new-region``)."""
    region, setting = record.get("region"), record.get("setting")
    return f"{region} · {setting}" if setting and region is not None else region


def summarise(records: list[dict]) -> list[dict]:
    """Group by (region, method, data_fraction): mean, sample std (0 for n=1) and n.

    Returns dicts with ``region``, ``method``, ``data_fraction``, ``n`` and, per metric,
    ``{metric}_mean`` / ``{metric}_std`` (None where no record of the group has a value).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(_group(r), r.get("method"), _fraction(r))].append(r)
    rows = []
    for (region, method, fraction), group in groups.items():
        row = {"region": region, "method": method, "data_fraction": fraction, "n": len(group)}
        for metric in METRICS:
            values = [float(r[metric]) for r in group if r.get(metric) is not None]
            row[f"{metric}_mean"] = statistics.fmean(values) if values else None
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else (
                0.0 if values else None)
        rows.append(row)
    rows.sort(key=lambda r: (str(r["region"]), str(r["method"]), r["data_fraction"]))
    return rows


# ---------------------------------------------------------------- formatting

def _num(value, fmt: str = ".4f") -> str:
    return MISSING if value is None else format(value, fmt)


def _pm(row: dict, metric: str, fmt: str = ".4f", with_n: bool = False) -> str:
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return MISSING
    text = f"{mean:{fmt}} ± {std:{fmt}}"
    return f"{text} (n={row['n']})" if with_n else text


def _kb(value) -> str:
    return MISSING if value is None else f"{value / 1024:,.1f}"


def _cell(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True).replace("|", "\\|")
    return str(value).replace("|", "\\|")


def _regions(summary: list[dict]) -> list:
    return sorted({r["region"] for r in summary}, key=str)


# ---------------------------------------------------------------- markdown sections

def _inline(mapping: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (mapping or {}).items()) or MISSING


def _header(results: dict) -> list[str]:
    meta = results.get("meta") or {}
    lines = [f"# Benchmark report: {results.get('suite', MISSING)}", "",
             f"- commit: `{meta.get('git_commit') or MISSING}`",
             f"- created: {meta.get('created') or MISSING}",
             f"- machine: {_inline(meta.get('machine'))}",
             f"- versions: {_inline(meta.get('versions'))}",
             f"- records: {len(results.get('records') or [])}", ""]
    if meta.get("config"):
        lines += ["<details><summary>config</summary>", "", "```json",
                  json.dumps(meta["config"], indent=2, sort_keys=True, default=str), "```",
                  "", "</details>", ""]
    return lines


def _ndcg_key(row: dict) -> float:
    return -math.inf if row["ndcg@10_mean"] is None else row["ndcg@10_mean"]


def _headline(summary: list[dict]) -> list[str]:
    lines = ["## Headline (data fraction 1.0)", "",
             "NDCG@10, HR@10 and MRR: mean ± sample std over seeds (n = seeds).", ""]
    header = ["method", "NDCG@10 (mean ± std, n)", "HR@10", "MRR", "trainable params",
              "adapter KB", "train s", "peak RSS MB"]
    for region in _regions(summary):
        rows = [r for r in summary if r["region"] == region and _is_full(r["data_fraction"])]
        if not rows:
            continue
        rows.sort(key=_ndcg_key, reverse=True)
        body = [[r["method"], _pm(r, "ndcg@10", with_n=True), _pm(r, "hr@10"), _pm(r, "mrr"),
                 _num(r["trainable_params_mean"], ",.0f"), _kb(r["adapter_bytes_mean"]),
                 _num(r["train_seconds_mean"], ",.1f"), _num(r["peak_rss_mb_mean"], ",.0f")]
                for r in rows]
        lines += [f"### {region}", ""] + table(header, body) + [""]
    return lines


def _curve_rows(summary: list[dict], region) -> dict[str, dict[float, dict]]:
    """method -> fraction -> summary row, for methods with more than one fraction."""
    by_method: dict[str, dict[float, dict]] = defaultdict(dict)
    for r in summary:
        if r["region"] == region and r["ndcg@10_mean"] is not None:
            by_method[r["method"]][r["data_fraction"]] = r
    methods = sorted((m for m, f in by_method.items() if len(f) > 1),
                     key=lambda m: (m not in CURVE_METHODS_HINT, str(m)))
    return {m: by_method[m] for m in methods}


def _learning_curve(summary: list[dict]) -> list[str]:
    lines = ["## Learning curve (NDCG@10 by training-data fraction)", ""]
    found = False
    for region in _regions(summary):
        curves = _curve_rows(summary, region)
        if not curves:
            continue
        found = True
        fractions = sorted({f for c in curves.values() for f in c})
        body = [[m] + [_pm(c[f], "ndcg@10") if f in c else MISSING for f in fractions]
                for m, c in curves.items()]
        lines += [f"### {region}", ""]
        lines += table(["method"] + [f"{f:g}" for f in fractions], body) + [""]
    return lines if found else lines + ["No method was run at more than one fraction.", ""]


def _relative(summary: list[dict]) -> list[str]:
    lines = ["## Relative to full fine-tuning (data fraction 1.0)", ""]
    body = []
    for region in _regions(summary):
        rows = {r["method"]: r for r in summary
                if r["region"] == region and _is_full(r["data_fraction"])}
        full = rows.get("full")
        if not full or not full["ndcg@10_mean"]:
            continue
        for method, r in sorted(rows.items(), key=lambda kv: str(kv[0])):
            if method == "full":
                continue
            pct = (None if r["ndcg@10_mean"] is None
                   else 100 * r["ndcg@10_mean"] / full["ndcg@10_mean"])
            params = (None if r["trainable_params_mean"] is None
                      or not full["trainable_params_mean"]
                      else 100 * r["trainable_params_mean"] / full["trainable_params_mean"])
            body.append([region, method, _num(pct, ".1f"), _num(params, ".3g")])
    if not body:
        return lines + ["No `full` record at fraction 1.0.", ""]
    header = ["region", "method", "NDCG@10 % of full", "trainable params % of full"]
    return lines + table(header, body) + [""]


def _notes(results: dict) -> list[str]:
    """The suite's own ``notes:`` (findings that explain its figures), as a bullet list."""
    notes = ((results.get("meta") or {}).get("config") or {}).get("notes") or []
    return (["## Notes", ""] + [f"- {n}" for n in notes] + [""]) if notes else []


def _generic(records: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in records for k in r))
    body = [[_cell(r.get(k)) for k in keys] for r in records]
    return ["## Records", ""] + (table(keys, body) if keys else ["No records."]) + [""]


# ---------------------------------------------------------------- plots

def _subplots(n: int):
    cols = min(3, max(n, 1))
    rows = math.ceil(max(n, 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write (110 dpi) and close a figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_quality_vs_params(summary: list[dict], path: Path) -> Path:
    regions = _regions(summary)
    fig, axes = _subplots(len(regions))
    methods = sorted({r["method"] for r in summary}, key=str)
    for ax, region in zip(axes, regions, strict=False):
        for r in summary:
            if (r["region"] != region or not _is_full(r["data_fraction"])
                    or r["ndcg@10_mean"] is None):
                continue
            i = methods.index(r["method"])  # same marker/colour for a method in every region
            style = {"label": str(r["method"]), "color": f"C{i % 10}"}
            params = r["trainable_params_mean"]
            if params and params > 0:
                ax.errorbar(params, r["ndcg@10_mean"], yerr=r["ndcg@10_std"],
                            fmt=MARKERS[i % len(MARKERS)], capsize=3, **style)
            else:  # no trainable parameters (classic baselines): a reference line
                ax.axhline(r["ndcg@10_mean"], linestyle="--", linewidth=1, **style)
        ax.set_xscale("log")
        ax.set(title=str(region), xlabel="trainable parameters", ylabel="NDCG@10")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _plot_learning_curve(summary: list[dict], path: Path) -> Path | None:
    regions = [g for g in _regions(summary) if _curve_rows(summary, g)]
    if not regions:
        return None
    fig, axes = _subplots(len(regions))
    for ax, region in zip(axes, regions, strict=False):
        for method, curve in _curve_rows(summary, region).items():
            xs = sorted(curve)
            ax.errorbar(xs, [curve[x]["ndcg@10_mean"] for x in xs],
                        yerr=[curve[x]["ndcg@10_std"] for x in xs], marker="o", capsize=3,
                        label=str(method))
        ax.set_xscale("log")  # fractions usually span decades (0.01 .. 1)
        fractions = sorted({f for c in _curve_rows(summary, region).values() for f in c})
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set(title=str(region), xlabel="training-data fraction", ylabel="NDCG@10")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def _plot_train_time(records: list[dict], path: Path) -> Path | None:
    times: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get("train_seconds") is not None:
            times[str(r.get("method"))].append(float(r["train_seconds"]))
    if not times:
        return None
    methods = sorted(times)
    means = [statistics.fmean(times[m]) for m in methods]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(methods)), 4))
    ax.bar(methods, means, color=[f"C{i % 10}" for i in range(len(methods))])
    positive = [m for m in means if m > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")  # baselines fit in ms, full fine-tuning in hours
    ax.set(ylabel="mean train seconds (all records)", title="Training time per method")
    ax.tick_params(axis="x", rotation=30)
    return save_figure(fig, path)


# ---------------------------------------------------------------- entry points

def write_report(results: dict, out_dir: Path, name: str) -> list[Path]:
    """Write ``{name}.md`` and the PNG plots into ``out_dir``; return the written paths.

    Plots without data (no method at several fractions, no train_seconds) are skipped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = list(results.get("records") or [])
    lines = _header(results)
    pngs: list[Path | None] = []
    if any("ndcg@10" in r for r in records):
        summary = summarise(records)
        lines += (_headline(summary) + _learning_curve(summary) + _relative(summary)
                  + verdict_section(summary) + _notes(results))
        pngs.append(_plot_quality_vs_params(summary, out_dir / f"{name}_quality_vs_params.png"))
        pngs.append(_plot_learning_curve(summary, out_dir / f"{name}_learning_curve.png"))
    else:
        lines += _generic(records)
    pngs.append(_plot_train_time(records, out_dir / f"{name}_train_time.png"))
    written = [p for p in pngs if p is not None]
    lines += [f"![{p.stem}]({p.name})" for p in written] + [""]
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    log.info("report %s: %d plots", md, len(written))
    return [md] + written


def write_results_and_report(results: dict, path: Path, indent: int = 1) -> list[Path]:
    """Save the results JSON at ``path`` (atomically), then its report and plots beside it."""
    path = Path(path)
    write_results(results, path, indent)
    return write_report(results, path.parent, path.stem)


def main(argv: list[str] | None = None) -> None:
    """CLI: regenerate the report next to a results JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results JSON, e.g. benchmarks/results/x.json")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text(encoding="utf-8"))
    for path in write_report(results, args.results.parent, args.results.stem):
        print(path)


if __name__ == "__main__":
    main()
