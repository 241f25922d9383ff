"""The serving suite's scale scenarios: region folders, targets, the HTTP plot (no servers)."""

from __future__ import annotations

from benchmarks.serving import plot_http, record, region_root, targets


def test_region_root_links_every_region_to_an_adapter(tmp_path):
    adapters = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "region.json").write_text("{}")
        adapters.append(tmp_path / name)
    names = region_root(tmp_path / "root", adapters, 5)
    assert names == ["r00000", "r00001", "r00002", "r00003", "r00004"]
    assert (tmp_path / "root" / "r00003" / "region.json").is_file()
    assert (tmp_path / "root" / "r00003").resolve() == (tmp_path / "b").resolve()


def test_targets_and_plot_of_http_and_many_regions(tmp_path):
    base = [record("batch_mixed_regions", regions_loaded=100, relative_to_single=0.9),
            record("adapter_load", regions_loaded=101, load_ms=5.0),
            record("memory", regions_loaded=100, per_adapter_over_file=1.5)]
    http = [record("http", clients=c, dynamic_batching=b, requests_per_s=rps, p99_ms=p99)
            for c, b, rps, p99 in [(1, True, 100, 12), (1, False, 100, 10),
                                   (32, True, 500, 80), (32, False, 200, 300)]]
    many = record("many_regions", failed_requests=0, rss_mb=600, rss_budget_mb=650,
                  adapters_loaded_peak=200, max_loaded=200)
    got = targets(base + http + [many])
    assert got["http_batching_speedup_at_32_clients"] == {"value": 2.5, "target": ">= 2",
                                                          "ok": True}
    assert got["http_p99_1_client_batching_over_off"]["ok"]
    assert got["many_regions_failed_requests"]["ok"]
    assert got["many_regions_rss_over_budget_mb"]["value"] == -50
    assert plot_http(base + http, tmp_path / "http.png").stat().st_size > 0
    assert plot_http(base, tmp_path / "none.png") is None
