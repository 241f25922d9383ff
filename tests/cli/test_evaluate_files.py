"""``evaluate`` and ``recommend`` on the user's own files (issue 15): a space-separated file
with ISO dates, a region the backbone never saw, the sampled protocol."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from regiontune.data.recipes import synthetic_frame
from tests.cli.helpers import RANKED, TINY, fails, invoke, ok

COLUMNS = ["--columns", "user=userId", "--columns", "item=itemId",
           "--columns", "timestamp=date"]


def _write(path, region: str, delimiter: str = " ", scale: float = 0.2):
    """A synthetic region in the cross-market layout: userId itemId rate date (ISO dates)."""
    frame = synthetic_frame(0, scale)
    frame = frame[frame["region"] == region]
    start = datetime(2016, 7, 3, tzinfo=timezone.utc)
    lines = [delimiter.join(["userId", "itemId", "rate", "date"])]
    for user, part in frame.groupby("user", sort=False):
        for step, item in enumerate(part["item"]):
            day = f"{start + timedelta(days=step):%Y-%m-%d}"
            lines.append(delimiter.join([user, item, "5", day]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def harbor(workdir):
    """'island' data under a region name the backbone never saw, in a space-separated file."""
    return _write(workdir / "harbor.txt", "island")


@pytest.fixture(scope="module")
def harbor_adapter(workdir, backbone, harbor):
    out = workdir / "harbor-adapter"
    ok(invoke("adapt", "--backbone", backbone[0], "--region", "harbor", "--out", out,
              "--file", f"harbor={harbor}", *COLUMNS, "--epochs", "1",
              "--set", "train.progress=false"))
    return out


def test_evaluate_backbone_on_a_file(workdir, backbone, harbor):
    target = workdir / "eval-file.json"
    text = ok(invoke("evaluate", "--model", backbone[0], "--file", f"harbor={harbor}",
                     *COLUMNS, "--json", target))
    assert "data: " in text and "region(s) (harbor)" in text and "time 2016-07-03" in text
    row = json.loads(target.read_text())["harbor"]
    assert row["protocol"] == "full-ranking" and row["users"] > 0 and row["adapter"] is None


def test_evaluate_adapter_on_new_region_file_sampled(workdir, backbone, harbor, harbor_adapter):
    target = workdir / "eval-sampled.json"
    text = ok(invoke("evaluate", "--model", backbone[0], "--adapter", harbor_adapter,
                     "--file", f"harbor={harbor}", *COLUMNS, "--sep", "space",
                     "--protocol", "sampled", "--negatives", "20", "--json", target))
    assert "sampled-20-uniform" in text
    row = json.loads(target.read_text())["harbor"]
    assert row["adapter"] == str(harbor_adapter) and row["protocol"] == "sampled-20-uniform"
    assert row["users"] > 0 and 0 < row["hr@10"] <= 1  # 10 of 21 candidates: never all missed


def test_file_wins_over_the_backbone_data(workdir, backbone, harbor):
    # the backbone was pretrained on synthetic north/south: --file replaces that data
    text = ok(invoke("evaluate", "--model", backbone[0], "--file", f"harbor={harbor}",
                     *COLUMNS, "--region", "harbor", "--json", workdir / "e.json"))
    assert "north" not in text.split("data: ")[1]


def test_evaluate_wrong_sep_is_a_clear_error(workdir, backbone, harbor):
    fails(invoke("evaluate", "--model", backbone[0], "--file", f"harbor={harbor}", *COLUMNS,
                 "--sep", "tab", "--json", workdir / "x.json"),
          "delimiter is probably wrong", "--sep")


def test_evaluate_sampled_refused_for_wsdm(workdir, backbone):
    fails(invoke("evaluate", "--model", backbone[0], "--data", "wsdm22-xmrec", "--data-dir",
                 workdir, "--protocol", "sampled", "--json", workdir / "x.json"),
          "fixed protocol")


def test_recommend_user_from_a_file(backbone, harbor, harbor_adapter):
    text = ok(invoke("recommend", "--model", backbone[0], "--adapter", harbor_adapter,
                     "--region", "harbor", "--file", f"harbor={harbor}", *COLUMNS,
                     "--user", "island-u0", "-k", "5"))
    lines = harbor.read_text().splitlines()[1:]
    mine = {x.split()[1] for x in lines if x.split()[0] == "island-u0"}
    catalogue = {x.split()[1] for x in lines}
    ranked = RANKED.findall(text)
    assert len(ranked) == 5 and "served by the adapter" in text
    assert {r[1] for r in ranked} <= catalogue - mine


def test_recommend_needs_history_or_user(backbone):
    fails(invoke("recommend", "--model", backbone[0], "--region", "north"),
          "--history ITEMS or --user ID")


def test_data_options_in_help():
    text = ok(invoke("evaluate", "--help"))
    for option in ("--file", "--columns", "--sep", "--time-format", "--protocol",
                   "--negatives", "duplicates"):
        assert option in text, option


def test_compare_on_a_file_with_the_sampled_protocol(workdir, backbone, harbor, harbor_adapter):
    target = workdir / "compare-file.json"
    ok(invoke("compare", "--backbone", backbone[0], "--adapter", harbor_adapter,
              "--region", "harbor", "--file", f"harbor={harbor}", *COLUMNS,
              "--protocol", "sampled", "--negatives", "20", "--json", target))
    report = json.loads(target.read_text())
    assert report["protocol"] == "sampled-20-uniform"
    kinds = [row["kind"] for row in report["rows"]]
    assert len(kinds) == 5 and report["test_users"] > 0  # backbone, adapter, 3 baselines
    assert all(row["users"] == report["test_users"] for row in report["rows"])


def test_pretrain_and_adapt_take_the_same_data_options(workdir):
    """A semicolon-separated file with day/month/year dates: --sep and --time-format reach
    pretrain and adapt as they reach evaluate."""
    iso = _write(workdir / "harbor-iso.txt", "island", delimiter=";")
    lines = iso.read_text().splitlines()
    dated = [lines[0]] + [";".join([*f.split(";")[:3], "/".join(f.split(";")[3].split("-")[::-1])])
                          for f in lines[1:]]
    path = workdir / "harbor-dmy.txt"
    path.write_text("\n".join(dated) + "\n")
    assert dated[1].endswith("/07/2016")
    out = workdir / "bb-dmy"
    ok(invoke("pretrain", "--out", out, "--file", f"harbor={path}", *COLUMNS, "--sep", ";",
              "--time-format", "%d/%m/%Y", *TINY))
    text = ok(invoke("adapt", "--backbone", out, "--region", "harbor", "--out",
                     workdir / "ad-dmy", "--file", f"harbor={path}", *COLUMNS, "--sep", ";",
                     "--time-format", "%d/%m/%Y", "--epochs", "1",
                     "--set", "train.progress=false"))
    assert "written to" in text
    fails(invoke("pretrain", "--out", workdir / "bb-bad", "--file", f"harbor={path}", *COLUMNS,
                 "--sep", ";", *TINY), "2016")  # dates unreadable without the format


def test_evaluate_on_own_candidate_lists(workdir, backbone, harbor):
    # one row per test case: user, item (the positive), candidates (20 others, |-separated)
    frame = synthetic_frame(0, 0.2)
    frame = frame[frame["region"] == "island"]
    pool = sorted(frame["item"].unique())
    rows = ["user\titem\tcandidates"]
    for user, part in list(frame.groupby("user", sort=True))[:10]:
        others = [i for i in pool if i not in set(part["item"])][:20]
        rows.append(f"{user}\t{list(part['item'])[-1]}\t{'|'.join(others)}")
    rows.append("ghost\ti1\ti2|i3")
    lists = workdir / "harbor-lists.tsv"
    lists.write_text("\n".join(rows) + "\n")
    target = workdir / "eval-candidates.json"
    text = ok(invoke("evaluate", "--model", backbone[0], "--file", f"harbor={harbor}",
                     *COLUMNS, "--candidates", lists, "--json", target))
    assert "10 test cases of 11 rows, 1 rows skipped (user unknown)" in text
    row = json.loads(target.read_text())["harbor"]
    assert row["protocol"] == "candidates-21" and row["users"] == 10
    fails(invoke("evaluate", "--model", backbone[0], "--file", f"harbor={harbor}", *COLUMNS,
                 "--candidates", workdir / "none.tsv", "--json", workdir / "x.json"),
          "no such file")
