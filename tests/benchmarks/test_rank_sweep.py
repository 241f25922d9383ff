"""The rank sweep benchmark: its grid, one real point on the tiny backbone, its report."""

from __future__ import annotations

from benchmarks.rank_sweep import DEFAULT_R, grid, mark_default, plot, run_point, to_markdown
from tests.conftest import TINY_MODEL

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUITE = {"adapt": {"epochs": 1, "batch_size": 64, "lr": 1e-3}}


def test_grid_sweeps_item_rank_at_default_r_and_r_at_default_item_rank():
    points = grid([4, 8], [2, 8, 16], auto_rank=6)
    assert points == [(DEFAULT_R, 4), (DEFAULT_R, 6), (DEFAULT_R, 8), (2, 6), (16, 6)]


def test_item_rank_sets_the_adapter_size(tiny_backbone_dir, tiny_regions):
    data = tiny_regions["island"]
    small = run_point(data, 2, 1, 1, SUITE, tiny_backbone_dir)
    large = run_point(data, 2, 3, 1, SUITE, tiny_backbone_dir)
    assert small["default"] is False and small["item_rank"] == 1
    hidden = TINY_MODEL.hidden_size
    # two more rank columns: a row of A per catalogue item, a row of B per hidden unit
    assert large["trainable_params"] - small["trainable_params"] == 2 * (
        len(data.catalogue) + hidden)
    assert large["adapter_bytes"] > small["adapter_bytes"]
    assert 0.0 <= small["ndcg@10"] <= 1.0


def _record(region: str, r: int, item_rank: int, ndcg: float, default: bool = False) -> dict:
    return {"region": region, "lora_r": r, "item_rank": item_rank, "default": default,
            "adapter_bytes": 1000 * (r + 10 * item_rank), "trainable_params": 250 * item_rank,
            "ndcg@10": ndcg, "best_epoch": 3, "train_seconds": 12.0, "neighbours": 11}


def test_default_label_follows_the_current_auto_rank():
    """A point recorded as the default is relabelled when the auto rank moves (code change)."""
    records = [_record("t2", DEFAULT_R, 18, 0.58, default=True), _record("t2", DEFAULT_R, 17, 0.57),
               _record("t2", 2, 17, 0.55), _record("t1", DEFAULT_R, 18, 0.5, default=True)]
    mark_default(records, "t2", auto_rank=17)
    assert [r["default"] for r in records] == [False, True, False, True]  # t1 left alone


def test_report_marks_the_default_and_divides_by_full(tmp_path):
    records = [_record("t1", 8, 4, 0.40), _record("t1", 8, 16, 0.49, default=True),
               _record("t1", 2, 16, 0.45), _record("t2", 8, 6, 0.30, default=True)]
    text = to_markdown(records, backbone_bytes=200_000, full={"t1": 0.50})
    t1_default = next(line for line in text.splitlines() if "16 (default)" in line)
    assert "| 98.0 |" in t1_default  # 0.49 / 0.50
    assert "| 84.0 |" in t1_default  # 168,000 bytes of 200,000
    assert "| 16 (default) | 11 |" in t1_default  # the item-item part's neighbours
    t2_row = next(line for line in text.splitlines() if line.startswith("| t2"))
    assert t2_row.count(" - ") == 1  # no full reference for t2
    path = tmp_path / "sweep.png"
    plot(records, 200_000, {"t1": 0.50}, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
