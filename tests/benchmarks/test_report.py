"""The report writer on a small fake results file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.report import main, summarise, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REGIONS = ("de", "fr")
PARAMS = {"full": 5_000_000, "lora": 40_000, "scratch": 5_000_000, "popularity": 0}


def _record(region: str, method: str, seed: int, fraction: float) -> dict:
    base = {"full": 0.30, "lora": 0.28, "scratch": 0.20, "popularity": 0.10}[method]
    ndcg = base * fraction ** 0.2 + 0.01 * seed + (0.02 if region == "fr" else 0.0)
    baseline = method == "popularity"
    return {"suite": "wsdm", "dataset": "fake", "protocol": "full-ranking", "region": region,
            "method": method, "seed": seed, "data_fraction": fraction, "ndcg@10": ndcg,
            "hr@10": ndcg * 1.5, "mrr": ndcg * 0.8, "trainable_params": PARAMS[method],
            "total_params": 5_000_000, "adapter_bytes": None if baseline else 4096 * (seed + 1),
            "backbone_bytes": 20_000_000, "train_seconds": 0.5 if baseline else 100.0 + seed,
            "peak_rss_mb": None if baseline else 900.0, "device": "cpu"}


def _records() -> list[dict]:
    out = []
    for region in REGIONS:
        for seed in (0, 1):
            for method in ("full", "lora", "scratch"):
                out += [_record(region, method, seed, f) for f in (0.1, 1.0)]
            out.append(_record(region, "popularity", seed, 1.0))
    return out


def _results(records: list[dict], suite: str = "wsdm") -> dict:
    meta = {"git_commit": "abc1234", "versions": {"torch": "2.x"},
            "machine": {"cpu": "test-cpu"}, "config": {"seeds": [0, 1]}, "created": "today"}
    return {"suite": suite, "meta": meta, "records": records}


def _pm(values: list[float]) -> str:
    # Computed independently: sample std over seeds.
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def _ndcgs(records, region, method, fraction):
    return [r["ndcg@10"] for r in records if r["region"] == region and r["method"] == method
            and r["data_fraction"] == fraction]


def test_write_report_files_and_numbers(tmp_path):
    records = _records()
    paths = write_report(_results(records), tmp_path, "wsdm")
    names = {p.name for p in paths}
    assert names == {"wsdm.md", "wsdm_quality_vs_params.png", "wsdm_learning_curve.png",
                     "wsdm_train_time.png"}
    for p in paths:
        assert p.exists() and p.parent == tmp_path
        if p.suffix == ".png":
            data = p.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 5_000
    md = (tmp_path / "wsdm.md").read_text(encoding="utf-8")
    assert "abc1234" in md and "test-cpu" in md and "torch=2.x" in md
    for region in REGIONS:
        for method in ("full", "lora", "scratch"):
            for fraction in (0.1, 1.0):
                assert _pm(_ndcgs(records, region, method, fraction)) in md
        assert _pm(_ndcgs(records, region, "full", 1.0)) + " (n=2)" in md
    # popularity has no adapter and no RSS measurement
    pop_row = next(line for line in md.splitlines() if line.startswith("| popularity"))
    assert pop_row.count("–") == 2
    # relative to full: lora / full at fraction 1.0, region de
    pct = 100 * np.mean(_ndcgs(records, "de", "lora", 1.0)) / np.mean(
        _ndcgs(records, "de", "full", 1.0))
    assert f"| de | lora | {pct:.1f} |" in md


def test_headline_sorted_by_ndcg(tmp_path):
    write_report(_results(_records()), tmp_path, "r")
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    section = md.split("### de")[1].split("###")[0]
    order = [line.split("|")[1].strip() for line in section.splitlines()
             if line.startswith("| ") and not line.startswith("| method")]
    assert order == ["full", "lora", "scratch", "popularity"]


def test_summarise_groups():
    rows = summarise(_records())
    assert len(rows) == 2 * (3 * 2 + 1)
    row = next(r for r in rows if (r["region"], r["method"], r["data_fraction"])
               == ("fr", "lora", 0.1))
    values = _ndcgs(_records(), "fr", "lora", 0.1)
    assert row["n"] == 2
    assert row["ndcg@10_mean"] == pytest.approx(np.mean(values))
    assert row["ndcg@10_std"] == pytest.approx(np.std(values, ddof=1))
    pop = next(r for r in rows if r["method"] == "popularity")
    assert pop["adapter_bytes_mean"] is None and pop["adapter_bytes_std"] is None


def test_generic_suite_without_quality(tmp_path):
    records = [{"suite": "serving", "region": "de", "batch": 1, "p50_ms": 3.25, "note": None},
               {"suite": "serving", "region": "fr", "batch": 8, "p50_ms": 7.5, "note": "x"}]
    paths = write_report(_results(records, suite="serving"), tmp_path, "serving")
    assert [p.name for p in paths] == ["serving.md"]  # no quality plots, no train times
    md = (tmp_path / "serving.md").read_text(encoding="utf-8")
    assert "| suite | region | batch | p50_ms | note |" in md
    assert "| serving | de | 1 | 3.25 | – |" in md


def test_main_writes_next_to_json(tmp_path, capsys):
    src = tmp_path / "wsdm.json"
    src.write_text(json.dumps(_results(_records())), encoding="utf-8")
    main([str(src)])
    assert (tmp_path / "wsdm.md").exists()
    assert "wsdm_train_time.png" in capsys.readouterr().out
